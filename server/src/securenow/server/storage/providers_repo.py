"""Provider companies."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import asyncpg

from securenow.server.domain.enums import ProviderType, ServiceType, VerificationStatus
from securenow.server.domain.errors import AlreadyExists
from securenow.server.domain.geo import Point
from securenow.server.domain.paging import PageRequest, cursor_decimal, cursor_uuid
from securenow.server.domain.providers import (
    UPDATABLE_FIELDS,
    AvailabilityWindow,
    Insurance,
    Pricing,
    Provider,
    ValidProvider,
)
from securenow.server.storage.rows import AREA_SQL, Conn, check_area, must, sid

# The owner's account is active and still has the provider role (an admin can take the
# role away: the company then stops being offered, as on a suspension).
OWNER_ACTIVE_SQL = (
    "NOT EXISTS (SELECT 1 FROM users u WHERE u.id = p.user_id AND (u.status <> 'active' OR u.role <> 'provider'))"
)
PROVIDER_COLUMNS = f"""p.id, p.user_id, p.company_name, p.business_type, p.license_number, p.insurance_info,
    p.service_areas, p.rating, p.total_reviews, p.verification_status, p.availability_schedule,
    p.pricing_info, p.location_data, p.tags, p.description, p.created_at, p.updated_at, p.time_zone,
    {OWNER_ACTIVE_SQL} AS owner_active"""
# The public sees a provider only while it is verified and its owner is active (above).
OFFERED_SQL = f"p.verification_status = 'verified' AND {OWNER_ACTIVE_SQL}"


def provider_from_row(r: asyncpg.Record) -> Provider:
    loc = r["location_data"]
    return Provider(
        id=str(r["id"]),
        user_id=sid(r["user_id"]),
        company_name=r["company_name"],
        business_type=ProviderType(r["business_type"]),
        license_number=r["license_number"] or "",
        insurance=Insurance.from_json(r["insurance_info"]),
        service_area_geojson=(r["service_areas"] or {}).get("geojson"),
        rating=float(r["rating"] or 0),
        total_reviews=r["total_reviews"] or 0,
        verification_status=VerificationStatus(r["verification_status"] or "pending"),
        availability_schedule=[AvailabilityWindow(**w) for w in (r["availability_schedule"] or [])],
        pricing=Pricing.from_json(r["pricing_info"]),
        base_location=Point(loc["lat"], loc["lng"]) if loc else None,
        tags=list(r["tags"] or []),
        description=r["description"] or "",
        create_time=r["created_at"],
        update_time=r["updated_at"],
        time_zone=r["time_zone"] or "",
        owner_active=r["owner_active"],
    )


_POINT_FROM_JSON = (
    "CASE WHEN {p}::jsonb IS NULL THEN NULL ELSE "
    "ST_SetSRID(ST_MakePoint(({p}::jsonb->>'lng')::float8, ({p}::jsonb->>'lat')::float8), 4326)::geography END"
)
_AREA_FROM_TEXT = "CASE WHEN {p}::text IS NULL THEN NULL ELSE " + AREA_SQL.format(param="{p}") + "::geography END"


def _assignments(p: ValidProvider, paths: tuple[str, ...]) -> list[tuple[str, str, Any]]:
    """(column, SQL expression over parameter {p}, value) for each API field path."""
    out: list[tuple[str, str, Any]] = []
    for path in paths:
        if path == "company_name":
            out.append(("company_name", "{p}", p.company_name))
        elif path == "business_type":
            out.append(("business_type", "{p}", p.business_type.value))
        elif path == "license_number":
            out.append(("license_number", "{p}", p.license_number or None))
        elif path == "insurance":
            out.append(("insurance_info", "{p}", p.insurance.to_json() if p.insurance else None))
        elif path == "service_area_geojson":
            out.append(("service_areas", "{p}", {"geojson": p.service_area} if p.service_area else None))
            out.append(("service_area", _AREA_FROM_TEXT, json.dumps(p.service_area) if p.service_area else None))
        elif path == "availability_schedule":
            out.append(("availability_schedule", "{p}", [w.__dict__ for w in p.availability_schedule]))
        elif path == "time_zone":
            out.append(("time_zone", "{p}", p.time_zone or None))
        elif path == "pricing":
            out.append(("pricing_info", "{p}", p.pricing.to_json()))
        elif path == "base_location":
            loc = p.base_location.to_json() if p.base_location else None
            out.append(("location_data", "{p}", loc))
            # A jsonb parameter: the pool's codec serialises the dict (a pre-serialised
            # string would be stored as a JSON string and the point would come out NULL).
            out.append(("location", _POINT_FROM_JSON, loc))
        elif path == "tags":
            out.append(("tags", "{p}", p.tags))
        elif path == "description":
            out.append(("description", "{p}", p.description))
    return out


class ProvidersRepo:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def create(self, provider_id: str, user_id: str, p: ValidProvider) -> Provider:
        if p.service_area:
            await check_area(self.conn, p.service_area, "provider.service_area_geojson")
        columns, exprs, args = ["id", "user_id"], ["$1", "$2"], [provider_id, user_id]
        for column, template, value in _assignments(p, ("business_type", *UPDATABLE_FIELDS)):
            args.append(value)
            columns.append(column)
            exprs.append(template.format(p=f"${len(args)}"))
        try:
            row = await self.conn.fetchrow(
                f"""INSERT INTO providers AS p ({", ".join(columns)}) VALUES ({", ".join(exprs)})
                    RETURNING {PROVIDER_COLUMNS}""",
                *args,
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyExists("this account already has a provider", reason="PROVIDER_EXISTS") from None
        return provider_from_row(must(row))

    async def get(self, provider_id: str, *, for_update: bool = False) -> Provider | None:
        """With `for_update`, locks the row until the transaction ends (FOR NO KEY
        UPDATE: writers of the row wait, new bookings' foreign-key checks do not). The
        row's columns are then its newest version, but `owner_active` comes from the
        statement's snapshot, which may predate a change it waited for: read
        owner_active() after the lock when it matters."""
        lock = " FOR NO KEY UPDATE OF p" if for_update else ""
        row = await self.conn.fetchrow(f"SELECT {PROVIDER_COLUMNS} FROM providers p WHERE p.id = $1{lock}", provider_id)
        return provider_from_row(row) if row else None

    async def owner_active(self, provider_id: str) -> bool:
        """Whether the owning account is active, read in a statement of its own (a
        suspension updates the provider row, so after its row lock this sees it)."""
        return bool(
            await self.conn.fetchval(f"SELECT {OWNER_ACTIVE_SQL} FROM providers p WHERE p.id = $1", provider_id)
        )

    async def id_owned_by(self, user_id: str) -> str | None:
        return sid(await self.conn.fetchval("SELECT id FROM providers WHERE user_id = $1", user_id))

    async def get_many(self, provider_ids: list[str]) -> dict[str, Provider]:
        rows = await self.conn.fetch(
            f"SELECT {PROVIDER_COLUMNS} FROM providers p WHERE p.id = ANY($1::uuid[])", provider_ids
        )
        return {str(r["id"]): provider_from_row(r) for r in rows}

    async def update(
        self, provider_id: str, p: ValidProvider, paths: tuple[str, ...], *, reset_review: bool
    ) -> Provider:
        if "service_area_geojson" in paths and p.service_area:
            await check_area(self.conn, p.service_area, "provider.service_area_geojson")
        sets, args = [], [provider_id]
        for column, template, value in _assignments(p, paths):
            args.append(value)
            sets.append(f"{column} = {template.format(p=f'${len(args)}')}")
        if reset_review:
            sets.append("verification_status = 'pending'")
        row = await self.conn.fetchrow(
            f"""UPDATE providers p SET {", ".join([*sets, "updated_at = now()"])} WHERE p.id = $1
                RETURNING {PROVIDER_COLUMNS}""",
            *args,
        )
        return provider_from_row(must(row))

    async def set_verification(self, provider_id: str, status: VerificationStatus) -> Provider:
        row = await self.conn.fetchrow(
            f"""UPDATE providers p SET verification_status = $2, updated_at = now() WHERE p.id = $1
                RETURNING {PROVIDER_COLUMNS}""",
            provider_id,
            status.value,
        )
        return provider_from_row(must(row))

    async def lock_for_rating(self, provider_id: str) -> None:
        """Locks the provider row until the transaction ends, so that reviews of one
        provider run one after the other; take it before writing the review. (The lock
        refresh_rating's UPDATE takes comes too late: that statement's snapshot, taken
        before it waited, lacks the review that held the lock.) NO KEY UPDATE leaves
        new bookings' foreign-key checks free."""
        await self.conn.execute("SELECT 1 FROM providers WHERE id = $1 FOR NO KEY UPDATE", provider_id)

    async def refresh_rating(self, provider_id: str) -> None:
        """Recomputes rating and total_reviews from the reviewed bookings. Concurrent
        reviews must hold lock_for_rating, or one may recount without the other."""
        await self.conn.execute(
            """UPDATE providers p SET rating = COALESCE(r.average, 0), total_reviews = r.reviews, updated_at = now()
               FROM (SELECT round(avg(rating)::numeric, 2) AS average, count(*) AS reviews
                     FROM bookings WHERE provider_id = $1 AND rating IS NOT NULL) r
               WHERE p.id = $1""",
            provider_id,
        )

    async def list_page(
        self,
        page: PageRequest,
        *,
        viewer_id: str | None,
        include_unverified: bool,
        business_type: ProviderType | None,
        verification: VerificationStatus | None,
        service_type: ServiceType | None,
        min_rating: float,
    ) -> tuple[list[Provider], list[Any] | None]:
        where, args = ["TRUE"], []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if not include_unverified:
            where.append(f"({OFFERED_SQL} OR p.user_id = {arg(viewer_id)}::uuid)")
        if business_type is not None:
            where.append(f"p.business_type = {arg(business_type.value)}")
        if verification is not None:
            where.append(f"p.verification_status = {arg(verification.value)}")
        if service_type is not None:
            where.append(f"p.pricing_info->'rates' ? {arg(service_type.value)}")
        if min_rating > 0:
            where.append(f"p.rating >= {arg(Decimal(str(min_rating)))}")
        after = page.keyset(cursor_decimal, cursor_uuid)
        if after is not None:
            where.append(f"(p.rating, p.id) < ({arg(after[0])}, {arg(after[1])}::uuid)")
        rows = await self.conn.fetch(
            f"""SELECT {PROVIDER_COLUMNS} FROM providers p WHERE {" AND ".join(where)}
                ORDER BY p.rating DESC, p.id DESC LIMIT {arg(page.size + 1)}""",
            *args,
        )
        providers = [provider_from_row(r) for r in rows[: page.size]]
        more = len(rows) > page.size
        cursor = [str(providers[-1].rating), providers[-1].id] if more and providers else None
        return providers, cursor
