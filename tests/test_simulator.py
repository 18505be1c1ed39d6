"""The `docker sandbox` simulator and the mock API behave like the real things.

The first sections pin down the simulator (tests/sim/docker): commands, naming and reuse rules,
errors, knobs, argv recording, exec and the sandbox environment. The mock API section checks the
loopback API and proxy stand-ins. The last section runs real Claude Code 2.1.25 inside the
simulator and reproduces the reported bug and the behaviour sbx relies on.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mockapi
import pexpect
import pytest
from conftest import Sim, scaled

# Copied from the reference notes, not from the simulator, so that a drift is caught.
SEED = (
    '{"themeId":1,"alwaysThinkingEnabled":true,"apiKeyHelper":"echo proxy-managed",'
    '"defaultMode":"bypassPermissions","bypassPermissionsModeAccepted":true}'
)
BAD_NAME = (
    "invalid VM name: VM name can only contain alphanumeric characters, hyphens, and underscores"
)
UNKNOWN_FLAG = (
    "unknown flag: --foo\n\n"
    "Usage:  docker sandbox run SANDBOX [-- AGENT_ARGS...] | AGENT WORKSPACE [-- AGENT_ARGS...]\n\n"
    "Run 'docker sandbox run --help' for more information\n"
)


def agent_report(stdout: str) -> dict[str, str]:
    """Parse the built-in agent's `key: value` lines."""
    report = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            report[key] = value
    return report


# ---------------------------------------------------------------- basics


@pytest.mark.parametrize("version", ["v0.9.0", "v0.12.1", "v0.5.2"])
def test_version_line(sim: Sim, version: str) -> None:
    if version != "v0.9.0":
        sim.knobs(VERSION=version)
    result = sim.docker("sandbox", "version", check=True)
    assert result.stdout == f"github.com/docker/sandboxes/cli-plugin {version} 1a2b3c4\n"


def test_plugin_missing(sim: Sim) -> None:
    sim.knobs(NO_PLUGIN=1)
    result = sim.docker("sandbox", "ls")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "docker: unknown command: docker sandbox\n\nRun 'docker --help' for more information\n"
    )
    sim.knobs(NO_PLUGIN="old")
    result = sim.docker("sandbox", "version")
    assert result.returncode == 1
    assert result.stderr.startswith("docker: 'sandbox' is not a docker command.\n")
    # docker itself is still there
    assert sim.docker("--version", check=True).stdout.startswith("Docker version ")


def test_state_dir_is_required(sim: Sim) -> None:
    result = sim.docker("sandbox", "ls", env={"SBX_SIM_STATE": ""})
    assert result.returncode == 2
    assert "SBX_SIM_STATE is not set" in result.stderr


def test_container_era_has_no_exec_or_create(sim: Sim) -> None:
    sim.knobs(VERSION="v0.6.0")
    for sub in ("exec", "create", "stop"):
        result = sim.docker("sandbox", sub, "x", "y")
        assert result.returncode == 1
        assert result.stderr.startswith(
            f"docker sandbox: '{sub}' is not a docker sandbox command.\n"
        )
    ws = sim.workspace()
    # container-era syntax: run [opts] AGENT [agent args], workspace via -w
    result = sim.docker("sandbox", "run", "-w", str(ws), "claude", "-p", "hi", check=True)
    assert json.loads(agent_report(result.stdout)["argv"]) == [
        "--dangerously-skip-permissions",
        "-p",
        "hi",
    ]
    inspected = json.loads(sim.docker("sandbox", "inspect", "claude-my-project", check=True).stdout)
    assert inspected[0]["workspaces"] == [str(ws)]


def test_microvm_era_has_no_inspect(sim: Sim) -> None:
    result = sim.docker("sandbox", "inspect", "x")
    assert result.returncode == 1
    assert "is not a docker sandbox command" in result.stderr


# ---------------------------------------------------------------- create


