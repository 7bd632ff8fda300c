"""Helpers shared by the repositories: id/geo conversions, newest-first pages."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from securenow.server.domain.errors import InvalidArgument
from securenow.server.domain.geo import Point
from securenow.server.domain.paging import PageRequest, cursor_time, cursor_uuid

# A connection as repositories receive it (pooled or direct).
Conn = asyncpg.Connection | PoolConnectionProxy


def must(row: asyncpg.Record | None) -> asyncpg.Record:
    """A row the statement returns by construction (UPDATE ... RETURNING of a row the
    transaction has locked or just inserted)."""
    if row is None:
        raise LookupError("expected a row")
    return row


# SQL snippet building a geography point from ($lng, $lat) parameters.
GEOG_POINT = "ST_SetSRID(ST_MakePoint({lng}, {lat}), 4326)::geography"


def geog_point(lng_param: str, lat_param: str) -> str:
    return GEOG_POINT.format(lng=lng_param, lat=lat_param)


def sid(value: Any) -> str | None:
    """A UUID column value as a string (None stays None)."""
    return None if value is None else str(value)


def point_args(point: Point | None) -> tuple[float | None, float | None]:
    return (None, None) if point is None else (point.longitude, point.latitude)


async def check_area(conn: Conn, geojson: dict[str, Any], field: str) -> None:
    """Raises INVALID_ARGUMENT naming `field` when PostGIS finds the area invalid
    (self-intersection, unparsable GeoJSON) or unusable on the sphere (an edge spanning
    180 degrees of longitude has no single great circle: distances to it fail)."""
    try:
        # The geography area is computed only for the error it raises on such an edge.
        row = await conn.fetchrow(
            """SELECT ST_IsValidReason(g) AS reason, ST_Area(g::geography) AS sphere_area
               FROM (SELECT ST_SetSRID(ST_GeomFromGeoJSON($1::text), 4326) AS g) AS area""",
            json.dumps(geojson),
        )
        reason = row["reason"] if row else None
    except asyncpg.PostgresError as exc:
        message = exc.args[0] if exc.args else str(exc)
        if "Antipodal" in message:
            raise InvalidArgument.field(
                field, "has an edge spanning 180 degrees of longitude; add points along it"
            ) from None
        raise InvalidArgument.field(field, f"is not valid GeoJSON: {message}") from None
    if reason != "Valid Geometry":
        raise InvalidArgument.field(field, f"is not a valid area: {reason}")


AREA_SQL = "ST_Multi(ST_SetSRID(ST_GeomFromGeoJSON({param}::text), 4326))"


async def newest_first(
    conn: Conn, page: PageRequest, select_from: str, alias: str, equal: dict[str, Any]
) -> tuple[list[asyncpg.Record], list[Any] | None]:
    """One page of `select_from` ("SELECT ... FROM <table> <alias>") where each column of
    `equal` has its value (None: not filtered), newest first by the (created_at, id)
    keyset. Returns the page's rows and the cursor after its last one (None on the last
    page)."""
    args: list[Any] = []
    conditions = ["TRUE"]
    for column, value in equal.items():
        if value is not None:
            args.append(value)
            conditions.append(f"{column} = ${len(args)}")
    after = page.keyset(cursor_time, cursor_uuid)
    if after is not None:
        args += after
        conditions.append(f"({alias}.created_at, {alias}.id) < (${len(args) - 1}, ${len(args)}::uuid)")
    args.append(page.size + 1)
    rows = await conn.fetch(
        f"""{select_from} WHERE {" AND ".join(conditions)}
            ORDER BY {alias}.created_at DESC, {alias}.id DESC LIMIT ${len(args)}""",
        *args,
    )
    more = len(rows) > page.size
    rows = rows[: page.size]
    return rows, ([rows[-1]["created_at"].isoformat(), str(rows[-1]["id"])] if more and rows else None)
