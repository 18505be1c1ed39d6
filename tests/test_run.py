"""`sbx run` against the plugin simulator: pass-through, decisions, messages, failures."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Sim, scaled, write_login

SEED = (
    '{"themeId":1,"alwaysThinkingEnabled":true,"apiKeyHelper":"echo proxy-managed",'
    '"defaultMode":"bypassPermissions","bypassPermissionsModeAccepted":true}'
)
SEED_WITHOUT = (
    '{"themeId":1,"alwaysThinkingEnabled":true,'
    '"defaultMode":"bypassPermissions","bypassPermissionsModeAccepted":true}'
)
API_KEY = "sk-ant-api03-SENTINEL-HOSTKEY-0123456789"
OAUTH_TOKEN = "sk-ant-oat01-SENTINEL-ENVTOKEN-0123456789"

# An agent that shows what it was given and the settings it found, then exits 0.
SHOW = "bash -c 'echo AGENT-ARGS: \"$*\"; cat ~/.claude/settings.json; echo' agent"


def sbx(
    sim: Sim, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return sim.sbx(*args, env=env, cwd=cwd)


def host_login(sim: Sim) -> Path:
    """A subscription login on the host (what `claude /login` leaves on Linux)."""
    return write_login(sim.host_home, access_token="sk-ant-oat01-SENTINEL-HOSTACCESS-01234")


@pytest.fixture
def ws(sim: Sim) -> Path:
    sim.knobs(AGENT_CMD=SHOW)
    return sim.workspace("my-project")


def run_calls(sim: Sim) -> list[list[str]]:
    """The `docker sandbox run` calls, without the `run -d` sbx uses to create a sandbox."""
    calls = [argv[2:] for argv in sim.argv_log() if argv[:2] == ["sandbox", "run"]]
    return [c for c in calls if c[:1] != ["-d"]]


def creations(sim: Sim) -> list[list[str]]:
    """The `docker sandbox run -d` calls (how sbx creates a sandbox without its agent)."""
    return [argv[2:] for argv in sim.argv_log() if argv[:3] == ["sandbox", "run", "-d"]]


def exec_calls(sim: Sim) -> list[list[str]]:
    return [argv for argv in sim.argv_log() if argv[:2] == ["sandbox", "exec"]]


# --- the decision, end to end through the simulator -----------------------------------


def test_oauth_host_removes_the_helper_before_the_agent_starts(sim: Sim, ws: Path) -> None:
    host_login(sim)
    proc = sbx(sim, "run", "claude", str(ws), "--", "-p", "hi")
    assert proc.returncode == 0, proc.stderr
    # The agent itself saw the fixed file.
    assert SEED_WITHOUT in proc.stdout
    assert sim.settings("claude-my-project") == SEED_WITHOUT
    assert proc.stderr.splitlines()[-1] == (
        "sbx: oauth (login found in ~/.claude/.credentials.json): "
        "removed apiKeyHelper in claude-my-project"
    )
    assert run_calls(sim) == [["claude", str(ws), "--", "-p", "hi"]]


def test_api_key_host_keeps_the_seeded_file_untouched(sim: Sim, ws: Path) -> None:
    name = sim.create("claude", ws)
    before = sim.settings_path(name).stat()
    proc = sbx(sim, "run", "claude", str(ws), env={"ANTHROPIC_API_KEY": API_KEY})
    assert proc.returncode == 0, proc.stderr
    assert sim.settings(name) == SEED
    after = sim.settings_path(name).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert "api-key (ANTHROPIC_API_KEY is set): kept apiKeyHelper in claude-my-project" in (
        proc.stderr
    )


def test_api_key_host_puts_a_removed_helper_back(sim: Sim, ws: Path) -> None:
    name = sim.create("claude", ws)
    sim.write_settings(name, SEED_WITHOUT)
    proc = sbx(sim, "run", "claude", str(ws), env={"ANTHROPIC_API_KEY": API_KEY})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(sim.settings(name)) == json.loads(SEED)
    assert "inserted apiKeyHelper" in proc.stderr


def test_no_credentials_removes_the_helper(sim: Sim, ws: Path) -> None:
    proc = sbx(sim, "run", "claude", str(ws))
    assert proc.returncode == 0, proc.stderr
    assert sim.settings("claude-my-project") == SEED_WITHOUT
    assert "none (" in proc.stderr
    assert "removed apiKeyHelper" in proc.stderr


def test_already_right_file_is_not_written(sim: Sim, ws: Path) -> None:
    name = sim.create("claude", ws)
    sim.write_settings(name, SEED_WITHOUT)
    before = sim.settings_path(name).stat()
    proc = sbx(sim, "run", "claude", str(ws))
    assert proc.returncode == 0, proc.stderr
    after = sim.settings_path(name).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert "apiKeyHelper already absent" in proc.stderr


@pytest.mark.parametrize(
    ("how", "env", "args"),
    [
        ("flag", {}, ["--auth", "oauth"]),
        ("env", {"SBX_AUTH": "oauth"}, []),
    ],
)
def test_override_beats_the_host_api_key(
    sim: Sim, ws: Path, how: str, env: dict[str, str], args: list[str]
) -> None:
    proc = sbx(sim, *args, "run", "claude", str(ws), env={"ANTHROPIC_API_KEY": API_KEY, **env})
    assert proc.returncode == 0, proc.stderr
    assert sim.settings("claude-my-project") == SEED_WITHOUT
    assert ("--auth oauth" if how == "flag" else "SBX_AUTH=oauth") in proc.stderr


def test_config_file_auth(sim: Sim, ws: Path) -> None:
    assert sbx(sim, "config", "set", "auth", "none").returncode == 0
    proc = sbx(sim, "run", "claude", str(ws), env={"ANTHROPIC_API_KEY": API_KEY})
    assert proc.returncode == 0, proc.stderr
    assert sim.settings("claude-my-project") == SEED_WITHOUT


def test_existing_sandbox_by_name(sim: Sim, ws: Path) -> None:
    name = sim.create("claude", ws, name="box_1")
    proc = sbx(sim, "run", name, "--", "--resume")
    assert proc.returncode == 0, proc.stderr
    assert sim.settings(name) == SEED_WITHOUT
    assert run_calls(sim) == [["box_1", "--", "--resume"]]
    assert "AGENT-ARGS: --dangerously-skip-permissions --resume" in proc.stdout


def test_reuse_by_workspace_runs_in_the_same_sandbox(sim: Sim, ws: Path) -> None:
    assert sbx(sim, "run", "claude", str(ws)).returncode == 0
    assert sbx(sim, "run", "claude", str(ws)).returncode == 0
    assert [s["name"] for s in sim.sandboxes()] == ["claude-my-project"]


def test_workspace_defaults_to_the_current_directory(sim: Sim, ws: Path) -> None:
    proc = sbx(sim, "run", "claude", cwd=ws)
    assert proc.returncode == 0, proc.stderr
    assert sim.settings("claude-my-project") == SEED_WITHOUT
    assert run_calls(sim) == [["claude"]]


# --- pass-through ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["claude", "{ws}", "--", "-p", "hi there", "--model", "x"],
        ["--name", "custom_box", "claude", "{ws}"],
        ["claude", "--name=custom_box2", "{ws}", "{extra}:ro"],
        ["-t", "docker/sandbox-templates:claude-code", "claude", "{ws}"],
        ["--load-local-template", "claude", "{ws}", "--", "--resume"],
        ["--pull-template", "never", "claude", "{ws}"],
        ["-D", "claude", "{ws}", "--", "-D", "--name", "not-an-option"],
    ],
)
def test_arguments_reach_the_plugin_unchanged(sim: Sim, ws: Path, args: list[str]) -> None:
    if "--pull-template" in args or any("{extra}" in a for a in args):
        sim.knobs(VERSION="v0.12.0")  # both arrived in plugin v0.12
    extra = sim.workspace("docs")
    typed = [a.format(ws=ws, extra=extra) for a in args]
    proc = sbx(sim, "run", *typed)
    assert proc.returncode == 0, proc.stderr
    assert run_calls(sim) == [typed]
    # The sandbox was created by the plugin from the user's own options, agent args aside.
    own = typed[: typed.index("--")] if "--" in typed else typed
    assert creations(sim) == [["-d", *own]]


def test_detached_run_creates_and_patches_without_an_agent(sim: Sim, ws: Path) -> None:
    proc = sbx(sim, "run", "-d", "claude", str(ws))
    assert proc.returncode == 0, proc.stderr
    assert "AGENT-ARGS" not in proc.stdout
    assert sim.settings("claude-my-project") == SEED_WITHOUT
    assert creations(sim) == [["-d", "-d", "claude", str(ws)], ["-d", "claude", str(ws)]]


@pytest.mark.parametrize("agent", ["codex", "gemini", "shell"])
def test_other_agents_pass_straight_through(sim: Sim, ws: Path, agent: str) -> None:
    proc = sbx(sim, "run", agent, str(ws))
    assert proc.returncode == 0, proc.stderr
    assert exec_calls(sim) == []
    assert [a for a in sim.argv_log() if a[:2] != ["sandbox", "run"]] == []
    assert run_calls(sim) == [[agent, str(ws)]]
    assert "sbx:" not in proc.stderr


def test_sandbox_of_another_agent_passes_through(sim: Sim, ws: Path) -> None:
    name = sim.create("codex", ws)
    proc = sbx(sim, "run", name)
    assert proc.returncode == 0, proc.stderr
    assert exec_calls(sim) == []


def test_unknown_sandbox_name_gets_the_plugins_own_error(sim: Sim, ws: Path) -> None:
    proc = sbx(sim, "run", "no-such-box")
    plain = sim.docker("sandbox", "run", "no-such-box")
    assert proc.returncode == plain.returncode != 0
    assert plain.stderr.strip() in proc.stderr
    assert exec_calls(sim) == []


def test_agent_exit_status_is_passed_on(sim: Sim, ws: Path) -> None:
    sim.knobs(AGENT_CMD="bash -c 'exit 7' agent")
    assert sbx(sim, "run", "claude", str(ws)).returncode == 7
    assert sbx(sim, "--watch", "0", "run", "claude", str(ws)).returncode == 7


def test_agent_killed_by_a_signal_looks_the_same(sim: Sim, ws: Path) -> None:
    sim.knobs(AGENT_CMD="bash -c 'kill -TERM $$' agent")
    plain = sim.docker("sandbox", "run", "claude", str(ws))
    proc = sbx(sim, "run", "claude", str(ws))
    assert proc.returncode == plain.returncode


def test_sigterm_to_sbx_reaches_the_agent(sim: Sim, ws: Path, tmp_path: Path) -> None:
    marker = tmp_path / "got-term"
    sim.knobs(
        AGENT_CMD=f'bash -c \'trap "touch {marker}; exit 42" TERM; echo READY; '
        "while :; do sleep 0.1; done' agent"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandboxwrap", "run", "claude", str(ws)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**sim.env, "SBX_PROFILE_CHECK": "0"},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=scaled(20)) == 42
    assert marker.exists()


# --- what sbx says -----------------------------------------------------------------------


def test_quiet_says_nothing(sim: Sim, ws: Path) -> None:
    proc = sbx(sim, "-q", "run", "claude", str(ws))
    assert proc.returncode == 0
    assert proc.stderr == ""
    proc = sbx(sim, "run", "claude", str(ws), env={"SBX_QUIET": "1"})
    assert proc.stderr == ""


def test_verbose_explains_each_step(sim: Sim, ws: Path) -> None:
    proc = sbx(sim, "-v", "run", "claude", str(ws))
    assert proc.returncode == 0
    for words in ("auth mode", "plugin:", "creating sandbox", "opening a shell", "settings file"):
        assert words in proc.stderr
    # Everything else on stderr is the plugin's own progress, passed on as it came.
    others = [x for x in proc.stderr.splitlines() if not x.startswith("sbx: ")]
    assert others == ["Creating new sandbox 'claude-my-project'..."]


def test_stdout_is_the_agents_alone(sim: Sim, ws: Path) -> None:
    proc = sbx(sim, "-v", "run", "claude", str(ws))
    assert proc.stdout.startswith("AGENT-ARGS:")
    assert "sbx:" not in proc.stdout


def test_secrets_never_leave_their_place(sim: Sim, ws: Path) -> None:
    host_login(sim)
    env = {
        "ANTHROPIC_API_KEY": API_KEY,
        "CLAUDE_CODE_OAUTH_TOKEN": OAUTH_TOKEN,
        "ANTHROPIC_AUTH_TOKEN": "sk-ant-SENTINEL-AUTHTOKEN-0123456789",
    }
    outputs = []
    for args in (["-vv", "run", "claude", str(ws)], ["auth"], ["auth", "--json"]):
        proc = sbx(sim, *args, env=env)
        outputs += [proc.stdout, proc.stderr]
    sentinels = [
        "SENTINEL-HOSTKEY",
        "SENTINEL-ENVTOKEN",
        "SENTINEL-AUTHTOKEN",
        "SENTINEL-HOSTACCESS",
    ]
    everything = "\n".join(outputs)
    everything += "\n".join(" ".join(a) for a in sim.argv_log())
    for path in sim.root.rglob("*"):
        if path.is_file() and path != sim.host_home / ".claude" / ".credentials.json":
            everything += path.read_text(errors="replace")
    for sentinel in sentinels:
        assert sentinel not in everything
    # The sandbox never received the host's key or login.
    assert not (sim.home("claude-my-project") / ".claude" / ".credentials.json").exists()


# --- failures: clear message, documented status, agent not started -------------------------


def test_docker_missing(sim: Sim, ws: Path) -> None:
    proc = sbx(sim, "run", "claude", str(ws), env={"SBX_DOCKER": str(sim.root / "nope")})
    assert proc.returncode == 69
    assert "sbx: error: docker not found" in proc.stderr


def test_plugin_missing(sim: Sim, ws: Path) -> None:
    sim.knobs(NO_PLUGIN=1)
    proc = sbx(sim, "run", "claude", str(ws))
    assert proc.returncode == 69
    assert "no `sandbox` plugin" in proc.stderr
    assert run_calls(sim) == []


def test_sandbox_cannot_be_created(sim: Sim) -> None:
    bad = sim.workspace("foo.bar")
    proc = sbx(sim, "run", "claude", str(bad))
    assert proc.returncode == 70
    assert "could not create sandbox 'claude-foo.bar'" in proc.stderr
    assert "--name" in proc.stderr
    assert run_calls(sim) == []


def test_exec_never_works(sim: Sim, ws: Path) -> None:
    sim.knobs(EXEC_FAIL=1000)
    proc = sbx(sim, "--boot-timeout", "2", "run", "claude", str(ws))
    assert proc.returncode == 75
    assert "claude-my-project" in proc.stderr
    assert "--boot-timeout" in proc.stderr
    assert run_calls(sim) == []
    # The transcript of the failed session is kept and named.
    [found] = re.findall(r"transcript(?: of the session)?: (\S+\.log)", proc.stderr)
    path = Path(found)
    assert path.is_file()
    assert path.stat().st_mode & 0o777 == 0o600


def test_transcripts_are_not_kept_after_success(sim: Sim, ws: Path) -> None:
    assert sbx(sim, "run", "claude", str(ws)).returncode == 0
    assert [p for p in sim.root.rglob("sbx-*.log")] == []


def test_exec_fails_while_booting_then_works(sim: Sim, ws: Path) -> None:
    sim.knobs(EXEC_FAIL=2)
    proc = sbx(sim, "run", "claude", str(ws))
    assert proc.returncode == 0, proc.stderr
    assert len(exec_calls(sim)) == 3
    assert sim.settings("claude-my-project") == SEED_WITHOUT


def test_invalid_json_is_never_overwritten_and_the_agent_not_started(sim: Sim, ws: Path) -> None:
    name = sim.create("claude", ws)
    broken = '{\n  "apiKeyHelper": "echo proxy-managed",\n}\n'
    sim.write_settings(name, broken)
    proc = sbx(sim, "run", "claude", str(ws))
    assert proc.returncode == 65
    assert sim.settings(name) == broken
    assert run_calls(sim) == []
    assert "~/.claude/settings.json in sandbox claude-my-project" in proc.stderr
    assert "line 3, column 1" in proc.stderr


def test_force_backs_up_then_replaces_invalid_json(sim: Sim, ws: Path) -> None:
    name = sim.create("claude", ws)
    broken = '{"apiKeyHelper": "echo proxy-managed",}'
    sim.write_settings(name, broken)
    proc = sbx(sim, "--force", "run", "claude", str(ws))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(sim.settings(name)) == {}
    backups = list(sim.settings_path(name).parent.glob("settings.json.sbx-backup-*"))
    assert [b.read_text() for b in backups] == [broken]
    assert "backup" in proc.stderr


def test_sbx_option_after_run_is_caught(sim: Sim, ws: Path) -> None:
    proc = sbx(sim, "run", "--auth", "oauth", "claude", str(ws))
    assert proc.returncode == 2
    assert "put it before `run`" in proc.stderr
    assert sim.argv_log() == []


def test_container_era_plugin_passes_through(sim: Sim, ws: Path) -> None:
    sim.knobs(VERSION="v0.5.0")
    proc = sbx(sim, "run", "claude", str(ws))
    assert "v0.7" in proc.stderr
    assert exec_calls(sim) == []
    assert run_calls(sim) == [["claude", str(ws)]]


# --- timing: a plugin that writes settings.json again when the agent starts ----------------


def test_reseeding_plugin_is_corrected_after_start(sim: Sim, ws: Path) -> None:
    sim.knobs(
        RESEED=1,
        AGENT_CMD="bash -c 'for i in $(seq 50); do grep -q apiKeyHelper ~/.claude/settings.json "
        "|| { echo FIXED-AFTER-START; exit 0; }; sleep 0.1; done; echo STILL-BROKEN; exit 1' agent",
    )
    proc = sbx(sim, "run", "claude", str(ws))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FIXED-AFTER-START" in proc.stdout
    assert "rewritten after the agent started" in proc.stderr


def test_watch_zero_leaves_a_reseeding_plugin_alone(sim: Sim, ws: Path) -> None:
    sim.knobs(RESEED=1)
    proc = sbx(sim, "--watch", "0", "run", "claude", str(ws))
    assert proc.returncode == 0
    assert "apiKeyHelper" in proc.stdout  # the agent saw the re-seeded helper


def test_version_names_the_tool_and_its_path() -> None:
    for argv in ([sys.executable, "-m", "sandboxwrap", "--version"],):
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        assert out.startswith("sandboxwrap (sbx) ")
        assert os.path.dirname(os.path.abspath(__import__("sandboxwrap").__file__)) in out


@pytest.mark.parametrize("args", [["--help"], ["claude", "--help"], ["claude", ".", "-h"]])
def test_help_goes_to_the_plugin_and_creates_nothing(sim: Sim, ws: Path, args: list[str]) -> None:
    proc = sbx(sim, "run", *args)
    assert run_calls(sim) == [args]
    assert sim.sandboxes() == []
    assert exec_calls(sim) == []
    assert "passes its arguments to `docker sandbox run`" in proc.stderr


# --- found by trying it as a new user: each once a bug --------------------------------


def test_symlinked_workspace_is_its_own_sandbox(sim: Sim, ws: Path) -> None:
    alias = ws.parent / "alias"
    alias.symlink_to(ws)
    assert sbx(sim, "run", "claude", str(ws)).returncode == 0
    proc = sbx(sim, "run", "claude", str(alias))
    assert proc.returncode == 0, proc.stderr
    # The plugin compares paths as given: `alias` got its own sandbox, and that is the
    # one sbx fixed before the agent started in it.
    assert "removed apiKeyHelper in claude-alias" in proc.stderr
    assert SEED_WITHOUT in proc.stdout


def test_logical_cwd_names_the_sandbox_like_the_plugin(sim: Sim, ws: Path) -> None:
    alias = ws.parent / "via-link"
    alias.symlink_to(ws)
    proc = sbx(sim, "run", "claude", cwd=alias, env={"PWD": str(alias)})
    assert proc.returncode == 0, proc.stderr
    assert "in claude-via-link" in proc.stderr
    assert SEED_WITHOUT in proc.stdout


def test_stopped_sandbox_with_its_own_name_is_found(sim: Sim, ws: Path) -> None:
    sim.create("claude", ws, name="foo")
    sim.docker("sandbox", "stop", "foo", check=True)
    proc = sbx(sim, "run", "claude", str(ws))
    assert proc.returncode == 0, proc.stderr
    assert [s["name"] for s in sim.sandboxes()] == ["foo"]
    assert sim.settings("foo") == SEED_WITHOUT
    assert "in foo" in proc.stderr


def test_new_workspace_started_from_several_terminals_at_once(sim: Sim, ws: Path) -> None:
    results = sim.sbx_at_once(4, "run", "claude", str(ws))
    assert [r.returncode for r in results] == [0] * 4, results
    assert [s["name"] for s in sim.sandboxes()] == ["claude-my-project"]
    assert sim.settings("claude-my-project") == SEED_WITHOUT


@pytest.mark.parametrize("agent", ["claude", "codex"])
def test_a_claude_sandbox_named_like_an_agent(sim: Sim, ws: Path, agent: str) -> None:
    sim.create("claude", ws, name=agent)
    proc = sbx(sim, "run", agent, cwd=sim.workspace("elsewhere"))
    assert proc.returncode == 0, proc.stderr
    assert sim.settings(agent) == SEED_WITHOUT
    assert [s["name"] for s in sim.sandboxes()] == [agent]


def test_combined_short_flags(sim: Sim, ws: Path) -> None:
    proc = sbx(sim, "run", "-Dt", "my/img:1", "claude", str(ws))
    assert proc.returncode == 0, proc.stderr
    assert sim.settings("claude-my-project") == SEED_WITHOUT
    assert sim.sandbox("claude-my-project")["template"] == "my/img:1"


def test_plugin_usage_errors_are_the_plugins_own(sim: Sim, ws: Path) -> None:
    plain = sim.docker("sandbox", "run", "--no-such-flag", "claude", str(ws))
    proc = sbx(sim, "run", "--no-such-flag", "claude", str(ws))
    assert proc.returncode == plain.returncode == 125
    assert plain.stderr in proc.stderr
    assert sim.sandboxes() == []


def test_suggested_fix_for_an_sbx_option_after_run(sim: Sim, ws: Path) -> None:
    proc = sbx(sim, "run", "--auth", "oauth", "claude", ".")
    assert "`sbx --auth oauth run claude .`" in proc.stderr
    proc = sbx(sim, "run", "claude", "--force")
    assert "`sbx --force run claude`" in proc.stderr
    assert sbx(sim, "run", "--verbose", "claude").returncode == 2


def test_patch_refuses_other_agents(sim: Sim, ws: Path) -> None:
    name = sim.create("codex", ws)
    proc = sbx(sim, "--auth", "api-key", "patch", name)
    assert proc.returncode == 70
    assert "codex" in proc.stderr
    assert not sim.settings_path(name).exists()


def test_reseed_then_an_agent_that_exits_at_once_still_leaves_the_file_right(
    sim: Sim, ws: Path
) -> None:
    sim.knobs(RESEED=1, AGENT_CMD="true")
    proc = sbx(sim, "run", "claude", str(ws))
    assert proc.returncode == 0, proc.stderr
    assert sim.settings("claude-my-project") == SEED_WITHOUT
    assert "rewritten after the agent started" in proc.stderr


def test_a_key_only_in_this_terminal_does_not_keep_the_helper_for_a_subscriber(
    sim: Sim, ws: Path
) -> None:
    host_login(sim)
    (sim.host_home / ".bash_profile").write_text("# no key here\n")
    proc = sbx(
        sim,
        "run",
        "claude",
        str(ws),
        env={"ANTHROPIC_API_KEY": API_KEY, "SBX_PROFILE_CHECK": "1", "SHELL": "/bin/bash"},
    )
    assert proc.returncode == 0, proc.stderr
    assert sim.settings("claude-my-project") == SEED_WITHOUT
    assert "so Docker's proxy has no key" in proc.stderr
