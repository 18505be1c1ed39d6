#!/usr/bin/env bash
# The apiKeyHelper bug of `docker sandbox run`, and `sbx run` fixing it: no Docker needed.
#
#   bash examples/demo.sh          (from the repository root, or from anywhere)
#
# Stands in for Docker Desktop with the `docker sandbox` simulator (tests/sim/docker) and for
# the Anthropic API with a loopback mock (tests/sim/mockapi.py); runs the real, pinned Claude
# Code inside the simulated sandbox. No network. Everything lives in a temporary directory that
# is removed on exit. Exit status 0 means: the bug showed, and sbx fixed it.
#
# Environment: PYTHON (default python3), SBX_TEST_CLAUDE (a claude executable to use),
# SBX_DEMO_CMD (how to call sbx, default `python -m sandboxwrap` from this checkout).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLAUDE_VERSION=2.1.25
INSTALL_HINT="npm install --prefix tests/.cache/node @anthropic-ai/claude-code@$CLAUDE_VERSION"

if [ -t 1 ]; then B=$'\033[1m' D=$'\033[2m' R=$'\033[31m' G=$'\033[32m' N=$'\033[0m'
else B='' D='' R='' G='' N=''; fi
say() { printf '\n%s%s%s\n' "$B" "$*" "$N"; }
cmd() { printf '%s$ %s%s\n' "$D" "$*" "$N"; }
die() { printf '%sdemo: %s%s\n' "$R" "$*" "$N" >&2; exit 1; }

# Resolve the interpreter before HOME changes below (pyenv shims and user site-packages
# depend on HOME).
PY="$(command -v "${PYTHON:-python3}")" || die "python3 not found (set PYTHON)"
PY="$("$PY" -c 'import sys; print(sys.executable)')"
# `site --user-base` exits non-zero when user site-packages are off (in a venv): still fine.
PYTHONUSERBASE="$("$PY" -m site --user-base || true)"
export PYTHONUSERBASE

TMP="$(mktemp -d "${TMPDIR:-/tmp}/sbx-demo.XXXXXX")"
MOCK_PID=''
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
    if [ -n "$MOCK_PID" ]; then
        kill "$MOCK_PID" 2>/dev/null || true
        wait "$MOCK_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

claude_version() { # the version line, run with a scratch HOME so nothing real is touched
    HOME="$TMP" "$1" --version 2>/dev/null | head -n1 || true
}
find_claude() {
    if [ -n "${SBX_TEST_CLAUDE:-}" ]; then
        [ -x "$SBX_TEST_CLAUDE" ] || die "SBX_TEST_CLAUDE=$SBX_TEST_CLAUDE is not executable"
        CLAUDE="$SBX_TEST_CLAUDE"
        return
    fi
    local c
    for c in "$REPO/tests/.cache/node/node_modules/.bin/claude" "$(command -v claude || true)"; do
        if [ -n "$c" ] && [ -x "$c" ] && [[ "$(claude_version "$c")" == "$CLAUDE_VERSION "* ]]; then
            CLAUDE="$c"
            return
        fi
    done
    die "Claude Code $CLAUDE_VERSION not found. From the repository root run:
    $INSTALL_HINT
or set SBX_TEST_CLAUDE to a claude executable."
}
find_claude

# How to call sbx: this checkout first, so the demo shows the code you are looking at.
if [ -n "${SBX_DEMO_CMD:-}" ]; then
    read -r -a SBX_CMD <<<"$SBX_DEMO_CMD"
elif PYTHONPATH="$REPO" "$PY" -c 'import sandboxwrap.cli' 2>/dev/null; then
    SBX_CMD=(env "PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m sandboxwrap)
elif command -v sbx >/dev/null && sbx --version 2>/dev/null | grep -qi sandboxwrap; then
    SBX_CMD=(sbx) # not Docker's own standalone `sbx`, which has the same name
else
    SBX_CMD=()
fi

# --- a fake Docker Desktop, isolated from this machine's -------------------------------------
mkdir -p "$TMP/bin" "$TMP/home" "$TMP/state"
# The simulator runs on the interpreter found above (not on whatever python3 PATH holds).
printf '#!/bin/sh\nexec %q %q "$@"\n' "$PY" "$REPO/tests/sim/docker" >"$TMP/bin/docker"
chmod +x "$TMP/bin/docker"
export PATH="$TMP/bin:$PATH"
export SBX_SIM_STATE="$TMP/state"
export HOME="$TMP/home" XDG_CONFIG_HOME="$TMP/home/.config" XDG_CACHE_HOME="$TMP/home/.cache" \
    XDG_DATA_HOME="$TMP/home/.local/share" XDG_STATE_HOME="$TMP/home/.local/state"
# The subscription case: no API key on the host, so Docker's proxy has none to inject.
for v in $(compgen -e); do
    case "$v" in ANTHROPIC_* | CLAUDE_* | SBX_SIM_*) [ "$v" = SBX_SIM_STATE ] || unset "$v" ;; esac
done

