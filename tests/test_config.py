"""sandboxwrap.config: precedence, validation, the TOML file and `sbx config` helpers."""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from sandboxwrap import config
from sandboxwrap.config import SETTINGS, Settings, resolve
from sandboxwrap.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
ALL_KEYS = (
    "auth, prefer, boot_timeout, timeout, watch, shell, profile_check, docker, quiet, verbose"
)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point HOME and every XDG directory at a temporary folder; drop SBX_* variables."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var, sub in (
        ("XDG_CONFIG_HOME", ".config"),
        ("XDG_STATE_HOME", ".local/state"),
        ("XDG_CACHE_HOME", ".cache"),
        ("XDG_DATA_HOME", ".local/share"),
    ):
        monkeypatch.setenv(var, str(home / sub))
    for var in list(os.environ):
        if var.startswith("SBX_"):
            monkeypatch.delenv(var)
    return home


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return tmp_path / "conf" / "config.toml"


def env_for(cfg: Path, **extra: str) -> dict[str, str]:
    return {"SBX_CONFIG": str(cfg), **extra}


# --- the spec table -------------------------------------------------------------------------


def test_settings_dataclass_matches_spec_table() -> None:
    fields = dataclasses.fields(Settings)
    assert [f.name for f in fields] == [s.key for s in SETTINGS]
    assert [f.default for f in fields] == [s.default for s in SETTINGS]
    assert ", ".join(s.key for s in SETTINGS) == ALL_KEYS == config.VALID_KEYS
    assert all(s.env == "SBX_" + s.key.upper() for s in SETTINGS)


def test_markdown_table_has_a_row_per_setting() -> None:
    table = config.settings_table_markdown().splitlines()
    assert len(table) == 2 + len(SETTINGS)
    for spec, row in zip(SETTINGS, table[2:], strict=True):
        assert row.startswith(f"| `{spec.key}` | `{spec.env}` |")


# --- paths ---------------------------------------------------------------------------------


def test_config_path_follows_xdg(isolated: Path) -> None:
    assert config.config_path({}) == isolated / ".config" / "sandboxwrap" / "config.toml"


def test_config_path_env_override(tmp_path: Path) -> None:
    assert config.config_path({"SBX_CONFIG": str(tmp_path / "x.toml")}) == tmp_path / "x.toml"
    assert config.config_path({"SBX_CONFIG": ""}).name == "config.toml"


def test_log_dir(isolated: Path, tmp_path: Path) -> None:
    assert config.log_dir({"SBX_LOG_DIR": str(tmp_path / "logs")}) == tmp_path / "logs"
    assert config.log_dir({}).is_relative_to(isolated)


# --- precedence ----------------------------------------------------------------------------

# key: (flag value as click passes it, env value, TOML text, and each one's parsed value)
PRECEDENCE = {
    "auth": ("oauth", "none", '"api-key"', "oauth", "none", "api-key"),
    "prefer": ("oauth", "api-key", '"oauth"', "oauth", "api-key", "oauth"),
    "boot_timeout": (5.0, "7.5", "9", 5.0, 7.5, 9.0),
    "timeout": ("3", "4", "5.5", 3.0, 4.0, 5.5),
    "watch": (0.0, "0", "12", 0.0, 0.0, 12.0),
    "shell": ("zsh", "sh", '"fish"', "zsh", "sh", "fish"),
    "profile_check": (False, "no", "true", False, False, True),
    "docker": ("/opt/docker", "podman", '"docker.exe"', "/opt/docker", "podman", "docker.exe"),
    "quiet": (True, "on", "false", True, True, False),
    "verbose": (2, "1", "2", 2, 1, 2),
}


@pytest.mark.parametrize("key", PRECEDENCE)
@pytest.mark.parametrize(
    ("given", "source"),
    [
        (("flag", "env", "file"), "flag"),
        (("flag",), "flag"),
        (("env", "file"), "env"),
        (("env",), "env"),
        (("file",), "file"),
        ((), "default"),
    ],
)
def test_precedence_flag_env_file_default(
    cfg: Path, key: str, given: tuple[str, ...], source: str
) -> None:
    flag, env, toml, flag_v, env_v, file_v = PRECEDENCE[key]
    spec = config.SETTINGS_BY_KEY[key]
    cfg.parent.mkdir()
    cfg.write_text(f"{key} = {toml}\n" if "file" in given else "")
    environ = env_for(cfg, **({spec.env: env} if "env" in given else {}))
    flags = {key: flag if "flag" in given else None}
    settings, sources = resolve(flags, environ)
    expected = {"flag": flag_v, "env": env_v, "file": file_v, "default": spec.default}[source]
    assert getattr(settings, key) == expected
    assert type(getattr(settings, key)) is type(spec.default)
    assert sources[key] == source
    assert all(sources[k] == "default" for k in sources if k != key)


