"""The reference CAD connector (securenow-cad) as a real subprocess against the
in-process server: printing and acking alerts, stdin commands, the cursor file,
resuming, and its exit codes."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from securenow.server.runtime import Runtime
from securenow.v1 import agency_pb2, common_pb2, sos_pb2
from tests.dispatch_helpers import SF, raise_sos, register_department
from tests.helpers import Api, wait_for
from tests.sdk_helpers import TcpProxy, connector, self_signed_tls


def read_cursor(path: Path) -> str:
    return path.read_text().strip() if path.exists() else ""


async def _read(path: Path) -> str:
    return await asyncio.to_thread(read_cursor, path)


async def test_connector_prints_and_acks_alerts_runs_commands_and_resumes_from_its_cursor(
    api: Api, runtime: Runtime, tmp_path: Path
) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    key_file, cursor_file = tmp_path / "api-key", tmp_path / "state" / "cursor"
    key_file.write_text(dept.api_key + "\n")
    args = ["--server", f"127.0.0.1:{runtime.grpc_port}", "--api-key-file", str(key_file)]
    args += ["--cursor-file", str(cursor_file)]

    first = await raise_sos(api, person, SF, description="raised before the CAD started")
    async with connector(args) as cad:
        line = await cad.out.until(f"ALERT alert={first.id}", what="the alert line")
        assert "priority=HIGH" in line
        assert '"raised before the CAD started"' in line
        event_id = line.split()[0].lstrip("[")
        # Acked after printing: the cursor file holds its id.
        await wait_for(lambda: _read(cursor_file), what="the cursor file")
        assert await _read(cursor_file) == event_id
        incident_id = line.split("incident=")[1].split()[0]

        cad.send(f"accept {first.id} Unit-9 5")
        result = await cad.out.until("RESULT accept", what="the accept result")
        assert result.startswith(f"RESULT accept OK alert={first.id} incident={incident_id}")
        got = await api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=first.id), metadata=person.md)
        assert got.alert.status == common_pb2.SOS_STATUS_RESPONDING
        assert got.incident.assigned_unit == "Unit-9"
        assert got.incident.estimated_arrival_minutes == 5

        cad.send(f"update {incident_id} resolved skipping on_scene")
        refused = await cad.out.until("RESULT update", what="the refused update")
        assert "RESULT update FAILED_PRECONDITION" in refused
        cad.send("frobnicate everything")
        assert "unknown command" in await cad.out.until("ERROR", what="the error line")
        cad.send(f"update {incident_id} on_scene")
        assert "RESULT update OK" in await cad.out.until("RESULT update", what="the on_scene result")
        cad.send("quit")
        assert await cad.exit_code() == 0

    # Raised while the connector was stopped; the restart resumes after the cursor.
    second = await raise_sos(api, person, SF, description="raised while stopped")
    async with connector(args) as cad:
        await cad.out.until(f"ALERT alert={second.id}", what="the second alert")
        assert not [line for line in cad.out.lines if f"ALERT alert={first.id}" in line]
        cad.close_stdin()  # end of input ends the connector
        assert await cad.exit_code() == 0


async def test_json_mode_with_the_key_from_the_environment(api: Api, runtime: Runtime, tmp_path: Path) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    args = ["--server", f"127.0.0.1:{runtime.grpc_port}", "--cursor-file", str(tmp_path / "cursor"), "--json"]
    async with connector(args, env={"SECURENOW_API_KEY": dept.api_key}, module=True) as cad:
        alert = await raise_sos(api, person, SF, description="json please")
        line = await cad.out.until(lambda text: '"alert_raised"' in text, what="the alert event")
        event = json.loads(line)
        assert event["type"] == "event"
        assert event["kind"] == "alert_raised"
        assert event["alert_raised"]["alert"]["id"] == alert.id
        assert event["alert_raised"]["alert"]["description"] == "json please"
        await wait_for(lambda: _read(tmp_path / "cursor"), what="the cursor file")
        assert await _read(tmp_path / "cursor") == event["event_id"]

        cad.send(f"decline {alert.id} no units free")
        result = json.loads(await cad.out.until(lambda text: '"result"' in text, what="the decline result"))
        assert result == {
            "type": "result",
            "command": "decline",
            "code": 0,
            "status": "OK",
            "message": "",
            "alert_id": alert.id,
            "incident_id": "",
        }
        cad.send("accept")
        error = json.loads(await cad.out.until(lambda text: '"error"' in text, what="the usage error"))
        assert "usage: accept" in error["message"]
        cad.close_stdin()
        assert await cad.exit_code() == 0


async def test_exit_codes_for_bad_arguments_and_refused_keys(api: Api, runtime: Runtime, tmp_path: Path) -> None:
    server = ["--server", f"127.0.0.1:{runtime.grpc_port}"]
    cursor = ["--cursor-file", str(tmp_path / "cursor")]

    async with connector([*server, *cursor]) as cad:  # no API key anywhere
        assert await cad.exit_code() == 2
        assert "API key is required" in await cad.stderr()
    async with connector(cursor, env={"SECURENOW_API_KEY": "snk_x.y"}) as cad:  # no --server
        assert await cad.exit_code() == 2

    async with connector([*server, *cursor], env={"SECURENOW_API_KEY": "snk_not-a-key.secret"}) as cad:
        assert await cad.exit_code() == 3
        assert "authentication failed" in await cad.stderr()

    # A key revoked while the connector runs stops it (it does not reconnect forever).
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    async with connector([*server, *cursor], env={"SECURENOW_API_KEY": dept.api_key}) as cad:
        alert = await raise_sos(api, person, SF)
        await cad.out.until(f"ALERT alert={alert.id}", what="the alert line")
        await api.agency.RevokeApiKey(agency_pb2.RevokeApiKeyRequest(key_id=dept.key_id), metadata=admin.md)
        assert await cad.exit_code(within=20) == 3
        assert "API_KEY_REVOKED" in await cad.stderr()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_stops_the_connector_cleanly_and_keeps_its_cursor(
    api: Api, runtime: Runtime, tmp_path: Path, signum: signal.Signals
) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    cursor_file = tmp_path / "cursor"
    args = ["--server", f"127.0.0.1:{runtime.grpc_port}", "--cursor-file", str(cursor_file), "--no-stdin"]
    async with connector(args, env={"SECURENOW_API_KEY": dept.api_key}) as cad:
        alert = await raise_sos(api, person, SF)
        line = await cad.out.until(f"ALERT alert={alert.id}", what="the alert line")
        event_id = line.split()[0].lstrip("[")
        await wait_for(lambda: _read(cursor_file), what="the cursor file")
        cad.proc.send_signal(signum)
        assert await cad.exit_code() == 0
        assert "Traceback" not in await cad.stderr()
    assert read_cursor(cursor_file) == event_id


async def test_a_cursor_file_that_cannot_be_used_stops_the_connector_with_a_message(
    runtime: Runtime, tmp_path: Path
) -> None:
    server = ["--server", f"127.0.0.1:{runtime.grpc_port}"]
    env = {"SECURENOW_API_KEY": "snk_x.y"}
    empty = tmp_path / "empty.cursor"
    empty.write_text("")
    async with connector([*server, "--cursor-file", str(empty)], env=env) as cad:
        assert await cad.exit_code() == 1
        stderr = await cad.stderr()
        assert "is empty" in stderr
        assert "Traceback" not in stderr
    async with connector([*server, "--cursor-file", str(tmp_path)], env=env) as cad:  # a directory
        assert await cad.exit_code() == 2
        stderr = await cad.stderr()
        assert "--cursor-file" in stderr
        assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("accept", "usage: accept"),
        ("accept a b c d", "usage: accept"),
        ("accept a U1 soon", "ETA_MINUTES"),
        ("accept a U1 \u00b2", "ETA_MINUTES"),
        ("accept a U1 99999999999", "ETA_MINUTES"),
        ("accept 'a", "cannot parse"),
        ("update i1 parked", "STATUS must be one of"),
        ("decline", "usage: decline"),
        ("hello", "unknown command"),
    ],
)
def test_bad_command_lines_are_explained(line: str, message: str) -> None:
    from securenow.client.cad_connector import parse_command

    with pytest.raises(ValueError, match=message):
        parse_command(line)


def test_command_lines_become_requests() -> None:
    from securenow.client.cad_connector import parse_command

    accept = parse_command("accept a1 'Unit 12' 7").request
    assert accept is not None
    assert (accept.accept.alert_id, accept.accept.assigned_unit, accept.accept.eta_minutes) == ("a1", "Unit 12", 7)
    update = parse_command("update i1 ON_SCENE arrived at the door").request
    assert update is not None
    assert update.update.status == common_pb2.INCIDENT_STATUS_ON_SCENE
    assert update.update.notes == "arrived at the door"
    assert parse_command("quit").name == "quit"


async def test_tls_with_a_private_ca_file(api: Api, runtime: Runtime, tmp_path: Path) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    cert_pem, server_tls = self_signed_tls()
    (tmp_path / "ca.pem").write_bytes(cert_pem)
    async with TcpProxy(runtime.grpc_port, tls=server_tls) as tls_proxy:
        args = ["--server", tls_proxy.target, "--tls-ca", str(tmp_path / "ca.pem")]
        args += ["--cursor-file", str(tmp_path / "cursor")]
        async with connector(args, env={"SECURENOW_API_KEY": dept.api_key}) as cad:
            alert = await raise_sos(api, person, SF)
            await cad.out.until(f"ALERT alert={alert.id}", what="the alert over TLS")
            cad.send("quit")
            assert await cad.exit_code() == 0
        missing_ca = [*args[:2], "--tls-ca", str(tmp_path / "missing.pem"), *args[4:]]
        async with connector(missing_ca, env={"SECURENOW_API_KEY": dept.api_key}) as cad:
            assert await cad.exit_code() == 2  # an unreadable CA file is a usage error
            assert "--tls-ca" in await cad.stderr()
