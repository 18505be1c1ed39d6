"""Shell set-ups for the pexpect tests, and a writer run as a subprocess by kill/race tests.

Each kind is a real interactive shell started in a temporary HOME holding the rc files
next to this module. No docker is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:  # when run as a script by the kill and race tests
    sys.path.insert(0, str(ROOT))

from sandboxwrap.shell import CommandResult, ShellSession, Transcript  # noqa: E402

SCALE = float(os.environ.get("SBX_TEST_TIMEOUT_SCALE") or "1")
FAKE_DOCKER = HERE / "fake-docker"

# Every kind the file round-trip matrix runs through.
MATRIX_KINDS = ("bash-heavy", "dash-env", "zsh-theme", "bash-exec-zsh")
# Kinds only checked for start-up and one round trip (they are slow on purpose).
STARTUP_KINDS = (
    "bash-slow",
    "bash-eats-typeahead",
    "bash-eats-part",
    "bash-reads-to-R",
    "bash-exec-fish",
    "bash-raw-tty",
    "sh-plain",
)


def scaled(seconds: float) -> float:
    """A test timeout stretched by SBX_TEST_TIMEOUT_SCALE (for slow CI machines)."""
    return seconds * SCALE


def base_env(home: Path) -> dict[str, str]:
    """A small, predictable environment for a shell whose HOME is `home`."""
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "USER": os.environ.get("USER", "root"),
    }


def require(tool: str, why: str = "") -> str:
    """The path of `tool`; missing, it skips the test, or fails it under SBX_TEST_REQUIRE_ALL."""
    import pytest

    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed{why} (tests/run.sh installs it)"
        if os.environ.get("SBX_TEST_REQUIRE_ALL"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


_BINARIES = {"zsh": "zsh", "fish": "fish", "dash": "dash"}


def make_shell(kind: str, home: Path) -> tuple[list[str], dict[str, str]]:
    """Write the rc files of `kind` into `home`; return (argv, env) that start that shell."""
    for word, tool in _BINARIES.items():
        if word in kind:
            require(tool)
    home.mkdir(parents=True, exist_ok=True)
    env = base_env(home)
    # zsh asks new users to configure it when no rc exists; every zsh kind gets the theme.
    shutil.copy(HERE / "zshrc-theme", home / ".zshrc")
    if kind == "bash-heavy":
        shutil.copy(HERE / "bashrc-heavy", home / ".bashrc")
        return ["bash", "-i"], env
    if kind == "bash-slow":
        shutil.copy(HERE / "bashrc-slow", home / ".bashrc")
        return ["bash", "-i"], env
    if kind == "bash-eats-typeahead":
        shutil.copy(HERE / "bashrc-eats-typeahead", home / ".bashrc")
        return ["bash", "-i"], env
    if kind in ("bash-eats-part", "bash-reads-to-R", "bash-raw-tty"):
        shutil.copy(HERE / f"bashrc-{kind[5:]}", home / ".bashrc")
        return ["bash", "-i"], env
    if kind == "bash-exec-fish":
        shutil.copy(HERE / "bashrc-exec-fish", home / ".bashrc")
        (home / ".config" / "fish").mkdir(parents=True, exist_ok=True)
        shutil.copy(HERE / "config.fish", home / ".config" / "fish" / "config.fish")
        return ["bash", "-i"], env
    if kind == "bash-exec-zsh":
        shutil.copy(HERE / "bashrc-exec-zsh", home / ".bashrc")
        return ["bash", "-i"], env
    if kind == "zsh-theme":
        return ["zsh", "-i"], env
    if kind == "dash-env":
        shutil.copy(HERE / "shrc-dash", home / ".shrc")
        env["ENV"] = str(home / ".shrc")
        return ["dash", "-i"], env
    if kind == "sh-plain":
        return ["sh", "-i"], env
    raise ValueError(f"unknown shell kind {kind}")


def start_session(
    kind: str, home: Path, *, transcript: Transcript | None = None, timeout: float = 20.0
) -> ShellSession:
    """A started ShellSession of `kind` with HOME=`home`."""
    argv, env = make_shell(kind, home)
    session = ShellSession(argv, env=env, timeout=scaled(timeout), transcript=transcript)
    try:
        session.start(ready_timeout=scaled(20))
    except BaseException:
        session.close()
        raise
    return session


def content(tag: str, i: int, size: int) -> bytes:
    """A valid settings.json of about `size` bytes that names its writer and round."""
    doc = {"apiKeyHelper": f"echo {tag}-{i}", "writer": tag, "round": i, "pad": "x" * size}
    return (json.dumps(doc, indent=2) + "\n").encode()


class _CountingSession:
    """A session wrapper that counts how often the lock was found held by someone else."""

    def __init__(self, session: ShellSession) -> None:
        self.session = session
        self.waited = 0

    def run(
        self, command: str, *, timeout: float | None = None, payload: bool = False
    ) -> CommandResult:
        result = self.session.run(command, timeout=timeout, payload=payload)
        self.waited += result.output.startswith("HELD")
        return result


def _constant(data: bytes) -> Callable[[object], bytes]:
    return lambda _file: data


def _writer_main(argv: list[str]) -> int:
    """`helpers.py write HOME TAG ROUNDS SIZE [GO_FILE]`: write TAG's contents ROUNDS times.

    Prints `READY <shell pid>`, waits for GO_FILE to exist if given, then `WROTE i secs`
    per round and `WAITED n` (how often the lock was found held).
    """
    from sandboxwrap import remote

    home, tag, rounds, size = Path(argv[0]), argv[1], int(argv[2]), int(argv[3])
    go = Path(argv[4]) if len(argv) > 4 else None
    session = ShellSession(["sh", "-i"], env=base_env(home), timeout=scaled(30))
    session.start(ready_timeout=scaled(20))
    child = session._child  # the shell's pid lets the kill test wait for the orphan
    counting = _CountingSession(session)
    print(f"READY {child.pid}", flush=True)
    while go is not None and not go.exists():
        time.sleep(0.005)
    for i in range(rounds):
        data = content(tag, i, size)
        t0 = time.monotonic()
        remote.update(counting, _constant(data), lock_timeout=scaled(60))
        print(f"WROTE {i} {time.monotonic() - t0:.3f}", flush=True)
    session.close()
    print(f"WAITED {counting.waited}", flush=True)
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "write":
        sys.exit(_writer_main(sys.argv[2:]))
    sys.exit(f"usage: {sys.argv[0]} write HOME TAG ROUNDS SIZE")
