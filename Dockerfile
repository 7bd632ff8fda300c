# syntax=docker/dockerfile:1
# SecureNow server image: `securenow serve` by default; `migrate`, `create-admin`,
# `maintain` are the other commands (docker run IMAGE migrate).
#
#   docker build -t securenow-server .
#
# Three stages: `console` builds the dispatcher console (clients/web, pinned by its
# package-lock.json); `builder` installs securenow-client and securenow-server (pinned
# by requirements/constraints.txt) into a virtualenv; the runtime image gets only that
# virtualenv, the built console and the SQL migrations, and runs as an unprivileged user.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Build stage only; an LTS line still in support (Node 20 reached its end of life in April 2026).
ARG NODE_IMAGE=node:22-bookworm-slim

# --- console ------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS console

WORKDIR /src/clients/web
COPY clients/web/package.json clients/web/package-lock.json ./
RUN npm ci --no-audit --no-fund
# buf generates the TypeScript stubs from the same protos as the server.
COPY protos /src/protos
COPY clients/web ./
RUN npm run build

# --- builder ------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /src
# Dependency pins first, then the two packages: the client (generated securenow.v1
# stubs and SDK) before the server, which depends on it.
COPY requirements/constraints.txt requirements/constraints.txt
COPY clients/python clients/python
COPY server server
RUN pip install -c requirements/constraints.txt ./clients/python \
 && pip install -c requirements/constraints.txt ./server \
 && securenow --help >/dev/null

# --- runtime ------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

RUN groupadd --system --gid 10001 securenow \
 && useradd --system --uid 10001 --gid securenow --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin securenow

# Same base image as the builder, so the venv's interpreter links stay valid.
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY migrations /app/migrations
COPY --from=console /src/clients/web/dist /app/console

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SECURENOW_MIGRATIONS_DIR=/app/migrations \
    SECURENOW_CONSOLE_DIR=/app/console \
    SECURENOW_GRPC_ADDR=0.0.0.0:50051 \
    SECURENOW_HTTP_ADDR=0.0.0.0:8080

USER 10001:10001

# 50051: gRPC (native HTTP/2). 8080: HTTP (/healthz, /metrics, gRPC-Web, console).
EXPOSE 50051 8080

# Python stdlib only (the slim image has no curl): any non-2xx or connection error fails.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"]

# Exec form: securenow is PID 1 and receives SIGTERM itself (graceful shutdown).
ENTRYPOINT ["securenow"]
CMD ["serve"]
