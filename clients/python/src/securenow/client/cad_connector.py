"""securenow-cad: a reference CAD connector on the dispatch stream.

Prints every dispatch event (one line each; `--json` for one JSON object per line),
acknowledges it once printed, and reads commands from stdin:

    accept ALERT_ID [UNIT] [ETA_MINUTES]
    decline ALERT_ID [REASON...]
    update INCIDENT_ID STATUS [NOTES...]      STATUS: dispatched | on_scene | resolved
    quit

The resume cursor lives in --cursor-file (its directory is created if missing), so a
restart continues where it stopped. Exit codes: 0 on quit, end of input or
SIGINT/SIGTERM (the cursor keeps the last acknowledged event); 1 on other errors (a
cursor file without a valid cursor among them); 2 on bad arguments (an unusable
--cursor-file path too); 3 when the server refuses the API key.

Adapt `format_event` and `handle_event` to hand alerts to a real CAD.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from securenow.client.client import SecureNowClient
from securenow.client.cursor import CursorFileError, FileCursorStore
from securenow.client.dispatch import DispatchConsumer
from securenow.client.errors import SecureNowError, status_code
from securenow.v1 import agency_pb2, common_pb2

log = logging.getLogger("securenow.cad")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_AUTH = 0, 1, 2, 3
#: The largest ETA the protocol carries (an int32).
MAX_ETA_MINUTES = 2**31 - 1
API_KEY_ENV = "SECURENOW_API_KEY"
STATUSES = {
    "dispatched": common_pb2.INCIDENT_STATUS_DISPATCHED,
    "on_scene": common_pb2.INCIDENT_STATUS_ON_SCENE,
    "resolved": common_pb2.INCIDENT_STATUS_RESOLVED,
}
HELP = (
    "commands: accept ALERT_ID [UNIT] [ETA_MINUTES] | decline ALERT_ID [REASON...] | "
    "update INCIDENT_ID dispatched|on_scene|resolved [NOTES...] | quit"
)


class UsageError(Exception):
    """Bad command-line arguments (exit code 2)."""


# Arguments ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="securenow-cad",
        description="Reference CAD connector: prints SecureNow dispatch events and sends commands from stdin.",
        epilog=HELP,
    )
    parser.add_argument("--server", required=True, metavar="HOST:PORT", help="SecureNow gRPC address")
    parser.add_argument(
        "--api-key-file", metavar="FILE", help=f"file holding the agency API key (default: ${API_KEY_ENV})"
    )
    parser.add_argument("--cursor-file", required=True, metavar="FILE", help="where the resume cursor is kept")
    parser.add_argument("--tls-ca", metavar="FILE", help="PEM root certificates: connect with TLS")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.add_argument("--heartbeat", type=float, default=15.0, metavar="SECONDS", help="heartbeat interval")
    parser.add_argument("--no-stdin", action="store_true", help="ignore stdin (run until SIGINT/SIGTERM)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log connection details to stderr")
    return parser


def read_api_key(path: str | None) -> str:
    if path:
        try:
            key = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"cannot read --api-key-file: {exc}") from None
        if not key:
            raise UsageError(f"--api-key-file {path} is empty")
        return key
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise UsageError(f"an API key is required: --api-key-file FILE or ${API_KEY_ENV}")
    return key


def read_root_certificates(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read --tls-ca: {exc}") from None


def open_cursor_store(path: str) -> FileCursorStore:
    """The cursor store, checked before connecting: its directory exists (created if
    missing) and the file, if any, holds a cursor. Raises UsageError for a path that
    cannot be used, CursorFileError for a file without a valid cursor."""
    store = FileCursorStore(path)
    try:
        store.path.parent.mkdir(parents=True, exist_ok=True)
        if store.path.exists() and not store.path.is_file():
            raise UsageError(f"--cursor-file {path} is not a file")
        store.load()
    except OSError as exc:
        raise UsageError(f"cannot use --cursor-file: {exc}") from None
    return store


# Commands ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    name: str  # accept | decline | update | quit
    request: agency_pb2.StreamDispatchRequest | None = None


def parse_command(line: str) -> Command:
    """Parses one stdin line; raises ValueError with a message for the operator."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise ValueError(f"cannot parse the line: {exc}") from None
    if not words:
        raise ValueError("empty line")
    name, args = words[0].lower(), words[1:]
    if name in ("quit", "exit"):
        return Command("quit")
    if name == "accept":
        if not 1 <= len(args) <= 3:
            raise ValueError("usage: accept ALERT_ID [UNIT] [ETA_MINUTES]")
        eta = 0
        if len(args) == 3:
            # isascii: str.isdigit also accepts '²' and other digits int() rejects.
            if not (args[2].isascii() and args[2].isdigit()) or int(args[2]) > MAX_ETA_MINUTES:
                raise ValueError(f"ETA_MINUTES must be a whole number of minutes, not {args[2]!r}")
            eta = int(args[2])
        unit = args[1] if len(args) >= 2 else ""
        accept = agency_pb2.AcceptAlert(alert_id=args[0], assigned_unit=unit, eta_minutes=eta)
        return Command("accept", agency_pb2.StreamDispatchRequest(accept=accept))
    if name == "decline":
        if not args:
            raise ValueError("usage: decline ALERT_ID [REASON...]")
        decline = agency_pb2.DeclineAlert(alert_id=args[0], reason=" ".join(args[1:]))
        return Command("decline", agency_pb2.StreamDispatchRequest(decline=decline))
    if name == "update":
        if len(args) < 2:
            raise ValueError("usage: update INCIDENT_ID dispatched|on_scene|resolved [NOTES...]")
        status = STATUSES.get(args[1].lower())
        if status is None:
            raise ValueError(f"STATUS must be one of {', '.join(STATUSES)}, not {args[1]!r}")
        update = agency_pb2.IncidentUpdate(incident_id=args[0], status=status, notes=" ".join(args[2:]))
        return Command("update", agency_pb2.StreamDispatchRequest(update=update))
    raise ValueError(f"unknown command {name!r}; {HELP}")


