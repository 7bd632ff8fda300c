"""`securenow serve` with SECURENOW_PROCESSES > 1: one supervisor, N server processes
sharing the gRPC and HTTP ports (SO_REUSEPORT; the kernel spreads connections), so one
machine's cores all serve, plus one `securenow work` process running the background
workers (outbox relay, escalation sweeper, webhooks, maintenance) so that delivery never
waits behind request handling. The supervisor forwards SIGTERM/SIGINT (each process
then stops gracefully), restarts a process that dies, and points the processes at one
Prometheus multiprocess directory so /metrics adds all of them up."""

from __future__ import annotations

import base64
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

RESTART_BACKOFF_SECONDS = 1.0


def supervise(processes: int) -> int:
    metrics_dir = tempfile.mkdtemp(prefix="securenow-metrics-")
    env = {
        **os.environ,
        # Development without configured keys: one ephemeral pair for all processes, or a
        # token issued by one would be refused by the others (production requires both).
        **{name: value for name, value in _ephemeral_keys().items() if not os.environ.get(name)},
        "SECURENOW_PROCESSES": "1",
        "SECURENOW_REUSE_PORT": "true",
        "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
    }
    serve = ([sys.executable, "-m", "securenow.server.cli", "serve"], {**env, "SECURENOW_RUN_WORKERS": "false"})
    work = ([sys.executable, "-m", "securenow.server.cli", "work"], env)
    commands = [serve] * processes + [work]
    children: list[subprocess.Popen[bytes]] = [subprocess.Popen(cmd, env=e) for cmd, e in commands]
    stopping = False

    def stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("supervising %d server processes", processes, extra={"pids": [c.pid for c in children]})
    try:
        while True:
            for i, child in enumerate(children):
                code = child.poll()
                if code is None or stopping:
                    continue
                log.error("server process %d exited with %s; restarting", child.pid, code)
                time.sleep(RESTART_BACKOFF_SECONDS)
                cmd, cmd_env = commands[i]
                children[i] = subprocess.Popen(cmd, env=cmd_env)
            if stopping and all(c.poll() is not None for c in children):
                return 0
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _ephemeral_keys() -> dict[str, str]:
    return {
        "SECURENOW_SECRET_KEY": secrets.token_urlsafe(48),
        "SECURENOW_DATA_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
    }


def metrics_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None
