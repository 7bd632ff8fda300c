#!/usr/bin/env bash
# buf breaking against what main holds. In a clone whose HEAD is main itself, compare
# with the commit before the current change set (origin/main when it exists, else the
# first parent); skip when that commit has no protos yet.
set -euo pipefail
cd "$(dirname "$0")/.."
against=""
if git rev-parse -q --verify origin/main >/dev/null && [ "$(git rev-parse origin/main)" != "$(git rev-parse HEAD)" ]; then
  against=origin/main
elif git rev-parse -q --verify HEAD~1 >/dev/null; then
  against=HEAD~1
fi
if [ -z "$against" ] || ! git cat-file -e "$against:protos/securenow/v1" 2>/dev/null; then
  echo "no earlier protos to compare with; skipped"
  exit 0
fi
buf breaking --against ".git#ref=$(git rev-parse "$against")"
