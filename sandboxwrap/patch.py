"""Make one sandbox's settings.json match an auth mode, through a shell inside it."""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sandboxwrap import remote
from sandboxwrap import settings as transform_mod
from sandboxwrap.errors import SbxError
from sandboxwrap.log import DEBUG, Reporter

if TYPE_CHECKING:  # the shell driver imports pexpect: load it only when patching
    from sandboxwrap.shell import ShellSession, Transcript

_PHRASES = {
    "kept": "kept apiKeyHelper",
    "absent": "apiKeyHelper already absent",
    "removed": "removed apiKeyHelper",
    "inserted": "inserted apiKeyHelper",
    "replaced": "replaced your apiKeyHelper with the plugin's (--force)",
    "left-user-helper": "left your own apiKeyHelper in place",
    "reset": "replaced the unparseable settings.json (--force)",
}


@dataclass
class PatchResult:
    """What one pass over a sandbox's settings.json did."""

    sandbox: str
    path: str
    action: str
    backup: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def wrote(self) -> bool:
        """Whether this pass changed the file."""
        return self.action in ("removed", "inserted", "replaced", "reset")

    @property
    def phrase(self) -> str:
        """The action as words for the one-line summary."""
        return _PHRASES.get(self.action, self.action)


@dataclass(frozen=True)
class PatchOptions:
    """How to reach the sandbox's shell and how patient to be."""

    shell: str = "bash"
    boot_timeout: float = 60.0
    timeout: float = 20.0
    force: bool = False
    log_dir: Path | None = None
    secrets: Sequence[str] = ()