def test_defaults_without_file(cfg: Path) -> None:
    settings, sources = resolve({}, env_for(cfg))
    assert settings == Settings()
    assert set(sources.values()) == {"default"}


def test_resolve_uses_explicit_path(tmp_path: Path) -> None:
    path = tmp_path / "other.toml"
    path.write_text('auth = "none"\n')
    settings, sources = resolve({}, {}, path)
    assert (settings.auth, sources["auth"]) == ("none", "file")


def test_empty_env_var_counts_as_unset(cfg: Path) -> None:
    settings, sources = resolve({}, env_for(cfg, SBX_AUTH="", SBX_WATCH="  "))
    assert (settings.auth, sources["auth"], sources["watch"]) == ("auto", "default", "default")


def test_on_only_flags_at_rest_do_not_hide_env(cfg: Path) -> None:
    settings, sources = resolve(
        {"quiet": False, "verbose": 0}, env_for(cfg, SBX_QUIET="1", SBX_VERBOSE="2")
    )
    assert (settings.quiet, settings.verbose) == (True, 2)
    assert sources["quiet"] == sources["verbose"] == "env"


def test_no_profile_check_flag_wins(cfg: Path) -> None:
    settings, sources = resolve({"profile_check": False}, env_for(cfg, SBX_PROFILE_CHECK="yes"))
    assert (settings.profile_check, sources["profile_check"]) == (False, "flag")


def test_counted_verbose_is_capped(cfg: Path) -> None:
    settings, _ = resolve({"verbose": 5}, env_for(cfg))
    assert settings.verbose == 2


@pytest.mark.parametrize("word", ["1", "true", "TRUE", "yes", "On", " on "])
def test_true_words(cfg: Path, word: str) -> None:
    assert resolve({}, env_for(cfg, SBX_QUIET=word))[0].quiet is True


@pytest.mark.parametrize("word", ["0", "false", "No", "off", "OFF"])
def test_false_words(cfg: Path, word: str) -> None:
    assert resolve({}, env_for(cfg, SBX_PROFILE_CHECK=word))[0].profile_check is False


def test_choice_values_are_case_insensitive(cfg: Path) -> None:
    assert resolve({}, env_for(cfg, SBX_AUTH="OAuth"))[0].auth == "oauth"


# --- refusing bad values -------------------------------------------------------------------

BAD_ENV = [
    ("SBX_AUTH", "oauht", "expected one of auto, api-key, oauth, none"),
    ("SBX_PREFER", "none", "expected one of api-key, oauth"),
    ("SBX_BOOT_TIMEOUT", "0", "expected a number of seconds > 0"),
    ("SBX_BOOT_TIMEOUT", "soon", "expected a number of seconds > 0"),
    ("SBX_TIMEOUT", "-1", "expected a number of seconds > 0"),
    ("SBX_TIMEOUT", "nan", "expected a number of seconds > 0"),
    ("SBX_WATCH", "-0.5", "expected a number of seconds >= 0"),
    ("SBX_WATCH", "inf", "expected a number of seconds >= 0"),
    ("SBX_PROFILE_CHECK", "maybe", "expected a boolean (1/true/yes/on/0/false/no/off)"),
    ("SBX_QUIET", "2", "expected a boolean (1/true/yes/on/0/false/no/off)"),
    ("SBX_VERBOSE", "3", "expected a whole number >= 0 and <= 2"),
    ("SBX_VERBOSE", "1.5", "expected a whole number >= 0 and <= 2"),
    ("SBX_VERBOSE", "-1", "expected a whole number >= 0 and <= 2"),
]


@pytest.mark.parametrize(("var", "value", "valid"), BAD_ENV)
def test_bad_env_value_names_variable_and_valid_values(
    cfg: Path, var: str, value: str, valid: str
) -> None:
    with pytest.raises(ConfigError) as info:
        resolve({}, env_for(cfg, **{var: value}))
    message = str(info.value)
    assert message.startswith(f"{var}: {value!r} is not a valid value")
    assert message.endswith(valid)