def test_create_seeds_claude_settings(sim: Sim) -> None:
    ws = sim.workspace()
    result = sim.docker("sandbox", "create", "claude", str(ws), check=True)
    assert result.stdout == "claude-my-project\n"
    assert result.stderr == "Creating new sandbox 'claude-my-project'...\n"
    assert sim.settings("claude-my-project") == SEED  # byte for byte, no newline
    mode = stat.S_IMODE(sim.settings_path("claude-my-project").stat().st_mode)
    assert mode == 0o644
    claude_json = json.loads((sim.home("claude-my-project") / ".claude.json").read_text())
    assert claude_json["hasCompletedOnboarding"] is True
    assert claude_json["projects"][str(ws)]["hasTrustDialogAccepted"] is True
    box = sim.sandbox("claude-my-project")
    assert box["status"] == "running"
    assert box["agent"] == "claude"
    assert box["workspaces"] == [str(ws)]
    assert box["template"] == "docker/sandbox-templates:claude"


def test_create_options(sim: Sim) -> None:
    ws = sim.workspace()
    result = sim.docker(
        "sandbox",
        "create",
        "-q",
        "--name",
        "box_1",
        "-t",
        "my/img:1",
        "--load-local-template",
        "claude",
        str(ws),
        check=True,
    )
    assert (result.stdout, result.stderr) == ("box_1\n", "")
    assert sim.sandbox("box_1")["template"] == "my/img:1"
    assert sim.create("codex", ws) == "codex-my-project"
    assert not sim.settings_path("codex-my-project").exists()  # only claude is seeded
    assert sim.home("codex-my-project").is_dir()


def test_create_errors(sim: Sim) -> None:
    ws = sim.workspace()
    sim.create("claude", ws)
    again = sim.docker("sandbox", "create", "claude", str(ws))
    assert again.returncode == 1
    assert "failed to create sandbox: sandbox 'claude-my-project' already exists" in again.stderr
    bad_agent = sim.docker("sandbox", "create", "vim", str(ws))
    assert bad_agent.returncode == 1
    assert "unknown agent 'vim'" in bad_agent.stderr
    missing = sim.docker("sandbox", "create", "claude", str(ws / "nope"))
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr
    too_few = sim.docker("sandbox", "create", "claude")
    assert too_few.returncode == 1
    assert '"docker sandbox create" requires at least 2 arguments.' in too_few.stderr


def test_invalid_name_until_v012(sim: Sim) -> None:
    ws = sim.workspace("foo.bar")
    result = sim.docker("sandbox", "run", "claude", str(ws))
    assert result.returncode == 1
    # As reported: the creation message, then the VM API's refusal.
    assert result.stderr == (
        "Creating new sandbox 'claude-foo.bar'...\n"
        "failed to create sandbox: create/start VM: POST VM create failed: status 400: "
        f'{{"message":"{BAD_NAME}"}}\n'
    )
    assert sim.sandboxes() == []
    sim.knobs(VERSION="v0.12.0")
    assert sim.create("claude", ws) == "claude-foo.bar"


def test_extra_workspaces_and_pull_template_need_v012(sim: Sim) -> None:
    ws, extra = sim.workspace(), sim.workspace("docs")
    old = sim.docker("sandbox", "create", "claude", str(ws), f"{extra}:ro")
    assert old.returncode == 1
    assert "accepts at most 2 arguments, received 3." in old.stderr
    pull = sim.docker("sandbox", "run", "--pull-template", "never", "claude", str(ws))
    assert pull.returncode == 125
    assert pull.stderr.startswith("unknown flag: --pull-template\n")

    sim.knobs(VERSION="v0.12.0")
    name = sim.create("claude", ws, f"{extra}:ro")
    assert sim.sandbox(name)["workspaces"] == [str(ws), f"{extra}:ro"]
    local = sim.docker("sandbox", "run", "--load-local-template", "claude", str(ws))
    assert local.returncode == 125
    assert local.stderr.startswith("unknown flag: --load-local-template\n")
    ok = sim.docker("sandbox", "run", "--pull-template", "never", "claude", str(ws))
    assert ok.returncode == 0
    bad = sim.docker("sandbox", "run", "--pull-template", "sometimes", "claude", str(ws))
    assert bad.returncode == 125


# ---------------------------------------------------------------- ls


