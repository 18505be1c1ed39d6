"""Read how the host user logs in to Claude, and decide the sandbox's auth mode from it.

Every check says what it found and why, and none of them reads, keeps or prints a secret:
environment variables are tested for being non-empty, the Keychain item only for existing,
the login shell only answers "set" or "not set", and `.credentials.json` is parsed only to see
whether a token is present.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sandboxwrap.errors import ConfigError

MODES = ("api-key", "oauth", "none")
OVERRIDES = ("auto", *MODES)
PREFERENCES = ("api-key", "oauth")

KEYCHAIN_SERVICE = "Claude Code-credentials"
KEYCHAIN_TIMEOUT = 3.0  # seconds; `security` answers in milliseconds unless something is wrong
PROFILE_SHELLS = ("bash", "zsh", "sh", "dash", "ksh", "fish")
CREDENTIALS_MAX_BYTES = 1 << 20  # a login file is ~1 KB; refuse to slurp anything huge

# Printed by the login shell instead of anything derived from the key.
_MARK_SET = "__SBX_PROFILE_KEY_SET__"
_MARK_UNSET = "__SBX_PROFILE_KEY_UNSET__"
# Run in a child /bin/sh so only an *exported* variable counts, as only that reaches
# Docker Desktop; the value stays in that process's environment and is never printed.
_CHILD_TEST = "/bin/sh -c 'test -n \"${ANTHROPIC_API_KEY:-}\"'"

# Claude Code's isEnvTruthy().
_TRUTHY = ("1", "true", "yes", "on")
_CLOUD_SWITCHES = ("CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_FOUNDRY")
_NOT_FORWARDED = "not passed into the sandbox, so Claude there will not use it"

Kind = Literal["api-key", "oauth", "ignored"]
_ProfileState = Literal["set", "unset", "unknown", "skipped"]


@dataclass(frozen=True)
class SourceCheck:
    """One place sbx looked: what it is, whether a usable credential is there, and why."""

    name: str
    kind: Kind
    found: bool
    detail: str


@dataclass(frozen=True)
class AuthResolution:
    """The decided auth mode, with everything that led to it."""

    mode: str
    reason: str
    decided_by: str
    checks: tuple[SourceCheck, ...]
    precedence: str
    warnings: tuple[str, ...]


# --- helpers -----------------------------------------------------------------------------


def display_path(path: Path, home: Path) -> str:
    """Return `path` with the home directory shown as ~."""
    try:
        rest = path.relative_to(home)
    except ValueError:
        return str(path)
    return "~" if str(rest) == "." else f"~/{rest}"


def _is_set(environ: Mapping[str, str], name: str) -> bool:
    # Claude Code and the plugin treat an empty variable like an unset one.
    return bool(environ.get(name, "").strip())


def keychain_service(environ: Mapping[str, str]) -> str:
    """Return Claude Code's Keychain service name (suffixed when CLAUDE_CONFIG_DIR is set)."""
    config_dir = environ.get("CLAUDE_CONFIG_DIR", "")
    if not config_dir:
        return KEYCHAIN_SERVICE
    import hashlib  # only macOS with CLAUDE_CONFIG_DIR needs it
    import unicodedata

    # Claude Code hashes the variable exactly as spelled (no ~ expansion, no resolving),
    # after NFC normalisation, so a decomposed accent from the shell hashes alike.
    raw = unicodedata.normalize("NFC", config_dir)
    digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:8]
    return f"{KEYCHAIN_SERVICE}-{digest}"


def credentials_path(environ: Mapping[str, str], home: Path) -> Path:
    """Return where Claude Code keeps its file login: $CLAUDE_CONFIG_DIR or ~/.claude."""
    config_dir = environ.get("CLAUDE_CONFIG_DIR", "")
    base = Path(config_dir) if config_dir else home / ".claude"
    return base / ".credentials.json"


def profile_command(shell: str) -> list[str]:
    """Return the arguments after the shell path that ask its login profile about the key."""
    if Path(shell).name == "fish":
        script = f"if {_CHILD_TEST}; echo {_MARK_SET}; else; echo {_MARK_UNSET}; end"
    else:
        script = f"if {_CHILD_TEST}; then echo {_MARK_SET}; else echo {_MARK_UNSET}; fi"
    return ["-l", "-c", script]


