#!/usr/bin/env bash
# The README's second command (make test), also what CI runs (.ci/run): sets up the
# machine, checks contracts, generated code, lint and types, then runs every test
# against real PostgreSQL and Redis, including the dispatcher console's browser tests
# (tests/browser: Playwright driving Debian's Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --browser
export PATH="$PWD/node_modules/.bin:$PATH"
step() { printf '\033[1;34m==>\033[0m %s\n' "$*"; }

step "buf lint"
buf lint
step "buf breaking (against main)"
scripts/buf-breaking.sh
step "generated code is current"
.venv/bin/python scripts/gen_protos.py --check
if [ -f ../shared/tools/check-contract ]; then
  step "contract names (../shared/CONTRACT.md)"
  .venv/bin/python ../shared/tools/check-contract .
fi
step "ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
step "mypy"
.venv/bin/mypy
step "console build (clients/web: generate, tsc --noEmit, esbuild)"
(cd clients/web && npm run --silent build)
step "pytest"
.venv/bin/pytest "$@"
