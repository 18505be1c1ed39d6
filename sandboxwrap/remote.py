"""Read and atomically replace Claude Code's settings.json inside the sandbox.

Everything is decided on the host; the sandbox only runs a POSIX shell and coreutils
(`base64`, `sha256sum`, `stat`, `readlink`, `mkdir`, `mv`, `cp`, `chmod`, `chown`).
Contents travel base64-encoded in short lines. This module never imports pexpect: it
talks to any object with the `Session.run` method below. The lock and the temporary files
are cleaned up on any exception (KeyboardInterrupt, or SIGTERM/SIGHUP raised as one), and
a folder the sandbox user may not write in is reported at once, with the command that
fixes it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import posixpath
import secrets
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from sandboxwrap.errors import ShellError, WriteError
from sandboxwrap.shell import MAX_COMMAND, CommandResult

MANAGED_DIR = "/etc/claude-code"
NEW_FILE_MODE = 0o644  # what the plugin's own settings.json has
MAX_FILE = 8 * 1024 * 1024  # settings files are small; refuse to pull anything huge
_HOME_DISPLAY = "~/.claude/settings.json"
_ENV_DISPLAY = "$CLAUDE_CONFIG_DIR/settings.json"


class Session(Protocol):
    """What remote needs from a shell session (sandboxwrap.shell.ShellSession has it)."""

    def run(
        self, command: str, *, timeout: float | None = None, payload: bool = False
    ) -> CommandResult: ...


class WriteConflict(WriteError):
    """settings.json changed between our read and our rename; read again and retry."""


@dataclass(frozen=True)
class RemoteFile:
    """Where settings.json is inside the sandbox and what it holds.

    `path` is the configured location, `target` the file really written (the symlink's
    resolved target when `path` is a link; the link itself stays). `data` is None when the
    file does not exist (an empty file is b"").
    """

    path: str
    display: str
    target: str
    exists: bool
    is_symlink: bool
    folder_exists: bool
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    data: bytes | None = None

    @property
    def folder(self) -> str:
        """The folder that holds the target (and our temporary files, lock and backups)."""
        return posixpath.dirname(self.target) or "."

    @property
    def sha256(self) -> str | None:
        """Hex sha256 of `data`, or None when the file does not exist."""
        return None if self.data is None else hashlib.sha256(self.data).hexdigest()

    @property
    def lock_path(self) -> str:
        """The `mkdir` lock two sbx processes use to take turns on this file."""
        return self.target + ".sbx-lock"


@dataclass(frozen=True)
class UpdateResult:
    """Outcome of `update`: the file as read under the lock, what was written, the backup."""

    before: RemoteFile
    data: bytes | None
    changed: bool
    backup: str | None


def _q(path: str) -> str:
    return shlex.quote(path)


def _set_var(session: Session, name: str, value: str) -> None:
    """Assign `value` to shell variable `name`, in pieces when it is long.

    Commands then say "$name" instead of repeating a path that may be long or full of
    quotes, so every line stays under the terminal's limit.
    """
    if "\n" in value or "\0" in value:
        raise WriteError(f"a path holds a line break or NUL byte: {value!r}")
    pieces = [value[i : i + 200] for i in range(0, len(value), 200)] or [""]
    first = True
    for piece in pieces:
        rhs = _q(piece) if first else f'"${name}"{_q(piece)}'
        result = session.run(f"{name}={rhs}")
        if result.status != 0:
            raise ShellError(f"could not set a shell variable: {_last(result.output)}")
        first = False


def _last(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _run(
    session: Session,
    command: str,
    what: str,
    *,
    timeout: float | None = None,
    payload: bool = False,
) -> str:
    """Run `command`; a non-zero status becomes a WriteError naming `what`."""
    result = session.run(command, timeout=timeout, payload=payload)
    if result.status != 0:
        detail = _last(result.output)
        raise WriteError(
            f"{what} failed in the sandbox (status {result.status})"
            + (f": {detail}" if detail else "")
        )
    return result.output


def _transfer_timeout(size: int) -> float | None:
    # A few hundred KB/s is slow for a terminal; leave the session default for small files.
    return None if size < 200_000 else 20.0 + size / 50_000


# -- reading ------------------------------------------------------------------------------


def _decode_b64_field(text: str, name: str) -> str:
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ShellError(f"could not read {name} from the sandbox shell") from exc


def _settings_path(session: Session) -> tuple[str, str]:
    """(path, display) of settings.json from the session's CLAUDE_CONFIG_DIR or HOME."""
    # base64 keeps any byte of these values intact across the terminal.
    out = _run(
        session,
        "printf 'H\\n'; printf %s \"$HOME\" | command base64; "
        "printf 'C\\n'; printf %s \"${CLAUDE_CONFIG_DIR-}\" | command base64",
        "reading $HOME and $CLAUDE_CONFIG_DIR",
    )
    lines = out.split("\n")
    try:
        h, c = lines.index("H"), lines.index("C")
    except ValueError as exc:
        raise ShellError("unexpected answer when reading $HOME in the sandbox") from exc
    home = _decode_b64_field("\n".join(lines[h + 1 : c]), "$HOME")
    config = _decode_b64_field("\n".join(lines[c + 1 :]), "$CLAUDE_CONFIG_DIR")
    if config:
        base, display = config, _ENV_DISPLAY
    elif home:
        base, display = home.rstrip("/") + "/.claude", _HOME_DISPLAY
    else:
        raise WriteError("neither $CLAUDE_CONFIG_DIR nor $HOME is set in the sandbox shell")
    if "\n" in base:
        raise WriteError(f"the settings folder name holds a line break: {base!r}")
    return (base.rstrip("/") or "") + "/settings.json", display


