"""The walkthroughs in the READMEs, run as a newcomer would run them: the demo data of
`make run`, the two-terminal demo (reference CAD connector + clients/examples/raise_sos.py),
the marketplace example (clients/examples/book_a_guard.py), the README's API session
and the SDK README's two examples (a person; a CAD consumer). Code blocks are taken from the
README files themselves, so a README that drifts from the code fails here."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from securenow.server.runtime import Runtime
from securenow.v1 import common_pb2, sos_pb2
from tests.conftest import server_env
from tests.dispatch_helpers import raise_sos
from tests.helpers import Api, wait_for
from tests.sdk_helpers import LineReader, connector

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DEFAULT_ADDRESS = "127.0.0.1:50051"


def python_blocks(readme: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.DOTALL)


async def run(*args: str, env: dict[str, str] | None = None, within: float = 60.0) -> str:
    """Runs a program to completion; returns its output, failing on a non-zero exit."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env or dict(os.environ)
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{args} did not finish within {within} s") from None
    text = out.decode()
    assert proc.returncode == 0, f"{args} exited with {proc.returncode}:\n{text}"
    return text


async def seed_demo(key_file: Path) -> str:
    """What `make run` does after migrating (scripts/run.sh)."""
    return await run(str(VENV_BIN / "securenow"), "seed-demo", "--api-key-file", str(key_file), env=server_env())


async def test_two_terminal_demo_from_the_readme(runtime: Runtime, tmp_path: Path) -> None:
    key_file, cursor_file = tmp_path / "demo-cad.key", tmp_path / "cad.cursor"
    summary = await seed_demo(key_file)
    assert "dispatch@securenow.local" in summary
    address = f"127.0.0.1:{runtime.grpc_port}"

    # Terminal 1: the reference CAD connector with the demo department's key.
    args = ["--server", address, "--api-key-file", str(key_file), "--cursor-file", str(cursor_file)]
    async with connector(args) as cad:
        # Terminal 2: the person raises an SOS in San Francisco and watches it.
        person = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "clients/examples/raise_sos.py"),
            "--server",
            address,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            assert person.stdout is not None
            phone = LineReader(person.stdout)
            raised = await phone.until("SOS raised:", what="the raise confirmation")
            alert_id = raised.split("SOS raised: ")[1].split(",")[0]
            assert "assigned to agency (none yet)" not in raised
            await phone.until("[snapshot] alert SOS_STATUS_ACTIVE", what="the first snapshot")

            line = await cad.out.until(f"ALERT alert={alert_id}", what="the alert in terminal 1")
            incident_id = line.split("incident=")[1].split()[0]
            cad.send(f"accept {alert_id} Unit-12 4")
            assert "RESULT accept OK" in await cad.out.until("RESULT accept", what="the accept result")
            accepted = await phone.until("SOS_STATUS_RESPONDING", what="the person seeing help coming")
            assert "unit Unit-12 eta 4 min" in accepted
            cad.send(f"update {incident_id} on_scene")
            assert "RESULT update OK" in await cad.out.until("RESULT update", what="the on_scene result")
            await phone.until("INCIDENT_STATUS_ON_SCENE", what="the person seeing the unit arrive")
            cad.send(f"update {incident_id} resolved all safe")
            assert "RESULT update OK" in await cad.out.until("RESULT update", what="the resolve result")
            await phone.until("SOS_STATUS_RESOLVED", what="the person seeing it resolved")
            # The watch ends by itself once the alert is resolved.
            assert await asyncio.wait_for(person.wait(), 15) == 0
        finally:
            if person.returncode is None:
                person.kill()
                await person.wait()
        cad.send("quit")
        assert await cad.exit_code() == 0