@pytest.mark.parametrize(
    ("key", "value", "flag"),
    [
        ("auth", "bogus", "--auth"),
        ("boot_timeout", 0.0, "--boot-timeout"),
        ("watch", -1.0, "--watch"),
        ("shell", "  ", "--shell"),
        ("profile_check", "sometimes", "--profile-check"),
    ],
)
def test_bad_flag_value_names_the_flag(cfg: Path, key: str, value: object, flag: str) -> None:
    with pytest.raises(ConfigError, match=f"^{flag}: "):
        resolve({key: value}, env_for(cfg))


def test_unknown_flag_key_is_a_wiring_error(cfg: Path) -> None:
    with pytest.raises(ValueError, match="nope"):
        resolve({"nope": 1}, env_for(cfg))


def test_error_never_echoes_something_like_a_key(cfg: Path) -> None:
    secret = "sk-ant-api03-SENTINEL-APIKEY"
    with pytest.raises(ConfigError) as info:
        resolve({}, env_for(cfg, SBX_AUTH=secret))
    assert secret not in str(info.value)
    assert "SBX_AUTH" in str(info.value)
    with pytest.raises(ConfigError) as info:
        config.set_value("prefer", secret, env_for(cfg))
    assert secret not in str(info.value)
    assert not cfg.exists()


# --- reading the file ----------------------------------------------------------------------


def test_read_missing_file(tmp_path: Path) -> None:
    assert config.read_file(tmp_path / "none.toml") == {}


def test_read_file_types(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('auth = "oauth"\nwatch = 0\nprofile_check = "off"\nverbose = 1\nquiet = 1\n')
    assert config.read_file(path) == {
        "auth": "oauth",
        "watch": 0.0,
        "profile_check": False,
        "verbose": 1,
        "quiet": True,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1\n", f"unknown key 'colour'; valid keys: {ALL_KEYS}"),
        ("[auth]\nmode = 1\n", "is not a valid value for auth; expected one of auto, api-key"),
        ('auth = "maybe"\n', "'maybe' is not a valid value for auth; expected one of auto"),
        ("boot_timeout = true\n", "expected a number of seconds > 0"),
        ('timeout = "soon"\n', "expected a number of seconds > 0"),
        ("verbose = 2.5\n", "expected a whole number >= 0 and <= 2"),
        ('shell = ""\n', "expected a non-empty string"),
        ("quiet = 5\n", "expected a boolean"),
    ],
)
def test_read_file_refuses_bad_content(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.read_file(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('# sbx\nauth = "oauth"\n\n  watch = -3\n', ":4: -3 is not a valid value for watch"),
        ("'auth' = 'x'\n", ":1: 'x' is not a valid value for auth"),
        ("auth.mode = 1\n", ":1: {'mode': 1} is not a valid value for auth"),
        ('[x]\n[colour]\nauth = "oauth"\n', ":1: unknown key 'x'"),
        ('shell = "zsh"\n[colour]\n', ":2: unknown key 'colour'"),
    ],
)
def test_bad_content_points_at_its_line(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.read_file(path)
    assert str(info.value).startswith(f"{path}{where}")
    assert info.value.hint is not None
    assert "sbx config " in info.value.hint


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ('auth = "oauth"\nprefer = \n', ":2:10:"),
        ('auth = "oauth"\nauth = "none"\n', ":2:"),
        ('auth = "oauth', ":1:14:"),
        ("watch = [1,\n", ":2:1:"),
    ],
)
def test_parse_error_reports_line_and_column(tmp_path: Path, text: str, position: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.read_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}{position}")
    assert "not valid TOML" in message
    assert "(at " not in message  # the position is in front, not repeated
    assert info.value.hint is not None
    assert "will not overwrite" in info.value.hint


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b'auth = "oauth"\nshell = "\xff"\n')
    with pytest.raises(ConfigError, match=r":2:10: config file is not valid UTF-8"):
        config.read_file(path)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        config.read_file(tmp_path)


