"""What the Elasticsearch indexer reads from PostgreSQL: rows changed after a cursor
(three feeds: providers, incidents, and alerts, whose changes touch their incident's
document), the documents themselves, and each feed's settled watermark."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from securenow.server.storage.providers_repo import OWNER_ACTIVE_SQL
from securenow.server.storage.rows import Conn

ZERO_ID = uuid.UUID(int=0)
LAST_ID = uuid.UUID(int=2**128 - 1)
BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Cursor:
    at: datetime
    id: uuid.UUID


START = Cursor(BEGINNING, ZERO_ID)


@dataclass(frozen=True)
class Feed:
    name: str
    index: str  # "providers" or "incidents"
    table: str  # the table whose updated_at is followed
    # The document ids a changed row affects (its own id, or its alert's incident).
    doc_ids_sql: str


FEEDS = (
    Feed("providers", "providers", "providers", "SELECT unnest($1::uuid[])"),
    Feed("incidents", "incidents", "police_incidents", "SELECT unnest($1::uuid[])"),
    Feed(
        "alerts",
        "incidents",
        "sos_alerts",
        "SELECT i.id FROM police_incidents i WHERE i.sos_alert_id = ANY($1::uuid[])",
    ),
)

_VERSION = "(extract(epoch FROM {ts}) * 1000000)::bigint"

PROVIDER_DOCS_SQL = f"""
    SELECT p.id, p.company_name, p.description, p.business_type::text AS business_type, p.rating::float8 AS rating,
           p.tags, p.verification_status = 'verified' AS verified, {OWNER_ACTIVE_SQL} AS owner_active,
           p.location_data, p.service_areas, p.updated_at, {_VERSION.format(ts="p.updated_at")} AS version
    FROM providers p WHERE p.id = ANY($1::uuid[])"""

INCIDENT_DOCS_SQL = f"""
    SELECT i.id, i.police_department_id, i.incident_type::text AS incident_type, i.priority::text AS priority,
           i.status::text AS status, i.created_at, a.description, i.resolution_notes, a.location_data,
           greatest(i.updated_at, a.updated_at) AS updated_at,
           {_VERSION.format(ts="greatest(i.updated_at, a.updated_at)")} AS version
    FROM police_incidents i JOIN sos_alerts a ON a.id = i.sos_alert_id WHERE i.id = ANY($1::uuid[])"""


def _point(location_data: dict[str, Any] | None) -> dict[str, float] | None:
    if not location_data or "lat" not in location_data:
        return None
    return {"lat": location_data["lat"], "lon": location_data["lng"]}


def provider_doc(r: Any) -> dict[str, Any]:
    area = (r["service_areas"] or {}).get("geojson")
    return {
        "id": str(r["id"]),
        "company_name": r["company_name"],
        "description": r["description"] or "",
        "business_type": r["business_type"],
        "location": _point(r["location_data"]),
        "rating": r["rating"] or 0.0,
        "service_areas": area,
        "tags": list(r["tags"] or []),
        "verified": bool(r["verified"]),
        "owner_active": bool(r["owner_active"]),
        "updated_at": r["updated_at"].isoformat(),
        "_version": r["version"],
    }


def incident_doc(r: Any) -> dict[str, Any]:
    return {
        "id": str(r["id"]),
        "department_id": str(r["police_department_id"]),
        "incident_type": r["incident_type"],
        "location": _point(r["location_data"]),
        "timestamp": r["created_at"].isoformat(),
        "priority": r["priority"],
        "status": r["status"],
        "description": r["description"] or "",
        "resolution_notes": r["resolution_notes"] or "",
        "updated_at": r["updated_at"].isoformat(),
        "_version": r["version"],
    }


class SearchFeedRepo:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def now(self) -> datetime:
        value: datetime = await self.conn.fetchval("SELECT now()")
        return value

    async def changed(self, feed: Feed, after: Cursor, upto: datetime, limit: int) -> list[Cursor]:
        """Rows of the feed's table changed after `after` and at or before `upto`, in order."""
        rows = await self.conn.fetch(
            f"""SELECT t.updated_at, t.id FROM {feed.table} t
                WHERE (t.updated_at, t.id) > ($1, $2) AND t.updated_at <= $3
                ORDER BY t.updated_at, t.id LIMIT $4""",
            after.at,
            after.id,
            upto,
            limit,
        )
        return [Cursor(r["updated_at"], r["id"]) for r in rows]

    async def documents(self, feed: Feed, row_ids: list[uuid.UUID]) -> list[dict[str, Any]]:
        ids = [r[0] for r in await self.conn.fetch(feed.doc_ids_sql, row_ids)]
        if not ids:
            return []
        if feed.index == "providers":
            return [provider_doc(r) for r in await self.conn.fetch(PROVIDER_DOCS_SQL, ids)]
        return [incident_doc(r) for r in await self.conn.fetch(INCIDENT_DOCS_SQL, ids)]

    async def settled(self) -> dict[str, Cursor]:
        rows = await self.conn.fetch("SELECT feed, settled_at, settled_id FROM search_index_state")
        return {r["feed"]: Cursor(r["settled_at"], r["settled_id"]) for r in rows}

    async def save_settled(self, feed: str, cursor: Cursor) -> None:
        await self.conn.execute(
            """INSERT INTO search_index_state (feed, settled_at, settled_id) VALUES ($1, $2, $3)
               ON CONFLICT (feed) DO UPDATE SET settled_at = EXCLUDED.settled_at, settled_id = EXCLUDED.settled_id""",
            feed,
            cursor.at,
            cursor.id,
        )

    async def reset(self, index: str) -> None:
        """Forgets how far the feeds of `index` got (it is rebuilt from the start)."""
        names = [f.name for f in FEEDS if f.index == index]
        await self.conn.execute("DELETE FROM search_index_state WHERE feed = ANY($1::text[])", names)