def _run(
    argv: list[str],
    env: Mapping[str, str],
    timeout: float,
    *,
    capture: bool = False,
    cwd: Path | None = None,
) -> tuple[int | None, str]:
    """Run quietly with no stdin; return (status or None on timeout, stdout if captured).

    stdout goes to a temporary file, not a pipe, so a daemon started by a profile that keeps
    the descriptor open cannot make us wait; stderr is discarded because a profile with
    `set -x` would print the key there. The process gets its own session, so it has no
    terminal to prompt on, and on timeout its whole process group is killed.
    """
    import tempfile  # kept off the import path of commands that never run a check

    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out if capture else subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
        try:
            status: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            status = None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if not capture:
            return status, ""
        # Our answer is the last thing printed; a chatty profile may print a lot before it.
        size = out.seek(0, os.SEEK_END)
        out.seek(max(0, size - 64 * 1024))
        return status, out.read().decode("utf-8", "replace")


def _seconds(t: float) -> str:
    return f"{t:g}s"


# --- the checks --------------------------------------------------------------------------


def _check_variable(environ: Mapping[str, str], name: str, kind: Kind) -> SourceCheck:
    """Whether a credential variable is set (never its value)."""
    if _is_set(environ, name):
        return SourceCheck(name, kind, True, "set in sbx's environment")
    if name in environ:
        return SourceCheck(name, kind, False, "set but empty")
    return SourceCheck(name, kind, False, "not set")


def _check_api_key(environ: Mapping[str, str]) -> SourceCheck:
    return _check_variable(environ, "ANTHROPIC_API_KEY", "api-key")


def _login_shell(environ: Mapping[str, str], platform: str) -> str | None:
    shell = environ.get("SHELL", "")
    if not shell and not platform.startswith("win"):
        try:
            import pwd  # the passwd entry is the login shell when SHELL is missing

            shell = pwd.getpwuid(os.getuid()).pw_shell
        except (ImportError, KeyError):
            shell = ""
    return shell or None


def _check_profile(
    environ: Mapping[str, str],
    *,
    enabled: bool,
    platform: str,
    home: Path,
    timeout: float,
) -> tuple[SourceCheck, _ProfileState]:
    """Ask the user's login shell whether its profile exports ANTHROPIC_API_KEY."""
    label = "login shell profile"
    if not enabled:
        return SourceCheck(label, "api-key", False, "not checked: profile_check is off"), "skipped"
    if platform.startswith("win"):
        return SourceCheck(label, "api-key", False, "not checked on Windows"), "skipped"
    shell = _login_shell(environ, platform)
    if shell is None:
        return SourceCheck(label, "api-key", False, "not checked: SHELL is not set"), "skipped"
    base = Path(shell).name
    if base not in PROFILE_SHELLS:
        why = f"not checked: {base} is not one of {', '.join(PROFILE_SHELLS)}"
        return SourceCheck(label, "api-key", False, why), "skipped"
    label = f"login shell profile ({base} -l)"
    exe = shell if os.path.isabs(shell) else shutil.which(shell, path=environ.get("PATH"))
    if exe is None or not os.access(exe, os.X_OK):
        return SourceCheck(label, "api-key", False, f"not checked: {shell} not found"), "skipped"
    # Without the key in its environment, only the profile can make the answer "set".
    env = {k: v for k, v in environ.items() if k != "ANTHROPIC_API_KEY"}
    env["HOME"] = str(home)
    try:
        status, out = _run(
            [exe, *profile_command(exe)],
            env,
            timeout,
            capture=True,
            cwd=home if home.is_dir() else None,
        )
    except OSError as exc:
        why = f"unknown: could not start {base}: {exc.strerror}"
        return SourceCheck(label, "api-key", False, why), "unknown"
    # The last marker wins: a profile may print anything before our command runs.
    last_set, last_unset = out.rfind(_MARK_SET), out.rfind(_MARK_UNSET)
    if status is None:
        why = f"unknown: {base} -l did not answer within {_seconds(timeout)}"
        return SourceCheck(label, "api-key", False, why), "unknown"
    if last_set > last_unset:
        return SourceCheck(label, "api-key", True, "exports ANTHROPIC_API_KEY"), "set"
    if last_unset > last_set:
        return SourceCheck(label, "api-key", False, "does not export ANTHROPIC_API_KEY"), "unset"
    why = f"unknown: {base} -l exited with status {status} without answering"
    return SourceCheck(label, "api-key", False, why), "unknown"


