"""Provider companies: registration, verification, duty and nearby search."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from securenow.server.domain.accounts import Principal
from securenow.server.domain.enums import ProviderType, Role, ServiceType, VerificationStatus
from securenow.server.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from securenow.server.domain.geo import MAX_FIX_AGE, LocationInput, Point, validate_location
from securenow.server.domain.paging import page_request
from securenow.server.domain.providers import (
    UPDATABLE_FIELDS,
    Provider,
    ProviderDraft,
    reviewed_changes,
    validate_provider,
)
from securenow.server.domain.validation import Validator, parse_text, parse_uuid
from securenow.server.services.common import replayed_resource, take_off_duty
from securenow.server.storage.audit_repo import AuditEntry
from securenow.server.storage.idempotency_repo import IdempotencyKey
from securenow.server.storage.live_state import CHANNEL_PROVIDER_STATUS, LiveState
from securenow.server.storage.postgres import Database, UnitOfWork

DEFAULT_RADIUS_M = 10_000.0
MAX_RADIUS_M = 100_000.0
# A provider whose app has not reported a location for this long is taken off duty.
DUTY_STALE_SECONDS = 15 * 60
# The latitude range of Redis GEO sets (Web Mercator).
GEO_MAX_LATITUDE = 85.05112878
# Nearby search asks Redis for this many times more hits each round while hits are
# filtered out (another type, no longer offered), up to MAX_NEARBY_SCAN hits.
NEARBY_GROWTH = 4
MAX_NEARBY_SCAN = 10_000


def _withdrawal_reason(provider: Provider) -> str:
    """Why a provider that is not offered must not be on duty (provider:status reason)."""
    if not provider.owner_active:
        return "owner_inactive"
    if provider.verification_status is VerificationStatus.REJECTED:
        return "rejected"
    return "in_review"


def _check_geo_latitude(v: Validator, name: str, latitude: float) -> None:
    """Redis GEO indexes latitudes up to +-85.05112878 only; beyond that GEOADD and
    GEOSEARCH fail, which would surface as UNAVAILABLE (retryable) instead of a bad point."""
    if GEO_MAX_LATITUDE < abs(latitude) <= 90.0:
        v.add(name, f"live locations are supported between -{GEO_MAX_LATITUDE} and {GEO_MAX_LATITUDE}")


class ProviderService:
    def __init__(self, db: Database, live: LiveState) -> None:
        self._db = db
        self._live = live

    async def with_duty(self, providers: list[Provider]) -> list[Provider]:
        """Adds the live on-duty flag from Redis (false when Redis is unreachable). A
        provider that is not offered (in review, rejected, owner suspended) is never on
        duty, even while Redis still holds an entry that could not be removed."""
        try:
            on = await self._live.on_duty([p.id for p in providers if p.offered])
        except Unavailable:
            on = set()
        return [replace(p, on_duty=p.id in on) for p in providers]

    async def _visible(self, uow: UnitOfWork, caller: Principal, provider_id: str, *, lock: bool = False) -> Provider:
        provider = await uow.providers.get(provider_id, for_update=lock)
        if provider is None or not (provider.offered or caller.is_admin or provider.user_id == caller.user_id):
            raise NotFound("provider not found", reason="PROVIDER_NOT_FOUND")
        return provider

    async def _owned(self, uow: UnitOfWork, caller: Principal, provider_id: str) -> Provider:
        provider = await uow.providers.get(provider_id, for_update=True)
        if provider is None or provider.user_id != caller.user_id:
            # Someone else's provider: existence is not revealed.
            raise NotFound("provider not found", reason="PROVIDER_NOT_FOUND")
        return provider

    async def create(self, caller: Principal, draft: ProviderDraft, key: IdempotencyKey | None) -> Provider:
        if caller.role is not Role.PROVIDER or caller.user_id is None:
            raise PermissionDenied("only provider accounts can register a provider", reason="ROLE_NOT_ALLOWED")
        valid = validate_provider(draft)
        new_id = str(uuid.uuid4())
        async with self._db.unit_of_work() as uow:
            prior = await replayed_resource(uow, caller, "CreateProvider", key, new_id)
            if prior is not None:
                provider = await uow.providers.get(prior)
                assert provider is not None
                return provider
            provider = await uow.providers.create(new_id, caller.user_id, valid)
            await uow.audit.record(caller, AuditEntry("provider.create", "provider", provider.id))
        return provider

    async def get(self, caller: Principal, provider_id: str) -> Provider:
        pid = parse_uuid("provider_id", provider_id)
        async with self._db.reader() as uow:
            provider = await self._visible(uow, caller, pid)
        return (await self.with_duty([provider]))[0]

    async def update(self, caller: Principal, provider_id: str, draft: ProviderDraft, paths: list[str]) -> Provider:
        v = Validator()
        pid = v.uuid("provider.id", provider_id)
        paths = list(dict.fromkeys(paths))  # a path named twice is the same change
        if not paths:
            v.add("update_mask", "must name at least one field")
        unknown = [p for p in paths if p not in UPDATABLE_FIELDS]
        if unknown:
            v.add("update_mask", f"unknown or read-only paths {unknown}; allowed: {', '.join(UPDATABLE_FIELDS)}")
        v.check()
        valid = validate_provider(draft, paths=tuple(paths))
        async with self._db.unit_of_work() as uow:
            current = await self._owned(uow, caller, pid)
            # Only a real change of what the admin verified sends it back to review: a
            # client that sends the whole provider back with a wide mask keeps its status.
            review = (
                bool(reviewed_changes(current, valid, tuple(paths)))
                and current.verification_status is not VerificationStatus.PENDING
            )
            provider = await uow.providers.update(pid, valid, tuple(paths), reset_review=review)
            await uow.audit.record(
                caller, AuditEntry("provider.update", "provider", pid, details={"paths": paths, "re_review": review})
            )
            if review:
                await uow.outbox.add(
                    CHANNEL_PROVIDER_STATUS,
                    "provider_verification",
                    {"provider_id": pid, "verification_status": VerificationStatus.PENDING.value},
                    aggregate_id=pid,
                )
        if review:
            # Committed: Redis being down must not turn this into UNAVAILABLE. Reads
            # check the status, and the duty sweep drops the entry (no duty update of a
            # provider in review is accepted, so its location goes stale).
            await take_off_duty(self._live, pid, reason="in_review")
        return (await self.with_duty([provider]))[0]

    async def list_providers(
        self,
        caller: Principal,
        *,
        page_size: int,
        page_token: str,
        business_type: ProviderType | None,
        verification: VerificationStatus | None,
        service_type: ServiceType | None,
        min_rating: float,
    ) -> tuple[list[Provider], str]:
        if not 0 <= min_rating <= 5:  # NaN fails this too
            raise InvalidArgument.field("min_rating", "must be between 0 and 5")
        page = page_request(
            page_size,
            page_token,
            filters=("providers", caller.id, business_type, verification, service_type, min_rating),
        )
        async with self._db.reader() as uow:
            providers, cursor = await uow.providers.list_page(
                page,
                viewer_id=caller.user_id,
                include_unverified=caller.is_admin,
                business_type=business_type,
                verification=verification,
                service_type=service_type,
                min_rating=min_rating,
            )
        return await self.with_duty(providers), page.next_token(cursor)

    async def verify(
        self, caller: Principal, provider_id: str, decision: VerificationStatus | None, note: str
    ) -> Provider:
        caller.require_admin("verify providers")
        pid = parse_uuid("provider_id", provider_id)
        note = parse_text("note", note, max_len=500)
        if decision not in (VerificationStatus.VERIFIED, VerificationStatus.REJECTED):
            raise InvalidArgument.field("decision", "must be VERIFIED or REJECTED")
        async with self._db.unit_of_work() as uow:
            await self._visible(uow, caller, pid, lock=True)
            provider = await uow.providers.set_verification(pid, decision)
            await uow.audit.record(
                caller,
                AuditEntry("provider.verify", "provider", pid, details={"decision": decision, "note": note[:500]}),
            )
            await uow.outbox.add(
                CHANNEL_PROVIDER_STATUS,
                "provider_verification",
                {"provider_id": pid, "verification_status": decision.value},
                aggregate_id=pid,
            )
        if decision is VerificationStatus.REJECTED:
            # Committed: see update() for why a Redis outage is not an error here.
            await take_off_duty(self._live, pid, reason="rejected")
        return (await self.with_duty([provider]))[0]

    async def update_duty(
        self, caller: Principal, provider_id: str, on_duty: bool, location: LocationInput | None
    ) -> Provider:
        v = Validator()
        pid = v.uuid("provider_id", provider_id)
        fix = None
        if on_duty:
            if location is None:
                v.add("location", "is required to go on duty")
            else:
                fix = validate_location(v, "location", location)
                _check_geo_latitude(v, "location.point.latitude", location.latitude)
                # A fix older than the stale limit is not where the provider is now (it
                # would be found there for another DUTY_STALE_SECONDS).
                now = datetime.now(UTC)
                stale = timedelta(seconds=DUTY_STALE_SECONDS)
                if location.time is not None and now - MAX_FIX_AGE <= location.time < now - stale:
                    v.add("location.time", f"must be within the last {DUTY_STALE_SECONDS // 60} minutes to be on duty")
        v.check()
        async with self._db.unit_of_work() as uow:
            provider = await self._owned(uow, caller, pid)
            if on_duty:
                # Read after the row lock was granted (the locking statement's snapshot may
                # predate a suspension it waited for).
                if not await uow.providers.owner_active(pid):
                    raise FailedPrecondition("the owner's account is not active", reason="PROVIDER_SUSPENDED")
                if not provider.verified:
                    raise FailedPrecondition("only verified providers can go on duty", reason="PROVIDER_NOT_VERIFIED")
            await uow.audit.record(caller, AuditEntry("provider.duty", "provider", pid, details={"on_duty": on_duty}))
            # Redis changes while the row lock is held: a rejection, re-review or owner
            # suspension (each updates this row, then takes the provider off duty after
            # its commit) comes wholly before this (and is seen above) or wholly after it
            # (and its removal comes last). A Redis failure rolls the audit entry back.
            if fix is not None:
                status = {
                    "provider_id": pid,
                    "on_duty": True,
                    "business_type": provider.business_type.value,
                    "location": fix.point.to_json(),
                    "timestamp": time.time(),
                }
                await self._live.put_provider_on_duty(pid, fix.point, status)
            else:
                await self._live.take_provider_off_duty(
                    pid, "signed_off", business_type=provider.business_type.value, location=None
                )
        return replace(provider, on_duty=on_duty)

    async def _withdraw_stale(self, provider_ids: list[str]) -> None:
        """Takes providers found on duty but not offered off duty (an entry whose removal
        failed while Redis was down), under their row lock so that a provider verified
        and back on duty meanwhile is left alone."""
        for pid in provider_ids:
            try:
                async with self._db.unit_of_work() as uow:
                    provider = await uow.providers.get(pid, for_update=True)
                    if provider is not None and provider.offered:
                        continue
                    reason = "not_found" if provider is None else _withdrawal_reason(provider)
                    await self._live.take_provider_off_duty(pid, reason)
            except Unavailable:
                return  # the duty sweep removes it later; the search already skipped it

    async def search_nearby(
        self,
        caller: Principal,
        *,
        latitude: float,
        longitude: float,
        has_point: bool,
        radius_m: float,
        business_type: ProviderType | None,
        max_results: int,
    ) -> list[tuple[Provider, float, tuple[float, float]]]:
        v = Validator()
        if not has_point:
            v.add("point", "is required")
        else:
            v.lat_lng("point", latitude, longitude)
            _check_geo_latitude(v, "point.latitude", latitude)
        radius = radius_m or DEFAULT_RADIUS_M
        if not 0 < radius <= MAX_RADIUS_M:
            v.add("radius_m", f"must be between 0 and {MAX_RADIUS_M:.0f}")
        if max_results < 0 or max_results > 100:
            v.add("max_results", "must be between 0 and 100")
        v.check()
        limit = max_results or 10
        point = Point(latitude, longitude)
        providers: dict[str, Provider] = {}
        count = limit
        while True:
            hits = await self._live.nearby_providers(point, radius, count)
            missing = [h.provider_id for h in hits if h.provider_id not in providers]
            if missing:
                async with self._db.reader() as uow:
                    providers.update(await uow.providers.get_many(missing))
            out = []
            withdrawn = []
            for hit in hits:
                p = providers.get(hit.provider_id)
                if p is None or not p.offered:
                    withdrawn.append(hit.provider_id)
                    continue
                if business_type is not None and p.business_type is not business_type:
                    continue
                out.append((replace(p, on_duty=True), hit.distance_m, (hit.point.latitude, hit.point.longitude)))
                if len(out) == limit:
                    break
            # Hits that were filtered out may hide nearer matches: ask for more until
            # enough were found or Redis has no more within the radius.
            if len(out) == limit or len(hits) < count or count >= MAX_NEARBY_SCAN:
                break
            count = min(count * NEARBY_GROWTH, MAX_NEARBY_SCAN)
        if withdrawn:
            await self._withdraw_stale(withdrawn)
        return out
