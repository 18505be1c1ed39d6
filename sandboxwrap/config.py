"""sbx's settings: one table of specs, resolved flag > environment > config file > default."""

from __future__ import annotations

import math
import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sandboxwrap.errors import ConfigError

Kind = Literal["choice", "float", "int", "bool", "str"]
Source = Literal["flag", "env", "file", "default"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
BOOL_WORDS = _TRUE + _FALSE


@dataclass(frozen=True)
class Setting:
    """One setting: its config key, environment variable, CLI flag, default and valid values."""

    key: str
    env: str
    flag: str
    default: str | float | int | bool
    kind: Kind
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    min_inclusive: bool = True
    maximum: float | None = None

    def describe_valid(self) -> str:
        """Say in words which values are accepted, for error messages and the README."""
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "bool":
            return "a boolean (" + "/".join(BOOL_WORDS) + ")"
        if self.kind == "str":
            return "a non-empty string"
        noun = "a whole number" if self.kind == "int" else "a number of seconds"
        parts = []
        if self.minimum is not None:
            parts.append((">= " if self.min_inclusive else "> ") + _num(self.minimum))
        if self.maximum is not None:
            parts.append("<= " + _num(self.maximum))
        return noun + (" " + " and ".join(parts) if parts else "")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "auth", "SBX_AUTH", "--auth", "auto", "choice",
        "How Claude in the sandbox logs in; auto detects it from the host.",
        choices=("auto", "api-key", "oauth", "none"),
    ),
    Setting(
        "prefer", "SBX_PREFER", "--prefer", "api-key", "choice",
        "Which wins when the host has both an API key and a login.",
        choices=("api-key", "oauth"),
    ),
    Setting(
        "boot_timeout", "SBX_BOOT_TIMEOUT", "--boot-timeout", 60.0, "float",
        "Seconds to wait for a sandbox to boot and give a shell.",
        minimum=0.0, min_inclusive=False,
    ),
    Setting(
        "timeout", "SBX_TIMEOUT", "--timeout", 20.0, "float",
        "Seconds allowed for each shell command sbx runs in the sandbox.",
        minimum=0.0, min_inclusive=False,
    ),
    Setting(
        "watch", "SBX_WATCH", "--watch", 30.0, "float",
        "Seconds sbx keeps checking settings.json after the agent starts (0 = off).",
        minimum=0.0,
    ),
    Setting(
        "shell", "SBX_SHELL", "--shell", "bash", "str",
        "The program sbx runs with `docker sandbox exec -it` to edit settings.json.",
    ),
    Setting(
        "profile_check", "SBX_PROFILE_CHECK", "--profile-check/--no-profile-check", True, "bool",
        "Ask your login shell whether its profile sets ANTHROPIC_API_KEY.",
    ),
    Setting(
        "docker", "SBX_DOCKER", "--docker", "docker", "str",
        "The docker executable to run.",
    ),
    Setting(
        "quiet", "SBX_QUIET", "-q/--quiet", False, "bool",
        "Print only errors.",
    ),
    Setting(
        "verbose", "SBX_VERBOSE", "-v/--verbose", 0, "int",
        "Explain each step (1) or show the shell protocol too (2); -v is counted.",
        minimum=0, maximum=2,
    ),
)  # fmt: skip

SETTINGS_BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
VALID_KEYS = ", ".join(SETTINGS_BY_KEY)


@dataclass(frozen=True)
class Settings:
    """The effective value of every setting (attribute names are the config keys)."""

    auth: str = "auto"
    prefer: str = "api-key"
    boot_timeout: float = 60.0
    timeout: float = 20.0
    watch: float = 30.0
    shell: str = "bash"
    profile_check: bool = True
    docker: str = "docker"
    quiet: bool = False
    verbose: int = 0


# --- paths -------------------------------------------------------------------------------


def config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """Return $SBX_CONFIG, else `config.toml` in the platformdirs user config dir."""
    override = environ.get("SBX_CONFIG")
    if override:
        return Path(override)
    import platformdirs  # only paid for by commands that look at the config

    return platformdirs.user_config_path("sandboxwrap") / "config.toml"