def locate(session: Session) -> RemoteFile:
    """Find settings.json and describe it (no contents); refuse anything but a regular file."""
    path, display = _settings_path(session)
    _set_var(session, "sbx_f", path)
    probe = (
        '[ -L "$sbx_f" ] && echo L; '
        't=$(command readlink -f -- "$sbx_f" 2>/dev/null) || t=$sbx_f; [ -n "$t" ] || t=$sbx_f; '
        'printf \'T:%s\\n\' "$t"; d=$(command dirname -- "$t"); '
        '[ -e "$t" ] && echo E; [ -f "$t" ] && echo F; [ -d "$t" ] && echo D; '
        '[ -r "$t" ] && echo R; [ -d "$d" ] && echo P; [ -e "$d" ] && echo X; '
        '[ -e "$t" ] && command stat -L -c \'S:%a:%u:%g:%s\' -- "$t"; :'
    )
    out = _run(session, probe, f"inspecting {display}")
    flags: set[str] = set()
    target = path
    stat: list[str] = []
    for line in out.split("\n"):
        if line.startswith("T:"):
            target = line[2:]
        elif line.startswith("S:"):
            stat = line[2:].split(":")
        elif line in ("L", "E", "F", "D", "R", "P", "X"):
            flags.add(line)
    is_link = "L" in flags
    where = display + (f" (-> {target})" if is_link else "")
    if is_link and "E" not in flags:
        raise WriteError(
            f"{where} is a symbolic link to a file that does not exist",
            hint="create the file it points to, or remove the link",
        )
    if "E" in flags and "D" in flags:
        raise WriteError(f"{where} is a folder, not a file")
    if "E" in flags and "F" not in flags:
        raise WriteError(f"{where} is not a regular file")
    if "E" in flags and "R" not in flags:
        raise WriteError(f"cannot read {where}: permission denied")
    if "X" in flags and "P" not in flags:
        raise WriteError(f"the folder of {display} exists but is not a folder")
    rf = RemoteFile(
        path=path,
        display=display,
        target=target,
        exists="E" in flags,
        is_symlink=is_link,
        folder_exists="P" in flags,
    )
    if rf.exists:
        if len(stat) != 4:
            raise ShellError(f"unexpected answer from `stat` for {display}")
        rf = replace(
            rf, mode=int(stat[0], 8), uid=int(stat[1]), gid=int(stat[2]), size=int(stat[3])
        )
    return rf


