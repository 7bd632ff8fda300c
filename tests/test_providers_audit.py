"""ProviderService defects found in review: nearby search under-filled by other
providers, stale live-location entries of providers no longer offered, duty changes
racing a suspension, answers after a committed change when Redis is down, needless
re-reviews and missing announcements."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import redis.asyncio as aioredis
from google.protobuf import field_mask_pb2

from securenow.v1 import common_pb2, providers_pb2, providers_pb2_grpc, users_pb2
from tests.conftest import extra_replica
from tests.helpers import Account, Api, expect_error, next_message, wait_for
from tests.test_providers import (
    CENTER,
    DRONE,
    GEO_KEY,
    GUARD,
    PENDING,
    STATUS_CHANNEL,
    VERIFIED,
    expect_invalid,
    list_ids,
    new_provider,
    offset,
    search,
    set_duty,
    subscribed,
    update,
    verify,
)

REJECTED = common_pb2.VERIFICATION_STATUS_REJECTED
# A Redis nobody listens on: a replica pointed at it sees Redis down.
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"


@asynccontextmanager
async def redis_down() -> AsyncIterator[providers_pb2_grpc.ProviderServiceStub]:
    """ProviderService of another replica (same PostgreSQL) whose Redis is unreachable."""
    async with (
        extra_replica("redis-down", redis_url=DEAD_REDIS_URL) as replica,
        grpc.aio.insecure_channel(f"127.0.0.1:{replica.grpc_port}") as ch,
    ):
        yield providers_pb2_grpc.ProviderServiceStub(ch)


async def on_duty_provider(
    api: Api, admin: Account, point: tuple[float, float], **overrides: object
) -> tuple[Account, providers_pb2.Provider]:
    owner, provider = await new_provider(api, **overrides)
    await verify(api, admin, provider.id)
    await set_duty(api, owner, provider.id, True, point)
    return owner, provider


# Nearby search -----------------------------------------------------------------------


async def test_type_filter_finds_the_nearest_of_that_type_behind_many_others(api: Api) -> None:
    """Five guards nearer than the only drone: a drone search must still find it."""
    admin = await api.admin()
    for i in range(5):
        await on_duty_provider(api, admin, offset(100 * (i + 1)), company_name=f"guard {i}")
    _, drone = await on_duty_provider(api, admin, offset(2000), company_name="drone", business_type=DRONE)
    customer = await api.sign_up()
    found = await search(api, customer, business_type=DRONE, max_results=1)
    assert [r.provider.id for r in found] == [drone.id]
    found = await search(api, customer, business_type=DRONE)
    assert [r.provider.id for r in found] == [drone.id]
    assert len(await search(api, customer, business_type=GUARD, max_results=5)) == 5


async def test_stale_entry_of_a_provider_no_longer_offered_neither_crowds_out_nor_stays(
    api: Api, redis_client: aioredis.Redis
) -> None:
    """A live-location entry left behind (a rejection while Redis was down) does not take
    the place of an offered provider, is not shown as on duty, and is cleaned up."""
    admin = await api.admin()
    _, stale = await on_duty_provider(api, admin, offset(100), company_name="stale")
    _, good = await on_duty_provider(api, admin, offset(500), company_name="good")
    async with redis_down() as stub:
        await stub.VerifyProvider(
            providers_pb2.VerifyProviderRequest(provider_id=stale.id, decision=REJECTED), metadata=admin.md
        )
    assert (await redis_client.geopos(GEO_KEY, stale.id))[0] is not None  # left behind
    got = await api.providers.GetProvider(providers_pb2.GetProviderRequest(provider_id=stale.id), metadata=admin.md)
    assert got.provider.verification_status == REJECTED
    assert not got.provider.on_duty  # a rejected provider is not on duty, whatever Redis holds

    customer = await api.sign_up()
    async with subscribed(redis_client, STATUS_CHANNEL) as pubsub:
        found = await search(api, customer, max_results=1)
        assert [r.provider.id for r in found] == [good.id]
        status = await next_message(pubsub, lambda m: m.get("provider_id") == stale.id)
    assert status["on_duty"] is False
    assert status["reason"] == "rejected"
    assert await redis_client.geopos(GEO_KEY, stale.id) == [None]


# Duty ---------------------------------------------------------------------------------


async def _waiting_on_provider_row(conn: asyncpg.Connection, statement: str) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1",
            f"%{statement}%",
        )
    )


async def test_duty_call_queued_behind_a_suspension_does_not_go_on_duty(
    api: Api, database: str, db_conn: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    """UpdateProviderDuty authenticated before the owner's suspension committed, and
    reaching the provider after it, must not put the company back on duty."""
    admin = await api.admin()
    owner, provider = await new_provider(api)
    await verify(api, admin, provider.id)
    await set_duty(api, owner, provider.id, True, CENTER)

    # Holding the provider row makes the suspension wait (it touches the row) with the
    # duty call queued behind it; releasing it lets them run in that order.
    blocker = await asyncpg.connect(database)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM providers WHERE id = $1 FOR UPDATE", provider.id)
        suspend = asyncio.ensure_future(
            api.users.SuspendUser(users_pb2.SuspendUserRequest(user_id=owner.id, reason="fraud"), metadata=admin.md)
        )
        await wait_for(
            lambda: _waiting_on_provider_row(db_conn, "UPDATE providers SET updated_at"), what="suspension waiting"
        )
        duty = asyncio.ensure_future(set_duty(api, owner, provider.id, True, offset(200)))
        await wait_for(
            lambda: _waiting_on_provider_row(db_conn, "FROM providers p WHERE p.id = $1"), what="duty call waiting"
        )
        await tx.rollback()
        await suspend
        await expect_error(duty, grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_SUSPENDED")
    finally:
        await blocker.close()
    assert await redis_client.geopos(GEO_KEY, provider.id) == [None]
    assert await redis_client.zscore("providers:last_seen", provider.id) is None
    got = await api.providers.GetProvider(providers_pb2.GetProviderRequest(provider_id=provider.id), metadata=admin.md)
    assert not got.provider.on_duty


async def test_going_on_duty_needs_a_fresh_location(api: Api) -> None:
    """A live location older than the stale limit (15 min) is not where the guard is."""
    admin = await api.admin()
    owner, provider = await new_provider(api)
    await verify(api, admin, provider.id)
    req = providers_pb2.UpdateProviderDutyRequest(provider_id=provider.id, on_duty=True)
    req.location.point.latitude, req.location.point.longitude = CENTER
    req.location.time.FromDatetime(datetime.now(UTC) - timedelta(hours=2))
    await expect_invalid(api.providers.UpdateProviderDuty(req, metadata=owner.md), "location.time")
    customer = await api.sign_up()
    assert await search(api, customer) == []

    req.location.time.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
    assert (await api.providers.UpdateProviderDuty(req, metadata=owner.md)).provider.on_duty


# Updates and verification while Redis is down ----------------------------------------


async def test_changes_that_commit_answer_ok_when_redis_is_down(api: Api, redis_client: aioredis.Redis) -> None:
    """A re-review or a rejection is committed even if Redis cannot be told: the answer
    is OK (not UNAVAILABLE for a change that happened), and nobody finds the provider."""
    admin = await api.admin()
    owner, renamed = await on_duty_provider(api, admin, offset(100), company_name="renamed")
    _, rejected = await on_duty_provider(api, admin, offset(200), company_name="rejected")
    async with redis_down() as stub:
        resp = await stub.UpdateProvider(
            providers_pb2.UpdateProviderRequest(
                provider=providers_pb2.Provider(id=renamed.id, company_name="Renamed Co"),
                update_mask=field_mask_pb2.FieldMask(paths=["company_name"]),
            ),
            metadata=owner.md,
        )
        assert resp.provider.verification_status == PENDING
        assert not resp.provider.on_duty
        out = await stub.VerifyProvider(
            providers_pb2.VerifyProviderRequest(provider_id=rejected.id, decision=REJECTED), metadata=admin.md
        )
        assert out.provider.verification_status == REJECTED
    customer = await api.sign_up()
    assert await search(api, customer) == []


# Re-review and announcements ---------------------------------------------------------


async def test_resending_the_same_name_does_not_send_a_provider_back_to_review(
    api: Api, redis_client: aioredis.Redis
) -> None:
    """A client that sends the whole provider with a wide mask (read-modify-write) to
    change its description keeps its verification: nothing reviewed changed."""
    admin = await api.admin()
    owner, provider = await on_duty_provider(api, admin, CENTER)
    current = (
        await api.providers.GetProvider(providers_pb2.GetProviderRequest(provider_id=provider.id), metadata=owner.md)
    ).provider
    current.description = "Now with K9 units."
    updated = await update(api, owner, current, "company_name", "license_number", "insurance", "description")
    assert updated.description == "Now with K9 units."
    assert updated.verification_status == VERIFIED
    assert updated.on_duty
    assert (await redis_client.geopos(GEO_KEY, provider.id))[0] is not None

    current.insurance.insurer = "Lloyd's"
    changed = await update(api, owner, current, "insurance")
    assert changed.verification_status == PENDING


async def test_going_back_to_review_is_announced(api: Api, redis_client: aioredis.Redis) -> None:
    """Listeners of provider:status hear every verification change, the way back to
    PENDING included (as they hear VERIFIED and REJECTED)."""
    admin = await api.admin()
    owner, provider = await new_provider(api)
    await verify(api, admin, provider.id)
    async with subscribed(redis_client, STATUS_CHANNEL) as pubsub:
        await update(api, owner, providers_pb2.Provider(id=provider.id, license_number="LIC-9"), "license_number")
        # (The relay may still be publishing the earlier VERIFIED.)
        await next_message(
            pubsub,
            lambda m: (
                m.get("provider_id") == provider.id
                and m.get("type") == "provider_verification"
                and m.get("verification_status") == "pending"
            ),
        )
    customer = await api.sign_up()
    assert provider.id not in await list_ids(api, customer)