def log_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Return $SBX_LOG_DIR, else the platformdirs user log dir for sandboxwrap."""
    override = environ.get("SBX_LOG_DIR")
    if override:
        return Path(override)
    import platformdirs

    return platformdirs.user_log_path("sandboxwrap")


def _tilde(path: Path) -> str:
    """Show `path` with ~ for the home directory, as everything sbx prints does."""
    try:
        home = Path.home()
    except RuntimeError:  # no HOME and no passwd entry
        return str(path)
    try:
        rest = path.relative_to(home)
    except ValueError:
        return str(path)
    return "~" if str(rest) == "." else f"~/{rest}"


# --- values ------------------------------------------------------------------------------


def spec_for(key: str) -> Setting:
    """Return the spec of `key` (`boot-timeout` is accepted for `boot_timeout`)."""
    spec = SETTINGS_BY_KEY.get(key.replace("-", "_"))
    if spec is None:
        raise ConfigError(f"unknown setting {_shown(key)}; valid keys: {VALID_KEYS}")
    return spec


def _shown(raw: object) -> str:
    """Quote a rejected value for an error message, never echoing what looks like a key."""
    text = str(raw)
    # A user may paste a key into the wrong place; an error message must not print it back.
    if "sk-ant-" in text or len(text) > 60:
        return "<the given value (not shown)>"
    return repr(text) if isinstance(raw, str) else text


def _bad(spec: Setting, raw: object, origin: str) -> ConfigError:
    where = f"{origin}: " if origin else ""
    return ConfigError(
        f"{where}{_shown(raw)} is not a valid value for {spec.key}; "
        f"expected {spec.describe_valid()}"
    )


def parse_value(spec: Setting, raw: object, origin: str) -> str | float | int | bool:
    """Convert a raw value (a string from env/CLI, or a TOML value) to the setting's type.

    `origin` names where the value came from (e.g. `SBX_AUTH`, `--auth`, `file.toml:3`) for
    the error message; "" when the key itself is all there is to say.
    """
    if spec.kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int) and raw in (0, 1):
            return bool(raw)
        if isinstance(raw, str) and raw.strip().lower() in BOOL_WORDS:
            return raw.strip().lower() in _TRUE
        raise _bad(spec, raw, origin)
    if spec.kind in ("float", "int"):
        number: float
        if isinstance(raw, bool):  # bool is an int subclass; `true` is not a timeout
            raise _bad(spec, raw, origin)
        if isinstance(raw, int | float):
            number = raw
        elif isinstance(raw, str):
            try:
                number = int(raw.strip()) if spec.kind == "int" else float(raw.strip())
            except ValueError:
                raise _bad(spec, raw, origin) from None
        else:
            raise _bad(spec, raw, origin)
        if not math.isfinite(number):
            raise _bad(spec, raw, origin)
        if spec.kind == "int" and not float(number).is_integer():
            raise _bad(spec, raw, origin)
        if spec.minimum is not None and (
            number < spec.minimum or (number == spec.minimum and not spec.min_inclusive)
        ):
            raise _bad(spec, raw, origin)
        if spec.maximum is not None and number > spec.maximum:
            raise _bad(spec, raw, origin)
        return int(number) if spec.kind == "int" else float(number)
    if not isinstance(raw, str):
        raise _bad(spec, raw, origin)
    value = raw.strip()
    if spec.kind == "choice":
        if value.lower() not in spec.choices:
            raise _bad(spec, raw, origin)
        return value.lower()
    if not value:
        raise _bad(spec, raw, origin)
    return value


def format_value(value: object) -> str:
    """Render a setting's value the way `sbx config get` prints it (no quotes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # `boot_timeout = 30` reads back as 30, not 30.0
    return str(value)


def _toml_value(value: object) -> str:
    if isinstance(value, str):
        import json  # a JSON string literal is a valid TOML basic string

        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return repr(value)  # stays a TOML float: 90.0
    return format_value(value)


# --- the config file ---------------------------------------------------------------------


_TOML_POS = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_END = re.compile(r"\s*\(at end of document\)\s*$")


def _load_raw(path: Path) -> dict[str, object] | None:
    """Parse the file as TOML without checking keys; None when it does not exist."""
    loaded = _load_with_text(path)
    return None if loaded is None else loaded[0]