def _read_bytes(session: Session, path: str, display: str, size: int) -> bytes:
    """Contents of a regular file, checked against the sandbox's own sha256."""
    if size > MAX_FILE:
        raise WriteError(f"{display} is {size} bytes; sbx does not handle files over {MAX_FILE}")
    _set_var(session, "sbx_r", path)
    for _ in range(3):
        out = _run(
            session,
            'command sha256sum < "$sbx_r" && command base64 < "$sbx_r"',
            f"reading {display}",
            timeout=_transfer_timeout(size),
            payload=True,
        )
        first, _, rest = out.partition("\n")
        try:
            data = base64.b64decode("".join(rest.split()), validate=True)
        except binascii.Error as exc:
            raise ShellError(f"{display} arrived garbled from the sandbox shell") from exc
        if hashlib.sha256(data).hexdigest() == first.split(" ")[0]:
            return data
        # The file changed between the two commands (or the bytes were mangled): again.
    raise WriteError(f"{display} kept changing while sbx read it")


def read_settings(session: Session) -> RemoteFile:
    """Locate settings.json and read its bytes (data None when it does not exist)."""
    rf = locate(session)
    if not rf.exists:
        return rf
    data = _read_bytes(session, rf.target, rf.display, rf.size or 0)
    return replace(rf, data=data, size=len(data))


def fingerprint(session: Session, remote_file: RemoteFile) -> str:
    """The target's sha256 as it is now, or "missing": a cheap way to notice a rewrite."""
    _set_var(session, "sbx_t", remote_file.target)
    out = _run(
        session,
        'command sha256sum 2>/dev/null < "$sbx_t" || echo missing',
        f"checking {remote_file.display}",
    )
    return _sha_of_output(out) or "missing"


def read_layers(
    session: Session, workspace: str | None, *, exclude: RemoteFile | None = None
) -> list[tuple[str, bytes]]:
    """Contents of the other settings layers that exist and are readable.

    Managed ones (`/etc/claude-code/managed-settings.json`, `managed-settings.d/*.json`),
    then the workspace's `.claude/settings.json` and `.claude/settings.local.json`. A file
    that is `exclude`'s target (the user's own settings.json, when the workspace is the home
    folder) is left out.
    """
    _set_var(session, "sbx_m", MANAGED_DIR)
    candidates = '"$sbx_m"/managed-settings.json "$sbx_m"/managed-settings.d/*.json'
    if workspace:
        _set_var(session, "sbx_w", workspace.rstrip("/") or "/")
        candidates += ' "$sbx_w"/.claude/settings.json "$sbx_w"/.claude/settings.local.json'
    out = _run(
        session,
        f'for f in {candidates}; do [ -f "$f" ] && [ -r "$f" ] && '
        "command stat -L -c '%s' -- \"$f\" && printf '%s\\n' \"$f\" && "
        'command readlink -f -- "$f"; done; :',
        "listing the other settings files",
    )
    lines = out.split("\n")
    found: list[tuple[str, int]] = []
    for size_line, name, real in zip(lines[0::3], lines[1::3], lines[2::3], strict=False):
        if not (size_line.isdigit() and name):
            continue
        if exclude is not None and real in (exclude.target, exclude.path):
            continue
        found.append((name, int(size_line)))
    layers: list[tuple[str, bytes]] = []
    for name, size in found:
        with contextlib.suppress(WriteError):  # vanished or unreadable: nothing to warn about
            layers.append((name, _read_bytes(session, name, name, size)))
    return layers


# -- locking ------------------------------------------------------------------------------


def _folder_display(rf: RemoteFile) -> str:
    """The folder holding the target, as the user knows it (`~/.claude`)."""
    return rf.folder if rf.is_symlink else posixpath.dirname(rf.display)


def _shell_user(session: Session) -> str:
    """The sandbox shell's user name (for hints), `agent` if it cannot be told."""
    with contextlib.suppress(ShellError, ValueError):
        result = session.run("command id -un 2>/dev/null")
        name = _last(result.output)
        if result.status == 0 and name and all(c.isalnum() or c in "._-" for c in name):
            return name
    return "agent"