def test_ls_json_shapes(sim: Sim) -> None:
    assert sim.docker("sandbox", "ls", "--json", check=True).stdout == '{"sandboxes":[]}\n'
    ws = sim.workspace()
    sim.create("claude", ws)
    sim.create("codex", ws)
    sim.docker("sandbox", "stop", "codex-my-project", check=True)
    vms = json.loads(sim.docker("sandbox", "ls", "--json", check=True).stdout)["vms"]
    assert vms[0] == {
        "name": "claude-my-project",
        "agent": "claude",
        "status": "running",
        "socket_path": str(sim.state / "vms" / "claude-my-project" / "docker.sock"),
        "sandbox_count": 1,
        "workspaces": [str(ws)],
    }
    # reported: stopped entries lack socket_path and workspaces
    assert vms[1] == {
        "name": "codex-my-project",
        "agent": "codex",
        "status": "stopped",
        "sandbox_count": 0,
    }
    sim.knobs(LS_STALE=1)
    vms = json.loads(sim.docker("sandbox", "list", "--json", check=True).stdout)["vms"]
    assert [vm["status"] for vm in vms] == ["running", "running"]


def test_ls_quiet_and_table(sim: Sim) -> None:
    sim.create("claude")
    sim.create("gemini")
    expected = "claude-my-project\ngemini-my-project\n"
    assert sim.docker("sandbox", "ls", "-q", check=True).stdout == expected
    assert sim.docker("sandbox", "list", "--quiet", check=True).stdout == expected
    table = sim.docker("sandbox", "ls", check=True).stdout.splitlines()
    assert table[0].split() == ["SANDBOX", "AGENT", "STATUS", "WORKSPACE"]
    assert table[1].split()[:3] == ["claude-my-project", "claude", "running"]


# ---------------------------------------------------------------- run


def test_run_creates_once_then_reuses(sim: Sim) -> None:
    ws = sim.workspace()
    first = sim.docker("sandbox", "run", "claude", str(ws), "--", "-p", "hi", check=True)
    assert first.stderr == "Creating new sandbox 'claude-my-project'...\n"
    report = agent_report(first.stdout)
    assert report["sim-agent"] == "claude started"
    assert json.loads(report["argv"]) == ["--dangerously-skip-permissions", "-p", "hi"]
    assert report["cwd"] == str(ws)
    assert report["home"] == str(sim.home("claude-my-project"))
    assert report["settings.json"] == SEED
    # same agent + workspace (here: the current directory) reuses it
    again = sim.docker("sandbox", "run", "claude", "--", "--continue", cwd=ws, check=True)
    assert again.stderr == ""
    assert json.loads(agent_report(again.stdout)["argv"]) == [
        "--dangerously-skip-permissions",
        "--continue",
    ]
    # by name
    by_name = sim.docker("sandbox", "run", "claude-my-project", check=True)
    assert by_name.stderr == ""
    assert [s["name"] for s in sim.sandboxes()] == ["claude-my-project"]


def test_run_flags_anywhere_and_same_name_reuses(sim: Sim) -> None:
    ws1, ws2 = sim.workspace("one"), sim.workspace("two")
    sim.docker("sandbox", "run", "claude", str(ws1), "--name", "box", check=True)
    second = sim.docker("sandbox", "run", "--name=box", "claude", str(ws2), check=True)
    assert second.stderr == ""
    assert agent_report(second.stdout)["cwd"] == str(ws1)  # options are fixed at creation
    assert [s["name"] for s in sim.sandboxes()] == ["box"]
    # two workspaces with the same basename collide on the default name
    sim.docker("sandbox", "run", "claude", str(sim.workspace("x/one")), check=True)
    result = sim.docker("sandbox", "run", "claude", str(sim.workspace("y/one")))
    assert result.returncode == 1
    assert "sandbox 'claude-one' already exists" in result.stderr


def test_run_detached_prints_id(sim: Sim) -> None:
    ws = sim.workspace()
    result = sim.docker("sandbox", "run", "-d", "claude", str(ws), check=True)
    box = sim.sandbox("claude-my-project")
    assert result.stdout == f"{box['id']}\n"
    assert "sim-agent" not in result.stdout


