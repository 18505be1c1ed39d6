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
    format_seconds,
    open_session,
    redact_tokens,
    strip_ansi,
)

SHELLS = Path(helpers.__file__).resolve().parent


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
    # The rc's chatter is summed up, not logged: only its size and its last 3 lines.
    assert "# start-up output: " in log
    assert "typeahead eaten" not in log


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


# -- early ends that are not a booting VM --------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "rc", "status", "last"),
    [
        ("true", None, 0, None),  # docker replaced by /bin/true
        ("shell", "bashrc-set-e-false", 1, None),  # `set -e; false` in ~/.bashrc
        ("shell", "bashrc-exit-0", 0, "this sandbox shell is disabled"),  # `exit 0`
    ],
)
def test_an_early_end_other_than_255_fails_at_once(
    tmp_path: Path, mode: str, rc: str | None, status: int, last: str | None
) -> None:
    env = _fake(tmp_path, mode)
    if rc is not None:
        (tmp_path / "home" / ".bashrc").write_text((SHELLS / rc).read_text())
    t0 = time.monotonic()
    with pytest.raises(ShellError) as info:
        open_session(ARGV, env=env, boot_timeout=helpers.scaled(6), first_delay=0.05)
    assert time.monotonic() - t0 < helpers.scaled(3), "not retried as if the VM were booting"
    assert _calls(tmp_path) == 1
    msg = info.value.message
    assert f"status {status}" in msg
    assert "did not accept" not in msg, "not blamed on boot time"
    if last is not None:
        assert last in msg
    else:
        assert "printing nothing" in msg
    assert info.value.hint is not None
    assert "--shell sh" in info.value.hint


def test_shell_sh_works_where_the_bashrc_ends_the_shell(tmp_path: Path) -> None:
    """What the hint above suggests really gets past such an rc file."""
    env = _fake(tmp_path, "shell")
    (tmp_path / "home" / ".bashrc").write_text((SHELLS / "bashrc-set-e-false").read_text())
    with open_session([*ARGV[:-1], "sh"], env=env, boot_timeout=helpers.scaled(10)) as s:
        assert s.run("echo fine").output == "fine\n"


def test_status_255_with_a_permanent_message_is_not_retried(tmp_path: Path) -> None:
    env = _fake(tmp_path, "missing")
    with pytest.raises(ShellError) as info:
        open_session(ARGV, env=env, boot_timeout=helpers.scaled(6), first_delay=0.05)
    assert _calls(tmp_path) == 1
    assert "--shell sh" not in (info.value.hint or ""), "a missing sandbox is not an rc problem"


# -- the hang limit and slow start-ups ------------------------------------------------------


def test_hang_limit_defaults_to_the_command_timeout(tmp_path: Path) -> None:
    env = _fake(tmp_path, "hang-first")
    retries: list[str] = []
    t0 = time.monotonic()
    with open_session(
        ARGV,
        env=env,
        timeout=1.0,
        boot_timeout=helpers.scaled(10),
        first_delay=0.05,
        on_retry=lambda n, d, r: retries.append(r),
    ) as s:
        assert s.run("echo second").output == "second\n"
    assert time.monotonic() - t0 < helpers.scaled(5)
    assert _calls(tmp_path) == 2
    assert retries == ["no answer from exec: nothing printed within 1 s"]


def test_a_silent_slow_rc_works_with_a_long_enough_hang_limit(tmp_path: Path) -> None:
    env = _fake(tmp_path, "shell")
    (tmp_path / "home" / ".bashrc").write_text((SHELLS / "bashrc-silent-slow").read_text())
    with open_session(
        ARGV, env=env, boot_timeout=helpers.scaled(10), hang_timeout=helpers.scaled(5)
    ) as s:
        assert s.run("echo slow-but-fine").output == "slow-but-fine\n"
    assert _calls(tmp_path) == 1


