"""The Elasticsearch indices against the seed design document: every field of the
seed's providers and incidents indices is mapped with the seed's type, and the
documents the indexer builds only use mapped fields (the mappings are
`dynamic: strict`, so an unmapped field would make Elasticsearch refuse the document)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from securenow.server.storage.search_elastic import INCIDENT_MAPPINGS, PROVIDER_MAPPINGS
from securenow.server.storage.search_feed import incident_doc, provider_doc

# Source: the seed design document (securenow-database-architecture.md, "Elasticsearch
# Indices"), copied so the suite runs without it. Field -> type.
SEED_PROVIDERS_INDEX = {
    "company_name": "text",
    "business_type": "keyword",
    "location": "geo_point",
    "rating": "float",
    "service_areas": "geo_shape",
    "tags": "keyword",
    "verified": "boolean",
}
SEED_INCIDENTS_INDEX = {
    "incident_type": "keyword",
    "location": "geo_point",
    "timestamp": "date",
    "priority": "keyword",
    "status": "keyword",
    "description": "text",
}

# Not part of a document's source: ElasticSearch.index() pops it into the bulk action's
# external version.
METADATA = {"_version"}

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
AREA = {"type": "Polygon", "coordinates": [[[2.3, 48.8], [2.4, 48.8], [2.4, 48.9], [2.3, 48.8]]]}


def provider_row(**kw: Any) -> dict[str, Any]:
    """A row as PROVIDER_DOCS_SQL returns it."""
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "company_name": "Night Watch",
        "description": "Armed guards",
        "business_type": "security_guard",
        "rating": 4.5,
        "tags": ["k9"],
        "verified": True,
        "owner_active": True,
        "location_data": {"lat": 48.85, "lng": 2.35, "accuracy": 5},
        "service_areas": {"geojson": AREA},
        "updated_at": NOW,
        "version": 1,
    }
    row.update(kw)
    return row


def incident_row(**kw: Any) -> dict[str, Any]:
    """A row as INCIDENT_DOCS_SQL returns it."""
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "police_department_id": uuid.uuid4(),
        "incident_type": "theft",
        "priority": "high",
        "status": "reported",
        "created_at": NOW,
        "description": "Bag snatched",
        "resolution_notes": None,
        "location_data": {"lat": 48.85, "lng": 2.35},
        "updated_at": NOW,
        "version": 1,
    }
    row.update(kw)
    return row


@pytest.mark.parametrize(
    ("mappings", "seed"),
    [(PROVIDER_MAPPINGS, SEED_PROVIDERS_INDEX), (INCIDENT_MAPPINGS, SEED_INCIDENTS_INDEX)],
    ids=["providers", "incidents"],
)
def test_mappings_have_every_seed_field_with_its_type(mappings: dict[str, Any], seed: dict[str, str]) -> None:
    assert mappings["dynamic"] == "strict"
    properties = mappings["properties"]
    # Extra fields (id, updated_at, department_id...) and options such as an analyzer
    # are fine; the seed's field types are not negotiable.
    assert {field: properties.get(field, {}).get("type") for field in seed} == seed


@pytest.mark.parametrize(
    "row",
    [provider_row(), provider_row(location_data=None, service_areas=None, description=None, tags=None, rating=None)],
    ids=["full", "sparse"],
)
def test_provider_documents_only_use_mapped_fields(row: dict[str, Any]) -> None:
    doc = provider_doc(row)
    assert set(doc) - METADATA <= set(PROVIDER_MAPPINGS["properties"])
    assert set(SEED_PROVIDERS_INDEX) <= set(doc)


@pytest.mark.parametrize(
    "row",
    [incident_row(), incident_row(location_data={}, description=None, resolution_notes="Returned")],
    ids=["full", "sparse"],
)
def test_incident_documents_only_use_mapped_fields(row: dict[str, Any]) -> None:
    doc = incident_doc(row)
    assert set(doc) - METADATA <= set(INCIDENT_MAPPINGS["properties"])
    assert set(SEED_INCIDENTS_INDEX) <= set(doc)


def test_document_values_fit_their_mapped_types() -> None:
    """geo_point as {lat, lon} (not the row's {lat, lng, ...}), geo_shape as GeoJSON,
    dates as ISO 8601, numbers and booleans as JSON numbers and booleans."""
    provider = provider_doc(provider_row())
    assert provider["location"] == {"lat": 48.85, "lon": 2.35}
    assert provider["service_areas"] == AREA
    assert isinstance(provider["rating"], float)
    assert provider["verified"] is True
    assert datetime.fromisoformat(provider["updated_at"]) == NOW
    incident = incident_doc(incident_row())
    assert incident["location"] == {"lat": 48.85, "lon": 2.35}
    assert datetime.fromisoformat(incident["timestamp"]) == NOW
    for doc, mappings in ((provider, PROVIDER_MAPPINGS), (incident, INCIDENT_MAPPINGS)):
        for field, value in doc.items():
            if field in METADATA or value is None:
                continue
            kind = mappings["properties"][field]["type"]
            if kind in ("text", "keyword"):
                assert isinstance(value, str | list), (field, value)
            elif kind == "date":
                datetime.fromisoformat(value)
            elif kind == "boolean":
                assert isinstance(value, bool), (field, value)
