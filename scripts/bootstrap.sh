#!/usr/bin/env bash
# Prepares this machine for SecureNow: system packages (Debian 12), running
# PostgreSQL and Redis, the development database role, the Python virtualenv and the
# npm tools. Idempotent: every step checks first and only does what is missing.
#
#   scripts/bootstrap.sh            everything needed to run and test the server and
#                                   build the dispatcher console (clients/web)
#   scripts/bootstrap.sh --browser  also Chromium (for the browser tests)
set -euo pipefail
cd "$(dirname "$0")/.."

want_browser=0
[ "${1:-}" = "--browser" ] && want_browser=1

say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else echo "need root for: $*" >&2; return 1; fi
}

# 1. System packages ---------------------------------------------------------------
packages=(postgresql-15-postgis-3 redis-server python3-venv nodejs)
[ $want_browser = 1 ] && packages+=(chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# nodejs from another source (nodesource) also provides npm; Debian's splits it out.
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing system packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. Services ---------------------------------------------------------------------
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  say "starting PostgreSQL"
  cluster=$(ls /etc/postgresql | sort -V | tail -1)
  as_root pg_ctlcluster --skip-systemctl-redirect "$cluster" main start
  for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  say "starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/securenow.log
  for _ in $(seq 50); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# 3. Development database role (a superuser: migrations create the PostGIS extension
#    and the tests create their own database; production uses a DBA-made role).
psql_admin() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qAt "$@"
  elif psql -h 127.0.0.1 -U postgres -c 'select 1' >/dev/null 2>&1; then psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qAt "$@"
  else sudo -u postgres psql -v ON_ERROR_STOP=1 -qAt "$@"; fi
}
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'securenow'")" != 1 ]; then
  say "creating the PostgreSQL role securenow"
  psql_admin -c "CREATE ROLE securenow LOGIN SUPERUSER PASSWORD 'securenow'"
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'securenow'")" != 1 ]; then
  psql_admin -c "CREATE DATABASE securenow OWNER securenow"
fi

# 4. Python virtualenv (reinstalled when a dependency file changes) ----------------
stamp_src=$(cat requirements/constraints.txt requirements/dev.txt server/pyproject.toml clients/python/pyproject.toml | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.stamp 2>/dev/null)" != "$stamp_src" ]; then
  say "installing Python dependencies into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -U pip
  .venv/bin/pip install -q --disable-pip-version-check -c requirements/constraints.txt \
    -e clients/python -e server -r requirements/dev.txt
  echo "$stamp_src" > .venv/.stamp
fi

# 5. npm tools (buf) -----------------------------------------------------------------
if [ ! -x node_modules/.bin/buf ] || [ package-lock.json -nt node_modules/.stamp ]; then
  say "installing npm tools (buf)"
  npm ci --silent --no-audit --no-fund
  touch node_modules/.stamp
fi

# 6. Dispatcher console npm dependencies (clients/web: connect-web, protobuf-es,
#    protoc-gen-es, buf, esbuild, typescript), reinstalled when its lock file changes.
if [ ! -x clients/web/node_modules/.bin/esbuild ] || [ clients/web/package-lock.json -nt clients/web/node_modules/.stamp ]; then
  say "installing the console's npm dependencies (clients/web)"
  (cd clients/web && npm ci --silent --no-audit --no-fund)
  touch clients/web/node_modules/.stamp
fi
