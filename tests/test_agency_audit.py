"""Audit of AgencyService (departments, jurisdictions, keys) and department webhooks:
the defects found, each pinned by a test through the real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import grpc
import pytest
from aiohttp import web

from securenow.v1 import agency_pb2, agency_pb2_grpc
from tests.conftest import extra_replica
from tests.dispatch_helpers import LA, SF, raise_sos, register_department, square
from tests.helpers import Api, expect_error, wait_for
from tests.receivers import PostReceiver, post_receiver, verify_signature
from tests.test_departments import update_request

FIJI = (-17.7, 179.0)
BOLIVIA = (-17.0, -65.0)


def polygon(*rings: list[list[float]]) -> str:
    return json.dumps({"type": "Polygon", "coordinates": list(rings)})


# Fiji's area written across the antimeridian without splitting it (RFC 7946 3.1.9
# says to split): read as GeoJSON's straight lines, it is a band round the world
# from 178 W to 177 E, i.e. everything but Fiji.
FIJI_UNSPLIT = polygon([[177, -19], [-178, -19], [-178, -16], [177, -16], [177, -19]])
FIJI_SPLIT = json.dumps(
    {
        "type": "MultiPolygon",
        "coordinates": [
            [[[177, -19], [180, -19], [180, -16], [177, -16], [177, -19]]],
            [[[-180, -19], [-178, -19], [-178, -16], [-180, -16], [-180, -19]]],
        ],
    }
)


async def test_a_jurisdiction_crossing_the_antimeridian_must_be_split(api: Api) -> None:
    """An unsplit polygon across 180 degrees would take the alerts of half the world
    (routing reads it as planar GeoJSON) while meaning a small island: refused, naming
    the field, at registration and on update. Split at the antimeridian it works."""
    admin = await api.admin()
    details = await expect_error(
        api.agency.RegisterDepartment(
            agency_pb2.RegisterDepartmentRequest(department_name="Fiji PD", jurisdiction_geojson=FIJI_UNSPLIT),
            metadata=admin.md,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "antimeridian" in details.fields["jurisdiction_geojson"]
    la = await register_department(api, admin, LA, name="LA PD")
    details = await expect_error(
        api.agency.UpdateDepartment(
            update_request(la.id, ["jurisdiction_geojson"], jurisdiction_geojson=FIJI_UNSPLIT), metadata=admin.md
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "antimeridian" in details.fields["department.jurisdiction_geojson"]

    fiji = await api.agency.RegisterDepartment(
        agency_pb2.RegisterDepartmentRequest(department_name="Fiji PD", jurisdiction_geojson=FIJI_SPLIT),
        metadata=admin.md,
    )
    person = await api.sign_up()
    assert (await raise_sos(api, person, FIJI)).assigned_agency_id == fiji.department.id
    assert (await raise_sos(api, person, (-17.7, -179.0))).assigned_agency_id == fiji.department.id
    assert (await raise_sos(api, person, BOLIVIA)).assigned_agency_id != fiji.department.id
    # An edge along the +-180 meridian itself is the edge of the map, not a crossing:
    # a polar cap written that way stays accepted.
    arctic = polygon([[-180, 60], [180, 60], [180, 90], [-180, 90], [-180, 60]])
    await api.agency.RegisterDepartment(
        agency_pb2.RegisterDepartmentRequest(department_name="Arctic", jurisdiction_geojson=arctic),
        metadata=admin.md,
    )


class HangingReceiver:
    """A webhook endpoint that takes each POST and answers only when released."""

    def __init__(self) -> None:
        self.arrived: asyncio.Queue[bytes] = asyncio.Queue()
        self.release = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived.put_nowait(await request.read())
        await self.release.wait()
        return web.Response(status=200)


@asynccontextmanager
async def hanging_receiver() -> AsyncIterator[HangingReceiver]:
    receiver = HangingReceiver()
    app = web.Application()
    app.router.add_post("/slow", receiver.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.url = f"http://127.0.0.1:{port}/slow"
    try:
        yield receiver
    finally:
        receiver.release.set()
        await runner.cleanup()


@pytest.fixture
async def hook() -> AsyncIterator[PostReceiver]:
    async with post_receiver("/hook") as receiver:
        yield receiver


async def test_a_slow_webhook_endpoint_does_not_hold_up_other_departments(
    api: Api, hook: PostReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One department's endpoint that hangs (until the 2 s timeout of the test
    settings) must not delay another department's webhook: each POST runs on its own."""
    monkeypatch.setattr(api.app.webhooks, "_poll", 0.05)  # look for due deliveries often
    admin = await api.admin()
    async with hanging_receiver() as slow:
        la = await register_department(api, admin, LA, name="LA PD", webhook_url=slow.url)
        sf = await register_department(api, admin, SF, name="SF PD", webhook_url=hook.url)
        person = await api.sign_up()
        for _ in range(3):
            await raise_sos(api, person, LA)
        await asyncio.wait_for(slow.arrived.get(), 10)  # LA's POSTs are now hanging
        start = time.monotonic()
        alert = await raise_sos(api, person, SF)
        headers, body = await asyncio.wait_for(hook.received.get(), 10)
        took = time.monotonic() - start
        assert json.loads(body)["data"]["alert"]["id"] == alert.id
        assert verify_signature(sf.webhook_secret, headers, body)
        assert took < 1.0, f"SF's webhook waited {took:.2f} s behind LA's hanging endpoint"
        assert la.id


