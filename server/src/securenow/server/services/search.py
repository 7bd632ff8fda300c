"""SearchService: providers and incidents by text, kind, time and place.

The backend (PostgreSQL, or Elasticsearch when configured) ranks ids; the objects are
then read from PostgreSQL, the source of truth, under the caller's access rules
(agencies through row-level security), so a stale search copy can never show what
the caller may not see or what no longer matches (a provider rejected a moment ago).
If Elasticsearch fails, the same question is answered by PostgreSQL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from elasticsearch import ApiError, TransportError
from prometheus_client import Counter

from securenow.server.domain.accounts import Principal
from securenow.server.domain.enums import AlertPriority, IncidentStatus, IncidentType, ProviderType
from securenow.server.domain.geo import Point
from securenow.server.domain.providers import Provider
from securenow.server.domain.search import HitPage, IncidentQuery, ProviderQuery, incident_query, provider_query
from securenow.server.domain.sos import PoliceIncident, SosAlert
from securenow.server.services.common import reads_of
from securenow.server.services.dispatch import agency_of
from securenow.server.services.providers import ProviderService
from securenow.server.storage.audit_repo import AuditEntry
from securenow.server.storage.postgres import Database
from securenow.server.storage.search_elastic import ElasticSearch
from securenow.server.storage.search_postgres import PostgresSearch

log = logging.getLogger(__name__)

FALLBACKS = Counter(
    "securenow_search_fallbacks_total", "Searches answered by PostgreSQL because Elasticsearch failed.", ["index"]
)


@dataclass(frozen=True)
class ProviderResult:
    provider: Provider
    score: float
    distance_m: float | None


@dataclass(frozen=True)
class IncidentResult:
    incident: PoliceIncident
    alert: SosAlert
    score: float


class SearchService:
    def __init__(self, db: Database, providers: ProviderService, elastic: ElasticSearch | None) -> None:
        self._db = db
        self._providers = providers
        self._elastic = elastic

    async def _ranked_elsewhere(self, q: ProviderQuery | IncidentQuery) -> HitPage | None:
        """Elasticsearch's ranking, or None (not configured, or failing: PostgreSQL
        answers). Called before a database connection is taken, so a slow search
        cluster never holds connections the SOS path needs."""
        if self._elastic is None:
            return None
        try:
            if isinstance(q, ProviderQuery):
                return await self._elastic.providers(q)
            return await self._elastic.incidents(q)
        except (TransportError, ApiError) as exc:
            log.warning("elasticsearch search failed (%s); answering from PostgreSQL", exc)
            FALLBACKS.labels("providers" if isinstance(q, ProviderQuery) else "incidents").inc()
            return None

    async def search_providers(
        self,
        caller: Principal,
        *,
        text: str,
        near: Point | None,
        radius_m: float,
        business_types: list[ProviderType],
        min_rating: float,
        tags: list[str],
        page_size: int,
        page_token: str,
    ) -> tuple[list[ProviderResult], str, int]:
        q = provider_query(
            text=text,
            near=near,
            radius_m=radius_m,
            business_types=business_types,
            min_rating=min_rating,
            tags=tags,
            page_size=page_size,
            page_token=page_token,
        )
        ranked = await self._ranked_elsewhere(q)
        async with self._db.reader() as uow:
            if ranked is None:
                ranked = await PostgresSearch(uow.conn).providers(q)
            found = await uow.providers.get_many([h.id for h in ranked.hits])
        with_duty = {p.id: p for p in await self._providers.with_duty(list(found.values()))}
        results = []
        for hit in ranked.hits:
            provider = with_duty.get(hit.id)
            if provider is None or not provider.offered:
                continue  # the search copy was behind: it is not (or no longer) offered
            distance = None
            if near is not None and provider.base_location is not None:
                distance = near.distance_m(provider.base_location)
            results.append(ProviderResult(provider, hit.score, distance))
        return results, q.page.next_token(ranked.total), ranked.total

    async def search_incidents(
        self,
        caller: Principal,
        *,
        text: str,
        incident_types: list[IncidentType],
        statuses: list[IncidentStatus],
        priorities: list[AlertPriority],
        start: datetime | None,
        end: datetime | None,
        near: Point | None,
        radius_m: float,
        page_size: int,
        page_token: str,
    ) -> tuple[list[IncidentResult], str, int]:
        department = None if caller.is_admin else agency_of(caller)
        q = incident_query(
            text=text,
            incident_types=incident_types,
            statuses=statuses,
            priorities=priorities,
            start=start,
            end=end,
            near=near,
            radius_m=radius_m,
            department_id=department,
            page_size=page_size,
            page_token=page_token,
        )
        ranked = await self._ranked_elsewhere(q)
        async with reads_of(self._db, caller) as uow:
            if ranked is None:
                ranked = await PostgresSearch(uow.conn).incidents(q)
            found = await uow.sos.incidents_with_alerts([h.id for h in ranked.hits])
            results = []
            for hit in ranked.hits:
                pair = found.get(hit.id)
                if pair is None or (department is not None and pair[0].police_department_id != department):
                    continue  # not visible to this caller (or gone): a stale search copy
                results.append(IncidentResult(pair[0], pair[1], hit.score))
            if results:
                # Reading other people's emergencies is audited (as GetSosAlert is): who
                # asked what, and which incidents it showed them.
                await uow.audit.record(
                    caller,
                    AuditEntry(
                        "incident.search",
                        "police_incident",
                        None,
                        details={"query": q.text, "incidents": [r.incident.id for r in results]},
                    ),
                )
        return results, q.page.next_token(ranked.total), ranked.total
