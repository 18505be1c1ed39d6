"""`sbx run`: resolve auth, make sure the sandbox exists and is patched, then start the plugin."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn

from sandboxwrap import auth as auth_mod
from sandboxwrap import plugin as plugin_mod
from sandboxwrap.config import Settings, log_dir
from sandboxwrap.errors import SandboxError, Terminated
from sandboxwrap.log import NORMAL, Reporter
from sandboxwrap.patch import Patcher, PatchOptions, PatchResult, Watcher

DOCKER_USAGE_STATUS = 125
"""docker's status for a command line it rejects (unknown flag, wrong argument count)."""

SECRET_ENV = ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN")
"""Host variables whose values must never reach a transcript or a message."""


@dataclass(frozen=True)
class RunContext:
    """Everything `sbx run` needs besides the user's arguments."""

    settings: Settings
    reporter: Reporter
    environ: Mapping[str, str]
    force: bool = False
    auth_source: str = "auto"
    """Where settings.auth came from: "flag", "env", "config" or "auto"."""


def secrets_of(environ: Mapping[str, str]) -> list[str]:
    """The host secret values to scrub from anything sbx writes."""
    return [environ[k] for k in SECRET_ENV if environ.get(k)]


def resolve(ctx: RunContext) -> auth_mod.AuthResolution:
    """Resolve the host's auth mode with the user's settings."""
    s = ctx.settings
    return auth_mod.resolve_auth(
        ctx.environ,
        override=s.auth,
        override_source=ctx.auth_source,
        prefer=s.prefer,
        profile_check=s.profile_check,
    )


def make_patcher(
    plugin: plugin_mod.Plugin, name: str, mode: str, ctx: RunContext, workspace: str | None
) -> Patcher:
    """A Patcher that reaches `name` through `docker sandbox exec -it`."""
    s = ctx.settings
    options = PatchOptions(
        shell=s.shell,
        boot_timeout=s.boot_timeout,
        timeout=s.timeout,
        force=ctx.force,
        log_dir=log_dir(ctx.environ),
        secrets=tuple(secrets_of(ctx.environ)),
    )
    return Patcher(
        lambda shell: plugin.argv("exec", "-it", name, *shell.split()),
        name,
        mode,
        options,
        ctx.reporter,
        workspace=workspace,
        env=ctx.environ,
    )


def report(ctx: RunContext, resolution: auth_mod.AuthResolution, result: PatchResult) -> None:
    """Print the one-line summary and any warnings."""
    ctx.reporter.info(
        f"{resolution.mode} ({resolution.reason}): {result.phrase} in {result.sandbox}"
    )
    if result.backup:
        ctx.reporter.info(
            f"backup of the previous file, in sandbox {result.sandbox}: {result.backup}"
        )
    for warning in (*resolution.warnings, *result.warnings):
        ctx.reporter.warn(warning)


def run(args: Sequence[str], ctx: RunContext) -> int:
    """Do everything `sbx run ARGS` promises; returns the exit status (or execs the plugin)."""
    rep = ctx.reporter
    plugin = plugin_mod.Plugin.find(ctx.settings.docker, ctx.environ)
    request = plugin_mod.parse_run_args(args, plugin_mod.logical_cwd(ctx.environ))

    own = plugin_mod.own_options(args)
    if "-h" in own or "--help" in own:
        exec_plugin(plugin, args)  # help only: nothing to resolve, create or patch

    # Only `run AGENT` alone could name a Claude sandbox called like that agent.
    if request.agent not in (None, "claude") and (
        request.workspaces or not any(b.name == request.agent for b in plugin.sandboxes())
    ):
        rep.step(f"agent {request.agent} does not read Claude's settings.json: passing through")
        exec_plugin(plugin, args)

    if request.agent is None and request.sandbox is None:
        rep.step("no agent or sandbox named: passing through to the plugin")
        exec_plugin(plugin, args)

    # Three independent questions at once: how this host logs in (asking a login shell can
    # take a moment), which plugin this is, and which sandboxes exist. Nothing is created
    # or changed before all three are answered.
    with ThreadPoolExecutor(max_workers=2) as pool:
        resolving = pool.submit(resolve, ctx)
        listing = pool.submit(plugin.sandboxes)
        version, line = plugin.version()
        container_era = version is not None and version < plugin_mod.MICROVM_SINCE
        resolution = resolving.result()
        boxes = None if container_era else listing.result()
    rep.step(f"auth mode: {resolution.mode} ({resolution.reason})")
    rep.step(f"plugin: {line or 'version unknown'}")
    if container_era:
        rep.warn(
            f"this sandbox plugin ({line}) runs containers, not microVMs; sbx supports "
            "plugin v0.7 and later (Docker Desktop 4.58+) and passes through without patching"
        )
        exec_plugin(plugin, args)
    if request.unknown_options:
        rep.step(
            "options sbx does not know (assumed to take no value): "
            + " ".join(request.unknown_options)
        )

    assert boxes is not None
    if request.agent and not request.workspaces and any(b.name == request.agent for b in boxes):
        # `run claude` with a sandbox named "claude": the plugin takes the sandbox.
        request = dataclasses.replace(request, agent=None, sandbox=request.agent)
    box = plugin.find_sandbox(request, boxes)
    if box is None and request.sandbox is not None:
        rep.step(f"no sandbox named {request.sandbox}: the plugin will say so")
        exec_plugin(plugin, args)
    if box is not None and box.agent not in (None, "claude"):
        rep.step(f"sandbox {box.name} runs {box.agent}: passing through")
        exec_plugin(plugin, args)

    if box is None:
        rep.step(f"creating sandbox {request.sandbox_name()} (without starting the agent)")
        try:
            box = plugin.ensure(request, args, quiet=rep.level < NORMAL)
        except SandboxError as exc:
            if exc.status == DOCKER_USAGE_STATUS:
                # The plugin rejected the arguments themselves: its own `run` will say so
                # in its own words and status, and start nothing.
                exec_plugin(plugin, args)
            raise
        if box.agent not in (None, "claude"):
            exec_plugin(plugin, args)
    else:
        rep.step(f"reusing sandbox {box.name}")
    name = box.name
    workspace = box.workspaces[0] if box.workspaces else None
    if workspace is None and request.agent:
        workspace = request.workspace

    patcher = make_patcher(plugin, name, resolution.mode, ctx, workspace)
    try:
        with terminate_as_exception():
            result = patcher.apply()
        report(ctx, resolution, result)
        watch = ctx.settings.watch
        if watch <= 0 or request.detached:
            patcher.close()
            exec_plugin(plugin, args)
        return supervise(plugin, args, Watcher(patcher, watch), ctx)
    finally:
        patcher.close()