class Patcher:
    """Holds a shell open in one sandbox and rewrites its settings.json on request."""

    def __init__(
        self,
        exec_argv: Callable[[str], list[str]],
        sandbox: str,
        mode: str,
        options: PatchOptions,
        reporter: Reporter,
        *,
        workspace: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._exec_argv = exec_argv
        self.sandbox = sandbox
        self.mode = mode
        self.options = options
        self.reporter = reporter
        self.workspace = workspace
        self.env = env
        self._session: ShellSession | None = None
        self._transcript: Transcript | None = None
        self._target: remote.RemoteFile | None = None
        self._failed = False

    @property
    def transcript_path(self) -> Path | None:
        """Where this session's transcript is kept, if one is being written."""
        return self._transcript.path if self._transcript is not None else None

    def open(self) -> None:
        """Start the shell in the sandbox, retrying while its VM boots."""
        from sandboxwrap.shell import Transcript, open_session

        opts = self.options
        if opts.log_dir is not None:
            self._transcript = Transcript(opts.log_dir, self.sandbox, secrets=opts.secrets)
        argv = self._exec_argv(opts.shell)
        self.reporter.step(f"opening a shell: {shlex.join(argv)}")

        def on_retry(attempt: int, delay: float, why: str) -> None:
            text = (
                f"sandbox {self.sandbox} is not ready ({why}); "
                f"trying again in {delay:.1f} s (attempt {attempt + 1})"
            )
            if self.reporter.is_tty:
                self.reporter.info(text)
            else:
                self.reporter.step(text)

        try:
            self._session = open_session(
                argv,
                boot_timeout=opts.boot_timeout,
                timeout=opts.timeout,
                transcript=self._transcript,
                on_retry=on_retry,
                env=self.env,
                label=f"sandbox {self.sandbox}",
            )
        except SbxError as exc:
            self._attach_transcript(exc)
            raise

    def apply(self) -> PatchResult:
        """Read, decide on the host, write atomically under a lock if needed, and verify."""
        session = self._need_session()
        decided: list[tuple[remote.RemoteFile, transform_mod.Change]] = []

        def decide(current: remote.RemoteFile) -> bytes | None:
            where = f"{current.display} in sandbox {self.sandbox}"
            change = transform_mod.transform(
                current.data, self.mode, force=self.options.force, where=where
            )
            decided.append((current, change))
            return change.data

        try:
            # update() re-reads under the lock and retries if another writer got in between.
            outcome = remote.update(
                session, decide, backup=self.options.force, sandbox=self.sandbox
            )
            current, change = decided[-1]
            self.reporter.step(f"settings file: {current.display} (real path {current.target})")
            result = PatchResult(self.sandbox, current.display, change.action)
            result.warnings.extend(change.warnings)
            result.backup = outcome.backup
            if outcome.changed:
                self.reporter.step(f"wrote {len(outcome.data or b'')} bytes and read them back")
            else:
                self.reporter.step("settings.json is already right: nothing written")
            self._target = current
            result.warnings.extend(self._layer_warnings(session, current))
            return result
        except SbxError as exc:
            self._attach_transcript(exc)
            raise

    def fingerprint(self) -> str:
        """A checksum of the settings file (or "missing"), to notice when something rewrites it."""
        session = self._need_session()
        if self._target is None:
            self._target = remote.read_settings(session)
        return remote.fingerprint(session, self._target)

    def close(self) -> None:
        """Close the shell; keep the transcript only if something failed (or with -vv)."""
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._transcript is not None:
            if self._failed or self.reporter.level >= DEBUG:
                self._transcript.close()
                if not self._failed:
                    self.reporter.debug(f"transcript of the session: {self._transcript.path}")
            else:
                self._transcript.discard()
            self._transcript = None

    def _need_session(self) -> ShellSession:
        if self._session is None:
            self.open()
        assert self._session is not None
        return self._session

    def _attach_transcript(self, exc: SbxError) -> None:
        self._failed = True
        path = self.transcript_path
        if path is not None and "transcript" not in (exc.hint or ""):
            extra = f"transcript of the session: {path}"
            exc.hint = f"{exc.hint}; {extra}" if exc.hint else extra

    def _layer_warnings(self, session: ShellSession, own: remote.RemoteFile) -> list[str]:
        warnings = []
        for path, data in remote.read_layers(session, self.workspace, exclude=own):
            helper = transform_mod.helper_of(data)
            if helper is not None:
                effect = (
                    "it switches subscription login off"
                    if self.mode != "api-key"
                    else "it decides which key is sent"
                )
                warnings.append(
                    f"{path} in sandbox {self.sandbox} also sets apiKeyHelper = {helper}; "
                    f"sbx does not edit that layer, and {effect}"
                )
        return warnings


class Watcher:
    """After the agent starts, re-applies the patch if something re-seeds settings.json.

    Docker's later CLI writes settings.json again each time `run` starts the
    agent; Claude Code reloads the file while it runs, so a prompt correction
    still takes effect. Runs in a thread; reports nothing on the terminal
    (the agent owns it) and keeps its results for a summary after the agent exits.
    """

    def __init__(self, patcher: Patcher, duration: float, interval: float = 0.25) -> None:
        self.patcher = patcher
        self.duration = duration
        self.interval = interval
        self.reapplied: list[PatchResult] = []
        self.error: SbxError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sbx-watch", daemon=True)
        self._last: str | None = None
        self._final_look = False

    def start(self) -> None:
        """Note the file as sbx left it, then watch in the background.

        Call before the agent starts: a re-seed that lands between the start
        and the first look would otherwise become the baseline and go unseen.
        """
        try:
            self._last = self.patcher.fingerprint()
        except SbxError as exc:
            self.error = exc
            return
        self._thread.start()

    def stop(self) -> None:
        """Stop watching, with one last look if the agent ended inside the window.

        An agent that exits within a poll interval of a re-seed would otherwise leave
        the plugin's helper behind for the next `exec … claude` in that sandbox.
        """
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.patcher.options.timeout + 5)
        if self._final_look and self.error is None and not self._thread.is_alive():
            try:
                self._look()
            except SbxError as exc:
                self.error = exc
            finally:
                self.patcher.close()

    def _look(self) -> None:
        """Re-apply the patch if the file changed since the last look."""
        if self.patcher.fingerprint() == self._last:
            return
        result = self.patcher.apply()
        if result.wrote:
            self.reapplied.append(result)
        self._last = self.patcher.fingerprint()

    def _loop(self) -> None:
        deadline = time.monotonic() + self.duration
        try:
            while not self._stop.wait(self.interval) and time.monotonic() < deadline:
                self._look()
            # Stopped early because the agent exited: stop() takes the last look.
            self._final_look = self._stop.is_set()
        except SbxError as exc:
            self.error = exc
        except Exception as exc:  # a watcher must never take the agent down
            self.error = SbxError(f"watcher stopped: {exc!r}")
        finally:
            if not self._final_look:
                # The window is over: no shell stays open in the sandbox for the agent's life.
                self.patcher.close()