# Output ------------------------------------------------------------------------------------------


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _location(location: common_pb2.Location) -> str:
    point = location.point
    text = f"{point.latitude:.6f},{point.longitude:.6f}"
    if location.accuracy_m:
        text += f" (+/-{location.accuracy_m:.0f} m)"
    return text


def _enum(enum: Any, value: int, prefix: str) -> str:
    name: str = enum.Name(value)
    return name.removeprefix(prefix)


def format_event(event: agency_pb2.StreamDispatchResponse) -> str:
    """One human-readable line for a dispatch event."""
    kind = event.WhichOneof("kind")
    head = f"[{event.event_id} {event.event_time.ToJsonString() if event.HasField('event_time') else '-'}]"
    if kind == "alert_raised":
        alert, incident = event.alert_raised.alert, event.alert_raised.incident
        where = _location(alert.location) if alert.HasField("location") else "unknown"
        text = (
            f"ALERT alert={alert.id} incident={incident.id or '-'} "
            f"priority={_enum(common_pb2.AlertPriority, alert.priority, 'ALERT_PRIORITY_')} "
            f"type={_enum(common_pb2.IncidentType, alert.incident_type, 'INCIDENT_TYPE_')} location={where}"
        )
        if alert.outside_jurisdiction:
            text += " outside_jurisdiction"
        text += f" description={_quote(alert.description)}"
    elif kind == "alert_location":
        text = f"LOCATION alert={event.alert_location.alert_id} location={_location(event.alert_location.location)}"
    elif kind == "alert_cancelled":
        text = f"CANCELLED alert={event.alert_cancelled.alert_id} reason={_quote(event.alert_cancelled.reason)}"
    elif kind == "alert_escalated":
        escalated = event.alert_escalated
        priority = _enum(common_pb2.AlertPriority, escalated.priority, "ALERT_PRIORITY_")
        text = f"ESCALATED alert={escalated.alert_id} priority={priority} reason={_quote(escalated.reason)}"
    elif kind == "incident_updated":
        incident = event.incident_updated.incident
        status = _enum(common_pb2.IncidentStatus, incident.status, "INCIDENT_STATUS_")
        text = (
            f"INCIDENT incident={incident.id} alert={incident.sos_alert_id} status={status} "
            f"unit={_quote(incident.assigned_unit)}"
        )
    else:
        text = f"EVENT kind={kind}"
    return f"{head} {text}"


def event_json(event: agency_pb2.StreamDispatchResponse) -> dict[str, Any]:
    body = json_format.MessageToDict(event, preserving_proto_field_name=True)
    return {"type": "event", "kind": event.WhichOneof("kind"), **body}