"$PY" "$REPO/tests/sim/mockapi.py" --log "$TMP/requests.log" >"$TMP/mock.out" 2>&1 &
MOCK_PID=$!
for _ in $(seq 100); do
    grep -q '^MOCK_PROXY_URL=' "$TMP/mock.out" 2>/dev/null && break
    kill -0 "$MOCK_PID" 2>/dev/null || die "mock API failed to start: $(cat "$TMP/mock.out")"
    sleep 0.1
done
PROXY_URL="$(sed -n 's/^MOCK_PROXY_URL=//p' "$TMP/mock.out")"
[ -n "$PROXY_URL" ] || die "mock API did not report its URL"

SBX_SIM_AGENT_CMD="$(printf '%q' "$CLAUDE")" # shell words: survives spaces in the path
export SBX_SIM_AGENT_CMD
export SBX_SIM_API_URL="$PROXY_URL"
# Keeps Claude Code's traffic to the API calls the mock answers.
export SBX_SIM_SANDBOX_ENV='{"DISABLE_TELEMETRY":"1",
                            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC":"1"}'

WS="$TMP/my-project"
mkdir -p "$WS"
cd "$WS"

what_the_api_saw() { # the credentials on the last prompt request that reached the API
    "$PY" - "$TMP/requests.log" <<'EOF'
import json, sys
try:
    lines = open(sys.argv[1]).read().splitlines()
except OSError:
    lines = []
reqs = [json.loads(x) for x in lines]
reqs = [r for r in reqs if r["server"] == "MockAPI" and r["path"].startswith("/v1/messages")]
if not reqs:
    print("   (no request reached the API)")
else:
    r = reqs[-1]
    cred = (f"Authorization: {r['authorization']}" if r["authorization"]
            else f"x-api-key: {r['x-api-key']}")
    print(f"   the API received {cred}  ->  HTTP {r['status']}")
EOF
    : >"$TMP/requests.log"
}

say "1. A Claude sandbox, as Docker creates it, where you also ran /login"
cmd "docker sandbox create claude $WS"
docker sandbox create claude "$WS"
SANDBOX_HOME="$SBX_SIM_STATE/vms/claude-my-project/home"
"$PY" - "$SANDBOX_HOME" "$REPO/tests/sim" <<'EOF'
import json, os, sys, time
sys.path.insert(0, sys.argv[2])
import mockapi
path = os.path.join(sys.argv[1], ".claude", ".credentials.json")
with open(path, "w") as fh:
    json.dump({"claudeAiOauth": {
        "accessToken": mockapi.OAUTH_ACCESS_TOKEN, "refreshToken": mockapi.OAUTH_REFRESH_TOKEN,
        "expiresAt": int((time.time() + 86400 * 365) * 1000), "scopes": ["user:inference"],
        "subscriptionType": "max"}}, fh)
os.chmod(path, 0o600)
EOF
echo "   ~/.claude/.credentials.json: a subscription login (a fake token the mock accepts)"
# You are a subscriber on this machine too (you ran `claude` and /login on the host once):
# that is what tells sbx to use the login instead of an API key.
mkdir -p "$HOME/.claude"
cp "$SANDBOX_HOME/.claude/.credentials.json" "$HOME/.claude/.credentials.json"
echo "   ~/.claude/settings.json:     $(cat "$SANDBOX_HOME/.claude/settings.json")"

say "2. Plain docker sandbox run: the seeded apiKeyHelper wins over your login"
cmd "docker sandbox run claude $WS -- -p hi"
set +e
docker sandbox run claude "$WS" -- -p hi 2>&1 | tee "$TMP/plain.out"
plain_rc=${PIPESTATUS[0]}
set -e
echo "   exit status $plain_rc"
what_the_api_saw

say "3. sbx run: the same command, through sandboxwrap"
if [ ${#SBX_CMD[@]} -eq 0 ]; then
    printf '%ssandboxwrap is not importable by %s; install it with: %s -m pip install -e %s%s\n' \
        "$R" "$PY" "$PY" "$REPO" "$N"
    sbx_rc=127
else
    cmd "sbx run claude $WS -- -p hi"
    set +e
    "${SBX_CMD[@]}" run claude "$WS" -- -p hi 2>&1 | tee "$TMP/sbx.out"
    sbx_rc=${PIPESTATUS[0]}
    set -e
    echo "   exit status $sbx_rc"
    what_the_api_saw
fi

say "Result"
ok=0
if [ "$plain_rc" -ne 0 ] && grep -q 'API Error: 401' "$TMP/plain.out"; then
    echo "${G}ok${N}   docker sandbox run: 401 (the reported bug)"
else
    echo "${R}FAIL${N} docker sandbox run did not show the bug"; ok=1
fi
if [ "$sbx_rc" -eq 0 ] && grep -q 'MOCK reply' "$TMP/sbx.out" 2>/dev/null; then
    echo "${G}ok${N}   sbx run: the reply came back, using your login"
else
    echo "${R}FAIL${N} sbx run did not get a reply"; ok=1
fi
exit "$ok"
