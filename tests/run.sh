#!/usr/bin/env bash
# Install everything the test suite needs, then run it. This is the README's test
# command and what CI runs (.ci/run). Safe to run again: each step skips work already done.
#   bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

CLAUDE_CODE_VERSION=2.1.25
say() { printf 'tests/run.sh: %s\n' "$*" >&2; }

# 1. Debian packages: real shells for the shell-driver and `sbx init` tests, shellcheck.
need=()
for tool in zsh:zsh dash:dash bash:bash fish:fish shellcheck:shellcheck node:nodejs npm:npm; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
if ((${#need[@]})); then
    say "installing Debian packages: ${need[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# 2. Python: a virtualenv with the package (editable) and its test extras.
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import sandboxwrap, pytest, hypothesis, pytest_timeout' 2>/dev/null \
    || [ pyproject.toml -nt .venv/.installed ]; then
    say "installing sandboxwrap and its test dependencies into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    touch .venv/.installed
fi

# 3. The end-to-end oracle: the real Claude Code, pinned.
node_dir=tests/.cache/node
claude_pkg="$node_dir/node_modules/@anthropic-ai/claude-code/package.json"
if [ ! -f "$claude_pkg" ] || ! grep -q "\"version\": \"$CLAUDE_CODE_VERSION\"" "$claude_pkg"; then
    say "installing @anthropic-ai/claude-code@$CLAUDE_CODE_VERSION into $node_dir"
    mkdir -p "$node_dir"
    npm install --prefix "$node_dir" --no-audit --no-fund --loglevel=error \
        "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" >/dev/null
fi
export SBX_TEST_CLAUDE="$PWD/$node_dir/node_modules/.bin/claude"

# 4. Lint, types, tests. Missing tools are failures, never skips.
export SBX_TEST_REQUIRE_ALL=1
say "ruff"
.venv/bin/ruff check sandboxwrap tests
say "mypy"
.venv/bin/mypy
say "pytest"
exec .venv/bin/python -m pytest "$@"
