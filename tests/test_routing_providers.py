"""Routing to security providers on duty: when no police department takes an alert, it
goes to the security agency whose provider is on duty nearby (Redis GEOSEARCH over
providers:locations) before the agency whose service area is merely nearest."""

from __future__ import annotations

import redis.asyncio as aioredis

from securenow.v1 import agency_pb2, common_pb2, providers_pb2
from tests.dispatch_helpers import LA, NOWHERE, SF, Cad, Department, location, raise_sos, register_department
from tests.helpers import Account, Api

# About 1 km from NOWHERE: where the patrol is when the alert comes in.
PATROL = (NOWHERE[0] + 0.01, NOWHERE[1])


async def on_duty_agency(api: Api, admin, name: str, area_center, at) -> tuple[Cad, str]:  # type: ignore[no-untyped-def]
    """A security agency run by a verified provider that is on duty at `at`."""
    owner, provider = await api.verified_provider(admin, company=name)
    await api.providers.UpdateProviderDuty(
        providers_pb2.UpdateProviderDutyRequest(provider_id=provider.id, on_duty=True, location=location(at)),
        metadata=owner.md,
    )
    dept = await register_department(
        api,
        admin,
        area_center,
        name=name,
        agency_type=agency_pb2.AGENCY_TYPE_SECURITY_AGENCY,
        provider_id=provider.id,
    )
    return Cad(api.channel, dept.api_key), dept.id


async def area_next_to_nowhere(api: Api, admin: Account) -> Department:
    """A security agency whose service area is nearest NOWHERE, with nobody on duty."""
    return await register_department(
        api,
        admin,
        (NOWHERE[0] + 0.5, NOWHERE[1]),
        name="Closest Area Security",
        agency_type=agency_pb2.AGENCY_TYPE_SECURITY_AGENCY,
    )


async def test_outside_every_jurisdiction_the_nearby_patrol_beats_the_nearest_area(api: Api) -> None:
    admin = await api.admin()
    # Its service area is right next to the alert, but nobody of it is on duty near.
    nearest_area = await area_next_to_nowhere(api, admin)
    # Its service area is a state away, but its patrol is 1 km from the alert.
    cad, patrol_agency = await on_duty_agency(api, admin, "Night Patrol", LA, PATROL)
    person = await api.sign_up()
    try:
        alert = await raise_sos(api, person, NOWHERE)
        assert alert.assigned_agency_id == patrol_agency
        assert alert.assigned_agency_id != nearest_area.id
        assert alert.outside_jurisdiction
        raised = await cad.next_event("alert_raised")
        assert raised.alert_raised.alert.id == alert.id
    finally:
        await cad.close()


async def test_an_unaccepted_alert_escalates_to_the_patrol_on_duty_nearby(api: Api) -> None:
    admin = await api.admin()
    police = await register_department(api, admin, SF, half_deg=0.05, name="Precinct 3", ack_timeout_s=1)
    cad_patrol, patrol_agency = await on_duty_agency(
        api, admin, "Bay Patrol", LA, (SF[0] + 0.005, SF[1])
    )  # its area is elsewhere; its guard is around the corner
    person = await api.sign_up()
    cad_police = Cad(api.channel, police.api_key)
    try:
        alert = await raise_sos(api, person, SF)
        assert alert.assigned_agency_id == police.id
        await cad_police.next_event("alert_raised")
        assert (await cad_police.next_event("alert_escalated", within=10)).alert_escalated.alert_id == alert.id
        moved = await cad_patrol.next_event("alert_raised", within=10)
        assert moved.alert_raised.alert.id == alert.id
        assert moved.alert_raised.alert.assigned_agency_id == patrol_agency
        assert moved.alert_raised.alert.priority == common_pb2.ALERT_PRIORITY_CRITICAL
        assert not moved.alert_raised.alert.outside_jurisdiction  # police cover the point
    finally:
        await cad_police.close()
        await cad_patrol.close()


async def test_a_police_department_linked_to_a_provider_is_never_sent_alerts_outside_its_jurisdiction(
    api: Api,
) -> None:
    """Only security agencies take alerts by where their patrols are; a police department
    whose provider listing is on duty next to the alert still only covers its own area."""
    admin = await api.admin()
    owner, provider = await api.verified_provider(admin, company="City Police Services")
    await api.providers.UpdateProviderDuty(
        providers_pb2.UpdateProviderDutyRequest(provider_id=provider.id, on_duty=True, location=location(PATROL)),
        metadata=owner.md,
    )
    police = await register_department(api, admin, LA, name="LA Police", provider_id=provider.id)
    guards = await area_next_to_nowhere(api, admin)
    alert = await raise_sos(api, await api.sign_up(), NOWHERE)
    assert alert.assigned_agency_id == guards.id
    assert alert.assigned_agency_id != police.id
    assert alert.outside_jurisdiction


async def test_a_patrol_no_longer_offered_does_not_take_alerts_by_a_leftover_duty_entry(
    api: Api, redis_client: aioredis.Redis
) -> None:
    """A provider rejected while Redis was down keeps its entry in providers:locations
    until it goes stale; routing must not send a person's emergency to its agency."""
    admin = await api.admin()
    nearest_area = await area_next_to_nowhere(api, admin)
    cad, patrol_agency = await on_duty_agency(api, admin, "Rejected Patrol", LA, PATROL)
    await cad.close()
    provider_id = (
        await api.agency.GetDepartment(agency_pb2.GetDepartmentRequest(department_id=patrol_agency), metadata=admin.md)
    ).department.provider_id
    await api.providers.VerifyProvider(
        providers_pb2.VerifyProviderRequest(provider_id=provider_id, decision=common_pb2.VERIFICATION_STATUS_REJECTED),
        metadata=admin.md,
    )
    # What a Redis outage during the rejection leaves behind: the entry is still there.
    await redis_client.geoadd("providers:locations", (PATROL[1], PATROL[0], provider_id))
    alert = await raise_sos(api, await api.sign_up(), NOWHERE)
    assert alert.assigned_agency_id == nearest_area.id
