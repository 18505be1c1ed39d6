"""`sbx init`: the snippet is only code, and works in the real shells."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxwrap.snippets import SHELLS, render

RECORDER = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["REC_LOG"], "a") as f:
    f.write(json.dumps({"who": os.path.basename(sys.argv[0]), "argv": sys.argv[1:]}) + "\\n")
sys.exit(int(os.environ.get("REC_STATUS", "0")))
"""


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed; tests/run.sh installs it")
    return path


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    for name in ("docker", "sbx"):
        exe = d / name
        exe.write_text(RECORDER)
        exe.chmod(0o755)
    return d


def _run_in(shell: str, script: str, bin_dir: Path, tmp_path: Path, status: int = 0):
    log = tmp_path / "rec.log"
    log.unlink(missing_ok=True)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "REC_LOG": str(log),
        "REC_STATUS": str(status),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
    }
    argv = [_require(shell), "-c", script]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


@pytest.mark.parametrize("shell", SHELLS)
def test_snippet_routes_only_sandbox_run(shell: str, bin_dir: Path, tmp_path: Path) -> None:
    snippet = render(shell, str(bin_dir / "sbx"))
    snippet_file = tmp_path / "snippet"
    snippet_file.write_text(snippet)
    src = f"source {snippet_file}"
    script = "\n".join(
        [
            src,
            src,  # sourcing twice is harmless
            "docker sandbox run claude 'my dir' -- -p 'hi there' '$HOME'",
            "docker sandbox ls --json",
            "docker ps -a",
            "docker sandbox",
        ]
    )
    proc, calls = _run_in(shell, script, bin_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert calls == [
        {"who": "sbx", "argv": ["run", "claude", "my dir", "--", "-p", "hi there", "$HOME"]},
        {"who": "docker", "argv": ["sandbox", "ls", "--json"]},
        {"who": "docker", "argv": ["ps", "-a"]},
        {"who": "docker", "argv": ["sandbox"]},
    ]
    assert proc.stdout == ""


@pytest.mark.parametrize("shell", SHELLS)
def test_exit_status_survives(shell: str, bin_dir: Path, tmp_path: Path) -> None:
    snippet_file = tmp_path / "snippet"
    snippet_file.write_text(render(shell, str(bin_dir / "sbx")))
    echo = "echo $status" if shell == "fish" else 'echo "$?"'
    proc, _ = _run_in(
        shell, f"source {snippet_file}\ndocker sandbox run claude\n{echo}", bin_dir, tmp_path, 42
    )
    assert proc.stdout.strip() == "42"


def test_bash_snippet_survives_an_existing_alias(bin_dir: Path, tmp_path: Path) -> None:
    snippet_file = tmp_path / "snippet"
    snippet_file.write_text(render("bash", str(bin_dir / "sbx")))
    script = (
        "shopt -s expand_aliases\nalias docker='docker --context x'\n"
        f"source {snippet_file}\nunalias docker\ndocker sandbox run claude"
    )
    proc, calls = _run_in("bash", script, bin_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert calls == [{"who": "sbx", "argv": ["run", "claude"]}]


def test_bash_snippet_passes_shellcheck(tmp_path: Path) -> None:
    snippet_file = tmp_path / "snippet.bash"
    snippet_file.write_text(render("bash", "/opt/my tools/sbx"))
    proc = subprocess.run(
        [_require("shellcheck"), "-s", "bash", str(snippet_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout


def test_cli_prints_only_code_and_uses_its_own_path(tmp_path: Path) -> None:
    env = {**os.environ, "SHELL": "/usr/bin/zsh"}
    proc = subprocess.run(
        [sys.executable, "-m", "sandboxwrap", "init"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "function docker" in proc.stdout
    assert f"{sys.executable} -m sandboxwrap run" in proc.stdout
    for line in proc.stdout.splitlines():
        stripped = line.strip()
        assert (
            stripped.startswith("#")
            or not stripped
            or "docker" in stripped
            or stripped
            in {
                "fi",
                "else",
                "}",
                "shift 2",
            }
            or stripped.startswith(("if ", f"{sys.executable}"))
        ), line


def test_cli_refuses_unknown_shell() -> None:
    env = {**os.environ, "SHELL": "/bin/tcsh"}
    proc = subprocess.run(
        [sys.executable, "-m", "sandboxwrap", "init"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert "sbx init bash" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "sandboxwrap", "init", "tcsh"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert "bash, zsh, fish" in proc.stderr
