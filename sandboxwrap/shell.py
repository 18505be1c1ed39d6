"""Drive a plain POSIX shell inside the sandbox through a pseudo-terminal.

This is the only module that imports pexpect, and it does so lazily, so that a
`docker sandbox run` that needs no patching never pays for the import.

The protocol, in short. Whatever interactive shell `docker sandbox exec -it` starts
(bash, zsh, fish..., with any rc files, themes and hooks), the first line typed replaces
it: ` stty sane; export SAVEHIST=0 HISTFILE=/dev/null; exec env ENV= ... PS1=SBX\\P<nonce>:
/bin/sh -i`, a POSIX sh that reads no rc file (the leading space and the history variables
keep the line out of the user's shell history). The line holds no quotes, so an rc that
eats part of it cannot leave the user's shell inside an open quote; it is typed again (new
nonce) while no nonce prompt shows.
The nonce prompt is only a hint: the clean sh is exec'd once more (so no prompt is
exported), given a per-session prompt holding a random token, echo off, no aliases, and
readiness is proved by a marker that only printf can assemble from split arguments.
Every command then goes as one short line: a begin marker, the command, and a line with
its exit status, all assembled by printf; the output is what lies between them. A command
whose wait is cut short by an exception (Ctrl-C, a signal turned into one) is waited for
before the next one, so cleanups after an interrupt run in step.

Only status 255 of `docker sandbox exec` (the VM booting) and a silent exec are retried;
the transcript keeps only the size and last 3 lines of what the shell printed before it
was ready, and redacts token shapes everywhere (`redact_tokens`).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from sandboxwrap.errors import ShellError

# macOS caps a terminal input line at 1024 bytes (Linux at 4096); stay below both.
MAX_LINE = 1000
# Bytes of a whole line that the begin/status framing around a command takes.
_FRAME_BYTES = len("printf '%s%s\\n' 'SBXB' '0123456789abcdef'; ") + len(
    "; printf '%s%s:%s\\n' 'SBXRC' '0123456789abcdef' \"$?\""
)
# Longest command `ShellSession.run` accepts, in UTF-8 bytes.
MAX_COMMAND = MAX_LINE - _FRAME_BYTES

_ANSI_RE = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves, bracketed paste
    r"|\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC: window titles, hyperlinks
    r"|[PX^_][^\x1b]*\x1b\\"  # DCS, SOS, PM, APC strings
    r"|[()*+][0-9A-Za-z]"  # charset selection
    r"|[=>78cDEHMNOZ])"  # single-character escapes
)
# After this long without the sync marker, the setup line is typed again (see start()).
_SETUP_RESEND = 0.5
_CRLF_RE = re.compile(r"\r+\n")
# Token shapes redacted wherever sandbox output is logged or shown, in this order (the
# generic `key = value` rule last, so it leaves the placeholders of the others alone).
_TOKEN_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|\Z)",
            re.DOTALL,
        ),
        "<redacted private key>",
    ),
    (re.compile(r"sk-ant-[A-Za-z0-9_-]{8,}"), "<redacted sk-ant token>"),
    (
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{16,})"),
        "<redacted GitHub token>",
    ),
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{8,}"), "<redacted Slack token>"),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "<redacted AWS key id>"),
    (re.compile(r"(?i)\b(Bearer[ \t]+)[A-Za-z0-9._~+/=-]{6,}"), r"\1<redacted>"),
    (
        re.compile(
            r"(?i)((?:api[_-]?key|access[_-]?key|token|secret|password|passwd)[\"']?"
            r"[ \t]*[=:][ \t]*[\"']?)(?!<redacted)[^\s\"']+"
        ),
        r"\1<redacted>",
    ),
)
# Long runs of the base64 alphabet that are not plain hex digests: file data that
# escaped the explicit payload marking, redacted in every transcript line.
_B64_RUN_RE = re.compile(r"[A-Za-z0-9+/]{60,}={0,2}")
_HEX_RE = re.compile(r"[0-9a-f]+")
_B64_LINE_RE = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_QUOTED_B64_RE = re.compile(r"'([A-Za-z0-9+/]*={0,2})'")
# How the container runtime under `docker sandbox exec` says the shell binary is missing.
_NOT_FOUND_RE = re.compile(r"executable file not found", re.IGNORECASE)
# Messages that will not go away by waiting: a missing sandbox or a missing plugin.
_PERMANENT_RE = re.compile(
    r"does not exist|no such sandbox|not found|unknown command|is not a docker command",
    re.IGNORECASE,
)


def strip_ansi(text: str) -> str:
    """Remove terminal escape sequences (colours, titles, bracketed-paste toggles)."""
    return _ANSI_RE.sub("", text)


def redact_tokens(text: str) -> str:
    """Replace common credential shapes in `text` with `<redacted …>` placeholders.

    `sk-ant-…`, GitHub (`ghp_` `gho_` `ghu_` `ghs_` `ghr_` `github_pat_`), Slack (`xox?-`)
    and AWS (`AKIA…`) tokens, private-key blocks, `Bearer <token>`, and the value in
    `api_key=…`, `token: …`, `secret=…`, `password=…` and the like.
    """
    for pattern, replacement in _TOKEN_RULES:
        text = pattern.sub(replacement, text)
    return text


def format_seconds(seconds: float) -> str:
    """A duration for messages: whole seconds from 10 s up, else one decimal (`1`, `2.5`)."""
    if seconds >= 9.95:
        return f"{seconds:.0f}"
    if seconds < 0.05:
        return f"{seconds:.2g}"
    return f"{seconds:.1f}".removesuffix(".0")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


@dataclass(frozen=True)
class CommandResult:
    """What one command printed (stdout and stderr, `\\r\\n` turned into `\\n`) and its status."""

    status: int
    output: str


class ExecFailed(ShellError):
    """The exec command ended before any usable shell appeared (e.g. status 255 while booting)."""

    def __init__(self, status: int | None, output: str) -> None:
        last = _last_line(output)
        super().__init__(
            f"the sandbox shell ended before it was ready (status {status})"
            + (f": {last}" if last else "")
        )
        self.status = status
        self.output = output


class NotReady(ShellError):
    """No ready shell appeared in time; `saw_output` tells whether anything was printed at all.

    `limit` names the limit that ran out: "hang" (nothing printed within `hang_timeout`),
    "start-up" (the shell printed, then was not ready within `hang_timeout` of that) or
    "ready" (`ready_timeout`).
    """

    def __init__(
        self, message: str, *, saw_output: bool, output: str, limit: str = "ready"
    ) -> None:
        super().__init__(message)
        self.saw_output = saw_output
        self.output = output
        self.limit = limit


def _lines(text: str) -> list[str]:
    """The non-blank lines of terminal output, escapes removed, `\\r` redraws split."""
    return [line.strip() for line in re.split(r"[\r\n]+", strip_ansi(text)) if line.strip()]


def _last_line(text: str) -> str:
    """The last non-blank line of `text`, tokens redacted, for a message."""
    lines = _lines(text)
    return redact_tokens(lines[-1])[:200] if lines else ""


def _payload_size(b64_chars: int, padding: int) -> int:
    return max(0, b64_chars * 3 // 4 - padding)


def _redact_payload_output(text: str) -> str:
    """Collapse runs of base64 lines into one `<N bytes of file data>` line."""
    out: list[str] = []
    run_chars = run_pad = 0
    for line in text.split("\n"):
        if line and _B64_LINE_RE.fullmatch(line):
            run_chars += len(line)
            run_pad += line.count("=")
            continue
        if run_chars:
            out.append(f"<{_payload_size(run_chars, run_pad)} bytes of file data>")
            run_chars = run_pad = 0
        out.append(line)
    if run_chars:
        out.append(f"<{_payload_size(run_chars, run_pad)} bytes of file data>")
    return "\n".join(out)


def _redact_payload_sent(line: str) -> str:
    def repl(m: re.Match[str]) -> str:
        data = m.group(1)
        return f"<{_payload_size(len(data), data.count('='))} bytes of file data>"

    return _QUOTED_B64_RE.sub(repl, line)


class Transcript:
    """A session log (mode 0600) under `directory`, with secrets and file data redacted.

    Writing it is best effort: any failure switches it off and never breaks the run.
    """

    def __init__(
        self,
        directory: Path,
        name: str = "sandbox",
        *,
        secrets: Iterable[str] = (),
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        # Very short "secrets" would redact half the log and protect nothing.
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)
        self._file: IO[str] | None = None
        self._path: Path | None = None
        stamp = now().strftime("%Y%m%d-%H%M%S")
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60] or "sandbox"
        try:
            directory = Path(directory)
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = directory / f"sbx-{stamp}-{safe}-{os.getpid()}.log"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            self._file = os.fdopen(fd, "w", encoding="utf-8", errors="replace")
            self._path = path
        except OSError:
            self._file = None

    @property
    def path(self) -> Path | None:
        """Where the transcript is, or None when it could not be created."""
        return self._path

    def redact(self, text: str) -> str:
        """Remove the configured secrets, token shapes and long base64 runs from `text`."""
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        text = redact_tokens(text)

        def b64(m: re.Match[str]) -> str:
            run = m.group(0)
            if _HEX_RE.fullmatch(run):
                return run  # sha256 digests help debugging and reveal nothing
            return f"<{_payload_size(len(run), run.count('='))} bytes of file data>"

        return _B64_RUN_RE.sub(b64, text)

    def _write(self, prefix: str, text: str) -> None:
        if self._file is None:
            return
        text = self.redact(text)
        shown = text.replace("\r\n", "\n").replace("\x1b", "\\e").replace("\r", "\\r")
        shown = shown[:-1] if shown.endswith("\n") else shown
        try:
            for line in shown.split("\n"):
                self._file.write(f"{prefix} {line}\n")
            self._file.flush()
        except (OSError, ValueError):
            self._file = None

    def note(self, text: str) -> None:
        """Record a remark of sbx's own (attempts, timeouts, decisions)."""
        self._write("#", text)

    def sent(self, text: str) -> None:
        """Record a line typed into the shell."""
        self._write(">", text)

    def received(self, text: str, *, payload: bool = False) -> None:
        """Record what the shell printed; `payload` collapses base64 lines."""
        if not text:
            return
        text = text.replace("\r\n", "\n")
        self._write("<", _redact_payload_output(text) if payload else text)

    def close(self) -> None:
        """Stop writing; the file stays."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def discard(self) -> None:
        """Close and delete the transcript (after a successful run)."""
        self.close()
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()
            self._path = None


class _Recorder:
    """pexpect's `logfile_read`: keeps everything received until the session logs it."""

    def __init__(self) -> None:
        self.pending: list[str] = []
        self.total = 0

    def write(self, data: str) -> None:
        self.pending.append(data)
        self.total += len(data)

    def flush(self) -> None:
        pass

    def take(self) -> str:
        text = "".join(self.pending)
        self.pending.clear()
        return text


