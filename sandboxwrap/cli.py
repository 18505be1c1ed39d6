"""The click layer: turns flags into calls of plain functions and errors into exit statuses."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

import click

from sandboxwrap import __version__
from sandboxwrap import config as config_mod
from sandboxwrap.errors import SbxError, Terminated, exit_code_for
from sandboxwrap.log import NORMAL, QUIET, Reporter

if TYPE_CHECKING:
    from sandboxwrap import launch

# sbx's own options: seen after `run` they are a mistake, not plugin flags.
_OWN_FLAGS = (
    "--force",
    "--profile-check",
    "--no-profile-check",
    "--quiet",
    "--verbose",
    "-q",  # `run` has no -q or -v of its own (`create -q` is another command)
    "-v",
    "-vv",
)
_OWN_OPTIONS = (
    "--auth",
    "--prefer",
    "--watch",
    "--boot-timeout",
    "--timeout",
    "--shell",
    "--docker",
    *_OWN_FLAGS,
)


class State:
    """What the group's options resolve to, shared with subcommands."""

    def __init__(self, flags: dict[str, object | None], force: bool = False) -> None:
        self.flags = flags
        self.force = force
        self._settings: config_mod.Settings | None = None
        self._sources: dict[str, str] = {}
        self.reporter = Reporter(_level(flags, os.environ))

    def settings(self) -> tuple[config_mod.Settings, dict[str, str]]:
        """Resolve settings (flag > environment > config file > default) once."""
        if self._settings is None:
            self._settings, self._sources = config_mod.resolve(self.flags, os.environ)
            s = self._settings
            self.reporter.level = QUIET if s.quiet else max(NORMAL, s.verbose)
        return self._settings, self._sources

    def run_context(self) -> launch.RunContext:
        """Settings, reporter and environment as the library's entry points take them."""
        from sandboxwrap import launch

        settings, sources = self.settings()
        return launch.RunContext(
            settings=settings,
            reporter=self.reporter,
            environ=os.environ,
            force=self.force,
            auth_source={"flag": "flag", "env": "env", "file": "config"}.get(
                sources.get("auth", "default"), "auto"
            ),
        )


def _level(flags: dict[str, object | None], environ: os._Environ[str]) -> int:
    # Before the config file is read, honour -q/-v and the env so early errors
    # and `config` commands already speak at the right volume.
    if flags.get("quiet") or environ.get("SBX_QUIET", "").lower() in ("1", "true", "yes", "on"):
        return QUIET
    verbose = flags.get("verbose")
    if isinstance(verbose, int) and verbose:
        return min(verbose, 2)
    return NORMAL


def _version_message() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    return f"sandboxwrap (sbx) {__version__} from {here}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", message=_version_message())
@click.option("-q", "--quiet", is_flag=True, default=None, help="Print nothing but errors.")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Explain each step (-vv: also keep the sandbox session's transcript).",
)
@click.option(
    "--auth",
    type=click.Choice(["auto", "api-key", "oauth", "none"]),
    default=None,
    help="Auth mode to apply instead of detecting it [env SBX_AUTH].",
)
@click.option(
    "--prefer",
    type=click.Choice(["api-key", "oauth"]),
    default=None,
    help="Which wins when the host has both an API key and a login [env SBX_PREFER].",
)
@click.option(
    "--force",
    is_flag=True,
    default=False,
    help="Replace a user's own apiKeyHelper or an unparseable settings.json (after a backup).",
)
@click.option(
    "--boot-timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="How long to keep retrying `docker sandbox exec` while the VM boots [60].",
)
@click.option(
    "--timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Time limit for each command in the sandbox shell [20].",
)
@click.option(
    "--watch",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Keep checking settings.json this long after the agent starts; 0 = off [30].",
)
@click.option(
    "--shell",
    default=None,
    metavar="PROGRAM",
    help="Program run with `docker sandbox exec -it` to edit the file [bash].",
)
@click.option(
    "--profile-check/--no-profile-check",
    default=None,
    help="Ask your login shell whether it sets ANTHROPIC_API_KEY [on].",
)
@click.option("--docker", default=None, metavar="PATH", help="The docker executable [docker].")
@click.pass_context
def cli(ctx: click.Context, /, force: bool, **flags: object) -> None:
    """sbx: `docker sandbox run` that makes Claude's apiKeyHelper match how you log in.

    Use `sbx run …` exactly like `docker sandbox run …`. sbx's own options go
    before `run`. Settings: flag > environment (SBX_*) > config file > default.
    """
    if flags.get("verbose") == 0:
        flags["verbose"] = None  # "not given", so SBX_VERBOSE and the config file count
    ctx.obj = State(dict(flags), force=force)


