#!/usr/bin/env bash
# The README's first command (make run): sets up everything on this machine and runs
# SecureNow in the foreground: dependencies, code generation, migrations, demo data,
# then the server (gRPC, gRPC-Web, console, metrics). Ctrl-C stops it gracefully.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh

mkdir -p var
if [ ! -f var/dev.env ]; then
  # Development secrets, generated once so tokens and encrypted data survive restarts.
  {
    echo "SECURENOW_SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
    echo "SECURENOW_DATA_KEY=$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())')"
  } > var/dev.env
  chmod 600 var/dev.env
fi
set -a; . var/dev.env; set +a
export SECURENOW_GRPC_ADDR=${SECURENOW_GRPC_ADDR:-127.0.0.1:50051}
export SECURENOW_HTTP_ADDR=${SECURENOW_HTTP_ADDR:-127.0.0.1:8080}

.venv/bin/python scripts/gen_protos.py
# The dispatcher console (clients/web/dist), served by the HTTP listener at "/".
(cd clients/web && npm run --silent build)
.venv/bin/securenow migrate
.venv/bin/securenow seed-demo --api-key-file var/demo-cad.key | tee var/demo.txt

cat <<BANNER

  SecureNow is starting.
    console       http://${SECURENOW_HTTP_ADDR}/   (dispatcher: dispatch@securenow.local, admin: admin@securenow.local,
                  password SecureNow-demo-1)
    gRPC          ${SECURENOW_GRPC_ADDR}   (reflection on: grpcurl -plaintext ${SECURENOW_GRPC_ADDR} list)
    gRPC-Web      http://${SECURENOW_HTTP_ADDR}/<package>.<Service>/<Method>
    HTTP          http://${SECURENOW_HTTP_ADDR}/metrics   /healthz
    demo accounts var/demo.txt
  Ctrl-C stops the server (in-flight calls finish first).

BANNER
exec .venv/bin/securenow serve