def _check_oauth_token(environ: Mapping[str, str]) -> SourceCheck:
    return _check_variable(environ, "CLAUDE_CODE_OAUTH_TOKEN", "oauth")


def _check_keychain(environ: Mapping[str, str]) -> SourceCheck:
    """Look for Claude Code's Keychain item without reading it (no `-w`, so no secret)."""
    service = keychain_service(environ)
    name = f"keychain: {service}"
    exe = shutil.which("security", path=environ.get("PATH", os.defpath))
    if exe is None:
        return SourceCheck(name, "oauth", False, "not checked: the security command was not found")
    try:
        # Never add -w: it prints the password. stdout (item attributes) is discarded too.
        status, _ = _run([exe, "find-generic-password", "-s", service], environ, KEYCHAIN_TIMEOUT)
    except OSError as exc:
        return SourceCheck(name, "oauth", False, f"unknown: could not run security: {exc.strerror}")
    if status is None:
        why = f"unknown: security did not answer within {_seconds(KEYCHAIN_TIMEOUT)}"
        return SourceCheck(name, "oauth", False, why)
    if status == 0:
        return SourceCheck(name, "oauth", True, "item exists (its contents were not read)")
    if status == 44:  # errSecItemNotFound, as `security` reports it
        return SourceCheck(name, "oauth", False, "no such item in your keychains")
    return SourceCheck(name, "oauth", False, f"unknown: security exited with status {status}")


