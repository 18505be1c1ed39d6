"""The pexpect driver against real bash, dash and zsh set-ups, and the boot-retry loop."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shells import helpers

from sandboxwrap.errors import ShellError
from sandboxwrap.shell import (
    MAX_COMMAND,
    MAX_LINE,
    ExecFailed,
    ShellSession,
    Transcript,
    open_session,
    strip_ansi,
)


@pytest.fixture(params=helpers.MATRIX_KINDS + helpers.STARTUP_KINDS)
def any_session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ShellSession]:
    session = helpers.start_session(request.param, tmp_path / "home")
    yield session
    session.close()


def test_every_shell_kind_starts_and_runs_commands(any_session: ShellSession) -> None:
    result = any_session.run("echo hello; echo to-stderr >&2; false")
    assert result.status == 1
    assert result.output == "hello\nto-stderr\n"
    # Aliases and functions from the user's rc are gone: these are the real tools.
    assert any_session.run("printf 'a\\nb\\n' | cat").output == "a\nb\n"
    assert any_session.run("echo x | sha256sum").output.startswith(
        "73cb3858a687a8494ca3323053016282"
    )
    # noclobber, set -u and vi mode from the rc do not reach the clean shell.
    home = any_session.run('printf %s "$HOME"').output
    assert any_session.run(
        f"echo one > '{home}/f'; echo two > '{home}/f'; cat '{home}/f'"
    ).output == ("two\n")
    assert any_session.run("echo ${UNSET_VARIABLE_X}end").output == "end\n"


def test_exit_statuses_and_output_without_newline(tmp_path: Path) -> None:
    with helpers.start_session("dash-env", tmp_path / "home") as s:
        assert s.run("exit_is_not_here() { return 7; }; exit_is_not_here").status == 7
        assert s.run("printf abc") == s.run("printf abc")
        assert s.run("printf abc").output == "abc"
        assert s.run("true").output == ""
        assert s.run("printf 'x\\r\\ny\\n'").output == "x\ny\n"
        assert s.run("sh -c 'exit 255'").status == 255


def test_start_up_timings_are_short(tmp_path: Path) -> None:
    for kind in ("bash-heavy", "dash-env", "zsh-theme"):
        t0 = time.monotonic()
        with helpers.start_session(kind, tmp_path / kind):
            elapsed = time.monotonic() - t0
        assert elapsed < helpers.scaled(5), f"{kind} took {elapsed:.2f} s"


def test_slow_rc_and_swallowed_typeahead_need_resends(tmp_path: Path) -> None:
    transcript = Transcript(tmp_path / "logs", "eats")
    argv, env = helpers.make_shell("bash-eats-typeahead", tmp_path / "home")
    with ShellSession(argv, env=env, transcript=transcript) as s:
        s.start(ready_timeout=helpers.scaled(15))
        assert s.run("echo fine").output == "fine\n"
    assert transcript.path is not None
    log = transcript.path.read_text()
    assert log.count("exec env ENV=") >= 2, "the first trampoline was eaten and resent"
    assert "typeahead eaten" in log


def test_forged_markers_in_output_cannot_confuse_the_protocol(tmp_path: Path) -> None:
    with helpers.start_session("bash-heavy", tmp_path / "home") as s:
        token = s._token
        forged = (
            "printf 'SBXRC%s:0\\nSBXP%s> \\nSBXOK%s\\nSBXC%s> \\nSBXB%s\\n' "
            "0123456789abcdef 0123456789abcdef x y z"
        )
        out = s.run(forged + "; echo tail").output
        assert out.endswith("SBXBz\ntail\n")
        # `env` and `set` print the session's variables; the prompt is not exported.
        env_out = s.run("env").output
        assert f"SBXP{token}> " not in env_out
        assert s.run("echo still-in-sync").output == "still-in-sync\n"


def test_incomplete_command_raises_and_session_stays_usable(tmp_path: Path) -> None:
    with helpers.start_session("dash-env", tmp_path / "home") as s:
        with pytest.raises(ShellError, match="incomplete command"):
            s.run("echo 'unterminated")
        assert s.alive
        assert s.run("echo after").output == "after\n"


def test_incomplete_command_after_a_zsh_start(tmp_path: Path) -> None:
    with helpers.start_session("zsh-theme", tmp_path / "home") as s:
        with pytest.raises(ShellError, match="incomplete"):
            s.run('echo "open')
        assert s.run("echo ok").output == "ok\n"


def test_timeout_stops_the_session(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    argv, env = helpers.make_shell("sh-plain", tmp_path / "home")
    with ShellSession(argv, env=env, transcript=Transcript(logs, "t")) as s:
        s.start(ready_timeout=helpers.scaled(10))
        with pytest.raises(ShellError, match="no answer") as info:
            s.run("sleep 5", timeout=0.3)
        assert info.value.hint is not None
        assert str(logs) in info.value.hint
        assert not s.alive
        with pytest.raises(ShellError, match="not usable"):
            s.run("true")


def test_overlong_and_multiline_commands_are_refused(tmp_path: Path) -> None:
    assert MAX_COMMAND < MAX_LINE <= 1000
    with helpers.start_session("sh-plain", tmp_path / "home") as s:
        with pytest.raises(ValueError, match="longer"):
            s.run("echo " + "x" * MAX_COMMAND)
        with pytest.raises(ValueError, match="single line"):
            s.run("echo a\necho b")
        # The longest allowed command still goes through intact.
        longest = "echo " + "y" * (MAX_COMMAND - 5)
        assert s.run(longest).output == "y" * (MAX_COMMAND - 5) + "\n"


def test_shell_exiting_mid_session(tmp_path: Path) -> None:
    with helpers.start_session("sh-plain", tmp_path / "home") as s:
        with pytest.raises(ShellError, match="exited"):
            s.run("exit 3")
        assert not s.alive


def test_strip_ansi() -> None:
    text = "\x1b[1;32mgreen\x1b[0m \x1b]0;title\x07\x1b[?2004hpaste\x1b[?2004l\x1b(B"
    assert strip_ansi(text) == "green paste"


# -- transcript -----------------------------------------------------------------------------


def test_transcript_redacts_secrets_tokens_and_file_data(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    sentinel = "HOSTSECRET-7f3a9c2e"
    transcript = Transcript(logs, "my sandbox/../x", secrets=[sentinel, "ab"])
    assert transcript.path is not None
    assert transcript.path.parent == logs
    assert re.fullmatch(r"sbx-\d{8}-\d{6}-my_sandbox_.._x-\d+\.log", transcript.path.name)
    assert stat.S_IMODE(transcript.path.stat().st_mode) == 0o600
    with helpers.start_session("sh-plain", tmp_path / "home", transcript=transcript) as s:
        s.run(f"echo {sentinel}; echo sk-ant-oat01-ABCDEFGHijklmnop_-123")
        s.run("printf %s 'eyJhcGlLZXlIZWxwZXIiOiJlY2hvIHgifQ==' | base64 -d | base64", payload=True)
        long_b64 = "QUJD" * 40
        s.run(f"echo {long_b64}")
        s.run("echo 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    log = transcript.path.read_text()
    assert sentinel not in log
    assert "sk-ant-oat01-ABCD" not in log
    assert "eyJhcGlLZXlIZWxwZXIi" not in log
    assert long_b64 not in log
    assert "<25 bytes of file data>" in log
    assert "<120 bytes of file data>" in log
    # Short "secrets" are not applied (they would garble the log), hex digests stay.
    assert "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" in log


def test_transcript_failures_never_break_the_run(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    transcript = Transcript(blocker / "logs", "x")
    assert transcript.path is None
    transcript.note("ignored")
    with helpers.start_session("sh-plain", tmp_path / "home", transcript=transcript) as s:
        assert s.run("echo ok").output == "ok\n"
    transcript.discard()


def test_transcript_discard(tmp_path: Path) -> None:
    transcript = Transcript(tmp_path, "x")
    assert transcript.path is not None
    path = transcript.path
    transcript.note("hello")
    transcript.discard()
    assert not path.exists()
    assert transcript.path is None


# -- boot retries through a fake `docker sandbox exec` ----------------------------------


def _fake(tmp_path: Path, mode: str, **extra: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = helpers.base_env(home)
    env.update(FAKE_MODE=mode, FAKE_STATE=str(tmp_path / "calls"), **extra)
    return env


def _calls(tmp_path: Path) -> int:
    return int((tmp_path / "calls").read_text())


ARGV = [str(helpers.FAKE_DOCKER), "sandbox", "exec", "-it", "claude-x", "bash"]


def test_boot_retries_status_255_until_the_sandbox_answers(tmp_path: Path) -> None:
    retries: list[tuple[int, float, str]] = []
    env = _fake(tmp_path, "fail255", FAKE_TIMES="3")
    session = open_session(
        ARGV,
        env=env,
        boot_timeout=helpers.scaled(20),
        first_delay=0.05,
        on_retry=lambda n, d, r: retries.append((n, d, r)),
    )
    with session:
        assert session.run("echo booted").output == "booted\n"
    assert _calls(tmp_path) == 4
    assert [r[0] for r in retries] == [1, 2, 3]
    assert [r[1] for r in retries] == [0.05, 0.1, 0.2]
    assert "status 255" in retries[0][2]


def test_boot_waits_for_a_hanging_exec(tmp_path: Path) -> None:
    env = _fake(tmp_path, "hang", FAKE_HANG="1.5")
    t0 = time.monotonic()
    with open_session(ARGV, env=env, boot_timeout=helpers.scaled(20)) as s:
        assert s.run("echo up").output == "up\n"
    assert time.monotonic() - t0 >= 1.5
    assert _calls(tmp_path) == 1, "a slow exec is waited for, not restarted"


def test_boot_restarts_an_exec_that_stays_silent(tmp_path: Path) -> None:
    env = _fake(tmp_path, "hang-first")
    retries: list[int] = []
    with open_session(
        ARGV,
        env=env,
        boot_timeout=helpers.scaled(20),
        hang_timeout=1.0,
        first_delay=0.05,
        on_retry=lambda n, d, r: retries.append(n),
    ) as s:
        assert s.run("echo second").output == "second\n"
    assert _calls(tmp_path) == 2
    assert retries == [1]


def test_boot_gives_up_with_a_clear_message(tmp_path: Path) -> None:
    env = _fake(tmp_path, "always255")
    t0 = time.monotonic()
    with pytest.raises(ShellError) as info:
        open_session(ARGV, env=env, boot_timeout=1.5, first_delay=0.1, label="sandbox 'claude-x'")
    elapsed = time.monotonic() - t0
    assert elapsed < helpers.scaled(4)
    msg = info.value.message
    assert msg.startswith("sandbox 'claude-x' did not accept `docker sandbox exec` within 1.5 s")
    assert "status 255" in msg
    assert info.value.hint is not None
    assert "docker sandbox ls" in info.value.hint
    assert "--boot-timeout" in info.value.hint


def test_boot_uses_the_injected_clock_and_sleep(tmp_path: Path) -> None:
    env = _fake(tmp_path, "always255")
    now = [0.0]
    sleeps: list[float] = []

    def fake_sleep(d: float) -> None:
        sleeps.append(d)
        now[0] += d

    with pytest.raises(ShellError, match="within 60 s"):
        open_session(ARGV, env=env, sleep=fake_sleep, clock=lambda: now[0])
    assert sleeps == [0.5, 1, 2, 4] + [5] * 10 + [2.5]
    assert _calls(tmp_path) == len(sleeps) + 1


def test_shell_not_found_is_not_retried(tmp_path: Path) -> None:
    env = _fake(tmp_path, "notfound")
    with pytest.raises(ShellError) as info:
        open_session(ARGV, env=env, boot_timeout=helpers.scaled(20), first_delay=0.05)
    assert _calls(tmp_path) == 1
    assert "`bash` could not be started" in info.value.message
    assert "executable file not found" in info.value.message
    assert info.value.hint is not None
    assert "--shell sh" in info.value.hint


def test_missing_sandbox_is_not_retried(tmp_path: Path) -> None:
    env = _fake(tmp_path, "missing")
    with pytest.raises(ShellError, match="does not exist"):
        open_session(ARGV, env=env, boot_timeout=helpers.scaled(20), first_delay=0.05)
    assert _calls(tmp_path) == 1


def test_argv_factory_is_called_per_attempt(tmp_path: Path) -> None:
    env = _fake(tmp_path, "fail255", FAKE_TIMES="1")
    made: list[int] = []

    def factory() -> list[str]:
        made.append(1)
        return ARGV

    with open_session(factory, env=env, first_delay=0.01) as s:
        assert s.alive
    assert len(made) == 2


def test_exec_failed_carries_status_and_output(tmp_path: Path) -> None:
    s = ShellSession(["sh", "-c", "echo boom >&2; exit 42"], env=helpers.base_env(tmp_path))
    with pytest.raises(ExecFailed) as info:
        s.start(ready_timeout=helpers.scaled(5))
    assert info.value.status == 42
    assert "boom" in info.value.output
    s.close()


def test_missing_executable(tmp_path: Path) -> None:
    s = ShellSession(["/nonexistent/shell"], env=helpers.base_env(tmp_path))
    with pytest.raises(ExecFailed):
        s.start(ready_timeout=helpers.scaled(5))
    s.close()


def test_importing_remote_does_not_import_pexpect() -> None:
    code = (
        "import sys; import sandboxwrap.remote, sandboxwrap.shell; "
        "sys.exit(1 if 'pexpect' in sys.modules else 0)"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0