def test_a_silent_slow_rc_names_both_limits(tmp_path: Path) -> None:
    env = _fake(tmp_path, "shell")
    (tmp_path / "home" / ".bashrc").write_text((SHELLS / "bashrc-silent-slow").read_text())
    with pytest.raises(ShellError) as info:
        open_session(ARGV, env=env, boot_timeout=2.5, hang_timeout=0.7, first_delay=0.05)
    msg = info.value.message
    assert msg.startswith("the sandbox did not accept `docker sandbox exec` within 2.5 s (")
    assert " attempts; last: no answer from exec: " in msg
    hint = info.value.hint
    assert hint is not None
    assert "--boot-timeout (now 2.5 s)" in hint
    assert "stopped after 0.7 s" in hint
    assert "--timeout" in hint.replace("--boot-timeout", "")


def test_an_rc_that_prints_then_hangs_is_not_killed_by_the_hang_limit(tmp_path: Path) -> None:
    """An exec that hangs but prints anything is waited for (bashrc-slow: 2 s after output)."""
    env = _fake(tmp_path, "shell")
    (tmp_path / "home" / ".bashrc").write_text((SHELLS / "bashrc-slow").read_text())
    t0 = time.monotonic()
    with open_session(ARGV, env=env, boot_timeout=helpers.scaled(20), hang_timeout=0.5) as s:
        assert s.run("echo waited").output == "waited\n"
    assert time.monotonic() - t0 >= 2
    assert _calls(tmp_path) == 1


def test_an_rc_that_prints_gets_the_hang_limit_past_the_boot_limit(tmp_path: Path) -> None:
    """Once the shell prints, the VM is up: the start-up is timed by --timeout, not boot."""
    env = _fake(tmp_path, "shell")
    (tmp_path / "home" / ".bashrc").write_text((SHELLS / "bashrc-slow").read_text())
    with open_session(ARGV, env=env, boot_timeout=0.5, hang_timeout=helpers.scaled(8)) as s:
        assert s.run("echo up").output == "up\n"
    assert _calls(tmp_path) == 1


def test_an_rc_slower_than_the_hang_limit_names_the_timeout_option(tmp_path: Path) -> None:
    env = _fake(tmp_path, "shell")
    (tmp_path / "home" / ".bashrc").write_text((SHELLS / "bashrc-slow").read_text())
    with pytest.raises(ShellError) as info:
        open_session(ARGV, env=env, boot_timeout=0.3, hang_timeout=0.8, label="sandbox 'x'")
    assert _calls(tmp_path) == 1
    msg = info.value.message
    assert msg.startswith("the shell in sandbox 'x' started but did not accept commands")
    assert "the --timeout limit of 0.8 s after its first output" in msg
    assert msg.endswith("; its last output: loading a slow rc...")
    assert info.value.hint is not None
    assert "higher --timeout (--timeout is now 0.8 s)" in info.value.hint


def test_an_rc_slower_than_the_boot_limit_names_both_options(tmp_path: Path) -> None:
    env = _fake(tmp_path, "shell")
    (tmp_path / "home" / ".bashrc").write_text((SHELLS / "bashrc-slow").read_text())
    with pytest.raises(ShellError) as info:
        open_session(ARGV, env=env, boot_timeout=1.0, hang_timeout=0.3)
    assert _calls(tmp_path) == 1
    assert "started but did not accept commands within the --boot-timeout limit of 1 s" in (
        info.value.message
    )
    assert info.value.hint is not None
    assert "higher --boot-timeout or --timeout (--timeout is now 0.3 s)" in info.value.hint


# -- message wording ------------------------------------------------------------------------


def test_format_seconds() -> None:
    assert format_seconds(0.99978) == "1"
    assert format_seconds(59.9998) == "60"
    assert format_seconds(60) == "60"
    assert format_seconds(12.4) == "12"
    assert format_seconds(2.34) == "2.3"
    assert format_seconds(2.5) == "2.5"
    assert format_seconds(9.96) == "10"
    assert format_seconds(0.3) == "0.3"
    assert format_seconds(0.01) == "0.01"


