"""Messages for people: stderr only, prefixed `sbx:`, filtered by -q / -v."""

from __future__ import annotations

import sys
from typing import TextIO

QUIET, NORMAL, VERBOSE, DEBUG = -1, 0, 1, 2


class Reporter:
    """Writes `sbx: …` lines to stderr according to the verbosity level."""

    def __init__(self, level: int = NORMAL, stream: TextIO | None = None) -> None:
        self.level = level
        self._stream = stream

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def _emit(self, text: str) -> None:
        for line in text.splitlines() or [""]:
            print(f"sbx: {line}", file=self.stream, flush=True)

    def info(self, text: str) -> None:
        """The one-line summary of what sbx did; silenced by -q."""
        if self.level >= NORMAL:
            self._emit(text)

    def step(self, text: str) -> None:
        """An explanation of one step; shown with -v."""
        if self.level >= VERBOSE:
            self._emit(text)

    def debug(self, text: str) -> None:
        """Protocol-level detail; shown with -vv."""
        if self.level >= DEBUG:
            self._emit(text)

    def warn(self, text: str) -> None:
        """Something the user should know; silenced by -q."""
        if self.level >= NORMAL:
            self._emit(f"warning: {text}")

    def error(self, text: str) -> None:
        """A failure; always shown, even with -q."""
        self._emit(f"error: {text}")

    @property
    def is_tty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())
