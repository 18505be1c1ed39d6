"""Talking to the `docker sandbox` plugin: finding it, its version, naming, listing, creating.

Nothing here edits arguments the user gave to `run`: `parse_run_args` only reads
them to learn which sandbox they name.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sandboxwrap.errors import DockerError, SandboxError

AGENTS = frozenset(
    {"claude", "codex", "gemini", "cagent", "kiro", "copilot", "opencode", "shell", "docker-agent"}
)
"""Agent names `docker sandbox run` accepts as its first positional (any plugin version)."""

# Options of `docker sandbox run` that take a value, and those that do not.
_VALUE_OPTS = {"--name", "-t", "--template", "--pull-template"}
_FLAG_OPTS = {"--load-local-template", "-d", "--detached", "--patch-settings", "-D", "--debug"}
_SHORT_FLAGS = {"d", "D"}

MICROVM_SINCE = (0, 7, 0)
"""Plugins before v0.7 ran containers and have no `exec`/`create`: sbx cannot patch them."""

_MISSING_PLUGIN = re.compile(r"unknown command: docker sandbox|'sandbox' is not a docker command")


@dataclass(frozen=True)
class RunRequest:
    """What a `docker sandbox run` argument list names (read-only view of the user's args)."""

    agent: str | None
    """The agent, when the first positional is an agent name."""
    sandbox: str | None
    """The sandbox name, when the first positional is not an agent name."""
    workspaces: tuple[str, ...] = ()
    name: str | None = None
    template: str | None = None
    load_local_template: bool = False
    pull_template: str | None = None
    detached: bool = False
    debug: bool = False
    agent_args: tuple[str, ...] = ()
    unknown_options: tuple[str, ...] = field(default=())
    cwd: str = field(default_factory=os.getcwd)
    """The directory relative paths are taken from (the shell's $PWD)."""

    @property
    def workspace(self) -> str:
        """The main workspace as an absolute path (the current directory by default)."""
        raw = self.workspaces[0] if self.workspaces else "."
        return os.path.normpath(os.path.join(self.cwd, os.path.expanduser(raw)))

    def sandbox_name(self) -> str | None:
        """The name the plugin uses for this request: --name, the given name, or agent-folder."""
        if self.sandbox is not None:
            return self.sandbox
        if self.name:
            return self.name
        if self.agent is None:
            return None
        return default_name(self.agent, self.workspace)


def default_name(agent: str, workspace: str) -> str:
    """The plugin's default sandbox name: `<agent>-<basename of the workspace>`."""
    base = os.path.basename(os.path.normpath(os.path.abspath(workspace))) or "root"
    return f"{agent}-{base}"


def own_options(args: Sequence[str]) -> list[str]:
    """The arguments that belong to `run` itself: everything before `--`."""
    args = list(args)
    return args[: args.index("--")] if "--" in args else args


def logical_cwd(environ: Mapping[str, str] | None = None) -> str:
    """The current directory as the user's shell names it ($PWD, symlinks kept).

    Go's os.Getwd, which the plugin uses, prefers $PWD when it names the current
    directory; os.getcwd() would resolve symlinks and so derive another default name.
    """
    env = os.environ if environ is None else environ
    pwd = env.get("PWD", "")
    if os.path.isabs(pwd):
        try:
            if os.path.samefile(pwd, "."):
                return pwd
        except OSError:
            pass
    return os.getcwd()


def parse_run_args(args: Sequence[str], cwd: str | None = None) -> RunRequest:
    """Read `docker sandbox run` arguments the way the plugin's cobra parser does.

    Flags may come before or after positionals; `--` ends them and starts the
    agent's own arguments. Unknown options are assumed to take no value unless
    written `--opt=value`; they are reported so -v can say the guess was made.
    """
    positionals: list[str] = []
    opts: dict[str, str] = {}
    flags: set[str] = set()
    unknown: list[str] = []
    agent_args: tuple[str, ...] = ()
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            agent_args = tuple(args[i + 1 :])
            break
        if arg.startswith("--") and len(arg) > 2:
            key, eq, value = arg.partition("=")
            if key in _VALUE_OPTS:
                if not eq:
                    i += 1
                    value = args[i] if i < len(args) else ""
                opts[key] = value
            elif key in _FLAG_OPTS:
                flags.add(key)
            else:
                unknown.append(arg)
        elif arg.startswith("-") and len(arg) > 1:
            # A pflag cluster: boolean letters, then at most one letter that takes a
            # value (the rest of the cluster, or the next argument): -dD, -Dt img, -timg.
            letters = arg[1:]
            for pos, letter in enumerate(letters):
                if letter in _SHORT_FLAGS:
                    flags.add(f"-{letter}")
                    continue
                if letter == "t":
                    value = letters[pos + 1 :].removeprefix("=")
                    if not value:
                        i += 1
                        value = args[i] if i < len(args) else ""
                    opts["-t"] = value
                else:
                    unknown.append(arg)
                break
        else:
            positionals.append(arg)
        i += 1

    first = positionals[0] if positionals else None
    is_agent = first in AGENTS
    return RunRequest(
        agent=first if is_agent else None,
        sandbox=None if is_agent else first,
        workspaces=tuple(w for w in positionals[1:]) if is_agent else (),
        name=opts.get("--name"),
        template=opts.get("-t", opts.get("--template")),
        load_local_template="--load-local-template" in flags,
        pull_template=opts.get("--pull-template"),
        detached=bool(flags & {"-d", "--detached"}),
        debug=bool(flags & {"-D", "--debug"}),
        agent_args=agent_args,
        unknown_options=tuple(unknown),
        cwd=cwd if cwd is not None else logical_cwd(),
    )


@dataclass(frozen=True)
class SandboxInfo:
    """One entry of `docker sandbox ls --json` (fields the plugin may omit are optional)."""

    name: str
    agent: str | None
    status: str | None
    workspaces: tuple[str, ...]


class Plugin:
    """The `docker sandbox` plugin behind a docker executable."""

    def __init__(self, docker: str, environ: Mapping[str, str] | None = None) -> None:
        self.docker = docker
        self.environ = dict(os.environ if environ is None else environ)

    @classmethod
    def find(cls, docker: str = "docker", environ: Mapping[str, str] | None = None) -> Plugin:
        """Locate docker (a path, or a name looked up on PATH) or raise DockerError."""
        env = os.environ if environ is None else environ
        path = docker if os.sep in docker else shutil.which(docker, path=env.get("PATH"))
        if not path or not os.access(path, os.X_OK):
            raise DockerError(
                f"docker not found ({docker!r} is not an executable"
                + (")" if os.sep in docker else " on PATH)"),
                hint="install Docker Desktop 4.58 or later, or name docker with --docker, "
                "SBX_DOCKER or `sbx config set docker PATH`",
            )
        return cls(path, env)

    def argv(self, *args: str) -> list[str]:
        """The argv for `docker sandbox ARGS…`."""
        return [self.docker, "sandbox", *args]

    def _call(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                self.argv(*args),
                capture_output=True,
                text=True,
                env=self.environ,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise SandboxError(
                f"`docker sandbox {' '.join(args)}` did not answer within {timeout:.0f} s",
                hint="check that Docker Desktop is running",
            ) from exc
        except OSError as exc:
            raise DockerError(f"cannot run {self.docker}: {exc.strerror}") from exc

    def _check_plugin(self, proc: subprocess.CompletedProcess[str]) -> None:
        if _MISSING_PLUGIN.search(proc.stderr + proc.stdout):
            raise DockerError(
                "docker has no `sandbox` plugin",
                hint="Docker Sandboxes ship with Docker Desktop 4.58 or later; "
                "enable them in Desktop's settings",
            )

    def version(self) -> tuple[tuple[int, int, int] | None, str]:
        """Return the plugin's version (None when unreadable) and its raw version line."""
        proc = self._call("version", timeout=30.0)
        self._check_plugin(proc)
        line = (proc.stdout.strip().splitlines() or [""])[0]
        match = re.search(r"\bv(\d+)\.(\d+)\.(\d+)", line)
        if proc.returncode != 0 or not match:
            return None, line or proc.stderr.strip()
        major, minor, patch = (int(g) for g in match.groups())
        return (major, minor, patch), line

    def sandboxes(self) -> list[SandboxInfo]:
        """Return every sandbox from `ls --json`, tolerating the shapes seen in the wild."""
        proc = self._call("ls", "--json")
        self._check_plugin(proc)
        if proc.returncode != 0:
            raise SandboxError(
                f"`docker sandbox ls --json` failed (exit {proc.returncode}): "
                f"{_one_line(proc.stderr or proc.stdout)}",
                hint="check that Docker Desktop is running",
            )
        return parse_ls_json(proc.stdout)

    def find_sandbox(
        self, request: RunRequest, boxes: list[SandboxInfo] | None = None
    ) -> SandboxInfo | None:
        """Return the existing sandbox the request names, or None (`boxes`: a listing).

        By name (--name, the given sandbox, or agent-folder), else the sandbox of the
        same agent whose main workspace is this path exactly as given: the plugin
        compares paths as given, so a symlinked path is another sandbox.
        """
        if boxes is None:
            boxes = self.sandboxes()
        name = request.sandbox_name()
        for box in boxes:
            if box.name == name:
                return box
        if request.agent and not request.name:
            for box in boxes:
                if box.agent == request.agent and box.workspaces[:1] == (request.workspace,):
                    return box
        return None

    def ensure(self, request: RunRequest, args: Sequence[str], quiet: bool) -> SandboxInfo:
        """Create (or let the plugin find) the sandbox a `run` names, without the agent.

        Runs the plugin's own `run -d` with the user's options, so its naming and reuse
        rules (and any option sbx does not know) apply exactly as for their `run`. The
        plugin's progress goes to stderr; the id it prints is not needed.
        """
        own = own_options(args)
        before = {box.name for box in self.sandboxes()}
        try:
            proc = subprocess.Popen(
                self.argv("run", "-d", *own),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=self.environ,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            raise DockerError(f"cannot run {self.docker}: {exc.strerror}") from exc
        # Show the plugin's progress (image pulls take minutes) as it comes, and keep it
        # to explain a failure. No time limit: a first pull is slow, and ^C works.
        assert proc.stderr is not None
        assert proc.stdout is not None
        said: list[str] = []
        for line in proc.stderr:
            said.append(line)
            if not quiet:
                sys.stderr.write(line)
                sys.stderr.flush()
        printed = proc.stdout.read()
        proc.wait()
        output = printed + "".join(said)
        boxes = self.sandboxes()
        box = self.find_sandbox(request, boxes)
        if box is None:
            new = [b for b in boxes if b.name not in before and b.agent == request.agent]
            box = new[0] if len(new) == 1 else None
        if box is not None:
            return box  # also when `run -d` lost a race to another sbx creating it
        name = request.sandbox_name() or "?"
        if proc.returncode != 0:
            raise SandboxError(
                f"could not create sandbox '{name}' (`docker sandbox run -d` exited "
                f"{proc.returncode}){': ' + _one_line(output) if output.strip() else ''}",
                hint=_create_hint(output),
                status=proc.returncode,
            )
        raise SandboxError(
            f"could not tell which sandbox `docker sandbox run {shlex.join(own)}` uses",
            hint="stopped sandboxes do not list their workspaces: start it by name "
            "(`sbx run NAME`, names from `docker sandbox ls`)",
        )


def parse_ls_json(text: str) -> list[SandboxInfo]:
    """Parse `docker sandbox ls --json`; the top key is `vms`, or `sandboxes` when empty."""
    try:
        doc = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise SandboxError(
            f"`docker sandbox ls --json` printed something that is not JSON: {exc}"
        ) from None
    items: object = []
    if isinstance(doc, dict):
        items = doc.get("vms") or doc.get("sandboxes") or []
    elif isinstance(doc, list):
        items = doc
    out: list[SandboxInfo] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        workspaces = item.get("workspaces") or []
        out.append(
            SandboxInfo(
                name=item["name"],
                agent=item.get("agent") if isinstance(item.get("agent"), str) else None,
                status=item.get("status") if isinstance(item.get("status"), str) else None,
                workspaces=tuple(w for w in workspaces if isinstance(w, str))
                if isinstance(workspaces, list)
                else (),
            )
        )
    return out


def _one_line(text: str) -> str:
    """The line of a plugin's output that says what went wrong (not its usage text)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in lines:
        if re.search(r"error|fail|invalid|not |no such|cannot|unknown", line, re.IGNORECASE):
            return line
    return lines[0] if lines else "no output"


def _create_hint(output: str) -> str:
    if "invalid VM name" in output:
        return (
            "the plugin refused the name it derived from the folder: pass --name with "
            "letters, digits, '-' and '_' only, or rename the folder"
        )
    return "run the same `docker sandbox run` without sbx to see the plugin's full message"