def _nonempty_str(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _check_credentials_file(
    environ: Mapping[str, str], home: Path, now: float
) -> tuple[SourceCheck, bool]:
    """Look for a usable login in .credentials.json; return the check and whether it exists."""
    path = credentials_path(environ, home)
    name = display_path(path, home)

    def no(detail: str, exists: bool = True) -> tuple[SourceCheck, bool]:
        return SourceCheck(name, "oauth", False, detail), exists

    try:
        # O_NONBLOCK: opening a FIFO planted at this path must not hang sbx.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return no("exists but is not a regular file")
            data = fh.read(CREDENTIALS_MAX_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return no("does not exist", exists=False)
    except IsADirectoryError:
        return no("exists but is a directory")
    except PermissionError:
        return no("exists but permission denied")
    except OSError as exc:
        return no(f"exists but cannot be read ({exc.strerror})")
    if len(data) > CREDENTIALS_MAX_BYTES:
        return no("exists but is too large to be a login file")
    if not data.strip():
        return no("exists but is empty")
    try:
        doc: Any = json.loads(data)
    except (UnicodeDecodeError, ValueError):  # never echo the parser's message: it quotes input
        return no("exists but is not valid JSON")
    if not isinstance(doc, dict):
        return no("exists but is not a JSON object")
    oauth = doc.get("claudeAiOauth")
    if not isinstance(oauth, dict):
        return no("exists but has no claudeAiOauth access or refresh token")
    access = _nonempty_str(oauth.get("accessToken"))
    refresh = _nonempty_str(oauth.get("refreshToken"))
    plan = oauth.get("subscriptionType")
    suffix = f"; subscription: {plan}" if _nonempty_str(plan) and str(plan).isidentifier() else ""
    if refresh:
        what = "access and refresh token" if access else "refresh token (no access token)"
        return SourceCheck(name, "oauth", True, f"claudeAiOauth {what}{suffix}"), True
    if not access:
        return no("exists but has no claudeAiOauth access or refresh token")
    expires = oauth.get("expiresAt")
    if isinstance(expires, int | float) and not isinstance(expires, bool) and expires < now * 1000:
        day = time.strftime("%Y-%m-%d", time.gmtime(expires / 1000))
        return no(f"exists but its access token expired on {day} and it has no refresh token")
    return SourceCheck(name, "oauth", True, f"claudeAiOauth access token{suffix}"), True


def _check_ignored(environ: Mapping[str, str]) -> list[SourceCheck]:
    checks = []
    for var in ("ANTHROPIC_AUTH_TOKEN", *_CLOUD_SWITCHES, "ANTHROPIC_BASE_URL"):
        if var in _CLOUD_SWITCHES:
            raw = environ.get(var)
            found = raw is not None and raw.strip().lower() in _TRUTHY
            if found:
                detail = f"on; {_NOT_FORWARDED}"
            elif raw is not None:
                detail = "set to a false value"
            else:
                detail = "not set"
        else:
            found = _is_set(environ, var)
            detail = f"set; {_NOT_FORWARDED}" if found else "not set"
        checks.append(SourceCheck(var, "ignored", found, detail))
    return checks


# --- the decision ------------------------------------------------------------------------


def _oauth_reason(check: SourceCheck) -> str:
    if check.name == "CLAUDE_CODE_OAUTH_TOKEN":
        return "CLAUDE_CODE_OAUTH_TOKEN is set"
    if check.name.startswith("keychain: "):
        return "login found in the macOS Keychain"
    return f"login found in {check.name}"


def _override_reason(override: str, source: str) -> tuple[str, str]:
    """Return (decided_by, reason) for an explicit --auth / SBX_AUTH / config value."""
    if source == "flag":
        return "flag", f"--auth {override}"
    if source == "env":
        return "env", f"SBX_AUTH={override}"
    if source in ("config", "file"):
        return "config", f'auth = "{override}" in config'
    raise ValueError(f"override_source must be flag, env, config or auto, not {source!r}")


def resolve_auth(
    environ: Mapping[str, str],
    *,
    override: str = "auto",
    override_source: str = "auto",
    prefer: str = "api-key",
    profile_check: bool = True,
    platform: str = sys.platform,
    home: Path | None = None,
    profile_timeout: float = 3.0,
) -> AuthResolution:
    """Check every credential source on the host and decide the sandbox's auth mode.

    The checks run even when `override` is not "auto", so `sbx auth` can explain them.
    `override_source` is where the override came from: "flag", "env", "config" (or "file").
    """
    if override not in OVERRIDES:
        raise ConfigError(f"auth must be one of {', '.join(OVERRIDES)}, not {override!r}")
    if prefer not in PREFERENCES:
        raise ConfigError(f"prefer must be one of {', '.join(PREFERENCES)}, not {prefer!r}")
    if home is None:
        home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()

    api = _check_api_key(environ)
    profile, profile_state = _check_profile(
        environ, enabled=profile_check, platform=platform, home=home, timeout=profile_timeout
    )
    # Listed in Claude Code's own order: the token variable, then the stored login
    # (the Mac CLI reads the Keychain before the file).
    oauth_checks = [_check_oauth_token(environ)]
    if platform == "darwin":
        oauth_checks.append(_check_keychain(environ))
    cred_file, cred_file_exists = _check_credentials_file(environ, home, time.time())
    oauth_checks.append(cred_file)
    ignored = _check_ignored(environ)
    checks = (api, profile, *oauth_checks, *ignored)

    login = next((c for c in oauth_checks if c.found), None)
    if prefer == "oauth":
        order = 'oauth over api-key (prefer = "oauth")'
    else:
        order = "api-key over oauth (Claude Code's own order)"
    if api.found and login is not None and profile_state == "unset":
        # The key sbx sees is not the one the sandbox gets: Docker's proxy takes it from
        # the login profile, which lacks it, so keeping the helper would give the 401.
        detected, auto_reason = (
            "oauth",
            f"{_oauth_reason(login)}; ANTHROPIC_API_KEY is set here but not in your login"
            " profile, so Docker's proxy has no key",
        )
    elif api.found and login is not None:
        if prefer == "oauth":
            detected, auto_reason = "oauth", f"{_oauth_reason(login)} (prefer = oauth)"
        else:
            detected, auto_reason = "api-key", "ANTHROPIC_API_KEY is set; it outranks the login"
    elif api.found:
        detected, auto_reason = "api-key", "ANTHROPIC_API_KEY is set"
    elif login is not None:
        detected, auto_reason = "oauth", _oauth_reason(login)
    else:
        detected, auto_reason = "none", "no API key or login found on this host"

    if override == "auto":
        mode, reason, decided_by, precedence = detected, auto_reason, "auto", order
    else:
        decided_by, reason = _override_reason(override, override_source)
        mode = override
        precedence = f"{reason} overrides detection (which gives {detected})"

    warnings = _warnings(
        mode=mode,
        api=api,
        profile=profile,
        profile_state=profile_state,
        login=login,
        cred_file=cred_file if cred_file_exists else None,
        ignored=ignored,
    )
    return AuthResolution(mode, reason, decided_by, checks, precedence, tuple(warnings))


def _warnings(
    *,
    mode: str,
    api: SourceCheck,
    profile: SourceCheck,
    profile_state: _ProfileState,
    login: SourceCheck | None,
    cred_file: SourceCheck | None,
    ignored: list[SourceCheck],
) -> list[str]:
    """Only the warnings that matter for `mode`, so `sbx run` stays quiet when all is well."""
    out: list[str] = []
    shell = profile.name.removeprefix("login shell profile ").strip("()") or "login shell"
    if profile_state == "unknown":
        why = profile.detail.removeprefix("unknown: ")
        out.append(
            f"could not check your login shell profile ({why});"
            " turn the check off with SBX_PROFILE_CHECK=0"
        )
    if mode == "api-key":
        if api.found and profile_state == "unset":
            out.append(
                f"ANTHROPIC_API_KEY is set here but not by your login shell profile ({shell}):"
                " Docker Desktop reads the profile when it starts, so the sandbox proxy will not"
                " have the key; export it in the profile and restart Docker Desktop"
            )
        elif not api.found and profile_state != "set":
            out.append(
                "ANTHROPIC_API_KEY is not set here"
                + (" or in your login shell profile" if profile_state == "unset" else "")
                + ": unless Docker Desktop has a key, requests from the sandbox will fail"
            )
    elif profile_state == "set" and not api.found:
        out.append(
            f"ANTHROPIC_API_KEY is set by your login shell profile ({shell}) but not here:"
            " Docker Desktop's proxy will have it, so requests from the sandbox may be billed to"
            " the API key even without apiKeyHelper;"
            " remove it from the profile and restart Docker Desktop, or use --auth api-key"
        )
    if mode != "api-key" and login is None and cred_file is not None:
        out.append(f"{cred_file.name} holds no usable login: it {cred_file.detail}")
    on = [c.name for c in ignored if c.found]
    if on:
        names = " and ".join([", ".join(on[:-1]), on[-1]] if len(on) > 1 else on)
        verb, them = ("is", "it") if len(on) == 1 else ("are", "them")
        out.append(
            f"{names} {verb} set here, but docker sandbox does not pass {them} into the"
            f" sandbox: Claude there will not use {them}"
        )
    return out


# --- output ------------------------------------------------------------------------------


def to_json(res: AuthResolution) -> dict[str, object]:
    """Return the documented JSON form of `res` (stable keys; never a secret)."""
    return {
        "mode": res.mode,
        "reason": res.reason,
        "decided_by": res.decided_by,
        "precedence": res.precedence,
        "sources": [
            {"name": c.name, "kind": c.kind, "found": c.found, "detail": c.detail}
            for c in res.checks
        ],
        "warnings": list(res.warnings),
    }


_EFFECT = {
    "api-key": "apiKeyHelper is kept, so Docker's proxy adds the host's API key",
    "oauth": "apiKeyHelper is removed, so Claude uses a subscription login (/login if asked)",
    "none": "apiKeyHelper is removed, so Claude asks you to /login",
}
_DECIDED_BY = {
    "flag": "the --auth flag",
    "env": "the SBX_AUTH environment variable",
    "config": "the auth key in the config file",
    "auto": "auto-detection",
}


def format_text(res: AuthResolution) -> str:
    """Return the multi-line report `sbx auth` prints."""
    lines = [
        f"mode:        {res.mode} ({res.reason})",
        f"decided by:  {_DECIDED_BY.get(res.decided_by, res.decided_by)}",
        f"precedence:  {res.precedence}",
        f"effect:      {_EFFECT.get(res.mode, '')}",
        "",
        "sources checked:",
    ]
    width = max(len(c.name) for c in res.checks)
    for c in res.checks:
        status = "found" if c.found else "-"
        lines.append(f"  {status:<6} {c.kind:<8} {c.name:<{width}}  {c.detail}")
    if res.warnings:
        lines += ["", "warnings:"]
        lines += [f"  ! {w}" for w in res.warnings]
    return "\n".join(lines)
