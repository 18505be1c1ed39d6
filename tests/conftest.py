"""Shared fixtures: the `docker sandbox` simulator, the mock API, and the pinned Claude Code.

Fixtures defined here:
  sim          -> Sim        simulator first on PATH, host HOME/XDG isolated, state in tmp
  mock_api     -> Stack      mock Anthropic API + Docker's proxy stand-in (tests/sim/mockapi.py)
  claude_bin   -> Path       real Claude Code 2.1.25; fails (never skips) when missing
  sim_claude   -> Sim        `sim` wired to run real Claude Code against `mock_api`
Helpers: scaled(seconds), write_login(home, ...), CLAUDE_SANDBOX_ENV.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SIM_DIR = REPO / "tests" / "sim"
SIM_DOCKER = SIM_DIR / "docker"

# tests/sim is not a package; make `import mockapi` work here and in test modules.
if str(SIM_DIR) not in sys.path:
    sys.path.insert(0, str(SIM_DIR))
import mockapi  # noqa: E402

CLAUDE_VERSION = "2.1.25"
CLAUDE_CACHE = REPO / "tests" / ".cache" / "node" / "node_modules" / ".bin" / "claude"
CLAUDE_INSTALL_HINT = (
    f"npm install --prefix tests/.cache/node @anthropic-ai/claude-code@{CLAUDE_VERSION}"
)
# What a sandbox needs so that Claude Code talks only to our loopback mock.
CLAUDE_SANDBOX_ENV = {"DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
# Host variables that must not reach the code under test from the developer's machine.
_SCRUB_PREFIXES = ("ANTHROPIC_", "CLAUDE_", "SBX_", "DOCKER_")
_KEEP = ("SBX_TEST_",)


def scaled(seconds: float) -> float:
    """A timeout multiplied by SBX_TEST_TIMEOUT_SCALE (slow CI machines set it above 1)."""
    return seconds * float(os.environ.get("SBX_TEST_TIMEOUT_SCALE") or 1)


def write_login(
    home: Path,
    access_token: str = mockapi.OAUTH_ACCESS_TOKEN,
    refresh_token: str | None = mockapi.OAUTH_REFRESH_TOKEN,
    subscription: str = "max",
) -> Path:
    """Write what `/login` inside a sandbox leaves behind: ~/.claude/.credentials.json, 0600."""
    path = home / ".claude" / ".credentials.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    far_future_ms = int((time.time() + 365 * 86400) * 1000)
    creds = {
        "claudeAiOauth": {
            "accessToken": access_token,
            "refreshToken": refresh_token,
            "expiresAt": far_future_ms,
            "scopes": ["user:inference"],
            "subscriptionType": subscription,
        }
    }
    path.write_text(json.dumps(creds))
    path.chmod(0o600)
    return path


@dataclass
class Sim:
    """Handle on one simulated Docker Desktop: run `docker`, look inside sandboxes, set knobs."""

    root: Path
    state: Path
    bin_dir: Path
    host_home: Path
    monkeypatch: pytest.MonkeyPatch

    @property
    def env(self) -> dict[str, str]:
        """The environment for subprocesses (the test process's, already isolated)."""
        return dict(os.environ)

    def setenv(self, name: str, value: str) -> None:
        """Set a knob (SBX_SIM_*) or any variable for the rest of the test."""
        self.monkeypatch.setenv(name, value)

    def delenv(self, name: str) -> None:
        self.monkeypatch.delenv(name, raising=False)

    def knobs(self, **knobs: str | int | float) -> None:
        """sim.knobs(RESEED=1, EXEC_FAIL=2) sets SBX_SIM_RESEED=1, SBX_SIM_EXEC_FAIL=2."""
        for name, value in knobs.items():
            self.setenv(f"SBX_SIM_{name.upper()}", str(value))

    def docker(
        self,
        *args: str,
        check: bool = False,
        input: str | None = None,
        cwd: Path | str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        """Run `docker ARGS...` (the simulator, found on PATH) and capture its output."""
        result = subprocess.run(
            ["docker", *args],
            capture_output=True,
            text=True,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            cwd=cwd,
            env={**self.env, **(env or {})},
            timeout=scaled(timeout),
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"docker {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def workspace(self, name: str = "my-project") -> Path:
        """A host directory to use as a workspace (created on demand)."""
        path = self.root / "work" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def create(
        self,
        agent: str = "claude",
        workspace: Path | str | None = None,
        *extra: str,
        name: str | None = None,
    ) -> str:
        """`docker sandbox create [--name N] AGENT WORKSPACE EXTRA...`; returns the name."""
        ws = str(workspace if workspace is not None else self.workspace())
        opts = ["--name", name] if name else []
        result = self.docker("sandbox", "create", "-q", *opts, agent, ws, *extra, check=True)
        return result.stdout.strip().splitlines()[-1]

    def home(self, name: str) -> Path:
        """The sandbox's /home/agent."""
        return self.state / "vms" / name / "home"

    def settings_path(self, name: str) -> Path:
        return self.home(name) / ".claude" / "settings.json"

    def settings(self, name: str) -> str:
        """Text of the sandbox's ~/.claude/settings.json."""
        return self.settings_path(name).read_text()

    def write_settings(self, name: str, settings: Mapping[str, Any] | str) -> None:
        """Replace the sandbox's settings.json, as an `exec` edit (or the user) would."""
        text = settings if isinstance(settings, str) else json.dumps(settings)
        self.settings_path(name).write_text(text)

    def drop_api_key_helper(self, name: str) -> None:
        """Delete the apiKeyHelper entry from the sandbox's settings.json (the manual fix)."""
        settings = json.loads(self.settings(name))
        settings.pop("apiKeyHelper", None)
        self.write_settings(name, settings)

    def login(self, name: str, **kwargs: Any) -> Path:
        """Give the sandbox its own subscription login (see write_login)."""
        return write_login(self.home(name), **kwargs)

    def sandboxes(self) -> list[dict[str, Any]]:
        """The simulator's raw records (name, id, agent, workspaces, status, template...)."""
        path = self.state / "sandboxes.json"
        if not path.exists():
            return []
        return list(json.loads(path.read_text())["sandboxes"])

    def sandbox(self, name: str) -> dict[str, Any]:
        found = [s for s in self.sandboxes() if s["name"] == name]
        if not found:
            pytest.fail(f"no simulated sandbox named {name!r}")
        return found[0]

    def sbx(
        self, *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run sbx as a user would: a fresh process, stdin closed, no login-shell probe."""
        return subprocess.run(
            [sys.executable, "-m", "sandboxwrap", *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env={**self.env, "SBX_PROFILE_CHECK": "0", **(env or {})},
            cwd=cwd,
            timeout=scaled(120),
            check=False,
        )

    def sbx_at_once(self, count: int, *args: str) -> list[subprocess.CompletedProcess[str]]:
        """Start `count` identical sbx processes together (several terminals) and wait."""
        env = {**self.env, "SBX_PROFILE_CHECK": "0"}
        argv = [sys.executable, "-m", "sandboxwrap", *args]
        procs = [
            subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env=env,
                text=True,
            )
            for _ in range(count)
        ]
        outs = [p.communicate(timeout=scaled(120)) for p in procs]
        return [
            subprocess.CompletedProcess(argv, p.returncode, out, err)
            for p, (out, err) in zip(procs, outs, strict=True)
        ]

    def argv_log(self) -> list[list[str]]:
        """Every argv the simulator received (without the leading `docker`), oldest first."""
        path = self.state / "argv.log"
        if not path.exists():
            return []
        return [json.loads(line)["argv"] for line in path.read_text().splitlines() if line]


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sim:
    """The `docker sandbox` simulator on PATH, with the host side isolated in tmp_path."""
    root = tmp_path / "sim"
    state = root / "state"
    bin_dir = root / "bin"
    host_home = root / "host-home"
    for d in (state, bin_dir, host_home):
        d.mkdir(parents=True)
    if not os.access(SIM_DOCKER, os.X_OK):
        pytest.fail(f"{SIM_DOCKER} is not executable (git lost its mode? chmod +x it)")
    # A wrapper rather than a symlink: the simulator runs on this interpreter, not on
    # whatever `python3` PATH offers (a pyenv shim would also rewrite the sandbox's PATH).
    wrapper = bin_dir / "docker"
    wrapper.write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(SIM_DOCKER))} "$@"\n'
    )
    wrapper.chmod(0o755)

    for name in list(os.environ):
        if name.startswith(_SCRUB_PREFIXES) and not name.startswith(_KEEP):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("HOME", str(host_home))
    for var in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        path = root / "xdg" / var.removeprefix("XDG_").removesuffix("_HOME").lower()
        path.mkdir(parents=True)
        monkeypatch.setenv(var, str(path))
    runtime = root / "xdg" / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("DOCKER_CONFIG", str(host_home / ".docker"))
    monkeypatch.setenv("SBX_SIM_STATE", str(state))
    return Sim(
        root=root, state=state, bin_dir=bin_dir, host_home=host_home, monkeypatch=monkeypatch
    )


@pytest.fixture
def mock_api() -> Iterator[mockapi.Stack]:
    """Mock API + proxy on loopback. Sandboxes should use `.url` (the proxy).

    The mock accepts mockapi.HOST_API_KEY (x-api-key) and mockapi.OAUTH_ACCESS_TOKEN (Bearer).
    The proxy has no host key until a test sets `mock_api.proxy.host_api_key`.
    """
    stack = mockapi.start_stack()
    try:
        yield stack
    finally:
        stack.stop()


def _claude_version(path: Path) -> str:
    """`claude --version`, run with a throwaway HOME so nothing touches the real one."""
    home = Path(tempfile.mkdtemp(prefix="sbx-claude-version-"))
    try:
        result = subprocess.run(
            [str(path), "--version"],
            capture_output=True,
            text=True,
            timeout=scaled(60),
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(home)},
            check=False,
        )
    except OSError as exc:
        return f"<cannot run: {exc}>"
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return (result.stdout or result.stderr).strip()


def find_claude() -> tuple[Path | None, str]:
    """Locate the pinned Claude Code. Returns (path or None, explanation)."""
    explicit = os.environ.get("SBX_TEST_CLAUDE")
    if explicit:
        # An explicit choice is honoured whatever its version (to try other releases).
        path = Path(explicit)
        if not path.exists():
            return None, f"SBX_TEST_CLAUDE={explicit} does not exist"
        return path.resolve(), f"SBX_TEST_CLAUDE ({_claude_version(path)})"
    tried = []
    on_path = shutil.which("claude")
    for candidate in (CLAUDE_CACHE, Path(on_path) if on_path else None):
        if candidate is None or not candidate.exists():
            continue
        version = _claude_version(candidate)
        if version.startswith(CLAUDE_VERSION + " "):
            return candidate.resolve(), version
        tried.append(f"{candidate} is {version!r}")
    return None, "; ".join(tried) or "no claude found"


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    """Real Claude Code 2.1.25. Missing is a failure, not a skip (CI must not go green blind)."""
    path, why = find_claude()
    if path is None:
        pytest.fail(
            f"Claude Code {CLAUDE_VERSION} is required for this test ({why}). Install it with\n"
            f"    {CLAUDE_INSTALL_HINT}\n"
            "or point SBX_TEST_CLAUDE at a claude executable.",
            pytrace=False,
        )
    return path


@pytest.fixture
def sim_claude(sim: Sim, mock_api: mockapi.Stack, claude_bin: Path) -> Sim:
    """`sim` whose sandboxes run real Claude Code, talking to `mock_api` through the proxy."""
    sim.knobs(
        AGENT_CMD=shlex.quote(str(claude_bin)),
        API_URL=mock_api.url,
        SANDBOX_ENV=json.dumps(CLAUDE_SANDBOX_ENV),
    )
    return sim
