"""Issue 4 through the whole product: `sbx` → simulated `docker sandbox exec -it` → real shells.

tests/test_shell.py and tests/test_remote.py drive the shells directly; here the same set-ups
live in the sandbox's home and sbx reaches them the way it reaches a real sandbox.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Sim

sys.path.insert(0, str(Path(__file__).resolve().parent / "shells"))
from helpers import make_shell

SEED_TEXT = (
    '{"themeId":1,"alwaysThinkingEnabled":true,"apiKeyHelper":"echo proxy-managed",'
    '"defaultMode":"bypassPermissions","bypassPermissionsModeAccepted":true}'
)
SEED_WITHOUT = SEED_TEXT.replace('"apiKeyHelper":"echo proxy-managed",', "")
API_KEY = "sk-ant-api03-SENTINEL-CASES-0123456789"


def sbx(
    sim: Sim, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return sim.sbx("--watch", "0", *args, env=env)


@pytest.fixture
def box(sim: Sim) -> str:
    sim.knobs(AGENT_CMD="true")
    return sim.create("claude", sim.workspace("proj"))


@pytest.mark.parametrize(
    "kind",
    ["bash-heavy", "bash-slow", "bash-exec-zsh", "bash-exec-fish", "zsh-theme", "dash-env"],
)
def test_every_shell_setup(sim: Sim, box: str, kind: str) -> None:
    argv, env = make_shell(kind, sim.home(box))
    extra = {"SBX_SHELL": argv[0]}
    if "ENV" in env:
        sim.knobs(SANDBOX_ENV=json.dumps({"ENV": env["ENV"]}))
    proc = sbx(sim, "run", box, env=extra)
    assert proc.returncode == 0, proc.stderr
    assert sim.settings(box) == SEED_WITHOUT
    # Back again for an API-key host, through the same shell.
    proc = sbx(sim, "run", box, env={**extra, "ANTHROPIC_API_KEY": API_KEY})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(sim.settings(box)) == json.loads(SEED_TEXT)


def test_missing_shell_says_what_to_do(sim: Sim, box: str) -> None:
    proc = sbx(sim, "--shell", "no-such-shell", "run", box)
    assert proc.returncode == 75
    assert "--shell sh" in proc.stderr
    assert sim.settings(box) == SEED_TEXT


def test_claude_config_dir_inside_the_sandbox(sim: Sim, box: str) -> None:
    cfg = sim.home(box) / "my config 'dir'"
    cfg.mkdir()
    (cfg / "settings.json").write_text(SEED_TEXT)
    sim.knobs(SANDBOX_ENV=json.dumps({"CLAUDE_CONFIG_DIR": str(cfg)}))
    proc = sbx(sim, "run", box)
    assert proc.returncode == 0, proc.stderr
    assert (cfg / "settings.json").read_text() == SEED_WITHOUT
    assert sim.settings(box) == SEED_TEXT  # ~/.claude is not Claude's folder here
    assert "$CLAUDE_CONFIG_DIR/settings.json" in sbx(sim, "-v", "run", box).stderr


def test_symlinked_settings_keeps_the_link(sim: Sim, box: str) -> None:
    real = sim.home(box) / "dotfiles" / "claude-settings.json"
    real.parent.mkdir()
    real.write_text(SEED_TEXT)
    link = sim.settings_path(box)
    link.unlink()
    link.symlink_to(real)
    proc = sbx(sim, "run", box)
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink()
    assert real.read_text() == SEED_WITHOUT


def test_mode_is_kept(sim: Sim, box: str) -> None:
    path = sim.settings_path(box)
    path.chmod(0o600)
    assert sbx(sim, "run", box).returncode == 0
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == SEED_WITHOUT


@pytest.mark.parametrize("remove", ["file", "folder"])
def test_missing_file_is_created_only_for_api_key(sim: Sim, box: str, remove: str) -> None:
    path = sim.settings_path(box)
    path.unlink()
    if remove == "folder":
        for child in path.parent.iterdir():
            child.unlink()
        path.parent.rmdir()
    proc = sbx(sim, "run", box)
    assert proc.returncode == 0, proc.stderr
    assert not path.exists()
    assert "apiKeyHelper already absent" in proc.stderr
    proc = sbx(sim, "run", box, env={"ANTHROPIC_API_KEY": API_KEY})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(path.read_text()) == {"apiKeyHelper": "echo proxy-managed"}
    assert path.stat().st_mode & 0o777 == 0o644


def test_users_own_helper_is_left_and_named(sim: Sim, box: str) -> None:
    sim.write_settings(box, {"apiKeyHelper": "~/bin/vault-key", "model": "opus"})
    proc = sbx(sim, "run", box)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(sim.settings(box))["apiKeyHelper"] == "~/bin/vault-key"
    assert "warning:" in proc.stderr
    assert "~/bin/vault-key" in proc.stderr
    proc = sbx(sim, "--force", "run", box)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(sim.settings(box)) == {"model": "opus"}
    backups = list(sim.settings_path(box).parent.glob("settings.json.sbx-backup-*"))
    assert len(backups) == 1


def test_other_layers_that_set_the_helper_are_named(sim: Sim, box: str) -> None:
    ws = sim.workspace("proj")
    (ws / ".claude").mkdir()
    (ws / ".claude" / "settings.local.json").write_text('{"apiKeyHelper": "echo team-key"}')
    proc = sbx(sim, "run", box)
    assert proc.returncode == 0, proc.stderr
    assert f"{ws}/.claude/settings.local.json" in proc.stderr
    assert "does not edit that layer" in proc.stderr
    # Not edited.
    assert (ws / ".claude" / "settings.local.json").read_text() == (
        '{"apiKeyHelper": "echo team-key"}'
    )


def test_two_sbx_at_once_end_with_a_valid_right_file(sim: Sim, box: str) -> None:
    results = sim.sbx_at_once(3, "--watch", "0", "run", box)
    assert [r.returncode for r in results] == [0, 0, 0], results
    assert sim.settings(box) == SEED_WITHOUT
    leftovers = [p.name for p in sim.settings_path(box).parent.iterdir() if "sbx" in p.name]
    assert leftovers == []


def test_nothing_is_left_in_the_sandbox(sim: Sim, box: str) -> None:
    before = sorted(p.name for p in sim.settings_path(box).parent.iterdir())
    assert sbx(sim, "run", box).returncode == 0
    assert sbx(sim, "run", box, env={"ANTHROPIC_API_KEY": API_KEY}).returncode == 0
    assert sorted(p.name for p in sim.settings_path(box).parent.iterdir()) == before


def test_slow_boot_then_hang_then_ok(sim: Sim, box: str) -> None:
    sim.docker("sandbox", "stop", box, check=True)
    sim.knobs(BOOT_SECONDS=1, EXEC_FAIL=1, EXEC_HANG=0.5)
    proc = sbx(sim, "-v", "run", box)
    assert proc.returncode == 0, proc.stderr
    assert "not ready" in proc.stderr
    assert sim.settings(box) == SEED_WITHOUT


def test_patch_command_fixes_a_running_sandbox(sim: Sim, box: str) -> None:
    proc = sbx(sim, "patch", box)
    assert proc.returncode == 0, proc.stderr
    assert sim.settings(box) == SEED_WITHOUT
    assert [a for a in sim.argv_log() if a[:2] == ["sandbox", "run"]] == []
    missing = sbx(sim, "patch", "nope")
    assert missing.returncode == 70
    assert "no sandbox named 'nope'" in missing.stderr


def test_exec_does_not_inherit_host_secrets(sim: Sim, box: str) -> None:
    sim.knobs(AGENT_CMD="sh -c env agent")
    proc = sbx(sim, "run", box, env={"ANTHROPIC_API_KEY": API_KEY})
    assert proc.returncode == 0
    assert API_KEY not in proc.stdout
