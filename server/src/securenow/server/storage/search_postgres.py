"""The embedded search backend: full text (tsvector, `websearch_to_tsquery` syntax) and
distance (PostGIS) straight over the live tables, so it is never behind.

Providers' documents are stored and indexed (`providers.search_document`,
`idx_providers_search`); incident searches are narrowed by department, time and place
first, so their text match runs on few rows.
"""

from __future__ import annotations

from typing import Any

from securenow.server.domain.search import Hit, HitPage, IncidentQuery, Page, ProviderQuery
from securenow.server.storage.providers_repo import OFFERED_SQL
from securenow.server.storage.rows import Conn, geog_point

PROVIDER_DOCUMENT = "p.search_document"  # stored, GIN-indexed (migration 07)
INCIDENT_DOCUMENT = "securenow_incident_document(a.description, i.resolution_notes)"


class _Args:
    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


class PostgresSearch:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def providers(self, q: ProviderQuery) -> HitPage:
        arg = _Args()
        where = [OFFERED_SQL]
        if q.business_types:
            where.append(f"p.business_type = ANY({arg([t.value for t in q.business_types])}::text[]::provider_type[])")
        if q.min_rating:
            where.append(f"p.rating >= {arg(q.min_rating)}")
        if q.tags:
            where.append(f"p.tags @> {arg(list(q.tags))}::text[]")
        order = "p.rating DESC, p.id"
        if q.near is not None:
            point = geog_point(arg(q.near.longitude), arg(q.near.latitude))
            where.append(f"(ST_DWithin(p.location, {point}, {arg(q.radius_m)}) OR ST_Covers(p.service_area, {point}))")
            if not q.text:
                order = f"ST_Distance(p.location, {point}) NULLS LAST, p.id"
        return await self._ranked(arg, q.text, PROVIDER_DOCUMENT, "p.id", "providers p", where, order, q.page)

    async def incidents(self, q: IncidentQuery) -> HitPage:
        arg = _Args()
        where = ["TRUE"]
        if q.department_id is not None:
            where.append(f"i.police_department_id = {arg(q.department_id)}")
        if q.incident_types:
            where.append(f"i.incident_type = ANY({arg([t.value for t in q.incident_types])}::text[]::incident_type[])")
        if q.statuses:
            where.append(f"i.status = ANY({arg([s.value for s in q.statuses])}::text[]::incident_status[])")
        if q.priorities:
            where.append(f"i.priority = ANY({arg([p.value for p in q.priorities])}::text[]::incident_priority[])")
        if q.start is not None:
            where.append(f"i.created_at >= {arg(q.start)}")
        if q.end is not None:
            where.append(f"i.created_at < {arg(q.end)}")
        if q.near is not None:
            point = geog_point(arg(q.near.longitude), arg(q.near.latitude))
            where.append(f"ST_DWithin(a.location, {point}, {arg(q.radius_m)})")
        source = "police_incidents i JOIN sos_alerts a ON a.id = i.sos_alert_id"
        newest_first = "i.created_at DESC, i.id"
        return await self._ranked(arg, q.text, INCIDENT_DOCUMENT, "i.id", source, where, newest_first, q.page)

    async def _ranked(
        self,
        arg: _Args,
        text: str,
        document: str,
        id_column: str,
        source: str,
        where: list[str],
        order: str,
        page: Page,
    ) -> HitPage:
        """One page of ids matching `where` (and `text`, best match first, then `order`)."""
        score = "0::float8"
        if text:
            tsq = f"websearch_to_tsquery('english', {arg(text)})"
            where = [*where, f"{document} @@ {tsq}"]
            score = f"ts_rank_cd({document}, {tsq})::float8"
            order = f"{score} DESC, {order}"
        condition = " AND ".join(where)
        filter_args = list(arg.values)
        rows = await self.conn.fetch(
            f"""SELECT {id_column} AS id, {score} AS score, count(*) OVER () AS total
                FROM {source} WHERE {condition}
                ORDER BY {order} OFFSET {arg(page.offset)} LIMIT {arg(page.size)}""",
            *arg.values,
        )
        if rows:
            total = int(rows[0]["total"])
        elif page.offset > 0 or page.size == 0:
            # A page past the last match (matches went away since the previous page, or
            # the result window is exhausted): the window count had no row to ride on.
            total = int(await self.conn.fetchval(f"SELECT count(*) FROM {source} WHERE {condition}", *filter_args))
        else:
            total = 0
        return HitPage([Hit(str(r["id"]), float(r["score"])) for r in rows], total)
