"""Drive a plain POSIX shell inside the sandbox through a pseudo-terminal.

This is the only module that imports pexpect, and it does so lazily, so that a
`docker sandbox run` that needs no patching never pays for the import.

The protocol, in short. Whatever interactive shell `docker sandbox exec -it` starts
(bash, zsh, fish..., with any rc files, themes and hooks), the first line typed replaces
it: `stty sane; exec env ENV= ... PS1=SBX\\P<nonce>: /bin/sh -i`, a POSIX sh that reads
no rc file. The line holds no quotes, so an rc that eats part of it cannot leave the user's
shell inside an open quote; it is typed again (new nonce) while no nonce prompt shows.
The nonce prompt is only a hint: the clean sh is exec'd once more (so no prompt is
exported), given a per-session prompt holding a random token, echo off, no aliases, and
readiness is proved by a marker that only printf can assemble from split arguments.
Every command then goes as one short line: a begin marker, the command, and a line with
its exit status, all assembled by printf; the output is what lies between them.
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
_SK_ANT_RE = re.compile(r"sk-ant-[A-Za-z0-9_-]{8,}")
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
    """No ready shell appeared in time; `saw_output` tells whether anything was printed at all."""

    def __init__(self, message: str, *, saw_output: bool, output: str) -> None:
        super().__init__(message)
        self.saw_output = saw_output
        self.output = output


def _last_line(text: str) -> str:
    lines = [line.strip() for line in strip_ansi(text).splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


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
        """Remove the configured secrets, `sk-ant-…` tokens and long base64 runs from `text`."""
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        text = _SK_ANT_RE.sub("<redacted sk-ant token>", text)

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
        self._syncs = 0
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

        Raises ExecFailed if the child ends first, NotReady if no clean shell appears within
        `ready_timeout` s (or nothing at all is printed within `hang_timeout` s).
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
        deadline = t0 + ready_timeout

        # Phase 1: type the trampoline until its nonce prompt shows. A slow rc or a prompt
        # theme may swallow typeahead, so the line is sent again (fresh nonce) at growing
        # intervals; copies that do arrive later only re-exec the clean sh. The prompt is
        # only a hint: a hook of the user's shell that prints the command line with its
        # backslashes processed (zsh themes setting the window title do) can fake it.
        # Nothing drastic (no ^C) happens on the hint; phase 2 confirms for real.
        nonces: list[str] = []
        interval = resend_interval
        next_send = t0
        seen = ""
        while True:
            now = time.monotonic()
            if now >= deadline:
                seen += self._flush_received()
                raise self._not_ready(f"no shell prompt within {ready_timeout:g} s", seen)
            silent = self._recorder.total == 0 and not seen
            if hang_timeout is not None and silent and now - t0 >= hang_timeout:
                raise self._not_ready(f"nothing printed within {hang_timeout:g} s", "")
            if now >= next_send:
                nonce = secrets.token_hex(8)
                nonces.append(nonce)
                self._send(self._trampoline(nonce))
                next_send = now + interval
                interval = min(interval * 1.5, 4.0)
            ready_re = re.compile("SBXP(?:" + "|".join(nonces) + "):")
            limits = [next_send, deadline]
            if hang_timeout is not None and self._recorder.total == 0:
                limits.append(t0 + hang_timeout)
            wait = max(0.01, min(limits) - time.monotonic())
            index = self._child.expect_list([ready_re, pexpect.EOF, pexpect.TIMEOUT], timeout=wait)
            seen += self._flush_received()
            if index == 0:
                break
            if index == 1:
                status = self._exit_status()
                self._note(f"exec ended with status {status}")
                raise ExecFailed(status, strip_ansi(seen))

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
                raise self._not_ready(
                    f"the shell did not finish its setup within {ready_timeout:g} s", seen
                )
            self._send(setup)
            marker_re = self._send_marker()
            index = self._child.expect_list(
                [marker_re, pexpect.EOF, pexpect.TIMEOUT],
                timeout=max(min(wait, deadline - now), 0.01),
            )
            seen += self._flush_received()
            if index == 0:
                index = self._child.expect_list(
                    [self._prompt_re, pexpect.EOF, pexpect.TIMEOUT],
                    timeout=max(deadline - time.monotonic(), 1.0),
                )
                seen += self._flush_received()
                if index == 0:
                    break
            if index == 1:
                status = self._exit_status()
                raise ExecFailed(status, strip_ansi(seen))
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

    def _not_ready(self, message: str, seen: str) -> NotReady:
        saw = bool(strip_ansi(seen).strip())
        self._note(message)
        path = self.transcript.path if self.transcript is not None else None
        err = NotReady(message, saw_output=saw, output=strip_ansi(seen))
        if path:
            err.hint = f"transcript of the session: {path}"
        return err

    @staticmethod
    def _trampoline(nonce: str) -> str:
        # Valid in bash, zsh, dash, fish and csh: replace the user's shell (rc files, themes,
        # hooks, vi mode, aliases) with a POSIX sh that reads no rc file at all. `stty sane`
        # first: an rc may leave the terminal raw, and a shell reading a raw terminal takes
        # whatever bytes are there, so lines typed after an `exec` could be lost or cut.
        return (
            "stty sane; exec env ENV= HISTFILE=/dev/null TERM=dumb "
            f"PS1={_typed('P', nonce)} /bin/sh -i"
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
        import pexpect

        tok = self._token
        begin = f"printf '%s%s\\n' 'SBXB' '{tok}'; "
        end = f"; printf '%s%s:%s\\n' 'SBXRC' '{tok}' \"$?\""
        limit = self.timeout if timeout is None else timeout
        shown = begin + (_redact_payload_sent(command) if payload else command) + end
        self._send(begin + command + end, shown=shown)
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
            raise self._error(f"no answer from the sandbox shell within {limit:g} s to {what}")
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
    if not err.output.strip():
        return True
    return err.status == 255 and not _PERMANENT_RE.search(err.output)


def open_session(
    argv: Sequence[str] | Callable[[], Sequence[str]],
    *,
    boot_timeout: float = 60.0,
    timeout: float = 20.0,
    transcript: Transcript | None = None,
    env: Mapping[str, str] | None = None,
    label: str = "the sandbox",
    on_retry: Callable[[int, float, str], None] | None = None,
    hang_timeout: float | None = 20.0,
    first_delay: float = 0.5,
    max_delay: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ShellSession:
    """Start a ready ShellSession, retrying while the sandbox is still booting.

    An exec that ends at once with status 255 or no message, or that prints nothing for
    `hang_timeout` s, is retried with exponential backoff until `boot_timeout` s have
    passed; `on_retry(attempt, delay, reason)` is called before each wait.
    """
    deadline = clock() + boot_timeout
    backoff = first_delay
    attempt = 0
    while True:
        attempt += 1
        args = list(argv() if callable(argv) else argv)
        session = ShellSession(args, env=env, timeout=timeout, transcript=transcript)
        if transcript is not None:
            transcript.note(f"attempt {attempt}")
        remaining = max(deadline - clock(), 0.5)
        try:
            session.start(ready_timeout=remaining, hang_timeout=hang_timeout)
            return session
        except ExecFailed as err:
            session.close()
            if _is_not_found(err):
                raise ShellError(
                    f"the shell `{args[-1]}` could not be started in {label}: "
                    + (_last_line(err.output) or f"status {err.status}"),
                    hint="use `--shell sh` to run the sandbox's /bin/sh instead",
                ) from err
            if not _is_retryable(err):
                raise ShellError(
                    f"`{' '.join(args[:3])}` failed for {label} (status {err.status}): "
                    + _last_line(err.output),
                    hint=_hint(transcript),
                ) from err
            reason = f"exec ended with status {err.status} and no message"
            if err.output.strip():
                reason = f"exec ended with status {err.status}: {_last_line(err.output)}"
        except NotReady as err:
            session.close()
            if err.saw_output:
                raise ShellError(
                    f"the shell in {label} started but did not accept commands "
                    f"within {boot_timeout:g} s: {err.message}",
                    hint=_hint(transcript),
                ) from err
            reason = f"no answer from exec: {err.message}"
        except BaseException:
            session.close()
            raise
        delay = min(backoff, deadline - clock())
        if delay <= 0:
            raise ShellError(
                f"{label} did not accept `docker sandbox exec` within {boot_timeout:g} s "
                f"({attempt} attempts; last: {reason})",
                hint="check it with `docker sandbox ls`, try again in a moment, "
                "or allow more time with --boot-timeout"
                + (f"; transcript: {transcript.path}" if transcript and transcript.path else ""),
            )
        if transcript is not None:
            transcript.note(f"retrying in {delay:g} s: {reason}")
        if on_retry is not None:
            on_retry(attempt, delay, reason)
        sleep(delay)
        backoff = min(backoff * 2, max_delay)


def _hint(transcript: Transcript | None) -> str | None:
    if transcript is not None and transcript.path is not None:
        return f"transcript of the session: {transcript.path}"
    return None