def test_give_up_message_counts_and_rounds(tmp_path: Path) -> None:
    env = _fake(tmp_path, "hang-first")
    # The clock: deadline at 0.99978, a first attempt with all of it, then time is up.
    ticks = iter([0.0, 0.0])
    with pytest.raises(ShellError) as info:
        open_session(
            ARGV,
            env=env,
            boot_timeout=0.99978,
            hang_timeout=None,
            clock=lambda: next(ticks, 5.0),
        )
    msg = info.value.message
    assert "within 1 s (1 attempt; last: no answer from exec: no shell prompt within 1 s)" in msg
    assert "0.99" not in msg


# -- history --------------------------------------------------------------------------------


def _history_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [
        line
        for line in path.read_text(errors="replace").splitlines()
        if "SBX" in line or "sbx" in line or "exec env" in line or "stty" in line
    ]


@pytest.mark.parametrize(
    "extra",
    [
        "",  # Ubuntu's own settings (HISTCONTROL=ignoreboth)
        "unset HISTCONTROL",  # no help from HISTCONTROL
        "unset HISTCONTROL; PROMPT_COMMAND='history -a'",  # history written after each line
    ],
)
def test_the_trampoline_stays_out_of_bash_history(tmp_path: Path, extra: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text((SHELLS / "bashrc-ubuntu-history").read_text() + extra + "\n")
    history = home / ".bash_history"
    history.write_text("ls -la\n")
    with ShellSession(["bash", "-i"], env=helpers.base_env(home)) as s:
        s.start(ready_timeout=helpers.scaled(10))
        assert s.run("echo hi").output == "hi\n"
    assert history.read_text().splitlines()[0] == "ls -la"
    assert _history_lines(history) == []


@pytest.mark.parametrize(
    "options",
    [
        "",  # saved when the shell ends (or execs)
        "setopt inc_append_history hist_ignore_space",  # saved as each line is entered
        "setopt share_history hist_ignore_space",
    ],
)
def test_the_trampoline_stays_out_of_zsh_history(tmp_path: Path, options: str) -> None:
    helpers.require("zsh")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".zshrc").write_text(
        f"HISTFILE=~/.zsh_history; SAVEHIST=1000; HISTSIZE=1000\n{options}\n"
    )
    with ShellSession(["zsh", "-i"], env=helpers.base_env(home)) as s:
        s.start(ready_timeout=helpers.scaled(10))
        assert s.run("echo hi").output == "hi\n"
    assert _history_lines(home / ".zsh_history") == []
    assert Path("/dev/null").is_char_device()


def test_the_trampoline_stays_out_of_fish_history(tmp_path: Path) -> None:
    helpers.require("fish")
    argv, env = helpers.make_shell("bash-exec-fish", tmp_path / "home")
    with ShellSession(argv, env=env) as s:
        s.start(ready_timeout=helpers.scaled(15))
        assert s.run("echo hi").output == "hi\n"
    history = tmp_path / "home" / ".local" / "share" / "fish" / "fish_history"
    assert _history_lines(history) == []


# -- secrets in the transcript --------------------------------------------------------------

LEAKED = (
    "ghp_0123456789abcdefghijABCDEFGHIJ0123",
    "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
    "xoxb-1234567890-abcdefghijKLMN",
    "AKIAABCDEFGHIJKLMNOP",
    "QyNTUxOQAAACBPRIVATEKEYBODY",
    "abcdef0123456789xyz",
    "plainvalue123",
    "hunter22-secret",
    "sk-ant-oat01-ABCD",
)