def test_run_usage_errors(sim: Sim) -> None:
    result = sim.docker("sandbox", "run", "--foo", "claude")
    assert (result.returncode, result.stdout, result.stderr) == (125, "", UNKNOWN_FLAG)
    short = sim.docker("sandbox", "run", "-x", "claude")
    assert short.returncode == 125
    assert short.stderr.startswith("unknown shorthand flag: 'x' in -x\n")
    # -e/--env went away with the microVMs (reported)
    env = sim.docker("sandbox", "run", "--env", "A=1", "claude")
    assert env.stderr.startswith("unknown flag: --env\n")
    noval = sim.docker("sandbox", "run", "claude", "--name")
    assert noval.stderr.startswith("flag needs an argument: --name\n")
    neither = sim.docker("sandbox", "run", "nosuch")
    assert neither.returncode == 1
    assert "'nosuch' is neither an existing sandbox nor a supported agent" in neither.stderr
    assert sim.docker("sandbox", "run", "--help").returncode == 0


def test_run_exit_status_and_stdin(sim: Sim) -> None:
    sim.create()
    sim.knobs(AGENT_CMD="sh -c 'exit 7' sh")
    assert sim.docker("sandbox", "run", "claude-my-project").returncode == 7
    sim.knobs(AGENT_CMD="sh -c 'kill -TERM $$' sh")
    assert sim.docker("sandbox", "run", "claude-my-project").returncode == 128 + 15
    sim.knobs(AGENT_CMD="sh -c 'read line; echo got:$line' sh")
    result = sim.docker("sandbox", "run", "claude-my-project", input="hello\n")
    assert result.stdout == "got:hello\n"


def test_sandbox_env_is_built_not_inherited(sim: Sim) -> None:
    sim.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-host-secret")
    sim.setenv("CLAUDE_CONFIG_DIR", "/host/claude")
    sim.setenv("FOO_FROM_HOST", "1")
    sim.setenv("TERM", "xterm-test")
    sim.knobs(
        AGENT_CMD="env",
        SANDBOX_ENV=json.dumps({"DISABLE_TELEMETRY": "1", "USER": "agent"}),
        API_URL="http://127.0.0.1:9",
    )
    name = sim.create()
    # `env --dangerously-skip-permissions` would fail, so run it through exec as well
    sim.knobs(AGENT_CMD="sh -c env sh")
    for result in (
        sim.docker("sandbox", "run", name, check=True),
        sim.docker("sandbox", "exec", name, "env", check=True),
    ):
        env = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        for leaked in (
            "ANTHROPIC_API_KEY",
            "CLAUDE_CONFIG_DIR",
            "FOO_FROM_HOST",
            "SBX_SIM_STATE",
            "SBX_SIM_AGENT_CMD",
        ):
            assert leaked not in env
        assert env["HOME"] == str(sim.home(name))
        assert env["USER"] == "agent"
        assert env["IS_SANDBOX"] == "1"
        assert env["TERM"] == "xterm-test"
        assert env["DISABLE_TELEMETRY"] == "1"
        assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9"
        assert env["PATH"] == os.environ["PATH"]


def test_seeding_happens_once_unless_reseed(sim: Sim) -> None:
    name = sim.create()
    sim.drop_api_key_helper(name)
    edited = sim.settings(name)
    # default (plugin <= v0.10 as reported): an edit made after creation survives `run`
    result = sim.docker("sandbox", "run", name, check=True)
    assert agent_report(result.stdout)["settings.json"] == edited
    assert sim.settings(name) == edited
    # Docker's later CLI re-seeds every time it starts the agent
    sim.knobs(RESEED=1, AGENT_DELAY=0.3)
    started = time.monotonic()
    result = sim.docker("sandbox", "run", name, check=True)
    assert time.monotonic() - started >= 0.3
    assert agent_report(result.stdout)["settings.json"] == SEED
    # RESEED=boot also re-seeds when a stopped VM boots (exec on it)
    sim.knobs(RESEED="boot")
    sim.write_settings(name, "{}")
    sim.docker("sandbox", "exec", name, "true", check=True)
    assert sim.settings(name) == "{}"  # already running: no boot
    sim.docker("sandbox", "stop", name, check=True)
    sim.docker("sandbox", "exec", name, "true", check=True)
    assert sim.settings(name) == SEED


def test_patch_settings_reseeds(sim: Sim) -> None:
    # --patch-settings is hidden and undocumented; the simulator's guess is "re-seed now".
    name = sim.create()
    sim.write_settings(name, "{}")
    sim.docker("sandbox", "run", "--patch-settings", name, check=True)
    assert sim.settings(name) == SEED