@contextlib.contextmanager
def terminate_as_exception() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into an exception while sbx edits files, so cleanup runs.

    Ctrl-C already arrives as KeyboardInterrupt; a `kill` would otherwise end sbx
    between two steps and leave a lock or a temporary file in the sandbox.
    """

    def raise_terminated(signum: int, _frame: FrameType | None) -> None:
        raise Terminated(signum)

    previous = {
        sig: signal.signal(sig, raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exec_plugin(plugin: plugin_mod.Plugin, args: Sequence[str]) -> NoReturn:
    """Become `docker sandbox run ARGS`: same terminal, signals and exit status."""
    argv = plugin.argv("run", *args)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, dict(plugin.environ))


def supervise(
    plugin: plugin_mod.Plugin, args: Sequence[str], watcher: Watcher, ctx: RunContext
) -> int:
    """Run the plugin as a child while the watcher guards settings.json.

    The child shares our terminal and process group, so keys like ^C and ^Z and
    window resizes reach it directly; sbx ignores SIGINT/SIGQUIT like a shell
    waiting for a job, forwards SIGTERM/SIGHUP, and ends with the child's status
    (re-raising a fatal signal on itself so the caller sees the same thing).
    """
    argv = plugin.argv("run", *args)
    sys.stdout.flush()
    sys.stderr.flush()
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGQUIT)}
    watcher.start()
    child = subprocess.Popen(argv, env=dict(plugin.environ))

    def forward(signum: int, _frame: FrameType | None) -> None:
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, forward)
    try:
        status = child.wait()
    finally:
        watcher.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    for result in watcher.reapplied:
        ctx.reporter.info(
            f"settings.json in {result.sandbox} was rewritten after the agent started; "
            f"{result.phrase} again"
        )
    if watcher.error is not None:
        ctx.reporter.warn(f"stopped watching settings.json: {watcher.error.message}")
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status


def patch_only(
    plugin: plugin_mod.Plugin, name: str, workspace: str | None, ctx: RunContext
) -> PatchResult:
    """`sbx patch NAME`: fix an existing sandbox's settings.json without starting an agent."""
    resolution = resolve(ctx)
    known = {box.name: box for box in plugin.sandboxes()}
    if name not in known:
        raise SandboxError(
            f"no sandbox named {name!r}",
            hint="`docker sandbox ls` lists them; `sbx run claude PATH` creates one",
        )
    box = known[name]
    if box.agent not in (None, "claude"):
        raise SandboxError(
            f"sandbox {name} runs {box.agent}, which does not read Claude's settings.json",
            hint="sbx patch is for Claude sandboxes; nothing was changed",
        )
    if workspace is None and box.workspaces:
        workspace = box.workspaces[0]
    patcher = make_patcher(plugin, name, resolution.mode, ctx, workspace)
    try:
        with terminate_as_exception():
            result = patcher.apply()
    finally:
        patcher.close()
    report(ctx, resolution, result)
    return result
