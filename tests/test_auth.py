"""sandboxwrap.auth: every credential source, every combination, and no secret in any output."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sandboxwrap import auth
from sandboxwrap.auth import AuthResolution, format_text, resolve_auth, to_json
from sandboxwrap.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "auth_fixtures"

# Fake secrets: none of these strings may appear in any output.
API_KEY = "sk-ant-api03-SENTINEL-APIKEY"
PROFILE_KEY = "sk-ant-api03-SENTINEL-PROFILEKEY"
ACCESS = "sk-ant-oat01-SENTINEL-ACCESS"
REFRESH = "sk-ant-ort01-SENTINEL-REFRESH"
ENV_TOKEN = "sk-ant-oat01-SENTINEL-ENVTOKEN"
AUTH_TOKEN = "SENTINEL-AUTHTOKEN"
BASE_URL = "https://user:SENTINEL-URLPASS@llm-proxy.example"
SENTINELS = (API_KEY, PROFILE_KEY, ACCESS, REFRESH, ENV_TOKEN, AUTH_TOKEN, "SENTINEL")

FAR_FUTURE_MS = 4102444800000  # 2100-01-01
PAST_MS = 1577836800000  # 2020-01-01

LOGIN = {
    "claudeAiOauth": {
        "accessToken": ACCESS,
        "refreshToken": REFRESH,
        "expiresAt": FAR_FUTURE_MS,
        "scopes": ["user:inference"],
        "subscriptionType": "max",
    }
}
REFRESH_ONLY = {"claudeAiOauth": {"refreshToken": REFRESH, "expiresAt": PAST_MS}}
ACCESS_ONLY = {"claudeAiOauth": {"accessToken": ACCESS, "refreshToken": None}}
ACCESS_EXPIRED = {"claudeAiOauth": {"accessToken": ACCESS, "expiresAt": PAST_MS}}
NO_TOKENS = {"claudeAiOauth": {"accessToken": "", "refreshToken": None}, "mcpOAuth": {}}
MCP_ONLY = {"mcpOAuth": {"server": {"accessToken": ACCESS}}}
TRUNCATED = '{"claudeAiOauth": {"accessToken": "' + ACCESS + '", "refreshT'

CRED = ".claude/.credentials.json"
KEYCHAIN_HASHED = "Claude Code-credentials-9751abf6"  # sha256("/opt/claude-cfg")[:8]

# --- the expected-results table ------------------------------------------------------------

API_FIRST = "api-key over oauth (Claude Code's own order)"
OAUTH_FIRST = 'oauth over api-key (prefer = "oauth")'
NOT_FORWARDED = "not passed into the sandbox, so Claude there will not use it"

W_NO_KEY = (
    "ANTHROPIC_API_KEY is not set here: unless Docker Desktop has a key,"
    " requests from the sandbox will fail"
)


def w_unusable(name: str, detail: str) -> str:
    return f"{name} holds no usable login: it {detail}"


def w_not_in_profile(shell: str) -> str:
    return (
        f"ANTHROPIC_API_KEY is set here but not by your login shell profile ({shell}):"
        " Docker Desktop reads the profile when it starts, so the sandbox proxy will not"
        " have the key; export it in the profile and restart Docker Desktop"
    )


def w_only_in_profile(shell: str) -> str:
    return (
        f"ANTHROPIC_API_KEY is set by your login shell profile ({shell}) but not here:"
        " Docker Desktop's proxy will have it, so requests from the sandbox may be billed to"
        " the API key even without apiKeyHelper;"
        " remove it from the profile and restart Docker Desktop, or use --auth api-key"
    )


# One slot per source, in report order; a case lists only the slots that differ.
SLOTS: dict[str, dict[str, Any]] = {
    "api": {"name": "ANTHROPIC_API_KEY", "kind": "api-key", "found": False, "detail": "not set"},
    "profile": {
        "name": "login shell profile",
        "kind": "api-key",
        "found": False,
        "detail": "not checked: profile_check is off",
    },
    "token": {
        "name": "CLAUDE_CODE_OAUTH_TOKEN",
        "kind": "oauth",
        "found": False,
        "detail": "not set",
    },
    "keychain": {
        "name": "keychain: Claude Code-credentials",
        "kind": "oauth",
        "found": False,
        "detail": "no such item in your keychains",
    },
    "file": {
        "name": "~/.claude/.credentials.json",
        "kind": "oauth",
        "found": False,
        "detail": "does not exist",
    },
    "auth_token": {
        "name": "ANTHROPIC_AUTH_TOKEN",
        "kind": "ignored",
        "found": False,
        "detail": "not set",
    },
    "bedrock": {
        "name": "CLAUDE_CODE_USE_BEDROCK",
        "kind": "ignored",
        "found": False,
        "detail": "not set",
    },
    "vertex": {
        "name": "CLAUDE_CODE_USE_VERTEX",
        "kind": "ignored",
        "found": False,
        "detail": "not set",
    },
    "foundry": {
        "name": "CLAUDE_CODE_USE_FOUNDRY",
        "kind": "ignored",
        "found": False,
        "detail": "not set",
    },
    "base_url": {
        "name": "ANTHROPIC_BASE_URL",
        "kind": "ignored",
        "found": False,
        "detail": "not set",
    },
}


def yes(detail: str, **more: Any) -> dict[str, Any]:
    return {"found": True, "detail": detail, **more}


def no(detail: str, **more: Any) -> dict[str, Any]:
    return {"found": False, "detail": detail, **more}


@dataclass
class Case:
    """One host situation and the `sbx auth --json` it must produce."""

    id: str
    mode: str
    reason: str
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, object] = field(default_factory=dict)  # relative to HOME; dict = JSON
    kwargs: dict[str, Any] = field(default_factory=dict)
    login_shell: str | None = None  # a real login shell to run, which turns the profile check on
    keychain: tuple[str, ...] = ()  # items in the fake macOS keychain
    decided_by: str = "auto"
    precedence: str = API_FIRST
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def darwin(self) -> bool:
        return self.kwargs.get("platform") == "darwin"

    def expected(self) -> dict[str, object]:
        unknown = set(self.sources) - set(SLOTS)
        assert not unknown, unknown
        rows = []
        for slot, default in SLOTS.items():
            if slot == "keychain" and not self.darwin:
                continue
            rows.append({**default, **self.sources.get(slot, {})})
        return {
            "mode": self.mode,
            "reason": self.reason,
            "decided_by": self.decided_by,
            "precedence": self.precedence,
            "sources": rows,
            "warnings": list(self.warnings),
        }


DARWIN = {"platform": "darwin"}

CASES = [
    # --- one source at a time (Linux) ---
    Case("nothing", "none", "no API key or login found on this host"),
    Case(
        "api-key-only",
        "api-key",
        "ANTHROPIC_API_KEY is set",
        env={"ANTHROPIC_API_KEY": API_KEY},
        sources={"api": yes("set in sbx's environment")},
    ),
    Case(
        "api-key-empty",
        "none",
        "no API key or login found on this host",
        env={"ANTHROPIC_API_KEY": " "},
        sources={"api": no("set but empty")},
    ),
    Case(
        "login-file",
        "oauth",
        "login found in ~/.claude/.credentials.json",
        files={CRED: LOGIN},
        sources={"file": yes("claudeAiOauth access and refresh token; subscription: max")},
    ),
    Case(
        "refresh-token-only",
        "oauth",
        "login found in ~/.claude/.credentials.json",
        files={CRED: REFRESH_ONLY},
        sources={"file": yes("claudeAiOauth refresh token (no access token)")},
    ),
    Case(
        "access-token-only-setup-token",
        "oauth",
        "login found in ~/.claude/.credentials.json",
        files={CRED: ACCESS_ONLY},
        sources={"file": yes("claudeAiOauth access token")},
    ),
    Case(
        "access-token-expired-no-refresh",
        "none",
        "no API key or login found on this host",
        files={CRED: ACCESS_EXPIRED},
        sources={
            "file": no(
                "exists but its access token expired on 2020-01-01 and it has no refresh token"
            )
        },
        warnings=(
            w_unusable(
                "~/.claude/.credentials.json",
                "exists but its access token expired on 2020-01-01 and it has no refresh token",
            ),
        ),
    ),
    Case(
        "empty-file",
        "none",
        "no API key or login found on this host",
        files={CRED: ""},
        sources={"file": no("exists but is empty")},
        warnings=(w_unusable("~/.claude/.credentials.json", "exists but is empty"),),
    ),
    Case(
        "malformed-file",
        "none",
        "no API key or login found on this host",
        files={CRED: TRUNCATED},
        sources={"file": no("exists but is not valid JSON")},
        warnings=(w_unusable("~/.claude/.credentials.json", "exists but is not valid JSON"),),
    ),
    Case(
        "not-utf8-file",
        "none",
        "no API key or login found on this host",
        files={CRED: b"\xff\xfe{}"},
        sources={"file": no("exists but is not valid JSON")},
        warnings=(w_unusable("~/.claude/.credentials.json", "exists but is not valid JSON"),),
    ),
    Case(
        "json-array-file",
        "none",
        "no API key or login found on this host",
        files={CRED: [ACCESS]},
        sources={"file": no("exists but is not a JSON object")},
        warnings=(w_unusable("~/.claude/.credentials.json", "exists but is not a JSON object"),),
    ),
    Case(
        "mcp-only-file",
        "none",
        "no API key or login found on this host",
        files={CRED: MCP_ONLY},
        sources={"file": no("exists but has no claudeAiOauth access or refresh token")},
        warnings=(
            w_unusable(
                "~/.claude/.credentials.json",
                "exists but has no claudeAiOauth access or refresh token",
            ),
        ),
    ),
    Case(
        "empty-tokens-file",
        "none",
        "no API key or login found on this host",
        files={CRED: NO_TOKENS},
        sources={"file": no("exists but has no claudeAiOauth access or refresh token")},
        warnings=(
            w_unusable(
                "~/.claude/.credentials.json",
                "exists but has no claudeAiOauth access or refresh token",
            ),
        ),
    ),
    Case(
        "file-is-directory",
        "none",
        "no API key or login found on this host",
        files={CRED + "/": None},
        sources={"file": no("exists but is a directory")},
        warnings=(w_unusable("~/.claude/.credentials.json", "exists but is a directory"),),
    ),
    Case(
        "claude-config-dir",
        "oauth",
        "login found in ~/cfg/.credentials.json",
        env={"CLAUDE_CONFIG_DIR": "{home}/cfg"},
        files={"cfg/.credentials.json": REFRESH_ONLY},
        sources={
            "file": yes(
                "claudeAiOauth refresh token (no access token)", name="~/cfg/.credentials.json"
            )
        },
    ),
    Case(
        "claude-config-dir-ignores-default-file",
        "none",
        "no API key or login found on this host",
        env={"CLAUDE_CONFIG_DIR": "{home}/cfg"},
        files={CRED: LOGIN},
        sources={"file": no("does not exist", name="~/cfg/.credentials.json")},
    ),
    Case(
        "oauth-token-env",
        "oauth",
        "CLAUDE_CODE_OAUTH_TOKEN is set",
        env={"CLAUDE_CODE_OAUTH_TOKEN": ENV_TOKEN},
        sources={"token": yes("set in sbx's environment")},
    ),
    Case(
        "oauth-token-env-empty",
        "none",
        "no API key or login found on this host",
        env={"CLAUDE_CODE_OAUTH_TOKEN": ""},
        sources={"token": no("set but empty")},
    ),
    # --- combinations ---
    Case(
        "oauth-token-and-file",
        "oauth",
        "CLAUDE_CODE_OAUTH_TOKEN is set",
        env={"CLAUDE_CODE_OAUTH_TOKEN": ENV_TOKEN},
        files={CRED: LOGIN},
        sources={
            "token": yes("set in sbx's environment"),
            "file": yes("claudeAiOauth access and refresh token; subscription: max"),
        },
    ),
    Case(
        "api-key-and-login",
        "api-key",
        "ANTHROPIC_API_KEY is set; it outranks the login",
        env={"ANTHROPIC_API_KEY": API_KEY},
        files={CRED: LOGIN},
        sources={
            "api": yes("set in sbx's environment"),
            "file": yes("claudeAiOauth access and refresh token; subscription: max"),
        },
    ),
    Case(
        "api-key-and-login-prefer-oauth",
        "oauth",
        "login found in ~/.claude/.credentials.json (prefer = oauth)",
        env={"ANTHROPIC_API_KEY": API_KEY},
        files={CRED: LOGIN},
        kwargs={"prefer": "oauth"},
        precedence=OAUTH_FIRST,
        sources={
            "api": yes("set in sbx's environment"),
            "file": yes("claudeAiOauth access and refresh token; subscription: max"),
        },
    ),
    Case(
        "api-key-and-oauth-token-prefer-oauth",
        "oauth",
        "CLAUDE_CODE_OAUTH_TOKEN is set (prefer = oauth)",
        env={"ANTHROPIC_API_KEY": API_KEY, "CLAUDE_CODE_OAUTH_TOKEN": ENV_TOKEN},
        kwargs={"prefer": "oauth"},
        precedence=OAUTH_FIRST,
        sources={"api": yes("set in sbx's environment"), "token": yes("set in sbx's environment")},
    ),
    Case(
        "prefer-oauth-but-only-api-key",
        "api-key",
        "ANTHROPIC_API_KEY is set",
        env={"ANTHROPIC_API_KEY": API_KEY},
        kwargs={"prefer": "oauth"},
        precedence=OAUTH_FIRST,
        sources={"api": yes("set in sbx's environment")},
    ),
    Case(
        "api-key-and-broken-file",
        "api-key",
        "ANTHROPIC_API_KEY is set",
        env={"ANTHROPIC_API_KEY": API_KEY},
        files={CRED: TRUNCATED},
        sources={
            "api": yes("set in sbx's environment"),
            "file": no("exists but is not valid JSON"),
        },
    ),
    # --- overrides: flag, env, config ---
    Case(
        "override-flag-oauth-over-api-key",
        "oauth",
        "--auth oauth",
        env={"ANTHROPIC_API_KEY": API_KEY},
        kwargs={"override": "oauth", "override_source": "flag"},
        decided_by="flag",
        precedence="--auth oauth overrides detection (which gives api-key)",
        sources={"api": yes("set in sbx's environment")},
    ),
    Case(
        "override-env-none-over-login",
        "none",
        "SBX_AUTH=none",
        files={CRED: LOGIN},
        kwargs={"override": "none", "override_source": "env"},
        decided_by="env",
        precedence="SBX_AUTH=none overrides detection (which gives oauth)",
        sources={"file": yes("claudeAiOauth access and refresh token; subscription: max")},
    ),
    Case(
        "override-config-api-key-without-key",
        "api-key",
        'auth = "api-key" in config',
        kwargs={"override": "api-key", "override_source": "config"},
        decided_by="config",
        precedence='auth = "api-key" in config overrides detection (which gives none)',
        warnings=(W_NO_KEY,),
    ),
    Case(
        "override-file-source-alias",
        "oauth",
        'auth = "oauth" in config',
        kwargs={"override": "oauth", "override_source": "file"},
        decided_by="config",
        precedence='auth = "oauth" in config overrides detection (which gives none)',
    ),
    Case(
        "override-auto-from-flag-is-detection",
        "api-key",
        "ANTHROPIC_API_KEY is set",
        env={"ANTHROPIC_API_KEY": API_KEY},
        kwargs={"override": "auto", "override_source": "flag"},
        sources={"api": yes("set in sbx's environment")},
    ),
    # --- reported but not sandbox credentials ---
    Case(
        "ignored-all-set",
        "none",
        "no API key or login found on this host",
        env={
            "ANTHROPIC_AUTH_TOKEN": AUTH_TOKEN,
            "CLAUDE_CODE_USE_BEDROCK": "1",
            "CLAUDE_CODE_USE_VERTEX": "true",
            "CLAUDE_CODE_USE_FOUNDRY": "YES",
            "ANTHROPIC_BASE_URL": BASE_URL,
        },
        sources={
            "auth_token": yes(f"set; {NOT_FORWARDED}"),
            "bedrock": yes(f"on; {NOT_FORWARDED}"),
            "vertex": yes(f"on; {NOT_FORWARDED}"),
            "foundry": yes(f"on; {NOT_FORWARDED}"),
            "base_url": yes(f"set; {NOT_FORWARDED}"),
        },
        warnings=(
            "ANTHROPIC_AUTH_TOKEN, CLAUDE_CODE_USE_BEDROCK, CLAUDE_CODE_USE_VERTEX,"
            " CLAUDE_CODE_USE_FOUNDRY and ANTHROPIC_BASE_URL are set here, but docker sandbox"
            " does not pass them into the sandbox: Claude there will not use them",
        ),
    ),
    Case(
        "ignored-one-with-api-key",
        "api-key",
        "ANTHROPIC_API_KEY is set",
        env={"ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_AUTH_TOKEN": AUTH_TOKEN},
        sources={
            "api": yes("set in sbx's environment"),
            "auth_token": yes(f"set; {NOT_FORWARDED}"),
        },
        warnings=(
            "ANTHROPIC_AUTH_TOKEN is set here, but docker sandbox does not pass it into the"
            " sandbox: Claude there will not use it",
        ),
    ),
    Case(
        "cloud-switch-false",
        "none",
        "no API key or login found on this host",
        env={"CLAUDE_CODE_USE_BEDROCK": "0", "CLAUDE_CODE_USE_VERTEX": ""},
        sources={"bedrock": no("set to a false value"), "vertex": no("set to a false value")},
    ),
    # --- macOS: the Keychain, through a fake `security` ---
    Case(
        "darwin-keychain-found",
        "oauth",
        "login found in the macOS Keychain",
        kwargs=DARWIN,
        keychain=("Claude Code-credentials",),
        sources={"keychain": yes("item exists (its contents were not read)")},
    ),
    Case(
        "darwin-keychain-not-found", "none", "no API key or login found on this host", kwargs=DARWIN
    ),
    Case(
        "darwin-keychain-other-item-only",
        "none",
        "no API key or login found on this host",
        kwargs=DARWIN,
        keychain=(KEYCHAIN_HASHED,),
    ),
    Case(
        "darwin-keychain-suffixed-for-config-dir",
        "oauth",
        "login found in the macOS Keychain",
        env={"CLAUDE_CONFIG_DIR": "/opt/claude-cfg"},
        kwargs=DARWIN,
        keychain=("Claude Code-credentials", KEYCHAIN_HASHED),
        sources={
            "keychain": yes(
                "item exists (its contents were not read)", name=f"keychain: {KEYCHAIN_HASHED}"
            ),
            "file": no("does not exist", name="/opt/claude-cfg/.credentials.json"),
        },
    ),
    Case(
        "darwin-keychain-unsuffixed-item-not-used-with-config-dir",
        "none",
        "no API key or login found on this host",
        env={"CLAUDE_CONFIG_DIR": "/opt/claude-cfg"},
        kwargs=DARWIN,
        keychain=("Claude Code-credentials",),
        sources={
            "keychain": no("no such item in your keychains", name=f"keychain: {KEYCHAIN_HASHED}"),
            "file": no("does not exist", name="/opt/claude-cfg/.credentials.json"),
        },
    ),
    Case(
        "darwin-keychain-and-file",
        "oauth",
        "login found in the macOS Keychain",
        files={CRED: LOGIN},
        kwargs=DARWIN,
        keychain=("Claude Code-credentials",),
        sources={
            "keychain": yes("item exists (its contents were not read)"),
            "file": yes("claudeAiOauth access and refresh token; subscription: max"),
        },
    ),
    Case(
        "darwin-file-only",
        "oauth",
        "login found in ~/.claude/.credentials.json",
        files={CRED: REFRESH_ONLY},
        kwargs=DARWIN,
        sources={"file": yes("claudeAiOauth refresh token (no access token)")},
    ),
    Case(
        "darwin-keychain-and-api-key",
        "api-key",
        "ANTHROPIC_API_KEY is set; it outranks the login",
        env={"ANTHROPIC_API_KEY": API_KEY},
        kwargs=DARWIN,
        keychain=("Claude Code-credentials",),
        sources={
            "api": yes("set in sbx's environment"),
            "keychain": yes("item exists (its contents were not read)"),
        },
    ),
    Case(
        "darwin-keychain-and-api-key-prefer-oauth",
        "oauth",
        "login found in the macOS Keychain (prefer = oauth)",
        env={"ANTHROPIC_API_KEY": API_KEY},
        kwargs={**DARWIN, "prefer": "oauth"},
        keychain=("Claude Code-credentials",),
        precedence=OAUTH_FIRST,
        sources={
            "api": yes("set in sbx's environment"),
            "keychain": yes("item exists (its contents were not read)"),
        },
    ),
    Case(
        "darwin-security-fails",
        "none",
        "no API key or login found on this host",
        env={"FAKE_SECURITY_STATUS": "1"},
        kwargs=DARWIN,
        keychain=("Claude Code-credentials",),
        sources={"keychain": no("unknown: security exited with status 1")},
    ),
    Case(
        "darwin-security-missing",
        "none",
        "no API key or login found on this host",
        env={"PATH": "{empty}"},
        kwargs=DARWIN,
        sources={"keychain": no("not checked: the security command was not found")},
    ),
    # --- the login shell profile, with real shells ---
    Case(
        "profile-bash-agrees",
        "api-key",
        "ANTHROPIC_API_KEY is set",
        login_shell="bash",
        env={"ANTHROPIC_API_KEY": API_KEY},
        files={".bash_profile": f"export ANTHROPIC_API_KEY={PROFILE_KEY}\n"},
        sources={
            "api": yes("set in sbx's environment"),
            "profile": yes("exports ANTHROPIC_API_KEY", name="login shell profile (bash -l)"),
        },
    ),
    Case(
        "profile-bash-dot-profile-only-in-profile",
        "none",
        "no API key or login found on this host",
        login_shell="bash",
        files={".profile": f"ANTHROPIC_API_KEY={PROFILE_KEY}; export ANTHROPIC_API_KEY\n"},
        sources={"profile": yes("exports ANTHROPIC_API_KEY", name="login shell profile (bash -l)")},
        warnings=(w_only_in_profile("bash -l"),),
    ),
    Case(
        "profile-bash-key-removed-from-env",
        "api-key",
        "ANTHROPIC_API_KEY is set",
        login_shell="bash",
        env={"ANTHROPIC_API_KEY": API_KEY},
        files={".bash_profile": "# nothing here\n"},
        sources={
            "api": yes("set in sbx's environment"),
            "profile": no(
                "does not export ANTHROPIC_API_KEY", name="login shell profile (bash -l)"
            ),
        },
        warnings=(w_not_in_profile("bash -l"),),
    ),
    Case(
        # Docker's proxy gets its key from the profile: a key only in this terminal cannot
        # reach the sandbox, so the login is the credential that works.
        "profile-bash-key-only-here-with-login",
        "oauth",
        "login found in ~/.claude/.credentials.json; ANTHROPIC_API_KEY is set here but not"
        " in your login profile, so Docker's proxy has no key",
        login_shell="bash",
        env={"ANTHROPIC_API_KEY": API_KEY},
        files={".bash_profile": "# nothing here\n", CRED: LOGIN},
        sources={
            "api": yes("set in sbx's environment"),
            "profile": no(
                "does not export ANTHROPIC_API_KEY", name="login shell profile (bash -l)"
            ),
            "file": yes("claudeAiOauth access and refresh token; subscription: max"),
        },
    ),
    Case(
        "profile-bash-noisy-profile",
        "api-key",
        "ANTHROPIC_API_KEY is set",
        login_shell="bash",
        env={"ANTHROPIC_API_KEY": API_KEY},
        files={
            ".bash_profile": (
                f"set -x\nexport ANTHROPIC_API_KEY={PROFILE_KEY}\n"
                'echo "key is $ANTHROPIC_API_KEY"\necho "$ANTHROPIC_API_KEY" >&2\n'
                "echo __SBX_PROFILE_KEY_UNSET__\n"  # our marker printed early must not fool us
            )
        },
        sources={
            "api": yes("set in sbx's environment"),
            "profile": yes("exports ANTHROPIC_API_KEY", name="login shell profile (bash -l)"),
        },
    ),
    Case(
        "profile-zsh-agrees",
        "api-key",
        "ANTHROPIC_API_KEY is set",
        login_shell="zsh",
        env={"ANTHROPIC_API_KEY": API_KEY},
        files={".zprofile": f"export ANTHROPIC_API_KEY={PROFILE_KEY}\n"},
        sources={
            "api": yes("set in sbx's environment"),
            "profile": yes("exports ANTHROPIC_API_KEY", name="login shell profile (zsh -l)"),
        },
    ),
    Case(
        "profile-zsh-set-here-not-in-profile",
        "api-key",
        "ANTHROPIC_API_KEY is set",
        login_shell="zsh",
        env={"ANTHROPIC_API_KEY": API_KEY},
        sources={
            "api": yes("set in sbx's environment"),
            "profile": no("does not export ANTHROPIC_API_KEY", name="login shell profile (zsh -l)"),
        },
        warnings=(w_not_in_profile("zsh -l"),),
    ),
    Case(
        "profile-zsh-in-profile-not-here-with-login",
        "oauth",
        "login found in ~/.claude/.credentials.json",
        login_shell="zsh",
        files={".zprofile": f"export ANTHROPIC_API_KEY={PROFILE_KEY}\n", CRED: LOGIN},
        sources={
            "profile": yes("exports ANTHROPIC_API_KEY", name="login shell profile (zsh -l)"),
            "file": yes("claudeAiOauth access and refresh token; subscription: max"),
        },
        warnings=(w_only_in_profile("zsh -l"),),
    ),
    Case(
        "profile-zsh-not-exported",
        "none",
        "no API key or login found on this host",
        login_shell="zsh",
        files={".zprofile": f"ANTHROPIC_API_KEY={PROFILE_KEY}\n"},
        sources={
            "profile": no("does not export ANTHROPIC_API_KEY", name="login shell profile (zsh -l)")
        },
    ),
    Case(
        "profile-zsh-forced-api-key-from-profile",
        "api-key",
        "--auth api-key",
        login_shell="zsh",
        files={".zprofile": f"export ANTHROPIC_API_KEY={PROFILE_KEY}\n"},
        kwargs={"override": "api-key", "override_source": "flag"},
        decided_by="flag",
        precedence="--auth api-key overrides detection (which gives none)",
        sources={"profile": yes("exports ANTHROPIC_API_KEY", name="login shell profile (zsh -l)")},
    ),
    Case(
        "profile-zsh-forced-api-key-nowhere",
        "api-key",
        "--auth api-key",
        login_shell="zsh",
        kwargs={"override": "api-key", "override_source": "flag"},
        decided_by="flag",
        precedence="--auth api-key overrides detection (which gives none)",
        sources={
            "profile": no("does not export ANTHROPIC_API_KEY", name="login shell profile (zsh -l)")
        },
        warnings=(
            "ANTHROPIC_API_KEY is not set here or in your login shell profile: unless Docker"
            " Desktop has a key, requests from the sandbox will fail",
        ),
    ),
    Case(
        "profile-bash-exits-early",
        "none",
        "no API key or login found on this host",
        login_shell="bash",
        files={".bash_profile": "exit 3\n"},
        sources={
            "profile": no(
                "unknown: bash -l exited with status 3 without answering",
                name="login shell profile (bash -l)",
            )
        },
        warnings=(
            "could not check your login shell profile (bash -l exited with status 3 without"
            " answering); turn the check off with SBX_PROFILE_CHECK=0",
        ),
    ),
    Case(
        "profile-unsupported-shell",
        "none",
        "no API key or login found on this host",
        env={"SHELL": "/usr/bin/xonsh"},
        kwargs={"profile_check": True},
        sources={"profile": no("not checked: xonsh is not one of bash, zsh, sh, dash, ksh, fish")},
    ),
    Case(
        "profile-shell-missing",
        "none",
        "no API key or login found on this host",
        env={"SHELL": "/nonexistent/zsh"},
        kwargs={"profile_check": True},
        sources={
            "profile": no(
                "not checked: /nonexistent/zsh not found", name="login shell profile (zsh -l)"
            )
        },
    ),
    Case(
        "profile-windows",
        "none",
        "no API key or login found on this host",
        kwargs={"profile_check": True, "platform": "win32"},
        sources={"profile": no("not checked on Windows")},
    ),
]

# --- running a case ------------------------------------------------------------------------


@dataclass
class Host:
    """A fake host: a HOME, a PATH holding the fake `security`, and its argv log."""

    root: Path
    home: Path
    bin: Path
    empty: Path
    security_log: Path

    def environ(self, case: Case) -> dict[str, str]:
        env = {
            "HOME": str(self.home),
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "USER": "me",
            "LANG": "C.UTF-8",
            "FAKE_SECURITY_LOG": str(self.security_log),
            "FAKE_SECURITY_ITEMS": "|".join(case.keychain),
        }
        if case.login_shell is not None:
            path = shutil.which(case.login_shell)
            if path is None:
                pytest.skip(f"{case.login_shell} is not installed")
            env["SHELL"] = path
        for key, value in case.env.items():
            env[key] = value.format(home=self.home, empty=self.empty)
        return env

    def write(self, files: dict[str, object]) -> None:
        for rel, content in files.items():
            path = self.home / rel
            if rel.endswith("/"):
                path.mkdir(parents=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            elif isinstance(content, str):
                path.write_text(content)
            else:
                path.write_text(json.dumps(content))

    def security_calls(self) -> list[list[str]]:
        if not self.security_log.exists():
            return []
        calls, current = [], []
        for line in self.security_log.read_text().splitlines():
            if line == "--end--":
                calls.append(current)
                current = []
            else:
                current.append(line)
        return calls


@pytest.fixture
def host(tmp_path: Path) -> Host:
    home, bin_dir, empty = tmp_path / "home", tmp_path / "bin", tmp_path / "empty"
    for d in (home, bin_dir, empty):
        d.mkdir()
    shutil.copy(FIXTURES / "security", bin_dir / "security")
    (bin_dir / "security").chmod(0o755)
    return Host(tmp_path, home, bin_dir, empty, tmp_path / "security.log")


def run_case(host: Host, case: Case) -> AuthResolution:
    host.write(case.files)
    kwargs: dict[str, Any] = {"profile_check": case.login_shell is not None, **case.kwargs}
    return resolve_auth(host.environ(case), home=host.home, **kwargs)


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in SENTINELS:
            assert secret not in text


def all_output(res: AuthResolution) -> tuple[str, ...]:
    return (json.dumps(to_json(res)), format_text(res), repr(res), str(res))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_auth_json_matches_table(host: Host, case: Case) -> None:
    res = run_case(host, case)
    assert to_json(res) == case.expected()
    assert json.loads(json.dumps(to_json(res))) == case.expected()
    assert_no_secrets(*all_output(res))
    assert res.mode in auth.MODES


@pytest.mark.parametrize("case", [c for c in CASES if c.darwin], ids=lambda c: c.id)
def test_keychain_is_only_probed_never_read(host: Host, case: Case) -> None:
    res = run_case(host, case)
    calls = host.security_calls()
    if case.env.get("PATH") == "{empty}":
        assert calls == []
        return
    service = next(c.name for c in res.checks if c.name.startswith("keychain: "))
    assert calls == [["find-generic-password", "-s", service.removeprefix("keychain: ")]]
    assert all("-w" not in call for call in calls)


def test_linux_never_asks_the_keychain(host: Host) -> None:
    run_case(host, Case("x", "none", "", keychain=("Claude Code-credentials",)))
    assert host.security_calls() == []


def test_keychain_service_name_matches_claude_code() -> None:
    assert auth.keychain_service({}) == "Claude Code-credentials"
    assert auth.keychain_service({"CLAUDE_CONFIG_DIR": ""}) == "Claude Code-credentials"
    digest = hashlib.sha256(b"/opt/claude-cfg").hexdigest()[:8]
    assert auth.keychain_service({"CLAUDE_CONFIG_DIR": "/opt/claude-cfg"}) == (
        f"Claude Code-credentials-{digest}"
    )
    assert digest == KEYCHAIN_HASHED.rsplit("-", 1)[1]
    composed = hashlib.sha256("/Users/zoë/.claude".encode()).hexdigest()[:8]
    decomposed = "/Users/zoe\u0308/.claude"
    assert auth.keychain_service({"CLAUDE_CONFIG_DIR": decomposed}).endswith(composed)


def test_keychain_timeout(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "KEYCHAIN_TIMEOUT", 0.3)
    case = Case("slow", "none", "", env={"FAKE_SECURITY_SLEEP": "10"}, kwargs=DARWIN)
    started = time.monotonic()
    res = run_case(host, case)
    assert time.monotonic() - started < 5
    check = next(c for c in res.checks if c.name.startswith("keychain: "))
    assert (check.found, check.detail) == (False, "unknown: security did not answer within 0.3s")


# --- the login shell profile ----------------------------------------------------------------


def test_profile_timeout_is_one_line(host: Host) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    (host.home / ".bash_profile").write_text("sleep 30\n")
    env = {"HOME": str(host.home), "PATH": "/usr/bin:/bin", "SHELL": bash}
    started = time.monotonic()
    res = resolve_auth(env, home=host.home, profile_timeout=0.5)
    assert time.monotonic() - started < 5
    check = res.checks[1]
    assert check.detail == "unknown: bash -l did not answer within 0.5s"
    assert res.warnings == (
        "could not check your login shell profile (bash -l did not answer within 0.5s);"
        " turn the check off with SBX_PROFILE_CHECK=0",
    )


def test_profile_background_child_does_not_block(host: Host) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    # A daemon that inherits stdout must not make sbx wait for it.
    (host.home / ".bash_profile").write_text("sleep 20 &\nexport ANTHROPIC_API_KEY=x\n")
    env = {"HOME": str(host.home), "PATH": "/usr/bin:/bin", "SHELL": bash}
    started = time.monotonic()
    res = resolve_auth(env, home=host.home, profile_timeout=10)
    assert time.monotonic() - started < 5
    assert res.checks[1].found


def test_profile_chatty_profile(host: Host) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    (host.home / ".bash_profile").write_text(
        "head -c 300000 /dev/zero | tr '\\0' x\nexport ANTHROPIC_API_KEY=x\n"
    )
    env = {"HOME": str(host.home), "PATH": "/usr/bin:/bin", "SHELL": bash}
    assert resolve_auth(env, home=host.home).checks[1].found


def test_profile_dash_reads_dot_profile(host: Host) -> None:
    dash = shutil.which("dash")
    if dash is None:
        pytest.skip("dash is not installed")
    (host.home / ".profile").write_text(f"export ANTHROPIC_API_KEY={PROFILE_KEY}\n")
    env = {"HOME": str(host.home), "PATH": "/usr/bin:/bin", "SHELL": dash}
    res = resolve_auth(env, home=host.home)
    assert res.checks[1] == auth.SourceCheck(
        "login shell profile (dash -l)", "api-key", True, "exports ANTHROPIC_API_KEY"
    )


def test_profile_shell_gets_no_terminal_and_no_key(host: Host) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    probe = host.root / "probe"
    (host.home / ".bash_profile").write_text(
        f'{{ [ -t 0 ] && echo tty || echo notty; echo "key=${{ANTHROPIC_API_KEY:-}}"; '
        f"echo home=$HOME; }} > {probe}\n"
    )
    env = {
        "HOME": str(host.home),
        "PATH": "/usr/bin:/bin",
        "SHELL": bash,
        "ANTHROPIC_API_KEY": API_KEY,
    }
    resolve_auth(env, home=host.home)
    assert probe.read_text().split() == ["notty", "key=", f"home={host.home}"]


def test_profile_command_for_each_shell() -> None:
    posix = auth.profile_command("/bin/zsh")
    assert posix[:2] == ["-l", "-c"]
    assert "then" in posix[2]
    assert posix[2].endswith("fi")
    fish = auth.profile_command("/opt/homebrew/bin/fish")
    assert fish[:2] == ["-l", "-c"]
    assert fish[2].startswith("if /bin/sh -c ")
    assert fish[2].endswith("end")
    assert "then" not in fish[2]
    for argv in (posix, fish):  # the value is only tested, never printed
        assert "echo $ANTHROPIC_API_KEY" not in argv[2]
        assert "printenv" not in argv[2]


def test_profile_runs_real_posix_script() -> None:
    """The POSIX script works in sh as written (fish is checked by shape above)."""
    script = auth.profile_command("sh")[2]
    env = {"PATH": "/usr/bin:/bin", "ANTHROPIC_API_KEY": API_KEY}
    out = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "__SBX_PROFILE_KEY_SET__"
    out = subprocess.run(["/bin/sh", "-c", script], env={"PATH": "/usr/bin"}, capture_output=True)
    assert out.stdout.strip() == b"__SBX_PROFILE_KEY_UNSET__"


# --- details that a table cannot show ------------------------------------------------------


def test_permission_denied(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    cred = host.home / CRED
    cred.parent.mkdir()
    cred.write_text(json.dumps(LOGIN))
    real_open = os.open

    # Tests run as root, which reads any file: deny the one open() the check makes.
    def deny(path: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(path) == cred:
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    res = resolve_auth({"HOME": str(host.home)}, profile_check=False, platform="linux")
    assert res.mode == "none"
    assert res.checks[3] == auth.SourceCheck(
        "~/.claude/.credentials.json", "oauth", False, "exists but permission denied"
    )
    assert res.warnings == (
        w_unusable("~/.claude/.credentials.json", "exists but permission denied"),
    )


def test_config_dir_outside_home_is_shown_absolute(host: Host) -> None:
    cfg = host.root / "elsewhere"
    (cfg).mkdir()
    (cfg / ".credentials.json").write_text(json.dumps(LOGIN))
    env = {"HOME": str(host.home), "CLAUDE_CONFIG_DIR": str(cfg)}
    res = resolve_auth(env, profile_check=False, platform="linux")
    assert res.reason == f"login found in {cfg}/.credentials.json"


def test_home_defaults_to_environ_home(host: Host) -> None:
    (host.home / CRED).parent.mkdir()
    (host.home / CRED).write_text(json.dumps(REFRESH_ONLY))
    res = resolve_auth({"HOME": str(host.home)}, profile_check=False, platform="linux")
    assert res.reason == "login found in ~/.claude/.credentials.json"


def test_huge_file_is_not_a_login(host: Host) -> None:
    (host.home / CRED).parent.mkdir()
    (host.home / CRED).write_bytes(b" " * (auth.CREDENTIALS_MAX_BYTES + 10))
    res = resolve_auth({"HOME": str(host.home)}, profile_check=False, platform="linux")
    assert res.checks[3].detail == "exists but is too large to be a login file"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"override": "oauht"}, "auth must be one of auto, api-key, oauth, none"),
        ({"prefer": "none"}, "prefer must be one of api-key, oauth"),
    ],
)
def test_bad_arguments(host: Host, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_auth({"HOME": str(host.home)}, profile_check=False, **kwargs)


def test_bad_override_source(host: Host) -> None:
    with pytest.raises(ValueError, match="override_source"):
        resolve_auth(
            {"HOME": str(host.home)}, override="oauth", override_source="cli", profile_check=False
        )


def test_no_secret_in_exceptions_from_bad_arguments(host: Host) -> None:
    env = {"HOME": str(host.home), "ANTHROPIC_API_KEY": API_KEY}
    with pytest.raises(ConfigError) as info:
        resolve_auth(env, prefer="bogus", profile_check=False)
    assert_no_secrets(str(info.value), repr(info.value))


def test_format_text_report(host: Host) -> None:
    case = next(c for c in CASES if c.id == "ignored-one-with-api-key")
    text = format_text(run_case(host, case))
    lines = text.splitlines()
    assert lines[0] == "mode:        api-key (ANTHROPIC_API_KEY is set)"
    assert lines[1] == "decided by:  auto-detection"
    assert lines[2] == f"precedence:  {API_FIRST}"
    assert lines[3].startswith("effect:      apiKeyHelper is kept")
    assert "sources checked:" in lines
    assert any(line.split()[:3] == ["found", "api-key", "ANTHROPIC_API_KEY"] for line in lines)
    assert any(line.split()[:3] == ["-", "oauth", "CLAUDE_CODE_OAUTH_TOKEN"] for line in lines)
    assert "warnings:" in lines
    assert lines[-1].startswith("  ! ANTHROPIC_AUTH_TOKEN is set here")


def test_format_text_without_warnings_has_no_warning_section(host: Host) -> None:
    res = run_case(host, CASES[0])
    assert "warnings:" not in format_text(res)


def test_json_keys_are_stable(host: Host) -> None:
    data = to_json(run_case(host, CASES[0]))
    assert list(data) == ["mode", "reason", "decided_by", "precedence", "sources", "warnings"]
    sources = data["sources"]
    assert isinstance(sources, list)
    assert all(list(s) == ["name", "kind", "found", "detail"] for s in sources)


def test_resolution_is_frozen(host: Host) -> None:
    res = run_case(host, CASES[0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.mode = "oauth"  # type: ignore[misc]


def test_import_is_light() -> None:
    code = (
        "import sys, sandboxwrap.auth, sandboxwrap.config; "
        "print(sorted(m for m in ('pexpect', 'tomli_w', 'platformdirs', 'click') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_fifo_in_place_of_the_login_file_does_not_hang(host: Host) -> None:
    cred = host.home / CRED
    cred.parent.mkdir()
    os.mkfifo(cred)
    res = resolve_auth({"HOME": str(host.home)}, profile_check=False, platform="linux")
    assert res.mode == "none"
    assert res.checks[3].detail == "exists but is not a regular file"
