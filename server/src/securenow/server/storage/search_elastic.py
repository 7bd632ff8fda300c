"""The Elasticsearch search backend (used when SECURENOW_ELASTICSEARCH_URL is set):
the seed's two indices, the queries that answer SearchService, and bulk indexing.

Elasticsearch holds copies: documents carry the row's `updated_at` as an external
version, so an older copy never overwrites a newer one, and the index can always be
rebuilt from PostgreSQL (`workers/search_indexer.py` keeps it current).
"""

from __future__ import annotations

import logging
from typing import Any

from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_bulk

from securenow.server.domain.search import Hit, HitPage, IncidentQuery, Page, ProviderQuery

log = logging.getLogger(__name__)

SEARCH_TIMEOUT_SECONDS = 2.0

# The seed's mappings, plus what the queries filter and sort on (id, department,
# text fields, timestamps).
PROVIDER_MAPPINGS: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "id": {"type": "keyword"},
        "company_name": {"type": "text", "analyzer": "english"},
        "description": {"type": "text", "analyzer": "english"},
        "business_type": {"type": "keyword"},
        "location": {"type": "geo_point"},
        "rating": {"type": "float"},
        "service_areas": {"type": "geo_shape"},
        "tags": {"type": "keyword"},
        "verified": {"type": "boolean"},
        # The owner's account is active: a provider is offered only when both hold
        # (OFFERED_SQL), so hits and totals agree with what is shown.
        "owner_active": {"type": "boolean"},
        "updated_at": {"type": "date"},
    },
}
INCIDENT_MAPPINGS: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "id": {"type": "keyword"},
        "department_id": {"type": "keyword"},
        "incident_type": {"type": "keyword"},
        "location": {"type": "geo_point"},
        "timestamp": {"type": "date"},
        "priority": {"type": "keyword"},
        "status": {"type": "keyword"},
        "description": {"type": "text", "analyzer": "english"},
        "resolution_notes": {"type": "text", "analyzer": "english"},
        "updated_at": {"type": "date"},
    },
}


def _request(
    text: str, fields: list[str], filters: list[dict[str, Any]], sort: list[Any], page: Page
) -> dict[str, Any]:
    """One page of ids matching `filters` (and `text` over `fields`, best match first,
    then `sort`). simple_query_string takes the same everyday syntax as PostgreSQL's
    websearch_to_tsquery: "quoted phrases", `|` / OR, `-` to exclude; every word required."""
    must: list[dict[str, Any]] = [{"match_all": {}}]
    if text:
        must = [{"simple_query_string": {"query": text, "fields": fields, "default_operator": "and"}}]
        sort = ["_score", *sort]
    return {
        "query": {"bool": {"must": must, "filter": filters}},
        "sort": sort,
        "from_": page.offset,
        "size": page.size,
        "track_total_hits": True,
        "track_scores": True,
        "source": False,
    }


def provider_search_body(q: ProviderQuery) -> dict[str, Any]:
    """The search request answering a SearchProviders query (same filters and order
    as the PostgreSQL backend)."""
    filters: list[dict[str, Any]] = [{"term": {"verified": True}}, {"term": {"owner_active": True}}]
    if q.business_types:
        filters.append({"terms": {"business_type": [t.value for t in q.business_types]}})
    if q.min_rating:
        filters.append({"range": {"rating": {"gte": q.min_rating}}})
    filters += [{"term": {"tags": tag}} for tag in q.tags]
    sort: list[Any] = [{"rating": "desc"}, {"id": "asc"}]
    if q.near is not None:
        point = {"lat": q.near.latitude, "lon": q.near.longitude}
        filters.append(
            {
                "bool": {
                    "should": [
                        {"geo_distance": {"distance": f"{q.radius_m}m", "location": point}},
                        {
                            "geo_shape": {
                                "service_areas": {
                                    "shape": {"type": "point", "coordinates": [q.near.longitude, q.near.latitude]},
                                    "relation": "intersects",
                                }
                            }
                        },
                    ],
                    "minimum_should_match": 1,
                }
            }
        )
        if not q.text:
            sort = [{"_geo_distance": {"location": point, "order": "asc", "unit": "m"}}, {"id": "asc"}]
    return _request(q.text, ["company_name^3", "tags^2", "description"], filters, sort, q.page)


