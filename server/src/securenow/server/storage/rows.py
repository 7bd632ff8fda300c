"""Helpers shared by the repositories: id/geo conversions."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from securenow.server.domain.errors import InvalidArgument
from securenow.server.domain.geo import Point

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
    (self-intersection, unparsable GeoJSON)."""
    try:
        reason = await conn.fetchval("SELECT ST_IsValidReason(ST_GeomFromGeoJSON($1::text))", json.dumps(geojson))
    except asyncpg.PostgresError as exc:
        raise InvalidArgument.field(field, f"is not valid GeoJSON: {exc.args[0] if exc.args else exc}") from None
    if reason != "Valid Geometry":
        raise InvalidArgument.field(field, f"is not a valid area: {reason}")


AREA_SQL = "ST_Multi(ST_SetSRID(ST_GeomFromGeoJSON({param}::text), 4326))"