# ---------------------------------------------------------------- exec


@pytest.mark.parametrize("shell", ["sh", "bash", "dash", "zsh"])
def test_exec_runs_real_shell_with_sandbox_home(sim: Sim, shell: str) -> None:
    name = sim.create()
    result = sim.docker(
        "sandbox",
        "exec",
        name,
        shell,
        "-c",
        'echo "$HOME"; pwd; cat ~/.claude/settings.json',
        check=True,
    )
    home = str(sim.home(name))
    assert result.stdout == f"{home}\n{home}\n{SEED}"


def test_exec_options(sim: Sim) -> None:
    ws = sim.workspace()
    name = sim.create("claude", ws)
    env_file = sim.root / "env.list"
    env_file.write_text("# comment\nFROM_FILE=yes\n\nHOSTVAR\n")
    sim.setenv("HOSTVAR", "copied")
    result = sim.docker(
        "sandbox",
        "exec",
        "-u",
        "agent",
        "-w",
        str(ws),
        "-e",
        "A=1",
        "-eB=2",
        "--env-file",
        str(env_file),
        "--privileged",
        name,
        "sh",
        "-c",
        'echo "$PWD $A $B $FROM_FILE $HOSTVAR" "$@"',
        "sh",
        "-x",
        "--y",
        check=True,
    )
    # flags after the sandbox name belong to the command
    assert result.stdout == f"{ws} 1 2 yes copied -x --y\n"


def test_exec_stdin_only_with_i(sim: Sim) -> None:
    name = sim.create()
    closed = sim.docker("sandbox", "exec", name, "cat", input="secret\n", check=True)
    assert closed.stdout == ""
    for flag in ("-i", "-it", "--interactive"):
        opened = sim.docker("sandbox", "exec", flag, name, "cat", input="secret\n", check=True)
        assert opened.stdout == "secret\n"


def test_exec_errors(sim: Sim) -> None:
    missing = sim.docker("sandbox", "exec", "nope", "true")
    assert (missing.returncode, missing.stderr) == (1, "sandbox 'nope' does not exist\n")
    name = sim.create()
    not_found = sim.docker("sandbox", "exec", name, "no-such-shell", "-l")
    assert not_found.returncode == 127
    assert 'exec: "no-such-shell": executable file not found in $PATH' in not_found.stderr
    too_few = sim.docker("sandbox", "exec", name)
    assert too_few.returncode == 1
    assert "requires at least 2 arguments" in too_few.stderr
    status = sim.docker("sandbox", "exec", name, "sh", "-c", "exit 42")
    assert status.returncode == 42


def test_exec_boots_a_stopped_sandbox(sim: Sim) -> None:
    name = sim.create()
    sim.docker("sandbox", "stop", name, check=True)
    sim.knobs(BOOT_SECONDS=0.4)
    started = time.monotonic()
    sim.docker("sandbox", "exec", name, "true", check=True)
    assert time.monotonic() - started >= 0.4
    assert sim.sandbox(name)["status"] == "running"
    assert sim.sandbox(name)["boots"] == 2


def test_exec_fail_and_hang_knobs(sim: Sim) -> None:
    name = sim.create()
    sim.knobs(EXEC_FAIL=2)
    for _ in range(2):
        result = sim.docker("sandbox", "exec", name, "echo", "hi")
        assert (result.returncode, result.stdout, result.stderr) == (255, "", "")
    assert sim.docker("sandbox", "exec", name, "echo", "hi").stdout == "hi\n"
    sim.knobs(EXEC_HANG=0.5, EXEC_HANG_COUNT=1)
    started = time.monotonic()
    sim.docker("sandbox", "exec", name, "true", check=True)
    assert time.monotonic() - started >= 0.5
    started = time.monotonic()
    sim.docker("sandbox", "exec", name, "true", check=True)
    assert time.monotonic() - started < 0.5