def test_home_is_shown_as_tilde(isolated: Path) -> None:
    path = config.config_path({})
    path.parent.mkdir(parents=True)
    path.write_text("nope = 1\n")
    with pytest.raises(ConfigError) as info:
        resolve({}, {})
    assert str(info.value).startswith("~/.config/sandboxwrap/config.toml:1: unknown key 'nope'")


def test_broken_file_is_reported_even_when_flags_cover_it(cfg: Path) -> None:
    cfg.parent.mkdir()
    cfg.write_text("auth = \n")
    with pytest.raises(ConfigError, match=":1:8:"):
        resolve({"auth": "oauth"}, env_for(cfg))


# --- set / get / unset / show --------------------------------------------------------------

ROUND_TRIPS = [
    ("auth", "oauth", "oauth", "oauth"),
    ("prefer", "OAUTH", "oauth", "oauth"),
    ("boot_timeout", "90", 90.0, "90"),
    ("timeout", "2.5", 2.5, "2.5"),
    ("watch", "0", 0.0, "0"),
    ("shell", "/bin/zsh", "/bin/zsh", "/bin/zsh"),
    ("profile_check", "off", False, "false"),
    ("docker", 'C:\\Program Files\\Docker\\docker.exe "x"', None, None),
    ("quiet", "yes", True, "true"),
    ("verbose", "2", 2, "2"),
]


@pytest.mark.parametrize(("key", "raw", "stored", "shown"), ROUND_TRIPS)
def test_set_get_unset_round_trip(
    cfg: Path, key: str, raw: str, stored: object, shown: str | None
) -> None:
    environ = env_for(cfg)
    stored = raw if stored is None else stored
    shown = raw if shown is None else shown
    config.set_value(key, raw, environ)
    data = tomllib.loads(cfg.read_text())
    assert data == {key: stored}
    assert type(data[key]) is type(stored)
    assert config.get_value(key, environ) == shown
    assert resolve({}, environ)[1][key] == "file"
    assert config.unset_value(key, environ) is True
    assert tomllib.loads(cfg.read_text()) == {}
    assert config.unset_value(key, environ) is False
    assert config.get_value(key, environ) == config.format_value(config.spec_for(key).default)


def test_set_keeps_other_keys(cfg: Path) -> None:
    environ = env_for(cfg)
    config.set_value("auth", "oauth", environ)
    config.set_value("watch", "5", environ)
    config.set_value("auth", "none", environ)
    assert tomllib.loads(cfg.read_text()) == {"auth": "none", "watch": 5.0}


def test_hyphenated_key_names_are_accepted(cfg: Path) -> None:
    environ = env_for(cfg)
    config.set_value("boot-timeout", "12", environ)
    assert tomllib.loads(cfg.read_text()) == {"boot_timeout": 12.0}
    assert config.get_value("boot-timeout", environ) == "12"


def test_get_reports_effective_value(cfg: Path) -> None:
    environ = env_for(cfg, SBX_AUTH="none")
    config.set_value("auth", "oauth", environ)
    assert config.get_value("auth", environ) == "none"
    assert config.get_value("auth", env_for(cfg)) == "oauth"


@pytest.mark.parametrize("op", ["get", "set", "unset"])
def test_unknown_key_is_refused_with_the_list(cfg: Path, op: str) -> None:
    environ = env_for(cfg)
    calls = {
        "get": lambda: config.get_value("colour", environ),
        "set": lambda: config.set_value("colour", "red", environ),
        "unset": lambda: config.unset_value("colour", environ),
    }
    with pytest.raises(ConfigError) as info:
        calls[op]()
    assert str(info.value) == f"unknown setting 'colour'; valid keys: {ALL_KEYS}"
    assert not cfg.exists()


