"""Search questions: validation, and the Elasticsearch requests they become."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from securenow.server.domain.enums import IncidentStatus, ProviderType
from securenow.server.domain.errors import InvalidArgument
from securenow.server.domain.geo import Point
from securenow.server.domain.search import MAX_RESULT_WINDOW, ProviderQuery, incident_query, provider_query
from securenow.server.storage.search_elastic import incident_search_body, provider_search_body


def providers(**kw: object) -> ProviderQuery:
    args: dict[str, object] = {
        "text": "",
        "near": None,
        "radius_m": 0.0,
        "business_types": [],
        "min_rating": 0.0,
        "tags": [],
        "page_size": 0,
        "page_token": "",
    }
    args.update(kw)
    return provider_query(**args)


def test_provider_request_filters_verified_and_orders_by_what_was_asked() -> None:
    q = providers(text="armed  guards", business_types=[ProviderType.DRONE_PATROL], tags=["K9 "], min_rating=3.5)
    body = provider_search_body(q)
    filters = body["query"]["bool"]["filter"]
    assert {"term": {"verified": True}} in filters
    assert {"terms": {"business_type": ["drone_patrol"]}} in filters
    assert {"term": {"tags": "k9"}} in filters
    assert {"range": {"rating": {"gte": 3.5}}} in filters
    assert body["query"]["bool"]["must"][0]["simple_query_string"]["query"] == "armed guards"
    assert body["sort"][0] == "_score"
    near = provider_search_body(providers(near=Point(37.7, -122.4), radius_m=1500))
    assert "_geo_distance" in near["sort"][0]
    assert near["query"]["bool"]["must"] == [{"match_all": {}}]


def test_pages_are_offsets_bound_to_the_question_and_stop_at_the_window() -> None:
    first = providers(tags=["a"], page_size=10)
    token = first.page.next_token(25)
    second = providers(tags=["a"], page_size=10, page_token=token)
    assert second.page.offset == 10
    assert provider_search_body(second)["from_"] == 10
    assert second.page.next_token(20) == ""
    with pytest.raises(InvalidArgument):
        providers(tags=["b"], page_size=10, page_token=token)
    assert first.page.next_token(MAX_RESULT_WINDOW * 2)


def test_incident_request_is_scoped_to_the_department_and_time_window() -> None:
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    q = incident_query(
        text="",
        incident_types=[],
        statuses=[IncidentStatus.DISPATCHED],
        priorities=[],
        start=start,
        end=end,
        near=None,
        radius_m=0,
        department_id="d-1",
        page_size=5,
        page_token="",
    )
    body = incident_search_body(q)
    filters = body["query"]["bool"]["filter"]
    assert {"term": {"department_id": "d-1"}} in filters
    assert {"terms": {"status": ["dispatched"]}} in filters
    assert {"range": {"timestamp": {"gte": start.isoformat(), "lt": end.isoformat()}}} in filters
    assert body["sort"][0] == {"timestamp": "desc"}
    assert body["size"] == 5
    with pytest.raises(InvalidArgument) as bad:
        incident_query(
            text="",
            incident_types=[],
            statuses=[],
            priorities=[],
            start=end,
            end=start,
            near=Point(91, 0),
            radius_m=-1,
            department_id=None,
            page_size=0,
            page_token="",
        )
    assert {v.field for v in bad.value.violations} == {"end_time", "near.latitude", "radius_m"}