def test_redact_tokens_shapes() -> None:
    text = (
        "a ghp_0123456789abcdefghijABCDEFGHIJ0123 b gho_0123456789abcdefghij0123 "
        "ghu_0123456789abcdefghij0123 ghs_0123456789abcdefghij0123 "
        "ghr_0123456789abcdefghij0123 github_pat_11ABCDEFG0123456789_abcdefghijklmnop\n"
        "xoxb-1234567890-abcdefghijKLMN xoxp-1234567890-abcdef AKIAABCDEFGHIJKLMNOP\n"
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\nshortline\n"
        "-----END RSA PRIVATE KEY-----\n"
        "Authorization: Bearer abcdef0123456789xyz\n"
        "GITHUB_TOKEN=ghp_0123456789abcdefghijABCDEFGHIJ0123 api_key: 'k1k2k3k4' "
        'SECRET="s3cr3t" Password = hunter2 "token": "jsonvalue"\n'
        "ANTHROPIC_API_KEY=sk-ant-api03-ABCDEFGHIJKLMNOP\n"
    )
    out = redact_tokens(text)
    for leaked in (
        "0123456789abcdefghij",
        "1234567890",
        "AKIAABCD",
        "MIIEpAIBAAKCAQEA",
        "shortline",
        "abcdef0123456789xyz",
        "k1k2k3k4",
        "s3cr3t",
        "hunter2",
        "jsonvalue",
        "ABCDEFGHIJKLMNOP",
    ):
        assert leaked not in out, leaked
    assert "<redacted private key>" in out
    assert "Authorization: Bearer <redacted>" in out
    assert "GITHUB_TOKEN=<redacted GitHub token>" in out
    assert "ANTHROPIC_API_KEY=<redacted sk-ant token>" in out
    # What is not a secret stays readable.
    harmless = (
        '{"apiKeyHelper": "echo proxy-managed", "max_tokens": 5} PWD=/home/agent '
        "tokens used: 12 sha 0123456789abcdef0123456789abcdef"
    )
    assert redact_tokens(harmless) == harmless


def test_start_up_chatter_and_tokens_stay_out_of_the_transcript(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text((SHELLS / "bashrc-leaks-secrets").read_text())
    transcript = Transcript(tmp_path / "logs", "leaky")
    with ShellSession(["bash", "-i"], env=helpers.base_env(home), transcript=transcript) as s:
        s.start(ready_timeout=helpers.scaled(10))
        # Command output is kept, with token shapes redacted.
        out = s.run(f"cat '{home}/.bashrc'").output
        assert "ghp_0123456789abcdefghijABCDEFGHIJ0123" in out, "callers get the real output"
    assert transcript.path is not None
    log = transcript.path.read_text()
    for leaked in LEAKED:
        assert leaked not in log, leaked
    # The start-up chatter itself is only summed up.
    assert re.search(r"# start-up output: \d+ bytes, \d+ lines; the last 3:", log)
    assert log.count("EARLY-CHATTER-LINE") == 1, "only in the cat of the file"


def test_a_failed_start_up_keeps_its_last_three_lines_redacted(tmp_path: Path) -> None:
    env = _fake(tmp_path, "shell")
    (tmp_path / "home" / ".bashrc").write_text(
        (SHELLS / "bashrc-leaks-secrets").read_text() + "exit 3\n"
    )
    transcript = Transcript(tmp_path / "logs", "leaky")
    with pytest.raises(ShellError) as info:
        open_session(ARGV, env=env, transcript=transcript, boot_timeout=helpers.scaled(6))
    assert "status 3" in info.value.message
    assert "last words: <redacted sk-ant token>" in info.value.message
    assert transcript.path is not None
    log = transcript.path.read_text()
    for leaked in LEAKED:
        assert leaked not in log, leaked
    assert "EARLY-CHATTER-LINE" not in log
    assert re.search(r"# start-up output: \d+ bytes, 13 lines; the last 3:", log)
    assert "< export SERVICE_API_KEY=<redacted>" in log
    assert "< db password: <redacted>" in log
    assert "< last words: <redacted sk-ant token>" in log


# -- interrupted commands -------------------------------------------------------------------


class Interrupted(BaseException):
    """Stands for SIGTERM turned into an exception, or KeyboardInterrupt."""


def test_a_command_interrupted_while_waiting_is_finished_before_the_next(tmp_path: Path) -> None:
    marker = tmp_path / "finished"
    with helpers.start_session("sh-plain", tmp_path / "home") as s:
        child = s._child

        def interrupted(*_a: object, **_k: object) -> int:
            raise Interrupted

        child.expect_list = interrupted
        try:
            with pytest.raises(Interrupted):
                s.run(f"sleep 0.3; echo late; touch '{marker}'")
        finally:
            del child.expect_list
        assert s.run("echo next").output == "next\n"
        assert marker.exists(), "the interrupted command ran to its end first"
        assert s.run("echo after").output == "after\n"
