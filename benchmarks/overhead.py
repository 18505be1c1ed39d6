"""How much time and memory `sbx run` adds to `docker sandbox run`, on the plugin simulator.

    python benchmarks/overhead.py [--runs N]

Prints figures; it asserts nothing. The simulator answers in milliseconds, so these are
sbx's own costs (Python start-up, the plugin calls it makes, the pexpect session); a real
`docker sandbox exec` adds its own latency to each of the round trips counted here.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIM = REPO / "tests" / "sim" / "docker"
SEED = (
    '{"themeId":1,"alwaysThinkingEnabled":true,"apiKeyHelper":"echo proxy-managed",'
    '"defaultMode":"bypassPermissions","bypassPermissionsModeAccepted":true}'
)


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, check=True)
    return time.perf_counter() - start


def row(label: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    return f"{label:<44} median {statistics.median(ms):7.1f} ms   p90 {p90:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory(prefix="sbx-bench-") as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        docker = root / "bin" / "docker"
        docker.write_text(
            f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(SIM))} "$@"\n'
        )
        docker.chmod(0o755)
        ws = root / "ws" / "proj"
        ws.mkdir(parents=True)
        env = {
            "PATH": f"{root / 'bin'}:{os.environ['PATH']}",
            "HOME": str(root / "home"),
            "XDG_CONFIG_HOME": str(root / "cfg"),
            "XDG_STATE_HOME": str(root / "state-home"),
            "SBX_SIM_STATE": str(root / "state"),
            "SBX_SIM_AGENT_CMD": "true",
            "SBX_PROFILE_CHECK": "0",
            "PYTHONPATH": str(REPO),
        }
        subprocess.run(
            ["docker", "sandbox", "create", "claude", str(ws)],
            env=env,
            check=True,
            capture_output=True,
        )
        settings = root / "state" / "vms" / "claude-proj" / "home" / ".claude" / "settings.json"
        sbx = [sys.executable, "-m", "sandboxwrap", "--watch", "0", "run", "claude-proj"]
        plain = ["docker", "sandbox", "run", "claude-proj"]

        results = {"plain": [], "right": [], "fix": [], "passthrough": []}
        for _ in range(runs):
            results["plain"].append(timed(plain, env))
            results["right"].append(timed(sbx, env))  # already fixed by the previous run
            settings.write_text(SEED)
            results["fix"].append(timed(sbx, env))
            results["passthrough"].append(
                timed([sys.executable, "-m", "sandboxwrap", "run", "codex", str(ws)], env)
            )
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(f"runs: {runs} each, simulator on {sys.executable}")
        print(row("docker sandbox run (plain, simulator)", results["plain"]))
        print(row("sbx run, settings.json already right", results["right"]))
        print(row("sbx run, apiKeyHelper to remove", results["fix"]))
        print(row("sbx run codex (pass-through)", results["passthrough"]))
        print(f"peak RSS of any child process: {peak_kib / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