def _owner(session: Session, path: str) -> str | None:
    """The user name owning `path` in the sandbox (for hints), or None."""
    with contextlib.suppress(ShellError, ValueError):
        _set_var(session, "sbx_o", path)
        result = session.run('command stat -c %U -- "$sbx_o" 2>/dev/null')
        if result.status == 0:
            return _last(result.output) or None
    return None


def _folder_error(
    session: Session, rf: RemoteFile, verb: str, detail: str, sandbox: str | None
) -> WriteError:
    """A WriteError for a folder the sandbox user may not change, with the fix."""
    reason = detail.rsplit(": ", 1)[-1].strip() or "failed"
    reason = reason[:1].lower() + reason[1:]
    hint = None
    if "permission denied" in reason.lower():
        user = _shell_user(session)
        name = sandbox or "SANDBOX"
        folder = _q(rf.folder)
        if verb == "write in" and _owner(session, rf.folder) == user:
            # Already the user's: only its mode is in the way (chown would change nothing).
            hint = (
                f"the folder belongs to {user} but is read-only: "
                f"`docker sandbox exec -it {name} chmod u+w {folder}`"
            )
        else:
            fix = (
                f"sudo chown -R {user} {folder}"
                if verb == "write in"
                else f"sudo install -d -o {user} {folder}"
            )
            hint = (
                f"give the folder to the sandbox user {user}: "
                f"`docker sandbox exec -it {name} {fix}` (it has passwordless sudo)"
            )
    return WriteError(
        f"cannot {verb} {_folder_display(rf)} (the folder of {rf.display}) in the sandbox: "
        f"{reason}",
        hint=hint,
    )


def _ensure_folder(session: Session, rf: RemoteFile, sandbox: str | None = None) -> None:
    if not rf.folder_exists:
        _set_var(session, "sbx_d", rf.folder)
        result = session.run('command mkdir -p -- "$sbx_d" 2>&1')
        if result.status != 0:
            raise _folder_error(session, rf, "create", _last(result.output), sandbox)


# Removes the lock only if this shell holds it; a broken session leaves it for stale recovery.
_RELEASE = (
    '[ "$(command cat -- "$sbx_l/pid" 2>/dev/null)" = "$$" ] && command rm -rf -- "$sbx_l"; :'
)


def _to_the_end(cleanup: Callable[[], None]) -> None:
    """Run `cleanup` to its end, even when an exception (a signal turned into one) cuts it.

    Cut short, it runs once more before that exception goes on. Shell failures in it are
    ignored: a broken session leaves the rest to stale-lock and leftover recovery.
    """

    def once() -> None:
        with contextlib.suppress(ShellError, WriteError, ValueError):
            cleanup()

    try:
        once()
    except BaseException:
        once()  # the session waits for the interrupted command first: nothing runs twice
        raise


def _release(session: Session, remote_file: RemoteFile) -> None:
    def release() -> None:
        _set_var(session, "sbx_l", remote_file.lock_path)
        session.run(_RELEASE)

    _to_the_end(release)