def _state(ctx: click.Context) -> State:
    state = ctx.find_object(State)
    assert state is not None
    return state


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(ctx: click.Context, args: Sequence[str]) -> None:
    """Run `docker sandbox run ARGS…` with settings.json fixed first (all ARGS pass through)."""
    from sandboxwrap import launch
    from sandboxwrap.plugin import own_options

    state = _state(ctx)
    own_part = own_options(args)
    if any(a in ("-h", "--help") for a in own_part):
        state.reporter.info(
            "`sbx run` passes its arguments to `docker sandbox run` unchanged; sbx's own "
            "options go before `run` (see `sbx --help`). The plugin's help follows."
        )
    for pos, arg in enumerate(own_part):
        option = arg.split("=", 1)[0]
        if option in _OWN_OPTIONS:
            # Move the option (and its value, if it takes one) in front of `run`.
            takes_value = option not in _OWN_FLAGS and "=" not in arg
            moved = own_part[pos : pos + 2] if takes_value else [arg]
            rest = list(args[:pos]) + list(args[pos + len(moved) :])
            raise click.UsageError(
                f"{option} is an sbx option: put it before `run`, e.g. "
                f"`sbx {shlex.join(moved)} run {shlex.join(rest)}`"
            )
    ctx.exit(launch.run(args, state.run_context()))


@cli.command()
@click.argument("sandbox")
@click.option(
    "-w",
    "--workspace",
    default=None,
    help="Workspace path inside the sandbox, to check its .claude settings layers too.",
)
@click.pass_context
def patch(ctx: click.Context, sandbox: str, workspace: str | None) -> None:
    """Fix SANDBOX's settings.json now, without starting an agent."""
    from sandboxwrap import launch, plugin

    run_ctx = _state(ctx).run_context()
    docker = plugin.Plugin.find(run_ctx.settings.docker, os.environ)
    launch.patch_only(docker, sandbox, workspace, run_ctx)


@cli.command("auth")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.pass_context
def auth_cmd(ctx: click.Context, as_json: bool) -> None:
    """Show which auth mode sbx would apply, and why."""
    from sandboxwrap import auth, launch

    resolution = launch.resolve(_state(ctx).run_context())
    if as_json:
        click.echo(json.dumps(auth.to_json(resolution), indent=2))
    else:
        click.echo(auth.format_text(resolution))


@cli.group("config")
def config_group() -> None:
    """Read and change sbx's config file."""


@config_group.command("path")
def config_path() -> None:
    """Print the config file's path."""
    click.echo(str(config_mod.config_path(os.environ)))


@config_group.command("show")
def config_show() -> None:
    """Print every setting with its value and where it comes from."""
    click.echo(config_mod.show(os.environ))


@config_group.command("get")
@click.argument("key")
def config_get(key: str) -> None:
    """Print the effective value of KEY."""
    click.echo(config_mod.get_value(key, os.environ))


@config_group.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")  # may look like an option: `sbx config set watch -1` is refused later
def config_set(key: str, value: str) -> None:
    """Set KEY to VALUE in the config file."""
    config_mod.set_value(key, value, os.environ)


@config_group.command("unset")
@click.argument("key")
@click.pass_context
def config_unset(ctx: click.Context, key: str) -> None:
    """Remove KEY from the config file."""
    if not config_mod.unset_value(key, os.environ):
        path = config_mod.config_path(os.environ)
        home = os.path.expanduser("~")
        shown = "~" + str(path)[len(home) :] if str(path).startswith(home + os.sep) else path
        _state(ctx).reporter.info(f"{key} was not set in {shown}")


@cli.command()
@click.argument("shell", required=False)
def init(shell: str | None) -> None:
    """Print a shell function that sends `docker sandbox run` through sbx.

    Add `eval "$(sbx init bash)"` to ~/.bashrc (zsh likewise; fish:
    `sbx init fish | source`). SHELL defaults to the basename of $SHELL.
    """
    from sandboxwrap import snippets

    name = shell or snippets.detect_shell(os.environ)
    click.echo(snippets.render(name, snippets.self_command()), nl=False)


def main(argv: Sequence[str] | None = None, prog_name: str | None = None) -> NoReturn:
    """Entry point of the `sbx` and `sandboxwrap` commands; the one place errors become statuses."""
    reporter = Reporter()
    try:
        status = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name=prog_name,
            standalone_mode=False,
        )
        code = status if isinstance(status, int) else 0
    except SbxError as exc:
        reporter.error(exc.message)
        if exc.hint:
            reporter.error(f"hint: {exc.hint}")
        code = exit_code_for(exc)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else "")  # plain `sbx`: the help is the answer
        code = 0
    except click.UsageError as exc:
        reporter.error(exc.format_message())
        command = exc.ctx.command_path if exc.ctx else "sbx"
        if exc.ctx is not None and exc.ctx.command.name == "run":
            command = (
                exc.ctx.parent.command_path if exc.ctx.parent else "sbx"
            )  # run's help is the plugin's
        reporter.error(f"hint: see `{command} --help`")
        code = exc.exit_code
    except click.ClickException as exc:
        reporter.error(exc.format_message())
        code = exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        code = 130
    except Terminated as exc:
        code = 128 + exc.signum
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:], prog_name="sbx")
