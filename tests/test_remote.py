"""Remote settings.json operations through the real pexpect path, in every shell set-up."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shells import helpers

from sandboxwrap import remote
from sandboxwrap.errors import WriteError
from sandboxwrap.shell import CommandResult, ShellSession, Transcript

HELPER = Path(helpers.__file__)


@pytest.fixture(scope="module", params=helpers.MATRIX_KINDS)
def shell(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ShellSession]:
    """One session per shell kind, shared by the file cases (each gets its own HOME)."""
    home = tmp_path_factory.mktemp(f"shell-{request.param}")
    session = helpers.start_session(request.param, home)
    yield session
    session.close()


@dataclass
class Box:
    """A session pointed at a fresh HOME, like one sandbox."""

    session: ShellSession
    home: Path

    @property
    def claude(self) -> Path:
        return self.home / ".claude"

    @property
    def settings(self) -> Path:
        return self.claude / "settings.json"

    def sh(self, command: str) -> str:
        result = self.session.run(command)
        assert result.status == 0, result.output
        return result.output


@pytest.fixture
def box(shell: ShellSession, tmp_path: Path) -> Box:
    home = tmp_path / "home"
    home.mkdir()
    b = Box(shell, home)
    b.sh(f"export HOME={shlex.quote(str(home))}; unset CLAUDE_CONFIG_DIR; cd /")
    return b


def _write(box: Box, data: bytes, *, backup: bool = False) -> remote.UpdateResult:
    return remote.update(box.session, lambda _f: data, backup=backup)


def _no_leftovers(folder: Path) -> None:
    extra = [p.name for p in folder.iterdir() if ".sbx-tmp-" in p.name or ".sbx-lock" in p.name]
    assert extra == []


# -- the file cases, in every shell ---------------------------------------------------------


def test_missing_folder_is_created_with_a_0644_file(box: Box) -> None:
    rf = remote.read_settings(box.session)
    assert rf.path == str(box.settings)
    assert rf.display == "~/.claude/settings.json"
    assert (rf.exists, rf.folder_exists, rf.data, rf.is_symlink) == (False, False, None, False)
    new = b'{"apiKeyHelper": "echo proxy-managed"}\n'
    result = _write(box, new)
    assert result.changed
    assert result.before.data is None
    assert box.settings.read_bytes() == new
    assert stat.S_IMODE(box.settings.stat().st_mode) == 0o644
    _no_leftovers(box.claude)


def test_missing_file_in_existing_folder(box: Box) -> None:
    box.claude.mkdir()
    rf = remote.read_settings(box.session)
    assert (rf.exists, rf.folder_exists) == (False, True)
    _write(box, b"{}\n")
    assert box.settings.read_bytes() == b"{}\n"
    assert stat.S_IMODE(box.settings.stat().st_mode) == 0o644


def test_nothing_to_do_leaves_a_missing_folder_alone(box: Box) -> None:
    result = remote.update(box.session, lambda _f: None)
    assert not result.changed
    assert not box.claude.exists()


def test_empty_file(box: Box) -> None:
    box.claude.mkdir()
    box.settings.write_bytes(b"")
    rf = remote.read_settings(box.session)
    assert rf.exists
    assert rf.data == b""
    assert rf.size == 0
    _write(box, b'{"a": 1}')
    assert box.settings.read_bytes() == b'{"a": 1}'


def test_unicode_and_odd_bytes_round_trip(box: Box) -> None:
    box.claude.mkdir()
    odd = (
        '{"name": "ünïcødé ✓ 日本語 🐳", "q": "\'\\"`$(rm -rf /)`"}\r\n'.encode()
        + bytes(range(256))
        + b"\x00\x1b[31m\x03\x04\x1a\nSBXRC0000:0\n"
    )
    box.settings.write_bytes(odd)
    rf = remote.read_settings(box.session)
    assert rf.data == odd
    _write(box, odd[::-1])
    assert box.settings.read_bytes() == odd[::-1]
    assert remote.read_settings(box.session).data == odd[::-1]


def test_forged_markers_in_file_contents(box: Box) -> None:
    token = box.session._token
    forged = (f"SBXRC{token}:0\nSBXP{token}> \nSBXB{token}\nSBXOK{token}\nSBXC{token}> \n").encode()
    box.claude.mkdir()
    box.settings.write_bytes(forged)
    assert remote.read_settings(box.session).data == forged
    _write(box, forged * 2)
    assert box.settings.read_bytes() == forged * 2


def test_100_kb_file_travels_in_chunks(box: Box) -> None:
    box.claude.mkdir()
    big = helpers.content("big", 1, 100_000)
    assert len(big) > 100_000
    t0 = time.monotonic()
    _write(box, big)
    elapsed = time.monotonic() - t0
    assert box.settings.read_bytes() == big
    assert remote.read_settings(box.session).data == big
    assert elapsed < helpers.scaled(15)


def test_symlink_stays_and_its_target_is_written(box: Box) -> None:
    dotfiles = box.home / "dotfiles"
    dotfiles.mkdir()
    real = dotfiles / "claude settings.json"
    real.write_bytes(b'{"old": true}\n')
    real.chmod(0o640)
    box.claude.mkdir()
    box.settings.symlink_to("../dotfiles/claude settings.json")
    rf = remote.read_settings(box.session)
    assert rf.is_symlink
    assert rf.target == str(real)
    assert rf.data == b'{"old": true}\n'
    result = _write(box, b'{"new": true}\n', backup=True)
    assert box.settings.is_symlink()
    assert os.readlink(box.settings) == "../dotfiles/claude settings.json"
    assert real.read_bytes() == b'{"new": true}\n'
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert result.backup is not None
    assert Path(result.backup).parent == dotfiles
    assert Path(result.backup).read_bytes() == b'{"old": true}\n'
    _no_leftovers(dotfiles)


def test_mode_and_owner_are_kept(box: Box) -> None:
    box.claude.mkdir()
    box.settings.write_bytes(b"{}")
    box.settings.chmod(0o600)
    if os.geteuid() == 0:
        os.chown(box.settings, 1234, 2345)
    rf = remote.read_settings(box.session)
    assert rf.mode == 0o600
    _write(box, b'{"x": 1}')
    st = box.settings.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (1234, 2345)


def test_claude_config_dir_with_spaces_quotes_and_unicode(box: Box) -> None:
    odd_dir = box.home / "cfg dir 'single' \"double\" $HOME `x` ü"
    odd_dir.mkdir()
    (odd_dir / "settings.json").write_bytes(b'{"in": "config dir"}')
    box.sh(f"export CLAUDE_CONFIG_DIR={shlex.quote(str(odd_dir))}/")
    rf = remote.read_settings(box.session)
    assert rf.display == "$CLAUDE_CONFIG_DIR/settings.json"
    assert rf.path == str(odd_dir / "settings.json")
    assert rf.data == b'{"in": "config dir"}'
    result = _write(box, b'{"written": 1}', backup=True)
    assert (odd_dir / "settings.json").read_bytes() == b'{"written": 1}'
    assert not box.claude.exists(), "~/.claude is not used when CLAUDE_CONFIG_DIR is set"
    assert result.backup is not None
    assert Path(result.backup).read_bytes() == b'{"in": "config dir"}'
    _no_leftovers(odd_dir)


def test_very_long_paths_still_fit_in_short_lines(sh_box: Box) -> None:
    deep = sh_box.home
    for i in range(8):
        deep = deep / (f'{i} it\'s "quoted" ' + "ü" * 60 + "-" * 100)
    deep.mkdir(parents=True)
    assert len(str(deep).encode()) > 1500
    target = deep / "real settings.json"
    target.write_bytes(b'{"deep": 1}')
    sh_box.claude.mkdir()
    sh_box.settings.symlink_to(target)
    result = _write(sh_box, b'{"deep": 2}', backup=True)
    assert target.read_bytes() == b'{"deep": 2}'
    assert result.backup is not None
    assert Path(result.backup).read_bytes() == b'{"deep": 1}'
    remote._set_var(sh_box.session, "CLAUDE_CONFIG_DIR", str(deep))  # too long for one line
    sh_box.sh("export CLAUDE_CONFIG_DIR")
    rf = remote.read_settings(sh_box.session)
    assert rf.path == str(deep / "settings.json")
    assert not rf.exists
    _write(sh_box, b"{}")
    assert (deep / "settings.json").read_bytes() == b"{}"
    _no_leftovers(deep)


def test_writing_empty_contents(sh_box: Box) -> None:
    sh_box.claude.mkdir()
    sh_box.settings.write_bytes(b'{"a": 1}')
    _write(sh_box, b"")
    assert sh_box.settings.read_bytes() == b""


def test_empty_claude_config_dir_means_home(box: Box) -> None:
    box.sh("export CLAUDE_CONFIG_DIR=")
    assert remote.locate(box.session).path == str(box.settings)


def test_backup_keeps_the_old_bytes_and_mode(box: Box) -> None:
    box.claude.mkdir()
    box.settings.write_bytes(b'{"v": 1}')
    box.settings.chmod(0o600)
    first = _write(box, b'{"v": 2}', backup=True)
    second = _write(box, b'{"v": 3}', backup=True)
    assert first.backup is not None
    assert second.backup is not None
    assert first.backup != second.backup
    assert Path(first.backup).read_bytes() == b'{"v": 1}'
    assert Path(second.backup).read_bytes() == b'{"v": 2}'
    assert stat.S_IMODE(Path(first.backup).stat().st_mode) == 0o600
    assert Path(first.backup).name.startswith("settings.json.sbx-backup-")
    assert box.settings.read_bytes() == b'{"v": 3}'


# -- refusals -----------------------------------------------------------------------------


def test_settings_json_that_is_a_folder(box: Box) -> None:
    box.settings.mkdir(parents=True)
    with pytest.raises(WriteError, match="is a folder"):
        remote.read_settings(box.session)


def test_dangling_symlink(box: Box) -> None:
    box.claude.mkdir()
    box.settings.symlink_to(box.home / "nowhere.json")
    with pytest.raises(WriteError, match="does not exist") as info:
        remote.read_settings(box.session)
    assert "->" in info.value.message


def test_claude_folder_that_is_a_file(box: Box) -> None:
    box.claude.write_text("oops")
    with pytest.raises(WriteError, match="not a folder"):
        remote.read_settings(box.session)


def test_fifo_is_not_read(box: Box) -> None:
    box.claude.mkdir()
    os.mkfifo(box.settings)
    with pytest.raises(WriteError, match="not a regular file"):
        remote.read_settings(box.session)


# -- single-shell cases -------------------------------------------------------------------


@pytest.fixture
def sh_box(tmp_path: Path) -> Iterator[Box]:
    home = tmp_path / "home"
    session = helpers.start_session("sh-plain", home)
    yield Box(session, home)
    session.close()


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A folder an unprivileged user can reach (pytest's own tmp folders are root-only)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    helpers.require("setpriv", " (needed to switch to an unprivileged user)")
    path = Path(tempfile.mkdtemp(prefix="sbx-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-i"]


def test_unreadable_file_as_another_user(world_tmp: Path) -> None:
    home = world_tmp / "home"
    (home / ".claude").mkdir(parents=True)
    (home / ".claude" / "settings.json").write_text("{}")
    (home / ".claude" / "settings.json").chmod(0o600)
    with ShellSession(AS_NOBODY, env=helpers.base_env(home)) as s:
        s.start(ready_timeout=helpers.scaled(10))
        with pytest.raises(WriteError, match="permission denied"):
            remote.read_settings(s)


def test_other_user_cannot_keep_owner(world_tmp: Path) -> None:
    home = world_tmp / "home"
    claude = home / ".claude"
    claude.mkdir(parents=True)
    (claude / "settings.json").write_text("{}")
    (claude / "settings.json").chmod(0o644)
    os.chown(claude, 65534, 65534)
    with ShellSession(AS_NOBODY, env=helpers.base_env(home)) as s:
        s.start(ready_timeout=helpers.scaled(10))
        with pytest.raises(WriteError, match="owner"):
            remote.update(s, lambda _f: b'{"x": 1}')
    assert (claude / "settings.json").read_text() == "{}"
    _no_leftovers(claude)


def test_conflict_when_the_file_changes_behind_our_back(sh_box: Box) -> None:
    sh_box.claude.mkdir()
    sh_box.settings.write_bytes(b'{"v": 1}')
    with remote.lock(sh_box.session, remote.locate(sh_box.session)):
        rf = remote.read_settings(sh_box.session)
        sh_box.settings.write_bytes(b'{"claude": "rewrote it"}')
        with pytest.raises(remote.WriteConflict):
            remote.write_atomic(sh_box.session, rf, b'{"v": 2}')
    assert sh_box.settings.read_bytes() == b'{"claude": "rewrote it"}'
    _no_leftovers(sh_box.claude)


def test_conflict_when_a_missing_file_appears(sh_box: Box) -> None:
    sh_box.claude.mkdir()
    rf = remote.read_settings(sh_box.session)
    sh_box.settings.write_bytes(b"{}")
    with pytest.raises(remote.WriteConflict):
        remote.write_atomic(sh_box.session, rf, b'{"v": 2}')
    assert sh_box.settings.read_bytes() == b"{}"


def test_update_retries_after_a_conflict(sh_box: Box) -> None:
    sh_box.claude.mkdir()
    sh_box.settings.write_bytes(b'{"v": 1}')
    seen: list[bytes | None] = []

    def transform(f: remote.RemoteFile) -> bytes:
        seen.append(f.data)
        if len(seen) == 2:  # under the lock, before the write: someone else writes
            sh_box.settings.write_bytes(b'{"v": "other"}')
        return (f.data or b"") + b" "

    result = remote.update(sh_box.session, transform)
    assert result.changed
    assert sh_box.settings.read_bytes() == b'{"v": "other"} '
    assert seen == [b'{"v": 1}', b'{"v": 1}', b'{"v": "other"}']


def test_leftover_temporary_files_are_removed(sh_box: Box) -> None:
    sh_box.claude.mkdir()
    (sh_box.claude / ".settings.json.sbx-tmp-deadbeef").write_text("partial")
    (sh_box.claude / ".settings.json.sbx-tmp-deadbeef.b64").write_text("cGFy")
    (sh_box.claude / "unrelated.txt").write_text("keep")
    _write(sh_box, b"{}")
    _no_leftovers(sh_box.claude)
    assert (sh_box.claude / "unrelated.txt").read_text() == "keep"


def test_lock_excludes_a_second_session_until_released(sh_box: Box, tmp_path: Path) -> None:
    sh_box.claude.mkdir()
    rf = remote.locate(sh_box.session)
    other = helpers.start_session("sh-plain", sh_box.home)
    try:
        with remote.lock(sh_box.session, rf):
            assert (sh_box.claude / "settings.json.sbx-lock").is_dir()
            t0 = time.monotonic()
            with (
                pytest.raises(WriteError, match="another sbx") as info,
                remote.lock(other, rf, timeout=0.5),
            ):
                pass
            assert time.monotonic() - t0 >= 0.5
            assert info.value.hint is not None
            assert "sbx-lock" in info.value.hint
        with remote.lock(other, rf, timeout=2):
            pass
    finally:
        other.close()
    _no_leftovers(sh_box.claude)


def test_stale_locks_are_recovered(sh_box: Box) -> None:
    sh_box.claude.mkdir()
    rf = remote.locate(sh_box.session)
    lock_dir = sh_box.claude / "settings.json.sbx-lock"
    # The holder's process is gone (sbx was killed).
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock_dir.mkdir()
    (lock_dir / "pid").write_text(f"{dead.pid}\n")
    with remote.lock(sh_box.session, rf, timeout=1):
        assert (lock_dir / "pid").read_text().strip() != str(dead.pid)
    # No pid was written and the lock is old.
    lock_dir.mkdir()
    old = time.time() - 30
    os.utime(lock_dir, (old, old))
    with remote.lock(sh_box.session, rf, timeout=1):
        pass
    # A live holder, but far too old.
    lock_dir.mkdir()
    (lock_dir / "pid").write_text("1\n")
    old = time.time() - 120
    os.utime(lock_dir, (old, old))
    with remote.lock(sh_box.session, rf, timeout=1):
        pass
    assert not lock_dir.exists()


def test_read_layers_names_the_other_settings_files(
    sh_box: Box, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    managed = tmp_path / "etc claude-code"
    (managed / "managed-settings.d").mkdir(parents=True)
    (managed / "managed-settings.json").write_text('{"apiKeyHelper": "managed"}')
    (managed / "managed-settings.d" / "20-b.json").write_text('{"b": 1}')
    (managed / "managed-settings.d" / "10-a.json").write_text('{"a": 1}')
    (managed / "managed-settings.d" / "ignored.txt").write_text("x")
    monkeypatch.setattr(remote, "MANAGED_DIR", str(managed))
    ws = tmp_path / "work space"
    (ws / ".claude").mkdir(parents=True)
    (ws / ".claude" / "settings.local.json").write_text('{"apiKeyHelper": "local"}')
    layers = remote.read_layers(sh_box.session, str(ws))
    assert layers == [
        (str(managed / "managed-settings.json"), b'{"apiKeyHelper": "managed"}'),
        (str(managed / "managed-settings.d" / "10-a.json"), b'{"a": 1}'),
        (str(managed / "managed-settings.d" / "20-b.json"), b'{"b": 1}'),
        (str(ws / ".claude" / "settings.local.json"), b'{"apiKeyHelper": "local"}'),
    ]
    # Workspace = HOME: the user's own settings.json is not another layer.
    sh_box.claude.mkdir()
    sh_box.settings.write_text("{}")
    own = remote.locate(sh_box.session)
    assert remote.read_layers(sh_box.session, str(sh_box.home), exclude=own) == [
        (str(managed / "managed-settings.json"), b'{"apiKeyHelper": "managed"}'),
        (str(managed / "managed-settings.d" / "10-a.json"), b'{"a": 1}'),
        (str(managed / "managed-settings.d" / "20-b.json"), b'{"b": 1}'),
    ]
    monkeypatch.setattr(remote, "MANAGED_DIR", "/nonexistent-sbx-test")
    assert remote.read_layers(sh_box.session, None) == []


def test_transcript_of_a_write_holds_no_file_data(tmp_path: Path) -> None:
    home = tmp_path / "home"
    logs = tmp_path / "logs"
    transcript = Transcript(logs, "claude-x")
    secret = "FILE-SENTINEL-" + "q" * 30
    with helpers.start_session("bash-heavy", home, transcript=transcript) as s:
        (home / ".claude").mkdir()
        (home / ".claude" / "settings.json").write_text(json.dumps({"env": {"K": secret}}))
        remote.update(s, lambda f: (f.data or b"") + b"\n" + secret.encode() * 50)
    assert transcript.path is not None
    log = transcript.path.read_text()
    assert secret not in log
    assert "bytes of file data>" in log


def test_backup_names_do_not_collide(sh_box: Box) -> None:
    sh_box.claude.mkdir()
    sh_box.settings.write_bytes(b"1")
    rf = remote.read_settings(sh_box.session)
    fixed = datetime(2025, 1, 2, 3, 4, 5)
    with remote.lock(sh_box.session, rf):
        a = remote.write_atomic(sh_box.session, rf, b"2", backup=True, now=lambda: fixed)
        rf = remote.read_settings(sh_box.session)
        b = remote.write_atomic(sh_box.session, rf, b"3", backup=True, now=lambda: fixed)
    assert a == str(sh_box.claude / "settings.json.sbx-backup-20250102-030405")
    assert b == a + "-2"
    assert Path(a).read_bytes() == b"1"
    assert Path(b).read_bytes() == b"2"


# -- kill and race ------------------------------------------------------------------------


def _spawn_writer(
    home: Path, tag: str, rounds: int, size: int, go: Path | None = None
) -> subprocess.Popen[str]:
    extra = [str(go)] if go is not None else []
    return subprocess.Popen(
        [sys.executable, str(HELPER), "write", str(home), tag, str(rounds), str(size), *extra],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_gone(pid: int, limit: float = 5.0) -> None:
    """Wait until `pid` has exited (a zombie counts: nobody may reap it here)."""
    end = time.monotonic() + helpers.scaled(limit)
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.01)


def _valid(data: bytes) -> None:
    json.loads(data)


def test_killing_the_writer_at_random_moments_leaves_old_or_new(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = home / ".claude" / "settings.json"
    home.mkdir()
    size = 60_000
    # One undisturbed run measures how long the write itself takes.
    writer = _spawn_writer(home, "measure", 3, size)
    out, _ = writer.communicate(timeout=helpers.scaled(60))
    assert writer.returncode == 0, out
    times = sorted(float(x.split()[2]) for x in out.splitlines() if x.startswith("WROTE"))
    write_time = times[1]
    old = settings.read_bytes()
    seed = int(os.environ.get("SBX_TEST_SEED") or time.time_ns())
    print(f"kill test seed: {seed} (set SBX_TEST_SEED to replay)")
    rng = random.Random(seed)  # noqa: S311 - picks kill moments, not secrets
    outcomes = {"old": 0, "new": 0}
    leftovers = 0
    for i in range(20):
        new = helpers.content(f"kill{i}", 0, size)
        writer = _spawn_writer(home, f"kill{i}", 1, size)
        assert writer.stdout is not None
        ready = writer.stdout.readline()
        assert ready.startswith("READY"), ready
        shell_pid = int(ready.split()[1])
        # Half the kills anywhere in the write, half near its end, where the rename is.
        low = 0.0 if i % 2 else 0.7
        time.sleep(rng.uniform(low, 1.5) * write_time)
        writer.kill()
        writer.wait()
        writer.stdout.close()
        current = settings.read_bytes()
        assert current in (old, new), f"round {i}: a mix of old and new"
        _valid(current)
        _wait_gone(shell_pid)
        # Whatever the orphaned shell finished in the meantime is also old or new.
        current = settings.read_bytes()
        assert current in (old, new)
        outcomes["old" if current == old else "new"] += 1
        leftovers += any(".sbx-" in p.name for p in settings.parent.iterdir())
        old = current
    # A clean run afterwards recovers the lock and removes every leftover.
    final = _spawn_writer(home, "final", 1, 100)
    out, _ = final.communicate(timeout=helpers.scaled(60))
    assert final.returncode == 0, out
    assert settings.read_bytes() == helpers.content("final", 0, 100)
    _no_leftovers(settings.parent)
    print(f"kill test: write {write_time:.3f} s, {outcomes}, {leftovers} rounds left debris")
    assert outcomes["old"] + outcomes["new"] == 20


def test_two_writers_at_once_end_with_one_valid_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    rounds, size = 4, 40_000
    go = tmp_path / "go"
    a = _spawn_writer(home, "A", rounds, size, go)
    b = _spawn_writer(home, "B", rounds, size, go)
    for proc in (a, b):
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("READY")
    go.touch()  # both sessions are up: start writing at the same moment
    out_a, _ = a.communicate(timeout=helpers.scaled(120))
    out_b, _ = b.communicate(timeout=helpers.scaled(120))
    assert a.returncode == 0, out_a
    assert b.returncode == 0, out_b
    assert out_a.count("WROTE") == rounds
    assert out_b.count("WROTE") == rounds
    settings = home / ".claude" / "settings.json"
    final = settings.read_bytes()
    assert final in (
        helpers.content("A", rounds - 1, size),
        helpers.content("B", rounds - 1, size),
    )
    _valid(final)
    _no_leftovers(settings.parent)
    waits = [int(line.split()[1]) for line in (out_a + out_b).splitlines() if "WAITED" in line]
    assert sum(waits) > 0, "the writers never met at the lock"


def test_writer_process_is_killed_cleanly_by_signal(tmp_path: Path) -> None:
    """SIGTERM (not only SIGKILL) also leaves a whole file."""
    home = tmp_path / "home"
    home.mkdir()
    writer = _spawn_writer(home, "term", 3, 50_000)
    assert writer.stdout is not None
    assert writer.stdout.readline().startswith("READY")
    time.sleep(0.05)
    os.killpg(writer.pid, signal.SIGTERM)
    writer.wait()
    writer.stdout.close()
    settings = home / ".claude" / "settings.json"
    if settings.exists():
        _valid(settings.read_bytes())


def test_fingerprint_notices_a_rewrite(sh_box: Box) -> None:
    sh_box.claude.mkdir()
    rf = remote.locate(sh_box.session)
    assert remote.fingerprint(sh_box.session, rf) == "missing"
    sh_box.settings.write_bytes(b"{}")
    first = remote.fingerprint(sh_box.session, rf)
    assert first == hashlib.sha256(b"{}").hexdigest()
    sh_box.settings.write_bytes(b'{"apiKeyHelper": "echo proxy-managed"}')
    assert remote.fingerprint(sh_box.session, rf) != first


# -- a folder the sandbox user may not write in ---------------------------------------------


@pytest.mark.parametrize("how", ["owned-by-root", "mode-555"])
def test_unwritable_claude_folder_fails_at_once(world_tmp: Path, how: str) -> None:
    """Run as nobody: root ignores mode bits, so this is the real permission check."""
    home = world_tmp / "home"
    claude = home / ".claude"
    claude.mkdir(parents=True)
    (claude / "settings.json").write_text('{"apiKeyHelper": "echo proxy-managed"}')
    (claude / "settings.json").chmod(0o644)
    if how == "mode-555":
        os.chown(claude, 65534, 65534)
        claude.chmod(0o555)
    with ShellSession(AS_NOBODY, env=helpers.base_env(home)) as s:
        s.start(ready_timeout=helpers.scaled(10))
        t0 = time.monotonic()
        with pytest.raises(WriteError) as info:
            remote.update(s, lambda _f: b"{}", lock_timeout=3, sandbox="claude-proj")
        assert time.monotonic() - t0 < 2, "not mistaken for a lock held by another sbx"
        assert s.run("echo usable").output == "usable\n"
    assert info.value.message == (
        "cannot write in ~/.claude (the folder of ~/.claude/settings.json) in the sandbox: "
        "permission denied"
    )
    assert info.value.hint is not None
    if how == "owned-by-root":
        assert f"`docker sandbox exec -it claude-proj sudo chown -R nobody {claude}`" in (
            info.value.hint
        )
        assert "passwordless sudo" in info.value.hint
    else:  # already the user's folder: only the mode needs fixing
        assert f"`docker sandbox exec -it claude-proj chmod u+w {claude}`" in info.value.hint
        assert "chown" not in info.value.hint
    assert (claude / "settings.json").read_text() == '{"apiKeyHelper": "echo proxy-managed"}'
    _no_leftovers(claude)


def test_missing_claude_folder_in_an_unwritable_home(world_tmp: Path) -> None:
    home = world_tmp / "home"
    home.mkdir()
    with ShellSession(AS_NOBODY, env=helpers.base_env(home)) as s:
        s.start(ready_timeout=helpers.scaled(10))
        with pytest.raises(WriteError) as info:
            remote.update(s, lambda _f: b"{}", lock_timeout=3)
    assert info.value.message == (
        "cannot create ~/.claude (the folder of ~/.claude/settings.json) in the sandbox: "
        "permission denied"
    )
    assert info.value.hint is not None
    assert f"sudo install -d -o nobody {home / '.claude'}`" in info.value.hint
    assert not (home / ".claude").exists()


def test_a_lock_without_a_pid_does_not_name_process_0(sh_box: Box) -> None:
    sh_box.claude.mkdir()
    (sh_box.claude / "settings.json.sbx-lock").mkdir()  # its owner has not written a pid yet
    rf = remote.locate(sh_box.session)
    with (
        pytest.raises(WriteError, match="another sbx") as info,
        remote.lock(sh_box.session, rf, timeout=0.3),
    ):
        pass
    assert "process 0" not in info.value.message
    assert "has not written its id" in info.value.message


# -- interrupted writes (Ctrl-C, or SIGTERM/SIGHUP raised as an exception) ------------------


class Interrupted(BaseException):
    """Not an Exception: stands for KeyboardInterrupt or SIGTERM turned into one."""


class _Interrupting:
    """Delegates to a session; interrupts the `nth` command that `match` selects.

    `mid_wait`: the command is typed and the exception comes while its answer is awaited
    (where a signal almost always lands); otherwise it comes before the command is sent.
    """

    def __init__(
        self,
        session: ShellSession,
        match: Callable[[str, bool], bool],
        *,
        nth: int = 1,
        mid_wait: bool = True,
    ) -> None:
        self.session = session
        self.match = match
        self.left = nth
        self.mid_wait = mid_wait
        self.fired = False

    def run(
        self, command: str, *, timeout: float | None = None, payload: bool = False
    ) -> CommandResult:
        if not self.fired and self.match(command, payload):
            self.left -= 1
            if self.left == 0:
                self.fired = True
                if not self.mid_wait:
                    raise Interrupted
                child = self.session._child

                def interrupt(*_a: object, **_k: object) -> int:
                    raise Interrupted

                child.expect_list = interrupt
                try:
                    return self.session.run(command, timeout=timeout, payload=payload)
                finally:
                    del child.expect_list
        return self.session.run(command, timeout=timeout, payload=payload)


STEPS: dict[str, Callable[[str, bool], bool]] = {
    "locking": lambda c, _p: "ACQUIRED" in c,
    "backup": lambda c, _p: "sbx-backup-" in c,
    "upload": lambda _c, p: p,  # one chunk of file data, well into the upload
    "decoding": lambda c, _p: "base64 -d" in c,
    "renaming": lambda c, _p: "MOVED" in c,
}


@pytest.mark.parametrize("mid_wait", [True, False], ids=["while-waiting", "before-sending"])
@pytest.mark.parametrize("step", list(STEPS))
def test_an_interrupt_at_any_step_leaves_nothing_behind(
    sh_box: Box, step: str, mid_wait: bool
) -> None:
    sh_box.claude.mkdir()
    old = helpers.content("old", 0, 100)
    new = helpers.content("new", 0, 100_000)
    sh_box.settings.write_bytes(old)
    nth = 7 if step == "upload" else 1
    wrapped = _Interrupting(sh_box.session, STEPS[step], nth=nth, mid_wait=mid_wait)
    with pytest.raises(Interrupted):
        remote.update(wrapped, lambda _f: new, backup=True)
    assert wrapped.fired
    # Checked at once: the cleanup has finished by the time the exception arrives.
    _no_leftovers(sh_box.claude)
    current = sh_box.settings.read_bytes()
    assert current == (new if step == "renaming" and mid_wait else old)
    # And the session is still in step: each answer belongs to its own command.
    assert sh_box.session.run("echo in-step").output == "in-step\n"
    assert sh_box.session.run("echo again").output == "again\n"


def test_a_real_signal_at_random_moments_leaves_nothing_behind(sh_box: Box) -> None:
    """SIGALRM raising an exception lands wherever it lands, as SIGTERM would: in a wait,
    between two commands, or in the cleanup of the lock itself."""
    sh_box.claude.mkdir()
    old = helpers.content("old", 0, 100)
    sh_box.settings.write_bytes(old)
    seed = int(os.environ.get("SBX_TEST_SEED") or time.time_ns())
    print(f"signal test seed: {seed} (set SBX_TEST_SEED to replay)")
    rng = random.Random(seed)  # noqa: S311 - picks signal moments, not secrets

    def on_alarm(_signum: int, _frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, on_alarm)
    interrupted = 0
    try:
        for i in range(30):
            new = helpers.content(f"new{i}", i, rng.choice((2_000, 50_000, 200_000)))
            signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.001, 0.3))
            try:
                remote.update(sh_box.session, lambda _f, data=new: data, backup=i % 3 == 0)
            except Interrupted:
                interrupted += 1
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            _no_leftovers(sh_box.claude)
            current = sh_box.settings.read_bytes()
            assert current in (old, new), f"round {i}"
            old = current
            assert sh_box.session.run("echo in-step").output == "in-step\n"
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert interrupted >= 3, "the writes were too quick to interrupt"