def _typed(kind: str, token: str) -> str:
    """How a prompt value `SBX<kind><token>:` is typed: `SBX\\<kind><token>:`.

    The backslash makes the typed text differ from the value, so the terminal's echo of
    the line never matches. It needs no quotes, so a line that an rc file partly read can
    never leave the user's shell inside an open quote; and `\\P`, `\\Q` mean plain P and
    Q in sh, bash, zsh, fish and csh alike.
    """
    return f"SBX\\{kind}{token}:"


class ShellSession:
    """One `/bin/sh` inside the sandbox, driven line by line with explicit exit statuses."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 20.0,
        transcript: Transcript | None = None,
    ) -> None:
        if not argv:
            raise ValueError("argv must not be empty")
        self.argv = list(argv)
        self.timeout = timeout
        self.transcript = transcript
        self._env = env
        self._child: Any = None
        self._recorder = _Recorder()
        self._token = secrets.token_hex(8)
        self._prompt = f"SBXP{self._token}:"
        self._prompt_re = re.compile(re.escape(self._prompt))
        self._ps2_re = re.compile(re.escape(f"SBXQ{self._token}:"))
        self._begin = f"SBXB{self._token}\n"
        self._status_re = re.compile(r"SBXRC" + self._token + r":(\d+)\n?\Z")
        self._ready = False
        self._broken = False
        self._unsynced = False
        self._syncs = 0
        self._startup: list[str] = []
        # One command at a time, even if a watcher thread shares the session.
        self._lock = threading.RLock()

    # -- plumbing -------------------------------------------------------------------------

    def _note(self, text: str) -> None:
        if self.transcript is not None:
            self.transcript.note(text)

    def _send(self, line: str, *, shown: str | None = None) -> None:
        if self.transcript is not None:
            self.transcript.sent(line if shown is None else shown)
        self._child.send(line + "\n")

    def _flush_received(self, *, payload: bool = False) -> str:
        text = self._recorder.take()
        if self.transcript is not None:
            self.transcript.received(text, payload=payload)
        return text

    def _error(self, message: str, cls: type[ShellError] = ShellError) -> ShellError:
        path = self.transcript.path if self.transcript is not None else None
        self._note(f"error: {message}")
        return cls(message, hint=f"transcript of the session: {path}" if path else None)

    def _exit_status(self) -> int | None:
        child = self._child
        with contextlib.suppress(Exception):
            # pexpect sleeps `delayafterclose` (0.1 s) before looking at a child that has
            # usually exited already: that was a fifth of sbx's whole overhead.
            delay = 0.0 if not child.isalive() else 0.05
            child.delayafterclose = delay
            child.ptyproc.delayafterclose = delay  # the one pexpect 4.8 really sleeps on
            child.close(force=True)
        if child.exitstatus is not None:
            return int(child.exitstatus)
        if child.signalstatus is not None:
            return 128 + int(child.signalstatus)
        return None

    # -- life cycle -----------------------------------------------------------------------

    def start(
        self,
        ready_timeout: float,
        *,
        hang_timeout: float | None = None,
        resend_interval: float = 1.0,
    ) -> None:
        """Spawn argv and turn whatever shell it starts into the clean framed shell.

        Raises ExecFailed if the child ends first, NotReady if no clean shell appears in
        time: within `ready_timeout` s, or, with `hang_timeout`, as soon as nothing at all
        has been printed for `hang_timeout` s (limit "hang"). A shell that has printed
        something is running its start-up files and is waited for: at least `hang_timeout`
        s from its first output, even past `ready_timeout` (limit "start-up").

        What the shell prints before it is ready (rc chatter, which may hold secrets) is not
        logged as it comes: the transcript gets its size and its last 3 lines, redacted.
        """
        import pexpect  # only the patching path pays for this import

        env = dict(os.environ if self._env is None else self._env)
        env["TERM"] = "dumb"  # no colours, no bracketed paste, no fancy line editing
        self._note("spawn: " + " ".join(self.argv))
        t0 = time.monotonic()
        try:
            # echo=False: while `docker sandbox exec` is still connecting, the local terminal
            # would echo what we type, which would look like a shell answering.
            self._child = pexpect.spawn(
                self.argv[0],
                self.argv[1:],
                env=env,
                encoding="utf-8",
                codec_errors="replace",
                dimensions=(24, 200),
                timeout=self.timeout,
                maxread=65536,
                echo=False,
            )
        except pexpect.ExceptionPexpect as exc:
            raise ExecFailed(127, str(exc)) from exc
        self._child.logfile_read = self._recorder
        # pexpect sleeps 50 ms before every send by default (for password prompts); we always
        # wait for a prompt before typing, and a write sends hundreds of short lines.
        self._child.delaybeforesend = None
        self._child.delayafterclose = 0.02  # the shell has usually exited already
        self._startup = []
        try:
            self._start(t0, ready_timeout, hang_timeout, resend_interval)
        finally:
            self._log_startup()

    def _take_startup(self) -> str:
        """What arrived since the last look, kept (not logged) as start-up output."""
        text = self._recorder.take()
        if text:
            self._startup.append(text)
        return text

    def _log_startup(self) -> None:
        """Put the start-up output's size and its last 3 lines (redacted) in the transcript."""
        if self.transcript is None:
            return
        text = "".join(self._startup)
        self._startup = []
        lines = _lines(text)
        self.transcript.note(
            f"start-up output: {len(text.encode('utf-8', 'replace'))} bytes, "
            f"{_plural(len(lines), 'line')}"
            + (f"; the last {min(len(lines), 3)}:" if lines else "")
        )
        for line in lines[-3:]:
            self.transcript.received(line[:300])

    def _start(
        self,
        t0: float,
        ready_timeout: float,
        hang_timeout: float | None,
        resend_interval: float,
    ) -> None:
        import pexpect

        deadline = t0 + ready_timeout
        limit = "ready"
        first_output: float | None = None

        def too_late(what: str) -> NotReady:
            if limit == "start-up" and hang_timeout is not None:
                span = f"{format_seconds(hang_timeout)} s of the shell's first output"
            else:
                span = f"{format_seconds(ready_timeout)} s"
            return self._not_ready(f"{what} within {span}", "".join(self._startup), limit)

        # Phase 1: type the trampoline until its nonce prompt shows. A slow rc or a prompt
        # theme may swallow typeahead, so the line is sent again (fresh nonce) at growing
        # intervals; copies that do arrive later only re-exec the clean sh. The prompt is
        # only a hint: a hook of the user's shell that prints the command line with its
        # backslashes processed (zsh themes setting the window title do) can fake it.
        # Nothing drastic (no ^C) happens on the hint; phase 2 confirms for real.
        nonces: list[str] = []
        interval = resend_interval
        next_send = t0
        while True:
            now = time.monotonic()
            if now >= deadline:
                self._take_startup()
                raise too_late("no shell prompt")
            silent = self._recorder.total == 0
            if hang_timeout is not None and silent and now - t0 >= hang_timeout:
                raise self._not_ready(
                    f"nothing printed within {format_seconds(hang_timeout)} s", "", "hang"
                )
            if now >= next_send:
                nonce = secrets.token_hex(8)
                nonces.append(nonce)
                self._send(self._trampoline(nonce))
                next_send = now + interval
                interval = min(interval * 1.5, 4.0)
            ready_re = re.compile("SBXP(?:" + "|".join(nonces) + "):")
            limits = [next_send, deadline]
            if hang_timeout is not None and silent:
                limits.append(t0 + hang_timeout)
            wait = max(0.01, min(limits) - time.monotonic())
            index = self._child.expect_list([ready_re, pexpect.EOF, pexpect.TIMEOUT], timeout=wait)
            self._take_startup()
            if first_output is None and self._recorder.total:
                # The shell answered: from now on its start-up files are running. They get
                # at least hang_timeout more, whatever is left of the boot allowance.
                first_output = time.monotonic()
                if hang_timeout is not None and first_output + hang_timeout > deadline:
                    deadline, limit = first_output + hang_timeout, "start-up"
            if index == 0:
                break
            if index == 1:
                raise self._exec_ended()

        # Phase 2: dash keeps the export flag of PS1 even after `unset`, and an exported
        # prompt would be printed by `env`, faking a prompt match later. So exec once more
        # with PS1 out of the environment, then set the final prompt. Whatever is still
        # queued (more trampoline copies) runs first: the terminal is first in, first out.
        # Readiness is a marker that only printf can assemble from its split arguments,
        # followed by the final prompt. A shell reading a terminal left in raw mode can
        # swallow our next lines together with the exec line, so unanswered setup+marker
        # lines are typed again; setting up twice is harmless.
        self._send("unset PS1 PS2 ENV; exec /bin/sh -i")
        setup = self._setup_line()
        wait = _SETUP_RESEND
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise too_late("the shell did not finish its setup")
            self._send(setup)
            marker_re = self._send_marker()
            index = self._child.expect_list(
                [marker_re, pexpect.EOF, pexpect.TIMEOUT],
                timeout=max(min(wait, deadline - now), 0.01),
            )
            self._take_startup()
            if index == 0:
                index = self._child.expect_list(
                    [self._prompt_re, pexpect.EOF, pexpect.TIMEOUT],
                    timeout=max(deadline - time.monotonic(), 1.0),
                )
                self._take_startup()
                if index == 0:
                    break
            if index == 1:
                raise self._exec_ended()
            wait = min(wait * 2, 4.0)
        self._ready = True
        self._note(f"ready after {time.monotonic() - t0:.2f} s")

    def _send_marker(self) -> re.Pattern[str]:
        """Type a printf of a fresh marker; return the pattern of what it prints.

        The marker is typed as two arguments, so no echo or transformation of the typed
        line can contain it; only running the printf does.
        """
        self._syncs += 1
        tail = f"{self._token}.{self._syncs}."
        # No quotes: a cut line must not leave the shell inside an open quote.
        self._send(f"printf %s%s\\\\n SBXS {tail}")
        return re.compile(re.escape(f"SBXS{tail}"))

    def _exec_ended(self) -> ExecFailed:
        """The exec ended before the session was ready: say how, with what it printed."""
        status = self._exit_status()
        self._note(f"exec ended with status {status}")
        return ExecFailed(status, strip_ansi("".join(self._startup)))

    def _sync(self, timeout: float) -> None:
        """Wait for a fresh marker and the prompt after it: skips any stale output."""
        import pexpect

        for pattern in (self._send_marker(), self._prompt_re):
            index = self._child.expect_list(
                [pattern, pexpect.EOF, pexpect.TIMEOUT], timeout=timeout
            )
            self._flush_received()
            if index != 0:
                self._broken = True
                raise self._error("the sandbox shell stopped answering")

    def _not_ready(self, message: str, seen: str, limit: str) -> NotReady:
        saw = bool(strip_ansi(seen).strip())
        self._note(message)
        path = self.transcript.path if self.transcript is not None else None
        err = NotReady(message, saw_output=saw, output=strip_ansi(seen), limit=limit)
        if path:
            err.hint = f"transcript of the session: {path}"
        return err

    @staticmethod
    def _trampoline(nonce: str) -> str:
        # Valid in bash, zsh, dash and fish: replace the user's shell (rc files, themes,
        # hooks, vi mode, aliases) with a POSIX sh that reads no rc file at all. `stty sane`
        # first: an rc may leave the terminal raw, and a shell reading a raw terminal takes
        # whatever bytes are there, so lines typed after an `exec` could be lost or cut.
        # Kept out of the user's history: the leading space is enough for fish, and for
        # bash (HISTCONTROL=ignorespace) and zsh (hist_ignore_space) when so configured;
        # bash saves its history when it execs, so HISTFILE=/dev/null sends that save
        # nowhere, and zsh's SAVEHIST=0 stops its save without touching any file (zsh with
        # HISTFILE=/dev/null would lock and rewrite /dev/null.*). `export` is a function in
        # fish, so the line stays valid there. A zsh that writes each line as it is entered
        # (inc_append_history, share_history) without hist_ignore_space cannot be helped.
        return (
            " stty sane; export SAVEHIST=0 HISTFILE=/dev/null; "
            f"exec env ENV= HISTFILE=/dev/null TERM=dumb PS1={_typed('P', nonce)} /bin/sh -i"
        )

    def _setup_line(self) -> str:
        tok = self._token
        return (
            "unset PROMPT_COMMAND; "
            f"PS1={_typed('P', tok)}; PS2={_typed('Q', tok)}; "
            "stty sane -echo 2>/dev/null; command unalias -a 2>/dev/null; "
            "command set +e +u 2>/dev/null; command set +C 2>/dev/null; "
            "command set +o vi 2>/dev/null; command set +o emacs 2>/dev/null; "
            "LC_ALL=C; export LC_ALL"
        )

    # -- commands -------------------------------------------------------------------------

    def run(
        self, command: str, *, timeout: float | None = None, payload: bool = False
    ) -> CommandResult:
        """Run one command line and return its output and exit status.

        `payload` marks commands whose quoted base64 arguments or base64 output are file
        contents, which the transcript then replaces with `<N bytes of file data>`.
        Raises ShellError on a timeout, an incomplete command, or the shell going away;
        ValueError for a command over MAX_COMMAND bytes or with a line break.
        """
        with self._lock:
            return self._run(command, timeout=timeout, payload=payload)

    def _run(self, command: str, *, timeout: float | None, payload: bool) -> CommandResult:
        if "\n" in command or "\r" in command:
            raise ValueError("a command must be a single line")
        if len(command.encode("utf-8")) > MAX_COMMAND:
            raise ValueError(f"command longer than {MAX_COMMAND} bytes")
        if not self._ready or self._broken:
            raise ShellError("the sandbox shell session is not usable")
        if self._unsynced:
            # The previous command was interrupted (Ctrl-C, SIGTERM as an exception) while
            # we waited for its answer: it may still be running and its output is still on
            # its way. Wait for it to finish (no ^C: a cleanup relies on each command
            # having run whole or not at all), skipping what it printed.
            self._note("re-synchronising after an interrupted command")
            self._flush_received()
            self._sync(self.timeout)
            self._unsynced = False
        # Until this command's answer is read, an exception leaves the session unsynced.
        self._unsynced = True
        result = self._run_framed(command, timeout=timeout, payload=payload)
        self._unsynced = False
        return result

    def _run_framed(self, command: str, *, timeout: float | None, payload: bool) -> CommandResult:
        tok = self._token
        begin = f"printf '%s%s\\n' 'SBXB' '{tok}'; "
        end = f"; printf '%s%s:%s\\n' 'SBXRC' '{tok}' \"$?\""
        limit = self.timeout if timeout is None else timeout
        shown = begin + (_redact_payload_sent(command) if payload else command) + end
        self._send(begin + command + end, shown=shown)
        try:
            return self._answer(command, limit, payload)
        except ShellError:
            # Every ShellError path below has either resynchronised or marked the session
            # broken itself; only other exceptions leave it waiting for an answer.
            self._unsynced = False
            raise

    def _answer(self, command: str, limit: float, payload: bool) -> CommandResult:
        import pexpect

        index = self._child.expect_list(
            [self._prompt_re, self._ps2_re, pexpect.EOF, pexpect.TIMEOUT],
            timeout=limit,
            searchwindowsize=4096,
        )
        raw = self._recorder.take()
        what = "a command" if payload else f"`{command[:80]}`"
        if index == 3:
            self._log_received(raw, payload)
            self._broken = True
            raise self._error(
                f"no answer from the sandbox shell within {format_seconds(limit)} s to {what}"
            )
        if index == 2:
            self._log_received(raw, payload)
            self._broken = True
            raise self._error(f"the sandbox shell exited while running {what}")
        if index == 1:
            self._log_received(raw, payload)
            # The line was incomplete (an open quote): interrupt it and get the prompt back.
            self._child.sendintr()
            again = self._child.expect_list(
                [self._prompt_re, pexpect.EOF, pexpect.TIMEOUT], timeout=min(limit, 5.0)
            )
            self._flush_received()
            if again != 0:
                self._broken = True
            else:
                self._sync(min(limit, 5.0))
            raise self._error(f"the sandbox shell saw an incomplete command in {what}")
        # Everything before the prompt; the terminal turns each \n into \r\n (so a
        # program's own \r\n arrives as \r\r\n). Text before the begin marker (an echo
        # of the line, should echo be on) is dropped.
        text = _CRLF_RE.sub("\n", strip_ansi(self._child.before))
        start = text.find(self._begin)
        body = text[start + len(self._begin) :] if start >= 0 else ""
        m = self._status_re.search(body)
        if start < 0 or m is None:
            self._log_received(raw, payload)
            raise self._error(f"unexpected output from the sandbox shell for {what}")
        output = body[: m.start()]
        if self.transcript is not None:
            redacted = _redact_payload_output(output) if payload else output
            self.transcript.received(redacted + f"[status {m.group(1)}]")
        return CommandResult(status=int(m.group(1)), output=output)

    def _log_received(self, raw: str, payload: bool) -> None:
        if self.transcript is not None:
            self.transcript.received(strip_ansi(raw), payload=payload)

    @property
    def alive(self) -> bool:
        """True while the session can run commands."""
        return self._ready and not self._broken and self._child is not None

    def close(self) -> None:
        """End the shell (politely if it is still in sync) and release the terminal."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        child = self._child
        if child is None:
            return
        self._child = None
        import pexpect  # already imported by start(); a spawned child implies it

        # Leave politely: killing the `docker sandbox exec` client may leave the shell
        # running inside the sandbox. A second `exit` covers a clean shell that runs as a
        # child of the user's shell (when an rc ate the start of our first line).
        with contextlib.suppress(Exception):
            if child.isalive() and (self._ready or self._recorder.total):
                if self._broken:
                    child.sendintr()
                for wait in (0.5, 1.5):
                    child.send("exit\n")
                    if child.expect_exact([pexpect.EOF, pexpect.TIMEOUT], timeout=wait) == 0:
                        break
        with contextlib.suppress(Exception):
            # pexpect sleeps `delayafterclose` (0.1 s) before looking at a child that has
            # usually exited already: that was a fifth of sbx's whole overhead.
            delay = 0.0 if not child.isalive() else 0.05
            child.delayafterclose = delay
            child.ptyproc.delayafterclose = delay  # the one pexpect 4.8 really sleeps on
            child.close(force=True)
        self._ready = False
        self._note(f"closed (exit status {child.exitstatus}, signal {child.signalstatus})")

    def __enter__(self) -> ShellSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _is_not_found(err: ExecFailed) -> bool:
    return err.status in (126, 127) or bool(_NOT_FOUND_RE.search(err.output))


def _is_retryable(err: ExecFailed) -> bool:
    # Only status 255 means "the VM is booting, or too many run at once" (with no message).
    # Any other early end is the shell itself going away (an rc with `exit` or `set -e`,
    # a docker that is not docker): waiting would only turn that into a boot timeout.
    return err.status == 255 and not _PERMANENT_RE.search(err.output)


_AUTO = -1.0


def open_session(
    argv: Sequence[str] | Callable[[], Sequence[str]],
    *,
    boot_timeout: float = 60.0,
    timeout: float = 20.0,
    transcript: Transcript | None = None,
    env: Mapping[str, str] | None = None,
    label: str = "the sandbox",
    on_retry: Callable[[int, float, str], None] | None = None,
    hang_timeout: float | None = _AUTO,
    first_delay: float = 0.5,
    max_delay: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ShellSession:
    """Start a ready ShellSession, retrying while the sandbox is still booting.

    An exec that ends at once with status 255, or that prints nothing for `hang_timeout` s
    (default: `timeout`, the `--timeout` setting; None: no such limit), is retried with
    exponential backoff until `boot_timeout` s have passed; `on_retry(attempt, delay,
    reason)` is called before each wait. Any other early end fails at once. A shell that
    has printed something is waited for (see `ShellSession.start`) and not retried.
    """
    hang = timeout if hang_timeout is not None and hang_timeout < 0 else hang_timeout
    deadline = clock() + boot_timeout
    backoff = first_delay
    attempt = 0
    hangs = 0
    while True:
        attempt += 1
        args = list(argv() if callable(argv) else argv)
        session = ShellSession(args, env=env, timeout=timeout, transcript=transcript)
        if transcript is not None:
            transcript.note(f"attempt {attempt}")
        remaining = max(deadline - clock(), 0.5)
        try:
            session.start(ready_timeout=remaining, hang_timeout=hang)
            return session
        except ExecFailed as err:
            session.close()
            _raise_if_final(err, args, label, transcript)
            reason = f"exec ended with status {err.status} and no message"
            if err.output.strip():
                reason = f"exec ended with status {err.status}: {_last_line(err.output)}"
        except NotReady as err:
            session.close()
            if err.saw_output:
                raise _slow_start_up(err, label, boot_timeout, hang, transcript) from err
            hangs += err.limit == "hang"
            reason = f"no answer from exec: {err.message}"
        except BaseException:
            session.close()
            raise
        delay = min(backoff, deadline - clock())
        if delay <= 0:
            hint = (
                "the VM may be slow to boot, or too many may run at once: check it with "
                "`docker sandbox ls`, try again in a moment, or allow it more time with "
                f"--boot-timeout (now {format_seconds(boot_timeout)} s)"
            )
            if hangs and hang is not None:
                hint += (
                    f"; each attempt that printed nothing was stopped after "
                    f"{format_seconds(hang)} s: a shell whose start-up files run that long "
                    "without printing anything needs a higher --timeout, or `--shell sh` "
                    "to skip them"
                )
            raise ShellError(
                f"{label} did not accept `docker sandbox exec` within "
                f"{format_seconds(boot_timeout)} s ({_plural(attempt, 'attempt')}; "
                f"last: {reason})",
                hint=_with_transcript(hint, transcript),
            )
        if transcript is not None:
            transcript.note(f"retrying in {format_seconds(delay)} s: {reason}")
        if on_retry is not None:
            on_retry(attempt, delay, reason)
        sleep(delay)
        backoff = min(backoff * 2, max_delay)


def _raise_if_final(
    err: ExecFailed, args: Sequence[str], label: str, transcript: Transcript | None
) -> None:
    """Raise the ShellError for an exec that ended early, unless it is worth retrying."""
    last = _last_line(err.output)
    status = "an unknown status" if err.status is None else f"status {err.status}"
    if _is_not_found(err):
        raise ShellError(
            f"the shell `{args[-1]}` could not be started in {label}: " + (last or status),
            hint="use `--shell sh` to run the sandbox's /bin/sh instead",
        ) from err
    if _PERMANENT_RE.search(err.output):
        raise ShellError(
            f"`{' '.join(args[:3])}` failed for {label} ({status}): {last}",
            hint=_hint(transcript),
        ) from err
    if not _is_retryable(err):
        raise ShellError(
            f"the shell `{args[-1]}` in {label} ended with {status} before it was ready"
            + (f"; its last output: {last}" if last else ", printing nothing"),
            hint=_with_transcript(
                "its start-up files (~/.bashrc, ~/.profile …) may end it, e.g. with `exit` "
                "or `set -e`; `--shell sh` runs the sandbox's /bin/sh, which reads none",
                transcript,
            ),
        ) from err


def _slow_start_up(
    err: NotReady,
    label: str,
    boot_timeout: float,
    hang: float | None,
    transcript: Transcript | None,
) -> ShellError:
    """The error for a shell that printed something but never became ready."""
    if err.limit == "start-up" and hang is not None:
        limit = f"the --timeout limit of {format_seconds(hang)} s after its first output"
        raise_it = "--timeout"
    else:
        limit = f"the --boot-timeout limit of {format_seconds(boot_timeout)} s"
        raise_it = "--boot-timeout or --timeout"
    hint = (
        f"a slow shell start-up (its rc files) needs a higher {raise_it}"
        + (f" (--timeout is now {format_seconds(hang)} s)" if hang is not None else "")
        + "; one that waits for input never ends: `--shell sh` runs the sandbox's /bin/sh, "
        "which reads no start-up files"
    )
    last = _last_line(err.output)
    return ShellError(
        f"the shell in {label} started but did not accept commands within {limit}"
        + (f"; its last output: {last}" if last else ""),
        hint=_with_transcript(hint, transcript),
    )


def _with_transcript(hint: str, transcript: Transcript | None) -> str:
    if transcript is not None and transcript.path is not None:
        return f"{hint}; transcript of the session: {transcript.path}"
    return hint


def _hint(transcript: Transcript | None) -> str | None:
    if transcript is not None and transcript.path is not None:
        return f"transcript of the session: {transcript.path}"
    return None