async def test_marketplace_example_registers_verifies_finds_and_books_a_provider(
    runtime: Runtime, tmp_path: Path
) -> None:
    await seed_demo(tmp_path / "demo-cad.key")  # the admin account it signs in with
    example = ROOT / "clients/examples/book_a_guard.py"
    out = await run(sys.executable, str(example), "--server", f"127.0.0.1:{runtime.grpc_port}")
    lines = out.splitlines()
    # About 120 m between the search point and the provider (Redis GEO rounds a little).
    assert re.fullmatch(r"found Union Square Patrol 1[12]\d m away", lines[2]), out
    assert lines[:2] + lines[3:] == [
        "registered Union Square Patrol VERIFICATION_STATUS_PENDING",
        "verified VERIFICATION_STATUS_VERIFIED",
        "booked BOOKING_STATUS_PENDING 150.00 USD",  # 3 h x 50 USD, priced by the server
        "second booking: FAILED_PRECONDITION BOOKING_OVERLAP",
        "company: BOOKING_STATUS_CONFIRMED",
    ], out


async def test_readme_api_session_finds_the_demo_provider(runtime: Runtime, tmp_path: Path) -> None:
    await seed_demo(tmp_path / "demo-cad.key")
    (session,) = python_blocks(ROOT / "README.md")
    assert DEFAULT_ADDRESS in session
    script = tmp_path / "session.py"
    script.write_text(session.replace(DEFAULT_ADDRESS, f"127.0.0.1:{runtime.grpc_port}"))
    out = await run(sys.executable, str(script))
    # The demo provider is on duty about 220 m from the point searched.
    assert re.search(r"^Bay Guardians Security 2\d\d m$", out, flags=re.MULTILINE), out
    # Full-text search stems "events" and matches the demo provider's description.
    assert "search: ['Bay Guardians Security']" in out, out


async def test_sdk_readme_example_runs_as_written(runtime: Runtime, tmp_path: Path) -> None:
    example = python_blocks(ROOT / "clients/python/README.md")[0]
    script = tmp_path / "example.py"
    script.write_text(example)
    out = await run(sys.executable, str(script), env={**os.environ, "SECURENOW_ADDR": f"127.0.0.1:{runtime.grpc_port}"})
    lines = out.splitlines()
    assert re.fullmatch(r"raised [0-9a-f-]{36}", lines[0]), out
    assert lines[1:3] == ["snapshot SOS_STATUS_ACTIVE", "cancelled SOS_STATUS_CANCELLED"], out
    assert lines[3].startswith("INVALID_ARGUMENT INVALID_ARGUMENT {'location.point.latitude': "), out


async def test_sdk_readme_dispatch_consumer_accepts_and_keeps_its_cursor(
    runtime: Runtime, api: Api, tmp_path: Path
) -> None:
    # Run from a directory laid out like the repository after `make run`: var/demo-cad.key.
    await seed_demo(tmp_path / "var" / "demo-cad.key")
    consumer = python_blocks(ROOT / "clients/python/README.md")[1]
    assert "FileCursorStore" in consumer
    script = tmp_path / "consumer.py"
    script.write_text(consumer)
    env = {**os.environ, "SECURENOW_ADDR": f"127.0.0.1:{runtime.grpc_port}", "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        out = LineReader(proc.stdout)
        # A person in the demo department's San Francisco jurisdiction raises an SOS.
        person = await api.sign_up(phone="+14155550199")  # not one of the demo accounts' numbers
        alert = await raise_sos(api, person, (37.7793, -122.4193), description="README consumer check")
        line = await out.until(f"accept {alert.id}", what="the consumer accepting the alert")
        assert line.split() == ["accept", alert.id, "->", "OK"], out.lines
        got = await api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=alert.id), metadata=person.md)
        assert got.alert.status == common_pb2.SOS_STATUS_RESPONDING
        assert got.incident.assigned_unit == "Unit 12"
        assert got.incident.estimated_arrival_minutes == 5

        # The event was acked: the cursor file holds its id, for the next run to resume after.
        cursor_file = tmp_path / "var" / "my-cad.cursor"

        async def cursor() -> str:
            return cursor_file.read_text().strip() if cursor_file.exists() else ""

        assert re.fullmatch(r"\d+-\d+", await wait_for(cursor, what="the cursor file")), cursor_file.read_text()
    finally:
        proc.kill()  # the example runs until stopped, like a real connector
        await proc.wait()