async def test_a_stopped_department_gets_no_webhooks_until_reactivated(api: Api, db_conn: asyncpg.Connection) -> None:
    """A suspended department "stops at once" (docs/dispatch.md): like its stream, its
    webhook receives nothing while it is not active (the alert moved away from it is
    still about a person in danger); what is pending is sent once it is reactivated."""
    admin = await api.admin()
    async with post_receiver("/metro") as metro_hook, post_receiver("/county") as county_hook:
        metro = await register_department(api, admin, SF, half_deg=0.05, name="Metro", webhook_url=metro_hook.url)
        county = await register_department(api, admin, SF, half_deg=0.5, name="County", webhook_url=county_hook.url)
        person = await api.sign_up()
        alert = await raise_sos(api, person, SF)
        assert alert.assigned_agency_id == metro.id
        _, body = await asyncio.wait_for(metro_hook.received.get(), 10)
        assert json.loads(body)["event_type"] == "alert_raised"

        await api.agency.UpdateDepartment(
            update_request(metro.id, ["status"], status=agency_pb2.DEPARTMENT_STATUS_SUSPENDED), metadata=admin.md
        )
        # The alert moved to the county; then one more county alert, so that everything
        # due before it has had its turn.
        _, body = await asyncio.wait_for(county_hook.received.get(), 10)
        moved = json.loads(body)
        assert (moved["department_id"], moved["data"]["alert"]["id"]) == (county.id, alert.id)
        later = await raise_sos(api, person, SF)
        _, body = await asyncio.wait_for(county_hook.received.get(), 10)
        assert json.loads(body)["data"]["alert"]["id"] == later.id
        held = await db_conn.fetchrow(
            "SELECT status, attempts FROM webhook_deliveries WHERE department_id = $1 AND event_type = $2",
            metro.id,
            "alert_escalated",
        )
        assert held is not None
        assert (held["status"], held["attempts"]) == ("pending", 0)
        assert metro_hook.received.empty()

        await api.agency.UpdateDepartment(
            update_request(metro.id, ["status"], status=agency_pb2.DEPARTMENT_STATUS_ACTIVE), metadata=admin.md
        )
        headers, body = await asyncio.wait_for(metro_hook.received.get(), 10)
        assert json.loads(body)["event_type"] == "alert_escalated"
        assert verify_signature(metro.webhook_secret, headers, body)