def test_run_attaches_agent_to_the_terminal(sim: Sim) -> None:
    """Ctrl-C goes to the agent; the simulator outlives it and returns its status."""
    name = sim.create()
    # Not `sh -c 'trap ...; sleep'`: a ^C landing between sh's echo and its fork of sleep only
    # runs the trap once sleep is done, which made this test flaky.
    agent = (
        "import signal, sys, time;"
        "signal.signal(signal.SIGINT, lambda *_: (print('got-INT', flush=True), sys.exit(5)));"
        "print('ready', flush=True); time.sleep(10)"
    )
    sim.knobs(AGENT_CMD=shlex.join([sys.executable, "-c", agent]))
    child = pexpect.spawn(
        "docker", ["sandbox", "run", name], env=sim.env, encoding="utf-8", timeout=scaled(10)
    )
    child.expect("ready")
    child.sendintr()
    child.expect("got-INT")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 5


def test_exec_detached(sim: Sim) -> None:
    name = sim.create()
    marker = sim.home(name) / "marker"
    result = sim.docker("sandbox", "exec", "-d", name, "sh", "-c", "sleep 0.2; touch ~/marker")
    assert (result.returncode, result.stdout) == (0, "")
    deadline = time.monotonic() + scaled(5)
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()


def test_exec_interactive_shell_under_pexpect(sim: Sim) -> None:
    name = sim.create()
    child = pexpect.spawn(
        "docker",
        ["sandbox", "exec", "-it", name, "bash", "--norc", "--noprofile"],
        env=sim.env,
        encoding="utf-8",
        timeout=scaled(10),
    )
    child.sendline('echo "H=$HOME"')
    child.expect(f"H={sim.home(name)}")
    child.sendline("exit 3")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 3


# ---------------------------------------------------------------- rm / stop / argv log


def test_stop_and_rm_print_names(sim: Sim) -> None:
    a = sim.create("claude")
    b = sim.create("codex")
    assert sim.docker("sandbox", "stop", a, b, check=True).stdout == f"{a}\n{b}\n"
    assert {s["status"] for s in sim.sandboxes()} == {"stopped"}
    # `run` boots a stopped one again
    sim.docker("sandbox", "run", a, check=True)
    assert sim.sandbox(a)["status"] == "running"
    missing = sim.docker("sandbox", "rm", a, "ghost", b)
    assert (missing.returncode, missing.stdout) == (1, f"{a}\n{b}\n")
    assert "sandbox 'ghost' does not exist" in missing.stderr
    assert not sim.home(a).exists()
    assert sim.docker("sandbox", "ls", "--json").stdout == '{"sandboxes":[]}\n'


def test_argv_log_records_everything(sim: Sim) -> None:
    sim.docker("-D", "sandbox", "ls", "-q", check=True)
    sim.docker("sandbox", "--debug", "version", check=True)
    sim.docker("sandbox", "run", "--bogus")
    assert sim.argv_log() == [
        ["-D", "sandbox", "ls", "-q"],
        ["sandbox", "--debug", "version"],
        ["sandbox", "run", "--bogus"],
    ]