@contextlib.contextmanager
def lock(
    session: Session,
    remote_file: RemoteFile,
    timeout: float = 45.0,
    *,
    sandbox: str | None = None,
    stale_after: float = 30.0,
    poll: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[None]:
    """Hold `<target>.sbx-lock` (an atomic `mkdir`) so sbx processes patch one at a time.

    The lock records the pid of the sandbox shell holding it; a lock whose shell is gone
    (sbx was killed), or older than `stale_after` s (the shell of a killed sbx may live on
    inside the sandbox; writes refresh the lock's age), is removed. Creates the folder if
    it is missing. A folder the shell may not write in fails at once (WriteError; `sandbox`
    names the sandbox in its hint). Re-read the file after entering: it may have changed
    while we waited. Any exception, KeyboardInterrupt and the like included, releases it.
    """
    try:
        _acquire(session, remote_file, timeout, sandbox, stale_after, poll, sleep, clock)
        yield
    finally:
        # Also when acquiring failed or was interrupted: right after our mkdir, the lock
        # may be ours already. Releasing a lock that is not ours does nothing.
        _release(session, remote_file)


def _acquire(
    session: Session,
    remote_file: RemoteFile,
    timeout: float,
    sandbox: str | None,
    stale_after: float,
    poll: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> None:
    _ensure_folder(session, remote_file, sandbox)
    _set_var(session, "sbx_l", remote_file.lock_path)
    # A failed mkdir with no lock there is not contention (permission denied, read-only
    # file system): say so at once. The holder counts as alive while its process exists
    # and is not a zombie: kill -0 succeeds on zombies, and not every init reaps orphans
    # of a killed sbx quickly.
    acquire = (
        'if e=$(command mkdir -- "$sbx_l" 2>&1); then '
        'printf \'%s\\n\' "$$" >"$sbx_l/pid" && echo ACQUIRED; '
        'elif [ ! -e "$sbx_l" ] && [ ! -L "$sbx_l" ]; then printf \'FAILED %s\\n\' "$e"; else '
        'o=$(command cat -- "$sbx_l/pid" 2>/dev/null); n=$(command date +%s); '
        'm=$(command stat -c %Y -- "$sbx_l" 2>/dev/null || echo "$n"); a=$((n - m)); z=1; '
        'if [ -z "$o" ]; then z=0; elif [ -r "/proc/$o/status" ]; then s=; '
        'while read -r k v r; do [ "$k" = State: ] && s=$v; done <"/proc/$o/status"; '
        'case "$s" in ""|Z|X) ;; *) z=0 ;; esac; elif kill -0 "$o" 2>/dev/null; then z=0; fi; '
        'if [ "$z" = 1 ] || { [ -z "$o" ] && [ "$a" -gt 5 ]; } || '
        f'[ "$a" -gt {int(stale_after)} ]; then command rm -rf -- "$sbx_l"; echo "STALE $o $a"; '
        'else echo "HELD ${o:-?} $a"; fi; fi'
    )
    deadline = clock() + timeout
    stale_removed = 0
    while True:
        out = _run(session, acquire, f"locking {remote_file.display}")
        failed = [line for line in out.split("\n") if line.startswith("FAILED")]
        state = failed[0] if failed else _last(out)
        if state == "ACQUIRED":
            return
        if state.startswith("FAILED") and "file exists" not in state.lower():
            raise _folder_error(session, remote_file, "write in", state[6:], sandbox)
        if state.startswith("STALE") and stale_removed < 5:
            stale_removed += 1
            continue  # removed a dead holder's lock: try again at once
        if not state.startswith(("HELD", "FAILED")):  # FAILED here: it was just released
            raise ShellError(f"unexpected answer while locking {remote_file.display}: {state}")
        if clock() >= deadline:
            parts = state.split()
            holder = parts[1] if state.startswith("HELD") and len(parts) > 1 else "?"
            whose = (
                f"held by sandbox process {holder}"
                if holder != "?"
                else "held (by a process that has not written its id yet)"
            )
            raise WriteError(
                f"another sbx seems to be changing {remote_file.display}: "
                f"{remote_file.lock_path} is {whose}",
                hint=f"wait for it to finish, or remove {remote_file.lock_path} inside the "
                "sandbox if no sbx is running",
            )
        sleep(poll)


# -- writing ------------------------------------------------------------------------------


def _sha_of_output(out: str) -> str:
    return out.strip().split(" ")[0] if out.strip() else ""


def write_atomic(
    session: Session,
    remote_file: RemoteFile,
    data: bytes,
    *,
    backup: bool = False,
    chunk: int = 600,
    now: Callable[[], datetime] = datetime.now,
    sandbox: str | None = None,
) -> str | None:
    """Replace the target with `data` atomically; return the backup's path if one was made.

    Call it holding `lock` with `remote_file` read under that lock. Writes a temporary file
    in the target's folder, checks its sha256, keeps the original mode and owner (0644 and
    the shell user's for a new file), renames it over the target only if the target still
    has the bytes that were read (else WriteConflict), then reads the target back. Any
    exception on the way (KeyboardInterrupt and the like included) removes the temporary
    files. `sandbox`, the sandbox's name, is only used in hints.
    """
    rf = remote_file
    _ensure_folder(session, rf, sandbox)
    # Shell variables: sbx_t target, sbx_d its folder, sbx_n its name, sbx_x our temporary
    # files' suffix, sbx_l the lock. Temporary files are "$sbx_d/.$sbx_n.sbx-tmp-*", so
    # leftovers of killed runs are easy to find.
    _set_var(session, "sbx_t", rf.target)
    _set_var(session, "sbx_d", rf.folder)
    _set_var(session, "sbx_n", posixpath.basename(rf.target))
    _set_var(session, "sbx_l", rf.lock_path)
    _run(session, f"sbx_x={secrets.token_hex(4)}", "naming a temporary file")
    backup_path: str | None = None
    try:
        # Leftovers of killed runs, removed only while we hold the lock (their owner is gone).
        _run(
            session,
            '[ "$(command cat -- "$sbx_l/pid" 2>/dev/null)" = "$$" ] && '
            'command rm -f -- "$sbx_d/.$sbx_n.sbx-tmp-"*; :',
            "removing leftover temporary files",
        )
        if backup and rf.exists and rf.data is not None:
            backup_path = _make_backup(session, rf, now)
        _upload(session, rf, data, chunk)
        _finish_and_swap(session, rf)
    except BaseException:
        # Any exception: KeyboardInterrupt, or SIGTERM/SIGHUP turned into one, included.
        def remove() -> None:
            session.run(
                'command rm -f -- "$sbx_d/.$sbx_n.sbx-tmp-$sbx_x" "$sbx_d/.$sbx_n.sbx-tmp-$sbx_x".*'
            )

        _to_the_end(remove)
        raise
    # Read back what is now at the target and compare it with what we meant to write.
    written = _read_bytes(session, rf.target, rf.display, len(data))
    if written != data:
        raise WriteError(
            f"{rf.display} did not read back as written (something else changed it)",
            hint=f"the previous contents are in {backup_path}" if backup_path else None,
        )
    return backup_path


def _make_backup(session: Session, rf: RemoteFile, now: Callable[[], datetime]) -> str:
    """Copy the target to `<target>.sbx-backup-<stamp>[-k]`; return the backup's path.

    The copy goes to a temporary name first, then is renamed: an interrupted copy never
    leaves a partial backup behind.
    """
    stamp = now().strftime("%Y%m%d-%H%M%S")
    out = _run(
        session,
        f'bk="$sbx_t.sbx-backup-{stamp}"; k=1; while [ -e "$bk" ] || [ -L "$bk" ]; do '
        f'k=$((k + 1)); bk="$sbx_t.sbx-backup-{stamp}-$k"; done; '
        'sc="$sbx_d/.$sbx_n.sbx-tmp-$sbx_x.bak"; '
        'command cp -p -- "$sbx_t" "$sc" && command mv -f -- "$sc" "$bk" && '
        'printf \'%s\\n\' "$bk" && command sha256sum < "$bk"',
        f"backing up {rf.display}",
    )
    lines = [line for line in out.split("\n") if line]
    if len(lines) < 2 or _sha_of_output(lines[-1]) != rf.sha256:
        raise WriteError(f"the backup of {rf.display} does not match the original")
    return lines[-2]


def _upload(session: Session, rf: RemoteFile, data: bytes, chunk: int) -> None:
    """Send `data` base64-encoded in short lines into a temporary file ("$sbx_p"); check it."""
    _run(
        session,
        'sbx_b="$sbx_d/.$sbx_n.sbx-tmp-$sbx_x.b64"; (umask 077 && : >"$sbx_b")',
        f"creating a temporary file in {rf.folder}",
    )
    prefix = "printf %s '' >>\"$sbx_b\""
    room = (MAX_COMMAND - len(prefix)) // 4 * 3
    step = max(3, min(chunk, room) // 3 * 3)  # whole 3-byte groups: no '=' mid-stream
    for n, offset in enumerate(range(0, len(data), step), start=1):
        piece = base64.b64encode(data[offset : offset + step]).decode("ascii")
        _run(session, f"printf %s '{piece}' >>\"$sbx_b\"", f"sending {rf.display}", payload=True)
        if n % 32 == 0:
            # Keep the lock young on a slow link, so no one takes it for a stale one.
            session.run('command touch -c -- "$sbx_l" 2>/dev/null; :')
    out = _run(
        session,
        'sbx_p="$sbx_d/.$sbx_n.sbx-tmp-$sbx_x"; '
        '(umask 077 && command base64 -d < "$sbx_b" > "$sbx_p") && '
        'command rm -f -- "$sbx_b" && command sha256sum < "$sbx_p"',
        "decoding the new contents",
        timeout=_transfer_timeout(len(data)),
    )
    if _sha_of_output(out) != hashlib.sha256(data).hexdigest():
        raise WriteError(f"the new {rf.display} arrived damaged in the sandbox; nothing changed")


def _finish_and_swap(session: Session, rf: RemoteFile) -> None:
    """Give "$sbx_p" the target's mode and owner; rename it over "$sbx_t" if that is unchanged."""
    mode = NEW_FILE_MODE if rf.mode is None else rf.mode
    steps = f'command chmod {mode:o} -- "$sbx_p"'
    if rf.uid is not None and rf.gid is not None:
        owner = f"{rf.uid}:{rf.gid}"
        steps += (
            f' && {{ [ "$(command stat -c %u:%g -- "$sbx_p")" = "{owner}" ] || '
            f'command chown {owner} -- "$sbx_p"; }}'
        )
    result = session.run(steps)
    if result.status != 0:
        raise WriteError(
            f"cannot give the new {rf.display} the mode {mode:o} and owner "
            f"{rf.uid}:{rf.gid} of the old one: {_last(result.output)}; nothing was replaced",
            hint="the sandbox shell runs as a user that may not do this; "
            "run sbx's shell as the file's owner",
        )
    # Compare-and-swap: a writer that ignored the lock (Claude Code itself, say) is not
    # overwritten blindly. The window between the check and the rename is one command.
    if rf.data is not None:
        unchanged = f'[ "$(command sha256sum 2>/dev/null < "$sbx_t")" = "{rf.sha256}  -" ]'
    else:
        unchanged = '[ ! -e "$sbx_t" ] && [ ! -L "$sbx_t" ]'
    out = _run(
        session,
        f'if {unchanged}; then command mv -f -- "$sbx_p" "$sbx_t" && echo MOVED; '
        "else echo CHANGED; fi",
        f"replacing {rf.display}",
    )
    if _last(out) == "CHANGED":
        raise WriteConflict(f"{rf.display} changed while sbx was writing it; nothing was replaced")
    if _last(out) != "MOVED":
        raise WriteError(f"replacing {rf.display} failed: {_last(out)}")


def update(
    session: Session,
    transform: Callable[[RemoteFile], bytes | None],
    *,
    backup: bool = False,
    lock_timeout: float = 45.0,
    attempts: int = 3,
    sandbox: str | None = None,
) -> UpdateResult:
    """Read settings.json, and if `transform` returns new bytes, write them under the lock.

    `transform` gets the file as read (data None when missing) and returns the new bytes,
    or None to leave it alone. It is called again on the file re-read under the lock, and
    again after a WriteConflict (up to `attempts` times). `sandbox`, the sandbox's name, is
    only used in hints (`docker sandbox exec -it NAME …`).
    """
    first = read_settings(session)
    if transform(first) in (None, first.data):
        return UpdateResult(before=first, data=first.data, changed=False, backup=None)
    for _ in range(attempts):
        with lock(session, first, timeout=lock_timeout, sandbox=sandbox):
            current = read_settings(session)
            new = transform(current)
            if new is None or new == current.data:
                return UpdateResult(before=current, data=current.data, changed=False, backup=None)
            try:
                made = write_atomic(session, current, new, backup=backup, sandbox=sandbox)
            except WriteConflict:
                continue
            return UpdateResult(before=current, data=new, changed=True, backup=made)
    raise WriteError(f"{first.display} kept changing while sbx tried to write it")