def test_bad_value_is_refused_with_choices(cfg: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.set_value("auth", "sometimes", env_for(cfg))
    assert str(info.value) == (
        "'sometimes' is not a valid value for auth; expected one of auto, api-key, oauth, none"
    )
    assert not cfg.exists()


@pytest.mark.parametrize("op", ["set", "unset"])
def test_unparseable_file_is_never_overwritten(cfg: Path, op: str) -> None:
    cfg.parent.mkdir()
    original = b'# my settings\nauth = "oauth"\nwatch = = 3\n'
    cfg.write_bytes(original)
    calls = {
        "set": lambda: config.set_value("auth", "none", env_for(cfg)),
        "unset": lambda: config.unset_value("auth", env_for(cfg)),
    }
    with pytest.raises(ConfigError) as info:
        calls[op]()
    assert ":3:9:" in str(info.value)
    assert cfg.read_bytes() == original
    assert sorted(p.name for p in cfg.parent.iterdir()) == ["config.toml"]


def test_set_can_repair_a_bad_value(cfg: Path) -> None:
    cfg.parent.mkdir()
    cfg.write_text('auth = "sometimes"\n')
    config.set_value("auth", "oauth", env_for(cfg))
    assert resolve({}, env_for(cfg))[0].auth == "oauth"


def test_unset_removes_an_unknown_key_present_in_file(cfg: Path) -> None:
    cfg.parent.mkdir()
    cfg.write_text('colour = "red"\nauth = "none"\n')
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        resolve({}, env_for(cfg))
    assert config.unset_value("colour", env_for(cfg)) is True
    assert tomllib.loads(cfg.read_text()) == {"auth": "none"}


def test_set_creates_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "config.toml"
    config.set_value("auth", "none", {"SBX_CONFIG": str(path)})
    assert tomllib.loads(path.read_text()) == {"auth": "none"}


def test_set_uses_xdg_default_location(isolated: Path) -> None:
    config.set_value("prefer", "oauth", {})
    path = isolated / ".config" / "sandboxwrap" / "config.toml"
    assert tomllib.loads(path.read_text()) == {"prefer": "oauth"}


def test_write_is_atomic(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    environ = env_for(cfg)
    config.set_value("auth", "oauth", environ)
    before = cfg.read_bytes()
    calls: list[tuple[str, str]] = []
    real_replace = os.replace

    def failing_replace(src: Any, dst: Any) -> None:
        calls.append((str(src), str(dst)))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(ConfigError, match=r"cannot write config file .*No space left"):
        config.set_value("auth", "none", environ)
    assert cfg.read_bytes() == before
    assert sorted(p.name for p in cfg.parent.iterdir()) == ["config.toml"]
    ((src, dst),) = calls
    assert Path(src).parent == cfg.parent
    assert dst == str(cfg)

    monkeypatch.setattr(os, "replace", real_replace)
    config.set_value("auth", "none", environ)
    assert tomllib.loads(cfg.read_text()) == {"auth": "none"}


def test_write_keeps_file_mode(cfg: Path) -> None:
    cfg.parent.mkdir()
    cfg.write_text('auth = "oauth"\n')
    cfg.chmod(0o600)
    config.set_value("auth", "none", env_for(cfg))
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600


def test_write_goes_through_symlink(cfg: Path, tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "sbx.toml"
    real.parent.mkdir()
    real.write_text('auth = "oauth"\n')
    cfg.parent.mkdir()
    cfg.symlink_to(real)
    config.set_value("watch", "1", env_for(cfg))
    assert cfg.is_symlink()
    assert tomllib.loads(real.read_text()) == {"auth": "oauth", "watch": 1.0}


def test_show(cfg: Path) -> None:
    environ = env_for(cfg, SBX_WATCH="3")
    config.set_value("auth", "oauth", environ)
    text = config.show(environ)
    lines = text.splitlines()
    assert lines[0] == "# sbx settings (flag > environment > config file > default)"
    assert lines[1] == f"# config file: {cfg} (exists)"
    body = {line.split()[0]: line for line in lines[2:]}
    assert list(body) == [s.key for s in SETTINGS]
    assert body["auth"].split() == ["auth", "=", '"oauth"', "#", "config", "file"]
    assert body["watch"].split() == ["watch", "=", "3.0", "#", "SBX_WATCH"]
    assert body["quiet"].split() == ["quiet", "=", "false", "#", "default"]
    # Every value column starts at the same place.
    assert len({line.index("=") for line in lines[2:]}) == 1
    # The body is valid TOML holding the effective values.
    assert tomllib.loads("\n".join(lines[2:]))["auth"] == "oauth"


def test_show_missing_file(cfg: Path) -> None:
    assert f"# config file: {cfg} (does not exist)" in config.show(env_for(cfg))


def test_config_file_is_not_read_at_import(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("auth = = =\n")
    code = "import sandboxwrap.config, sandboxwrap.auth; print('ok')"
    env = {**os.environ, "SBX_CONFIG": str(broken)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert (out.returncode, out.stdout.strip()) == (0, "ok")
