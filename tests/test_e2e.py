"""The verdict of the real Claude Code 2.1.25, started by the simulated `run` inside the sandbox.

A subscription user who already ran `/login` inside the sandbox gets the reported 401 from
plain `docker sandbox run`, and the mock's reply from `sbx run`; an API-key user sees no
difference; a user with nothing is asked to log in. Each case runs with the plugin seeding
settings.json once (at creation) and again at every start.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mockapi
import pytest
from conftest import Sim, scaled, write_login

pytestmark = pytest.mark.e2e

HOST_LOGIN_TOKEN = "sk-ant-oat01-SENTINEL-HOSTLOGIN-0123456789"
SEEDING = ["once", "every-start"]


def sbx_run(sim: Sim, *args: str, env: dict[str, str] | None = None):
    return sim.sbx("run", *args, env=env)


@pytest.fixture(params=SEEDING)
def seeding(request: pytest.FixtureRequest, sim_claude: Sim) -> str:
    if request.param == "every-start":
        sim_claude.knobs(RESEED=1)
    return str(request.param)


@pytest.fixture
def subscriber(sim_claude: Sim, seeding: str) -> tuple[Sim, str]:
    """A Pro/Max user: logged in on the host, and inside the sandbox (as /login leaves it)."""
    write_login(sim_claude.host_home, access_token=HOST_LOGIN_TOKEN)
    name = sim_claude.create("claude", sim_claude.workspace("proj"))
    sim_claude.login(name)
    return sim_claude, name


def test_plain_docker_sandbox_run_gives_the_reported_401(
    subscriber: tuple[Sim, str], mock_api: mockapi.Stack
) -> None:
    sim, name = subscriber
    plain = sim.docker("sandbox", "run", name, "--", "-p", "hi", timeout=120)
    assert plain.returncode == 1
    assert "401" in plain.stdout
    assert "Invalid bearer token" in plain.stdout
    assert {r.authorization for r in mock_api.messages()} == {"Bearer proxy-managed"}


def test_sbx_run_gives_the_subscriber_a_working_session(
    subscriber: tuple[Sim, str], seeding: str, mock_api: mockapi.Stack
) -> None:
    sim, name = subscriber
    proc = sbx_run(sim, name, "--", "-p", "hi")
    assert (proc.returncode, proc.stdout) == (0, "MOCK reply\n"), proc.stderr
    # With a plugin that seeds at every start, the fix came from watching after the start.
    rewritten = "was rewritten after the agent started; removed apiKeyHelper again"
    assert (rewritten in proc.stderr) == (seeding == "every-start")
    sent = {r.authorization for r in mock_api.messages()}
    assert sent == {f"Bearer {mockapi.OAUTH_ACCESS_TOKEN}"}
    assert "sbx: oauth (login found in ~/.claude/.credentials.json): " in proc.stderr
    # sbx does not copy host logins in: the sandbox's own login was used.
    assert HOST_LOGIN_TOKEN not in (sim.home(name) / ".claude" / ".credentials.json").read_text()


def test_without_watching_a_reseeding_plugin_brings_the_401_back(
    sim_claude: Sim, mock_api: mockapi.Stack
) -> None:
    """The control for the watch: what `--watch 0` leaves behind with Docker's later CLI."""
    sim_claude.knobs(RESEED=1)
    write_login(sim_claude.host_home, access_token=HOST_LOGIN_TOKEN)
    name = sim_claude.create("claude", sim_claude.workspace("proj"))
    sim_claude.login(name)
    proc = subprocess.run(
        [sys.executable, "-m", "sandboxwrap", "--watch", "0", "run", name, "--", "-p", "hi"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**sim_claude.env, "SBX_PROFILE_CHECK": "0"},
        timeout=scaled(120),
        check=False,
    )
    assert proc.returncode == 1
    assert "Invalid bearer token" in proc.stdout


def test_sbx_run_agent_plus_workspace_form(sim_claude: Sim, seeding: str, mock_api) -> None:
    """First run creates the sandbox (no login yet: Claude asks for one); after /login it works."""
    write_login(sim_claude.host_home, access_token=HOST_LOGIN_TOKEN)
    ws = sim_claude.workspace("proj")
    first = sbx_run(sim_claude, "claude", str(ws), "--", "-p", "hi")
    assert first.returncode == 1
    assert "Please run /login" in first.stdout
    assert mock_api.messages() == []  # nothing sent with a placeholder key
    sim_claude.login("claude-proj")  # the user runs /login inside the sandbox
    second = sbx_run(sim_claude, "claude", str(ws), "--", "-p", "hi")
    assert (second.returncode, second.stdout) == (0, "MOCK reply\n"), second.stderr


def test_api_key_user_sees_no_difference(
    sim_claude: Sim, seeding: str, mock_api: mockapi.Stack
) -> None:
    mock_api.proxy.host_api_key = mockapi.HOST_API_KEY  # Docker Desktop read it at start
    name = sim_claude.create("claude", sim_claude.workspace("proj"))
    plain = sim_claude.docker("sandbox", "run", name, "--", "-p", "hi", timeout=120)
    proc = sbx_run(
        sim_claude, name, "--", "-p", "hi", env={"ANTHROPIC_API_KEY": mockapi.HOST_API_KEY}
    )
    assert (plain.returncode, plain.stdout) == (proc.returncode, proc.stdout) == (0, "MOCK reply\n")
    assert {r.api_key for r in mock_api.messages()} == {mockapi.HOST_API_KEY}
    assert "api-key (ANTHROPIC_API_KEY is set): kept apiKeyHelper" in proc.stderr
    assert mockapi.HOST_API_KEY not in proc.stderr + proc.stdout


def test_api_key_user_gets_the_helper_back(
    sim_claude: Sim, seeding: str, mock_api: mockapi.Stack
) -> None:
    """A sandbox fixed for a login earlier works again once the host has a key."""
    mock_api.proxy.host_api_key = mockapi.HOST_API_KEY
    name = sim_claude.create("claude", sim_claude.workspace("proj"))
    sim_claude.drop_api_key_helper(name)
    proc = sbx_run(
        sim_claude, name, "--", "-p", "hi", env={"ANTHROPIC_API_KEY": mockapi.HOST_API_KEY}
    )
    assert (proc.returncode, proc.stdout) == (0, "MOCK reply\n"), proc.stderr
    assert {r.api_key for r in mock_api.messages()} == {mockapi.HOST_API_KEY}


def test_no_credentials_is_asked_to_log_in(
    sim_claude: Sim, seeding: str, mock_api: mockapi.Stack
) -> None:
    name = sim_claude.create("claude", sim_claude.workspace("proj"))
    proc = sbx_run(sim_claude, name, "--", "-p", "hi")
    assert proc.returncode == 1
    # 2.1.25 words it "Invalid API key · Please run /login" (the reference says "Not logged in").
    assert "Please run /login" in proc.stdout
    assert "401" not in proc.stdout
    assert mock_api.messages() == []
    assert "apiKeyHelper" not in sim_claude.settings(name)
    assert "sbx: none (no API key or login found on this host): " in proc.stderr


def test_the_demo_shows_the_bug_and_the_fix(claude_bin: Path, tmp_path: Path) -> None:
    """`bash examples/demo.sh`, as the README tells people to run it."""
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        ["bash", str(repo / "examples" / "demo.sh")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "SBX_TEST_CLAUDE": str(claude_bin),
            "PYTHON": sys.executable,
        },
        cwd=tmp_path,
        timeout=scaled(180),
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok   docker sandbox run: 401 (the reported bug)" in proc.stdout
    assert "ok   sbx run: the reply came back, using your login" in proc.stdout
