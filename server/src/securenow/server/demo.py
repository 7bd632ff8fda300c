"""Demo data for a local run (`securenow seed-demo`): idempotent, development only."""

from __future__ import annotations

import json
from dataclasses import dataclass

from securenow.server.bootstrap import App
from securenow.server.domain.accounts import Principal, PrincipalKind, User
from securenow.server.domain.agency import ContactInfo, DepartmentDraft
from securenow.server.domain.enums import AgencyType, ProviderType, Role, ServiceType, VerificationStatus
from securenow.server.domain.errors import AlreadyExists, DomainError, FailedPrecondition
from securenow.server.domain.geo import LocationInput, Point
from securenow.server.domain.providers import ProviderDraft
from securenow.server.settings import Environment

DEMO_PASSWORD = "SecureNow-demo-1"
ADMIN_EMAIL = "admin@securenow.local"
USER_EMAIL = "alice@securenow.local"
PROVIDER_EMAIL = "bob@securenow.local"
DISPATCHER_EMAIL = "dispatch@securenow.local"
DEPARTMENT_NAME = "San Francisco Police Department (demo)"
# Downtown San Francisco.
CENTER = Point(37.7793, -122.4193)


async def _account(app: App, email: str, phone: str, first: str, last: str, role: Role) -> User:
    async with app.db.unit_of_work() as uow:
        found = await uow.accounts.find_credentials(email=email)
    if found:
        return found[0]
    if role is Role.ADMIN:
        return await app.auth.create_admin(
            email=email, password=DEMO_PASSWORD, phone=phone, first_name=first, last_name=last
        )
    user, _ = await app.auth.sign_up(
        email=email, phone=phone, first_name=first, last_name=last, password=DEMO_PASSWORD, role=role
    )
    return user


def _as(user: User) -> Principal:
    return Principal(PrincipalKind.USER, user.id, user.role, user.agency_id)


def _sf_jurisdiction() -> str:
    lat, lng, d = CENTER.latitude, CENTER.longitude, 0.12
    ring = [[lng - d, lat - d], [lng + d, lat - d], [lng + d, lat + d], [lng - d, lat + d], [lng - d, lat - d]]
    return json.dumps({"type": "Polygon", "coordinates": [ring]})


async def _department(app: App, admin: User) -> str:
    async with app.db.unit_of_work() as uow:
        existing = await uow.conn.fetchval(
            "SELECT id FROM police_departments WHERE department_name = $1", DEPARTMENT_NAME
        )
    if existing is not None:
        return str(existing)
    department, _ = await app.agency.register(
        _as(admin),
        DepartmentDraft(
            department_name=DEPARTMENT_NAME,
            jurisdiction_geojson=_sf_jurisdiction(),
            contact_info=ContactInfo(contact_name="Dispatch desk", phone="+14155550100"),
        ),
        agency_type=AgencyType.POLICE_DEPARTMENT,
        provider_id="",
        key=None,
    )
    return department.id


async def _usable_key(app: App, admin: User, department_id: str, existing: str | None) -> str:
    """The existing CAD key if it still authenticates, else a new one."""
    if existing:
        try:
            await app.authenticator.authenticate(existing)
            return existing
        except DomainError:
            pass  # revoked, or from another database
    token, _ = await app.agency.issue_key(_as(admin), department_id, "demo CAD connector")
    return token


@dataclass(frozen=True)
class DemoData:
    summary: str
    cad_api_key: str


async def seed_demo(app: App, existing_cad_key: str | None = None) -> DemoData:
    if app.settings.env is Environment.PRODUCTION:
        raise FailedPrecondition("demo data is for development only", reason="PRODUCTION")
    admin = await _account(app, ADMIN_EMAIL, "+15550000001", "Ada", "Admin", Role.ADMIN)
    alice = await _account(app, USER_EMAIL, "+15550000002", "Alice", "Walker", Role.USER)
    bob = await _account(app, PROVIDER_EMAIL, "+15550000003", "Bob", "Guard", Role.PROVIDER)

    draft = ProviderDraft(
        company_name="Bay Guardians Security",
        business_type=ProviderType.SECURITY_GUARD,
        license_number="CA-PPO-120034",
        pricing_input=[(ServiceType.SECURITY_GUARD, "USD", 45, 0), (ServiceType.EVENT_SECURITY, "USD", 60, 0)],
        minimum_hours=2,
        base_location=CENTER,
        tags=["armed", "night"],
        description="Licensed guards for homes, shops and events across San Francisco.",
    )
    try:
        provider = await app.providers.create(_as(bob), draft, None)
    except AlreadyExists:
        async with app.db.unit_of_work() as uow:
            provider_id = await uow.conn.fetchval("SELECT id FROM providers WHERE user_id = $1", bob.id)
        provider = await app.providers.get(_as(admin), str(provider_id))
    if provider.verification_status is not VerificationStatus.VERIFIED:
        provider = await app.providers.verify(_as(admin), provider.id, VerificationStatus.VERIFIED, "demo")
    await app.providers.update_duty(
        _as(bob), provider.id, True, LocationInput(latitude=CENTER.latitude + 0.002, longitude=CENTER.longitude)
    )
    department_id = await _department(app, admin)
    dispatcher = await _account(app, DISPATCHER_EMAIL, "+15550000004", "Dana", "Dispatcher", Role.USER)
    if dispatcher.agency_id != department_id:
        await app.users.set_role(_as(admin), dispatcher.id, Role.POLICE, department_id)
    lines = [
        "demo data ready (password for every account: " + DEMO_PASSWORD + ")",
        f"  admin       {ADMIN_EMAIL}",
        f"  user        {alice.email}   (raise an SOS in San Francisco: 37.7793, -122.4193)",
        f"  provider    {bob.email}  -> {provider.company_name} ({provider.id}), verified, on duty",
        f"  dispatcher  {DISPATCHER_EMAIL}  -> {DEPARTMENT_NAME} ({department_id})",
    ]
    return DemoData("\n".join(lines), await _usable_key(app, admin, department_id, existing_cad_key))