def _load_with_text(path: Path) -> tuple[dict[str, object], str] | None:
    shown = _tilde(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigError(f"config file {shown} is a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {shown}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"{shown}:{line}:{col}: config file is not valid UTF-8",
            hint="fix or delete the file; sbx will not overwrite it",
        ) from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        line, col, msg = _toml_position(exc, text)
        raise ConfigError(
            f"{shown}:{line}:{col}: config file is not valid TOML: {msg}",
            hint="fix or delete the file; sbx will not overwrite it",
        ) from None


def _toml_position(exc: tomllib.TOMLDecodeError, text: str) -> tuple[int, int, str]:
    """Line and column of a TOML error (attributes on 3.14+, parsed from the message before)."""
    msg = str(exc.args[0]) if exc.args else str(exc)
    lineno, colno = getattr(exc, "lineno", None), getattr(exc, "colno", None)
    if m := _TOML_POS.search(msg):
        lineno, colno = lineno or int(m.group(1)), colno or int(m.group(2))
        msg = msg[: m.start()]
    elif m := _TOML_END.search(msg):
        msg = msg[: m.start()]
    if not isinstance(lineno, int) or not isinstance(colno, int):
        lines = text.split("\n")
        lineno, colno = len(lines), len(lines[-1]) + 1
    return lineno, colno, msg


def read_file(path: Path) -> dict[str, object]:
    """Return the validated settings in the TOML file at `path` ({} when it does not exist)."""
    loaded = _load_with_text(path)
    if loaded is None:
        return {}
    raw, text = loaded
    shown = _tilde(path)
    values: dict[str, object] = {}
    for key, value in raw.items():
        line = _line_of(key, text)
        where = shown if line is None else f"{shown}:{line}"
        spec = SETTINGS_BY_KEY.get(key)
        if spec is None:
            raise ConfigError(
                f"{where}: unknown key {_shown(key)}; valid keys: {VALID_KEYS}",
                hint=f"remove it, e.g. with `sbx config unset {key}`",
            )
        try:
            values[key] = parse_value(spec, value, where)
        except ConfigError as exc:
            exc.hint = f"fix it, e.g. with `sbx config set {key} VALUE`"
            raise
    return values


def _line_of(key: str, text: str) -> int | None:
    """The line where top-level `key` is defined, to point at it (tomllib does not say)."""
    name = re.escape(key)
    pattern = rf"^[ \t]*(?:(?:{name}|\"{name}\"|'{name}')[ \t]*[=.]|\[[ \t]*{name}[ \t]*[\].])"
    m = re.search(pattern, text, re.MULTILINE)
    return None if m is None else text.count("\n", 0, m.start()) + 1


# --- resolution --------------------------------------------------------------------------


def _flag_name(spec: Setting) -> str:
    """The long flag as typed, e.g. `--profile-check` from `--profile-check/--no-profile-check`."""
    return next(p for p in spec.flag.split("/") if p.startswith("--"))


def resolve(
    flags: Mapping[str, object | None],
    environ: Mapping[str, str] = os.environ,
    path: Path | None = None,
) -> tuple[Settings, dict[str, str]]:
    """Return the effective settings and where each came from ("flag"/"env"/"file"/"default").

    `flags` maps keys to raw CLI values, None meaning "not given" (also `quiet=False` and
    `verbose=0`, which those on-only flags cannot mean otherwise). A counted `verbose` above 2
    is capped at 2; anything else out of range is a ConfigError.
    """
    unknown = set(flags) - set(SETTINGS_BY_KEY)
    if unknown:  # a wiring mistake in the CLI, not a user error
        raise ValueError(f"unknown setting(s) in flags: {', '.join(sorted(unknown))}")
    # Read the file even when flags and env cover everything, so a broken file is
    # reported the same way whatever the command line says.
    file_values = read_file(path if path is not None else config_path(environ))
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for spec in SETTINGS:
        flag_value = flags.get(spec.key)
        env_value = environ.get(spec.env)
        if spec.key in ("quiet", "verbose") and flag_value in (0, False):
            # These flags can only be switched on (no --no-quiet, -v is counted), so click's
            # 0/False means "not given" and must not hide SBX_QUIET / SBX_VERBOSE.
            flag_value = None
        if flag_value is not None:
            if spec.key == "verbose" and isinstance(flag_value, int) and flag_value > 2:
                flag_value = 2  # -vvv means "as much as there is"
            values[spec.key] = parse_value(spec, flag_value, _flag_name(spec))
            sources[spec.key] = "flag"
        elif env_value is not None and env_value.strip() != "":
            # An empty variable counts as unset, as `SBX_AUTH= sbx …` is a common way to clear it.
            values[spec.key] = parse_value(spec, env_value, spec.env)
            sources[spec.key] = "env"
        elif spec.key in file_values:
            values[spec.key] = file_values[spec.key]
            sources[spec.key] = "file"
        else:
            values[spec.key] = spec.default
            sources[spec.key] = "default"
    return _settings_from(values), sources


def _settings_from(values: Mapping[str, object]) -> Settings:
    def s(key: str) -> str:
        v = values[key]
        assert isinstance(v, str)
        return v

    def f(key: str) -> float:
        v = values[key]
        assert isinstance(v, float | int)
        return float(v)

    def b(key: str) -> bool:
        v = values[key]
        assert isinstance(v, bool)
        return v

    verbose = values["verbose"]
    assert isinstance(verbose, int)
    return Settings(
        auth=s("auth"),
        prefer=s("prefer"),
        boot_timeout=f("boot_timeout"),
        timeout=f("timeout"),
        watch=f("watch"),
        shell=s("shell"),
        profile_check=b("profile_check"),
        docker=s("docker"),
        quiet=b("quiet"),
        verbose=verbose,
    )


# --- `sbx config` ------------------------------------------------------------------------


def get_value(key: str, environ: Mapping[str, str] = os.environ) -> str:
    """Return the effective value of `key` (environment > config file > default) as text."""
    spec = spec_for(key)
    settings, _ = resolve({}, environ)
    return format_value(getattr(settings, spec.key))


def set_value(key: str, raw: str, environ: Mapping[str, str] = os.environ) -> None:
    """Validate `raw` and store it under `key` in the config file, atomically.

    Other entries are kept as they are. An unparseable file is refused, never overwritten.
    """
    spec = spec_for(key)
    value = parse_value(spec, raw, "")
    path = config_path(environ)
    data = _load_raw(path) or {}
    data[spec.key] = value
    _write(path, data)


def unset_value(key: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Remove `key` from the config file; return whether it was there.

    A key sbx does not know is accepted when the file holds it, so a bad entry can be removed.
    """
    path = config_path(environ)
    data = _load_raw(path)
    name = key if data is not None and key in data else spec_for(key).key
    if data is None or name not in data:
        return False
    del data[name]
    _write(path, data)
    return True


def show(environ: Mapping[str, str] = os.environ) -> str:
    """Return the effective settings as aligned TOML-ish lines, each with its source."""
    path = config_path(environ)
    settings, sources = resolve({}, environ, path)
    state = "exists" if path.exists() else "does not exist"
    lines = [
        "# sbx settings (flag > environment > config file > default)",
        f"# config file: {_tilde(path)} ({state})",
    ]
    rendered = [(s, _toml_value(getattr(settings, s.key))) for s in SETTINGS]
    kw = max(len(s.key) for s, _ in rendered)
    vw = max(len(v) for _, v in rendered)
    for spec, text in rendered:
        src = sources[spec.key]
        where = {"env": spec.env, "file": "config file"}.get(src, src)
        lines.append(f"{spec.key:<{kw}} = {text:<{vw}}  # {where}")
    return "\n".join(lines)


def _write(path: Path, data: Mapping[str, object]) -> None:
    """Write `data` as TOML: a temporary file in the same folder, then os.replace."""
    import tomli_w

    # Write through a symlink (dotfile managers link config files) instead of replacing it.
    target = Path(os.path.realpath(path))
    text = tomli_w.dumps(dict(data))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            mode = target.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ConfigError(f"cannot write config file {_tilde(path)}: {exc.strerror}") from None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def settings_table_markdown() -> str:
    """Return the README's table of settings (key, env var, flag, default, values, meaning)."""
    rows = [
        "| key | env var | flag | default | values | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        flag = " / ".join(f"`{f}`" for f in s.flag.split("/"))
        rows.append(
            f"| `{s.key}` | `{s.env}` | {flag} | `{format_value(s.default)}` "
            f"| {s.describe_valid()} | {s.help} |"
        )
    return "\n".join(rows)
