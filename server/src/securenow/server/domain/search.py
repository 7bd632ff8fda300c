"""Search questions and answers, independent of the backend (PostgreSQL or
Elasticsearch): both take a validated query and return ranked ids; the service
loads the objects themselves from PostgreSQL, the source of truth."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from securenow.server.domain.enums import AlertPriority, IncidentStatus, IncidentType, ProviderType
from securenow.server.domain.errors import InvalidArgument
from securenow.server.domain.geo import Point
from securenow.server.domain.paging import PageRequest, cursor_int, page_request
from securenow.server.domain.validation import Validator

DEFAULT_PROVIDER_RADIUS_M = 25_000.0
DEFAULT_INCIDENT_RADIUS_M = 5_000.0
MAX_RADIUS_M = 500_000.0
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
# Pages go at most this deep (Elasticsearch's default index.max_result_window):
# deeper than that, narrow the question.
MAX_RESULT_WINDOW = 10_000
MAX_QUERY_LENGTH = 200
MAX_TAGS = 20


@dataclass(frozen=True)
class Page:
    """An offset page of a ranked result (relevance has no stable keyset)."""

    offset: int
    size: int
    request: PageRequest

    def next_token(self, total: int) -> str:
        end = self.offset + self.size
        return "" if end >= min(total, MAX_RESULT_WINDOW) else self.request.next_token([end])


def _page(v: Validator, page_size: int, page_token: str, filters: object) -> Page:
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        v.add("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")
        page_size = 0
    request = page_request(page_size, page_token, filters=filters, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
    try:
        keyset = request.keyset(cursor_int(0, MAX_RESULT_WINDOW))
    except InvalidArgument as bad:
        v.violations.extend(bad.violations)
        keyset = None
    offset = keyset[0] if keyset is not None else 0
    return Page(offset, min(request.size, max(MAX_RESULT_WINDOW - offset, 0)), request)


def _near(v: Validator, name: str, point: Point | None, radius_m: float, default: float) -> float:
    radius = radius_m or default
    if point is not None:
        v.lat_lng(name, point.latitude, point.longitude)
    if not 0 < radius <= MAX_RADIUS_M:
        v.add("radius_m", f"must be between 0 and {MAX_RADIUS_M:.0f}")
    return radius


def _text(v: Validator, query: str) -> str:
    text = " ".join(query.split())
    if len(text) > MAX_QUERY_LENGTH:
        v.add("query", f"must be at most {MAX_QUERY_LENGTH} characters")
    else:
        v.characters("query", text)
    return text


@dataclass(frozen=True)
class ProviderQuery:
    text: str
    near: Point | None
    radius_m: float
    business_types: tuple[ProviderType, ...]
    min_rating: float
    tags: tuple[str, ...]
    page: Page


def provider_query(
    *,
    text: str,
    near: Point | None,
    radius_m: float,
    business_types: list[ProviderType],
    min_rating: float,
    tags: list[str],
    page_size: int,
    page_token: str,
) -> ProviderQuery:
    """Validates a SearchProviders request; every violation is named by its field."""
    v = Validator()
    clean = _text(v, text)
    radius = _near(v, "near", near, radius_m, DEFAULT_PROVIDER_RADIUS_M)
    if not 0 <= min_rating <= 5:
        v.add("min_rating", "must be between 0 and 5")
    cleaned_tags = tuple(sorted({t.strip().lower() for t in tags if t.strip()}))
    if len(cleaned_tags) > MAX_TAGS:
        v.add("tags", f"must name at most {MAX_TAGS} tags")
    if any(len(t) > 50 for t in cleaned_tags):
        v.add("tags", "each tag must be at most 50 characters")
    else:
        for t in cleaned_tags:
            if not v.characters("tags", t, single_line=True):
                break  # one violation names the field
    kinds = tuple(sorted(set(business_types)))
    filters = ("search_providers", clean, near, radius, kinds, min_rating, cleaned_tags)
    page = _page(v, page_size, page_token, filters)
    v.check()
    return ProviderQuery(clean, near, radius, kinds, min_rating, cleaned_tags, page)


@dataclass(frozen=True)
class IncidentQuery:
    text: str
    incident_types: tuple[IncidentType, ...]
    statuses: tuple[IncidentStatus, ...]
    priorities: tuple[AlertPriority, ...]
    start: datetime | None
    end: datetime | None
    near: Point | None
    radius_m: float
    department_id: str | None  # None: every department (admins)
    page: Page


def incident_query(
    *,
    text: str,
    incident_types: list[IncidentType],
    statuses: list[IncidentStatus],
    priorities: list[AlertPriority],
    start: datetime | None,
    end: datetime | None,
    near: Point | None,
    radius_m: float,
    department_id: str | None,
    page_size: int,
    page_token: str,
) -> IncidentQuery:
    """Validates a SearchIncidents request for one department (or all, for admins)."""
    v = Validator()
    clean = _text(v, text)
    radius = _near(v, "near", near, radius_m, DEFAULT_INCIDENT_RADIUS_M)
    if start is not None and end is not None and end <= start:
        v.add("end_time", "must be after start_time")
    types = tuple(sorted(set(incident_types)))
    states = tuple(sorted(set(statuses)))
    prios = tuple(sorted(set(priorities)))
    filters = ("search_incidents", clean, types, states, prios, start, end, near, radius, department_id)
    page = _page(v, page_size, page_token, filters)
    v.check()
    return IncidentQuery(clean, types, states, prios, start, end, near, radius, department_id, page)


@dataclass(frozen=True)
class Hit:
    """One ranked result: the object's id and its relevance (0 without a text query)."""

    id: str
    score: float


@dataclass(frozen=True)
class HitPage:
    hits: list[Hit]
    total: int
