"""Departments: reading one (admins, or the department itself), registering one safely
retried with a request_id, and the agency service's own admin check."""

from __future__ import annotations

import uuid

import asyncpg
import grpc
import pytest

from securenow.server.domain.accounts import Principal, PrincipalKind
from securenow.server.domain.agency import ContactInfo
from securenow.server.domain.enums import Role
from securenow.server.domain.errors import PermissionDenied
from securenow.v1 import agency_pb2
from tests.dispatch_helpers import LA, SF, dispatcher_of, register_department, square
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
    assert await db_conn.fetchval("SELECT count(*) FROM police_departments") == 1

    await expect_error(
        api.agency.RegisterDepartment(register_request(request_id, name="Other PD"), metadata=admin.md),
        grpc.StatusCode.ALREADY_EXISTS,
        "REQUEST_ID_REUSED",
    )
    await expect_error(
        api.agency.RegisterDepartment(register_request("not-a-uuid"), metadata=admin.md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert await db_conn.fetchval("SELECT count(*) FROM police_departments") == 1

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
                department_name="Rogue PD",
                jurisdiction_geojson=square(LA, 0.2),
                contact_info=ContactInfo(contact_name="x", phone="", email="", address=""),
                webhook_url="",
                agency_type=None,
                provider_id="",
                ack_timeout_seconds=None,
                key=None,
            )
    assert await db_conn.fetchval("SELECT count(*) FROM agency_api_keys") == keys_before
    assert await db_conn.fetchval("SELECT count(*) FROM agency_api_keys WHERE revoked_at IS NOT NULL") == 0
    assert await db_conn.fetchval("SELECT count(*) FROM police_departments") == 1
    # The department's key still works: nothing was revoked.
    got = await api.agency.GetDepartment(agency_pb2.GetDepartmentRequest(department_id=dept.id), metadata=dept.md)
    assert got.department.id == dept.id