async def test_removing_the_webhook_url_dead_letters_what_is_pending(
    api: Api, hook: PostReceiver, db_conn: asyncpg.Connection
) -> None:
    """Deliveries still pending when the department's webhook is removed have nowhere
    to go: they are dead-lettered with that reason at once, not tried against ""."""
    hook.status = 500
    admin = await api.admin()
    dept = await register_department(api, admin, SF, webhook_url=hook.url)

    person = await api.sign_up()
    await raise_sos(api, person, SF)
    await asyncio.wait_for(hook.received.get(), 10)  # the first attempt failed
    await api.agency.UpdateDepartment(update_request(dept.id, ["webhook_url"], webhook_url=""), metadata=admin.md)

    async def dead() -> asyncpg.Record | None:
        row = await db_conn.fetchrow(
            "SELECT status, attempts, last_error FROM webhook_deliveries WHERE department_id = $1", dept.id
        )
        return row if row and row["status"] == "dead" else None

    row = await wait_for(dead, within=10, what="dead-lettered delivery")
    assert row["last_error"] == "the department has no webhook URL"


async def test_production_refuses_webhooks_to_internal_addresses(api: Api) -> None:
    """With plain http refused (production), an https URL can still name the server's
    own machine or the cloud metadata service: refused too, naming the field. Private
    networks (a CAD behind a VPN) and DNS names stay allowed."""
    admin = await api.admin()
    async with contextlib.AsyncExitStack() as stack:
        rt = await stack.enter_async_context(extra_replica("prod-webhooks", webhook_allow_http=False))
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{rt.grpc_port}"))
        agency = agency_pb2_grpc.AgencyServiceStub(channel)

        def register(url: str):  # type: ignore[no-untyped-def]
            return agency.RegisterDepartment(
                agency_pb2.RegisterDepartmentRequest(
                    department_name="Metro PD", jurisdiction_geojson=square(SF, 0.2), webhook_url=url
                ),
                metadata=admin.md,
            )

        for url in (
            "http://cad.example/hook",
            "https://127.0.0.1/hook",
            "https://127.8.9.10:8443/hook",
            "https://localhost/hook",
            "https://api.localhost/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/hook",
            "https://[::ffff:127.0.0.1]/hook",
            "https://[fe80::1]/hook",
            "https://0.0.0.0/hook",
            "https://224.0.0.1/hook",
        ):
            details = await expect_error(register(url), grpc.StatusCode.INVALID_ARGUMENT)
            assert list(details.fields) == ["webhook_url"], (url, details.fields)
        for url in ("https://10.20.30.40/hook", "https://cad.example:8443/hook"):
            assert (await register(url)).department.webhook_url == url


async def test_audit_tells_where_webhooks_went_and_whose_key_was_revoked(api: Api, db_conn: asyncpg.Connection) -> None:
    """Pointing a department's webhook elsewhere redirects its emergencies: the audit
    entry keeps the previous and the new address (not their query, which may hold a
    token); a key's revocation names the department."""
    admin = await api.admin()
    dept = await register_department(api, admin, SF, webhook_url="https://cad.example/hook?token=s3cret")
    await api.agency.UpdateDepartment(
        update_request(dept.id, ["webhook_url"], webhook_url="https://other.example/in"), metadata=admin.md
    )
    await api.agency.UpdateDepartment(
        update_request(dept.id, ["department_name"], department_name="Metro Police"), metadata=admin.md
    )
    rows = await db_conn.fetch(
        "SELECT details FROM audit_log WHERE action = 'agency.update' AND resource_id = $1 ORDER BY id", dept.id
    )
    details = [json.loads(r["details"]) if isinstance(r["details"], str) else r["details"] for r in rows]
    assert details[0]["webhook_url"] == {"from": "https://cad.example/hook", "to": "https://other.example/in"}
    assert "s3cret" not in json.dumps(details)
    assert "webhook_url" not in details[1]  # unchanged

    await api.agency.RevokeApiKey(agency_pb2.RevokeApiKeyRequest(key_id=dept.key_id), metadata=admin.md)
    entry = await db_conn.fetchval(
        "SELECT details FROM audit_log WHERE action = 'agency.revoke_key' AND resource_id = $1", dept.key_id
    )
    entry = json.loads(entry) if isinstance(entry, str) else entry
    assert entry["department"] == dept.id