class Printer:
    """Writes events and results for the operator to stdout, human-readable or JSON."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def _emit(self, text: str, obj: dict[str, Any]) -> None:
        line = json.dumps(obj, ensure_ascii=False, sort_keys=True) if self.as_json else text
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def event(self, event: agency_pb2.StreamDispatchResponse) -> None:
        if self.as_json:
            self._emit("", event_json(event))
        else:
            self._emit(format_event(event), {})

    def result(self, command: str, result: agency_pb2.CommandResult) -> None:
        status = status_code(result.code).name
        text = f"RESULT {command} {status} alert={result.alert_id or '-'} incident={result.incident_id or '-'}"
        if result.message:
            text += f" message={_quote(result.message)}"
        obj = {
            "type": "result",
            "command": command,
            "code": result.code,
            "status": status,
            "message": result.message,
            "alert_id": result.alert_id,
            "incident_id": result.incident_id,
        }
        self._emit(text, obj)

    def error(self, message: str, command: str = "") -> None:
        obj: dict[str, Any] = {"type": "error", "message": message}
        if command:
            obj["command"] = command
        self._emit(f"ERROR {command + ': ' if command else ''}{message}", obj)


# Running -----------------------------------------------------------------------------------------


def _stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str | None]:
    """Lines from stdin, read by a daemon thread (works for pipes, files and
    terminals, and never blocks the exit); None at end of input."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        # After the connector stopped, the loop is closed: drop what is still read.
        with contextlib.suppress(RuntimeError):
            try:
                for line in sys.stdin:
                    loop.call_soon_threadsafe(queue.put_nowait, line)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return queue


def handle_event(event: agency_pb2.StreamDispatchResponse, printer: Printer) -> None:
    """Hands one event to the CAD (here: prints it). Adapt this: return only once the
    event is safely with the CAD, since the event is acknowledged (and the cursor
    advanced past it) right after; raise to stop without acknowledging it."""
    printer.event(event)


async def print_events(consumer: DispatchConsumer, printer: Printer) -> None:
    """Handles each event, then acknowledges it (the cursor file advances)."""
    async for event in consumer:
        handle_event(event, printer)
        consumer.ack(event.event_id)


async def run_commands(consumer: DispatchConsumer, printer: Printer, lines: asyncio.Queue[str | None]) -> None:
    """Runs stdin commands one at a time until quit or end of input."""
    while (line := await lines.get()) is not None:
        if not line.strip():
            continue
        try:
            command = parse_command(line)
        except ValueError as exc:
            printer.error(str(exc))
            continue
        if command.name == "quit" or command.request is None:
            return
        try:
            result = await consumer.command(command.request)
        except SecureNowError as err:
            if err.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise
            printer.error(str(err), command.name)
            continue
        printer.result(command.name, result)


async def run(args: argparse.Namespace) -> int:
    api_key = read_api_key(args.api_key_file)
    root_certificates = read_root_certificates(args.tls_ca)
    try:
        cursor_store = open_cursor_store(args.cursor_file)
    except CursorFileError as exc:
        print(f"securenow-cad: {exc}", file=sys.stderr)
        return EXIT_ERROR
    printer = Printer(args.json)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)

    async with SecureNowClient(args.server, api_key=api_key, root_certificates=root_certificates) as client:
        consumer = DispatchConsumer(client, cursor_store, heartbeat_interval=args.heartbeat)
        consumer.start()
        events = asyncio.create_task(print_events(consumer, printer), name="events")
        waiters: set[asyncio.Task[Any]] = {events, asyncio.create_task(stop.wait(), name="signal")}
        if not args.no_stdin:
            waiters.add(asyncio.create_task(run_commands(consumer, printer, _stdin_lines(loop)), name="commands"))
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises the consumer's or a command's fatal error
            # Stop handling events first, then close the stream: an event handled while
            # the stream closes could no longer be acknowledged (its ack would follow the
            # half-close), yet its id would reach the cursor file, and it would come
            # again on the next run. Events not handled yet stay pending on the server.
            events.cancel()
            await asyncio.gather(events, return_exceptions=True)
            await consumer.close()
            return EXIT_OK
        except SecureNowError as err:
            auth = err.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
            print(f"securenow-cad: {'authentication failed' if auth else 'stopped'}: {err}", file=sys.stderr)
            return EXIT_AUTH if auth else EXIT_ERROR
        except OSError as exc:  # for example the cursor file cannot be written
            print(f"securenow-cad: stopped: {exc}", file=sys.stderr)
            return EXIT_ERROR
        finally:
            for task in waiters:
                task.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
            await consumer.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with 2 on bad arguments
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.heartbeat <= 0:
        parser.error("--heartbeat must be positive")
    try:
        return asyncio.run(run(args))
    except UsageError as exc:
        print(f"securenow-cad: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