def test_concurrent_invocations_keep_state_consistent(sim: Sim) -> None:
    ws = sim.workspace()
    procs = [
        subprocess.Popen(
            ["docker", "sandbox", "create", "-q", "--name", f"box{i}", "shell", str(ws)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=sim.env,
        )
        for i in range(8)
    ]
    for proc in procs:
        proc.communicate(timeout=scaled(30))
        assert proc.returncode == 0
    assert sorted(s["name"] for s in sim.sandboxes()) == [f"box{i}" for i in range(8)]
    assert len(sim.argv_log()) == 8


# ---------------------------------------------------------------- mock API and proxy


def _post(url: str, headers: dict[str, str], body: dict[str, object]) -> tuple[int, dict, str]:
    req = urllib.request.Request(  # noqa: S310 - loopback http only
        f"{url}/v1/messages?beta=true",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(req, timeout=scaled(10)) as resp:  # noqa: S310 - loopback
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def test_mock_api_auth_and_replies(mock_api: mockapi.Stack) -> None:
    body = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    status, headers, text = _post(
        mock_api.api_url,
        {"authorization": "Bearer proxy-managed", "x-api-key": "proxy-managed"},
        body,
    )
    assert status == 401
    assert headers["x-should-retry"] == "false"
    assert json.loads(text) == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Invalid bearer token"},
    }

    status, _, text = _post(mock_api.api_url, {"x-api-key": mockapi.HOST_API_KEY}, body)
    assert status == 200
    assert json.loads(text)["content"] == [{"type": "text", "text": "MOCK reply"}]

    status, headers, text = _post(
        mock_api.api_url,
        {"authorization": f"Bearer {mockapi.OAUTH_ACCESS_TOKEN}"},
        {**body, "stream": True},
    )
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    events = [ln.removeprefix("event: ") for ln in text.splitlines() if ln.startswith("event:")]
    assert events == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert '"text_delta", "text": "MOCK reply"' in text
    assert [r.headers.get("authorization") for r in mock_api.requests] == [
        "Bearer proxy-managed",
        None,
        f"Bearer {mockapi.OAUTH_ACCESS_TOKEN}",
    ]


def test_proxy_injects_host_key_only_when_it_has_one(mock_api: mockapi.Stack) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": []}
    placeholder = {"authorization": "Bearer proxy-managed", "x-api-key": "proxy-managed"}
    assert _post(mock_api.url, placeholder, body)[0] == 401  # no host key: unchanged
    mock_api.proxy.host_api_key = mockapi.HOST_API_KEY
    assert _post(mock_api.url, placeholder, body)[0] == 200
    oauth = {"authorization": f"Bearer {mockapi.OAUTH_ACCESS_TOKEN}"}
    assert _post(mock_api.url, oauth, body)[0] == 200  # a real bearer is left alone
    seen = [(r.headers.get("authorization"), r.headers.get("x-api-key")) for r in mock_api.requests]
    assert seen == [
        ("Bearer proxy-managed", "proxy-managed"),
        (None, mockapi.HOST_API_KEY),
        (f"Bearer {mockapi.OAUTH_ACCESS_TOKEN}", None),
    ]
    assert len(mock_api.proxy.requests) == 3


def test_mock_api_other_endpoints(mock_api: mockapi.Stack) -> None:
    def get(path: str) -> int:
        try:
            url = f"{mock_api.url}{path}"
            with urllib.request.urlopen(url, timeout=scaled(5)) as resp:  # noqa: S310 - loopback
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return err.code

    assert get("/api/hello") == 404  # recorded, harmless
    assert get("/v1/models") == 401  # everything under /v1 needs credentials
    mock_api.proxy.host_api_key = mockapi.HOST_API_KEY
    assert get("/v1/models") == 401  # no placeholder to replace: nothing injected
    assert [r.path for r in mock_api.requests] == ["/api/hello", "/v1/models", "/v1/models"]


# ---------------------------------------------------------------- real Claude Code
#
# Measured on a 2-core VM (Claude Code 2.1.25, node 20), per `docker sandbox run ... -p hi`:
# the 401 case 1.3-1.9 s, a reply 1.3-1.7 s (OAuth sends a 1-token "quota" probe first),
# not logged in 1.2-1.4 s; the interactive session test about 5 s; `claude --version` in the
# session-scoped claude_bin fixture about 2 s. This whole section costs about 15 s.


def _claude_run(sim: Sim, name: str, ws: Path) -> subprocess.CompletedProcess[str]:
    return sim.docker("sandbox", "run", "claude", str(ws), "--", "-p", "hi", timeout=120)


@pytest.fixture
def logged_in(sim_claude: Sim) -> tuple[Sim, str, Path]:
    """A claude sandbox as Docker seeds it, whose user has also done `/login` inside it."""
    ws = sim_claude.workspace()
    name = sim_claude.create("claude", ws)
    sim_claude.login(name)
    return sim_claude, name, ws


@pytest.mark.e2e
def test_bug_seeded_helper_beats_login(
    logged_in: tuple[Sim, str, Path], mock_api: mockapi.Stack
) -> None:
    """(a) The reported bug: the placeholder is sent instead of the login, and 401s."""
    sim, name, ws = logged_in
    result = _claude_run(sim, name, ws)
    assert result.returncode == 1, result
    assert result.stdout == (
        'API Error: 401 {"type":"error","error":{"type":"authentication_error",'
        '"message":"Invalid bearer token"}} · Please run /login\n'
    )
    [req] = mock_api.messages()
    assert req.authorization == "Bearer proxy-managed"
    assert req.api_key == "proxy-managed"


@pytest.mark.e2e
def test_without_helper_login_is_used(
    logged_in: tuple[Sim, str, Path], mock_api: mockapi.Stack
) -> None:
    """(b) The manual fix: delete apiKeyHelper and the sandbox's own login is sent."""
    sim, name, ws = logged_in
    sim.drop_api_key_helper(name)
    result = _claude_run(sim, name, ws)
    assert (result.returncode, result.stdout) == (0, "MOCK reply\n"), result
    # With a subscription login Claude Code first sends a 1-token "quota" probe.
    assert {r.authorization for r in mock_api.messages()} == {
        f"Bearer {mockapi.OAUTH_ACCESS_TOKEN}"
    }
    assert all(r.api_key is None for r in mock_api.messages())


@pytest.mark.e2e
def test_helper_works_when_proxy_has_host_key(
    logged_in: tuple[Sim, str, Path], mock_api: mockapi.Stack
) -> None:
    """(c) With a host ANTHROPIC_API_KEY, Docker's proxy makes the placeholder work."""
    sim, name, ws = logged_in
    mock_api.proxy.host_api_key = mockapi.HOST_API_KEY
    result = _claude_run(sim, name, ws)
    assert (result.returncode, result.stdout) == (0, "MOCK reply\n"), result
    [req] = mock_api.messages()
    assert (req.authorization, req.api_key) == (None, mockapi.HOST_API_KEY)
    [sent] = [r for r in mock_api.proxy.requests if r.path.startswith("/v1/messages")]
    assert sent.authorization == "Bearer proxy-managed"  # what left the sandbox


@pytest.mark.e2e
def test_no_login_no_helper(sim_claude: Sim, mock_api: mockapi.Stack) -> None:
    """(d) Nothing to authenticate with: Claude Code asks for /login and sends nothing.

    2.1.25 words it "Invalid API key · Please run /login" (newer releases say "Not logged in").
    """
    ws = sim_claude.workspace()
    name = sim_claude.create("claude", ws)
    sim_claude.drop_api_key_helper(name)
    result = _claude_run(sim_claude, name, ws)
    assert result.returncode == 1, result
    assert "Please run /login" in result.stdout
    assert result.stdout.strip() in (
        "Invalid API key · Please run /login",
        "Not logged in · Please run /login",
    )
    assert mock_api.requests == []


@pytest.mark.e2e
def test_reseeding_brings_the_bug_back(
    logged_in: tuple[Sim, str, Path], mock_api: mockapi.Stack
) -> None:
    """With SBX_SIM_RESEED=1 a fix made once inside the sandbox does not survive `run`."""
    sim, name, ws = logged_in
    sim.drop_api_key_helper(name)
    sim.knobs(RESEED=1)
    result = _claude_run(sim, name, ws)
    assert result.returncode == 1
    assert "401" in result.stdout
    assert [r.authorization for r in mock_api.messages()] == ["Bearer proxy-managed"]


@pytest.mark.e2e
def test_interactive_session_follows_live_settings(
    logged_in: tuple[Sim, str, Path], mock_api: mockapi.Stack
) -> None:
    """An interactive claude started with the helper switches to the login once the helper is
    deleted while it runs (settings.json is watched). Also shows that the seeded ~/.claude.json
    spares it every first-run dialog. About 4 s.
    """
    sim, name, _ws = logged_in
    child = pexpect.spawn(
        "docker",
        ["sandbox", "run", name],
        env={**sim.env, "TERM": "xterm"},
        encoding="utf-8",
        dimensions=(40, 120),
        timeout=scaled(30),
    )
    try:
        child.expect("API Usage Billing")  # the banner of a session in API-key mode
        child.expect("bypass permissions on")  # the prompt's status line: input is live
        # The settings watcher starts a little after the prompt: an edit made at once can be
        # missed (observed), one made a second later is picked up within ~0.5 s.
        time.sleep(scaled(1.0))
        sim.drop_api_key_helper(name)
        time.sleep(scaled(1.5))
        child.send("hi")
        time.sleep(0.3)
        child.send("\r")
        child.expect("MOCK reply")
    finally:
        child.sendcontrol("c")
        time.sleep(0.3)
        child.sendcontrol("c")
        child.expect(pexpect.EOF)
        child.close()
    assert {r.authorization for r in mock_api.messages()} == {
        f"Bearer {mockapi.OAUTH_ACCESS_TOKEN}"
    }