def incident_search_body(q: IncidentQuery) -> dict[str, Any]:
    """The search request answering a SearchIncidents query."""
    filters: list[dict[str, Any]] = []
    if q.department_id is not None:
        filters.append({"term": {"department_id": q.department_id}})
    if q.incident_types:
        filters.append({"terms": {"incident_type": [t.value for t in q.incident_types]}})
    if q.statuses:
        filters.append({"terms": {"status": [s.value for s in q.statuses]}})
    if q.priorities:
        filters.append({"terms": {"priority": [p.value for p in q.priorities]}})
    if q.start is not None or q.end is not None:
        window: dict[str, str] = {}
        if q.start is not None:
            window["gte"] = q.start.isoformat()
        if q.end is not None:
            window["lt"] = q.end.isoformat()
        filters.append({"range": {"timestamp": window}})
    if q.near is not None:
        point = {"lat": q.near.latitude, "lon": q.near.longitude}
        filters.append({"geo_distance": {"distance": f"{q.radius_m}m", "location": point}})
    newest_first: list[Any] = [{"timestamp": "desc"}, {"id": "asc"}]
    return _request(q.text, ["description^2", "resolution_notes"], filters, newest_first, q.page)


class ElasticSearch:
    def __init__(self, url: str, *, index_prefix: str) -> None:
        self.client = AsyncElasticsearch(url, request_timeout=5, retry_on_timeout=False, max_retries=1)
        self.providers_index = f"{index_prefix}providers"
        self.incidents_index = f"{index_prefix}incidents"

    async def close(self) -> None:
        await self.client.close()

    def index_name(self, kind: str) -> str:
        """The index of "providers" or "incidents"."""
        return self.providers_index if kind == "providers" else self.incidents_index

    async def ensure_indices(self) -> list[str]:
        """Creates the indices that are missing and adds fields mapped since an existing
        index was made (mappings only grow); returns the kinds ("providers",
        "incidents") that need a full build: those created, and those that gained a
        field their documents lack."""
        rebuild = []
        for kind, mappings in (("providers", PROVIDER_MAPPINGS), ("incidents", INCIDENT_MAPPINGS)):
            index = self.index_name(kind)
            if not await self.client.indices.exists(index=index):
                await self.client.options(ignore_status=400).indices.create(index=index, mappings=mappings)
                rebuild.append(kind)
                continue
            current = await self.client.indices.get_mapping(index=index)
            known = next(iter(current.body.values()))["mappings"].get("properties", {})
            if set(mappings["properties"]) - set(known):
                await self.client.indices.put_mapping(index=index, properties=mappings["properties"])
                rebuild.append(kind)
        return rebuild

    async def providers(self, q: ProviderQuery) -> HitPage:
        return await self._search(self.providers_index, provider_search_body(q))

    async def incidents(self, q: IncidentQuery) -> HitPage:
        return await self._search(self.incidents_index, incident_search_body(q))

    async def _search(self, index: str, body: dict[str, Any]) -> HitPage:
        # A person is waiting: give up early and let PostgreSQL answer instead.
        resp = await self.client.options(request_timeout=SEARCH_TIMEOUT_SECONDS).search(index=index, **body)
        hits = resp["hits"]
        return HitPage([Hit(h["_id"], float(h.get("_score") or 0.0)) for h in hits["hits"]], hits["total"]["value"])

    async def index(self, index: str, docs: list[dict[str, Any]]) -> int:
        """Writes documents (each with `id` and `updated_at` in microseconds as
        `_version`); an older copy than the stored one is skipped (409)."""
        actions = [
            {
                "_op_type": "index",
                "_index": index,
                "_id": doc["id"],
                "version": doc.pop("_version"),
                "version_type": "external_gte",
                "_source": doc,
            }
            for doc in docs
        ]
        ok, _ = await async_bulk(self.client, actions, ignore_status=(409,), raise_on_error=True)
        return ok

    async def refresh(self) -> None:
        await self.client.indices.refresh(index=[self.providers_index, self.incidents_index])
