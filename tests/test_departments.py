"""Departments: reading one (admins, or the department itself), registering one safely
retried with a request_id, changing one (UpdateDepartment, including suspending it),
and the agency service's own admin check."""

from __future__ import annotations

import uuid

import asyncpg
import grpc
import pytest

from securenow.server.domain.accounts import Principal, PrincipalKind
from securenow.server.domain.agency import DepartmentDraft
from securenow.server.domain.enums import DepartmentStatus, Role
from securenow.server.domain.errors import PermissionDenied
from securenow.v1 import agency_pb2, sos_pb2
from tests.dispatch_helpers import LA, SF, Cad, dispatcher_of, raise_sos, register_department, square
from tests.helpers import Account, Api, expect_error


async def test_get_department_for_admins_and_the_department_itself(api: Api) -> None:
    admin = await api.admin()
    metro = await register_department(api, admin, SF, name="Metro PD", webhook_url="https://cad.example/hook")
    other = await register_department(api, admin, LA, name="LA PD")
    dispatcher = await dispatcher_of(api, admin, metro)
    other_dispatcher = await dispatcher_of(api, admin, other)

    def get(md: tuple[tuple[str, str], ...], department_id: str = metro.id):  # type: ignore[no-untyped-def]
        return api.agency.GetDepartment(agency_pb2.GetDepartmentRequest(department_id=department_id), metadata=md)

    for md in (admin.md, metro.md, dispatcher.md):
        got = (await get(md)).department
        assert got == metro.department
        assert got.department_name == "Metro PD"
        assert got.webhook_url == "https://cad.example/hook"
        assert got.status == agency_pb2.DEPARTMENT_STATUS_ACTIVE

    # Another department (its key or its dispatcher) is not told this one exists.
    for md in (other.md, other_dispatcher.md):
        await expect_error(get(md), grpc.StatusCode.NOT_FOUND, "DEPARTMENT_NOT_FOUND")
    await expect_error(get(admin.md, str(uuid.uuid4())), grpc.StatusCode.NOT_FOUND, "DEPARTMENT_NOT_FOUND")
    await expect_error(get(admin.md, "not-a-uuid"), grpc.StatusCode.INVALID_ARGUMENT)
    person = await api.sign_up()
    await expect_error(get(person.md), grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")


def register_request(request_id: str, name: str = "Metro PD") -> agency_pb2.RegisterDepartmentRequest:
    return agency_pb2.RegisterDepartmentRequest(
        department_name=name,
        jurisdiction_geojson=square(SF, 0.2),
        contact_info=agency_pb2.ContactInfo(contact_name="Desk", phone="+15550001111"),
        request_id=request_id,
    )


async def test_request_id_makes_register_department_retry_safe(api: Api, db_conn: asyncpg.Connection) -> None:
    admin = await api.admin()
    request_id = str(uuid.uuid4())
    first = await api.agency.RegisterDepartment(register_request(request_id), metadata=admin.md)
    again = await api.agency.RegisterDepartment(register_request(request_id), metadata=admin.md)
    assert again.department == first.department
    assert first.webhook_secret
    assert not again.webhook_secret  # the secret is shown once
    assert await db_conn.fetchval("SELECT count(*) FROM police_departments WHERE status = 'active'") == 1

    await expect_error(
        api.agency.RegisterDepartment(register_request(request_id, name="Other PD"), metadata=admin.md),
        grpc.StatusCode.ALREADY_EXISTS,
        "REQUEST_ID_REUSED",
    )
    await expect_error(
        api.agency.RegisterDepartment(register_request("not-a-uuid"), metadata=admin.md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert await db_conn.fetchval("SELECT count(*) FROM police_departments WHERE status = 'active'") == 1

    # Another admin's request id is their own: the same id makes a department of theirs.
    second_admin = await api.admin()
    theirs = await api.agency.RegisterDepartment(register_request(request_id), metadata=second_admin.md)
    assert theirs.department.id != first.department.id


def principals(dept_id: str, account: Account) -> list[Principal]:
    return [
        Principal(PrincipalKind.API_KEY, str(uuid.uuid4()), Role.POLICE, dept_id),
        Principal(PrincipalKind.USER, account.id, Role.POLICE, dept_id),
        Principal(PrincipalKind.USER, account.id, Role.SECURITY_AGENCY, dept_id),
        Principal(PrincipalKind.USER, account.id, Role.USER),
        Principal(PrincipalKind.USER, account.id, Role.PROVIDER),
    ]


async def test_agency_service_checks_admin_itself(api: Api, db_conn: asyncpg.Connection) -> None:
    """Defence in depth: were the access table wrong, the service still refuses
    non-admins departments and API keys (a CAD key for any department, above all)."""
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    agency = api.app.agency
    keys_before = await db_conn.fetchval("SELECT count(*) FROM agency_api_keys")
    for caller in principals(dept.id, person):
        with pytest.raises(PermissionDenied):
            await agency.issue_key(caller, dept.id, "stolen")
        with pytest.raises(PermissionDenied):
            await agency.revoke_key(caller, dept.key_id)
        with pytest.raises(PermissionDenied):
            await agency.list_keys(caller, dept.id, 10, "")
        with pytest.raises(PermissionDenied):
            await agency.list_departments(caller, 10, "")
        with pytest.raises(PermissionDenied):
            await agency.register(
                caller,
                DepartmentDraft(department_name="Rogue PD", jurisdiction_geojson=square(LA, 0.2)),
                agency_type=None,
                provider_id="",
                key=None,
            )
        with pytest.raises(PermissionDenied):
            await agency.update(caller, dept.id, DepartmentDraft(status=DepartmentStatus.SUSPENDED), ["status"])
    assert await db_conn.fetchval("SELECT count(*) FROM agency_api_keys") == keys_before
    assert await db_conn.fetchval("SELECT count(*) FROM agency_api_keys WHERE revoked_at IS NOT NULL") == 0
    assert await db_conn.fetchval("SELECT count(*) FROM police_departments WHERE status = 'active'") == 1
    # The department's key still works: nothing was revoked.
    got = await api.agency.GetDepartment(agency_pb2.GetDepartmentRequest(department_id=dept.id), metadata=dept.md)
    assert got.department.id == dept.id


def update_request(department_id: str, paths: list[str], **fields: object) -> agency_pb2.UpdateDepartmentRequest:
    req = agency_pb2.UpdateDepartmentRequest(department=agency_pb2.Department(id=department_id, **fields))  # type: ignore[arg-type]
    req.update_mask.paths.extend(paths)
    return req


async def test_update_department_changes_what_the_mask_names(api: Api, db_conn: asyncpg.Connection) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF, name="Metro PD")
    person = await api.sign_up()
    req = update_request(
        dept.id,
        ["department_name", "contact_info", "webhook_url", "ack_timeout", "jurisdiction_geojson"],
        department_name="Metro Police",
        contact_info=agency_pb2.ContactInfo(contact_name="Night desk", phone="+15550002222"),
        webhook_url="https://cad.example/v2/hook",
        jurisdiction_geojson=square(LA, 0.2),
        # Not in the mask: left alone.
        status=agency_pb2.DEPARTMENT_STATUS_SUSPENDED,
    )
    req.department.ack_timeout.FromSeconds(45)
    updated = (await api.agency.UpdateDepartment(req, metadata=admin.md)).department

    got = (
        await api.agency.GetDepartment(agency_pb2.GetDepartmentRequest(department_id=dept.id), metadata=admin.md)
    ).department
    assert got == updated
    assert (got.department_name, got.contact_info.contact_name, got.webhook_url) == (
        "Metro Police",
        "Night desk",
        "https://cad.example/v2/hook",
    )
    assert got.ack_timeout.seconds == 45
    assert got.status == agency_pb2.DEPARTMENT_STATUS_ACTIVE
    # Routing follows the new jurisdiction: LA is now this department's, SF nobody's.
    in_la = await raise_sos(api, person, LA)
    assert in_la.assigned_agency_id == dept.id
    in_sf = await raise_sos(api, person, SF)
    assert in_sf.assigned_agency_id != dept.id
    entry = await db_conn.fetchrow(
        "SELECT actor_id, details FROM audit_log WHERE action = 'agency.update' AND resource_id = $1", dept.id
    )
    assert entry is not None
    assert str(entry["actor_id"]) == admin.id


@pytest.mark.parametrize(
    ("paths", "fields", "field"),
    [
        pytest.param([], {"department_name": "x"}, "update_mask", id="empty-mask"),
        pytest.param(["agency_type"], {}, "update_mask", id="read-only-path"),
        pytest.param(["status"], {}, "department.status", id="status-unspecified"),
        pytest.param(["department_name"], {"department_name": ""}, "department.department_name", id="empty-name"),
        pytest.param(["webhook_url"], {"webhook_url": "ftp://cad.example"}, "department.webhook_url", id="webhook"),
        pytest.param(
            ["jurisdiction_geojson"],
            {"jurisdiction_geojson": '{"type":"Polygon","coordinates":[[[0,0],[1,1],[1,0],[0,1],[0,0]]]}'},
            "department.jurisdiction_geojson",
            id="self-intersecting",
        ),
    ],
)
async def test_update_department_refuses_bad_input(
    api: Api, paths: list[str], fields: dict[str, object], field: str
) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    details = await expect_error(
        api.agency.UpdateDepartment(update_request(dept.id, paths, **fields), metadata=admin.md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field in details.fields
    got = (
        await api.agency.GetDepartment(agency_pb2.GetDepartmentRequest(department_id=dept.id), metadata=admin.md)
    ).department
    assert got == dept.department
    await expect_error(
        api.agency.UpdateDepartment(
            update_request(str(uuid.uuid4()), ["department_name"], department_name="Ghost PD"), metadata=admin.md
        ),
        grpc.StatusCode.NOT_FOUND,
        "DEPARTMENT_NOT_FOUND",
    )


async def test_suspending_a_department_hands_its_alerts_on_and_locks_it_out(api: Api) -> None:
    """A suspended department stops receiving alerts at once: its open stream closes,
    its key and dispatchers are refused, the alert it had not accepted goes to the next
    agency (the person sees it move), and new alerts skip it. Reactivated, it works again."""
    admin = await api.admin()
    metro = await register_department(api, admin, SF, half_deg=0.05, name="Metro PD")
    county = await register_department(api, admin, SF, half_deg=0.5, name="County Sheriff")
    dispatcher = await dispatcher_of(api, admin, metro)
    person = await api.sign_up()
    metro_cad, county_cad = Cad(api.channel, metro.api_key), Cad(api.channel, county.api_key)
    try:
        alert = await raise_sos(api, person, SF)
        assert alert.assigned_agency_id == metro.id  # the most specific jurisdiction
        await metro_cad.events_until(alert.id)
        watch = api.sos.WatchSos(sos_pb2.WatchSosRequest(alert_id=alert.id), metadata=person.md)
        assert (await watch.read()).event == "snapshot"

        await api.agency.UpdateDepartment(
            update_request(metro.id, ["status"], status=agency_pb2.DEPARTMENT_STATUS_SUSPENDED), metadata=admin.md
        )

        moved = await watch.read()
        assert (moved.event, moved.alert.assigned_agency_id) == ("rerouted", county.id)
        await county_cad.events_until(alert.id)
        error = await metro_cad.wait_closed(within=15)
        assert error is not None
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        get = agency_pb2.GetDepartmentRequest(department_id=metro.id)
        await expect_error(
            api.agency.GetDepartment(get, metadata=metro.md), grpc.StatusCode.UNAUTHENTICATED, "DEPARTMENT_INACTIVE"
        )
        await expect_error(
            api.agency.AcceptSosAlert(agency_pb2.AcceptSosAlertRequest(alert_id=alert.id), metadata=dispatcher.md),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        assert (await raise_sos(api, person, SF)).assigned_agency_id == county.id

        await api.agency.UpdateDepartment(
            update_request(metro.id, ["status"], status=agency_pb2.DEPARTMENT_STATUS_ACTIVE), metadata=admin.md
        )
        assert (await api.agency.GetDepartment(get, metadata=metro.md)).department.status == (
            agency_pb2.DEPARTMENT_STATUS_ACTIVE
        )
        assert (await api.agency.GetDepartment(get, metadata=dispatcher.md)).department.id == metro.id
        assert (await raise_sos(api, person, SF)).assigned_agency_id == metro.id
        watch.cancel()
    finally:
        await metro_cad.close()
        await county_cad.close()
