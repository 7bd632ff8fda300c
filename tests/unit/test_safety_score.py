"""The safety-score method (domain/safety_score.py): grid cells, weights, the score curve,
risk factors and advice."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

import pytest

from securenow.server.domain.analytics import EventInput, validate_events, validate_report_window
from securenow.server.domain.enums import IncidentType
from securenow.server.domain.errors import InvalidArgument
from securenow.server.domain.geo import Point
from securenow.server.domain.safety_score import (
    CELLS_PER_DEGREE,
    HALF_LIFE_DAYS,
    SCORE_RADIUS_M,
    TYPE_WEIGHTS,
    WINDOW,
    Cell,
    IncidentCount,
    assess,
    cell_of,
    incident_weight,
    score_for_risk,
)
from securenow.server.domain.validation import Validator

ASSAULT, THEFT, MEDICAL = IncidentType.ASSAULT, IncidentType.THEFT, IncidentType.MEDICAL
SUSPICIOUS, OTHER = IncidentType.SUSPICIOUS_ACTIVITY, IncidentType.OTHER


def test_points_snap_to_the_cell_that_contains_them() -> None:
    cell = cell_of(Point(37.77493, -122.41942))
    assert (cell.i, cell.j) == (3777, -12242)
    assert cell.name == f"{CELLS_PER_DEGREE}:3777:-12242"
    assert cell.centre == Point(37.775, -122.415)
    # Every point of the cell is within the scored radius of its centre.
    half_diagonal = math.hypot(0.005 * 111_320, 0.005 * 111_320)
    assert half_diagonal < SCORE_RADIUS_M
    # Neighbours differ; points of one cell share it.
    assert cell_of(Point(37.7799, -122.4101)) == cell
    assert cell_of(Point(37.7801, -122.4101)) != cell


def test_cells_at_the_poles_and_the_antimeridian_stay_on_the_globe() -> None:
    north = cell_of(Point(90.0, 0.0))
    assert north.centre.latitude < 90.0
    assert cell_of(Point(-90.0, 0.0)).centre.latitude > -90.0
    east = cell_of(Point(10.0, 180.0))
    assert east == cell_of(Point(10.0, -180.0))
    assert -180.0 < east.centre.longitude < 180.0
    assert Cell.at(5, 36_000 + 7) == Cell.at(5, 7)


def test_no_incidents_scores_100_with_no_risk_factors() -> None:
    result = assess([])
    assert result.score == 100
    assert result.risk_factors == ()
    assert result.recommendations  # still some advice


def test_assaults_weigh_more_than_thefts_and_thefts_more_than_medical() -> None:
    weights = [TYPE_WEIGHTS[t] for t in (ASSAULT, THEFT, SUSPICIOUS, OTHER, MEDICAL)]
    assert weights == sorted(weights, reverse=True)
    assault = assess([IncidentCount(ASSAULT, 0, 1)]).score
    theft = assess([IncidentCount(THEFT, 0, 1)]).score
    medical = assess([IncidentCount(MEDICAL, 0, 1)]).score
    assert assault < theft < medical < 100


def test_recent_incidents_weigh_more_and_old_ones_nothing() -> None:
    assert incident_weight(ASSAULT, 0) == TYPE_WEIGHTS[ASSAULT]
    assert incident_weight(ASSAULT, HALF_LIFE_DAYS) == pytest.approx(TYPE_WEIGHTS[ASSAULT] / 2)
    assert incident_weight(ASSAULT, WINDOW.days) == 0.0
    assert assess([IncidentCount(ASSAULT, 1, 1)]).score < assess([IncidentCount(ASSAULT, 60, 1)]).score
    assert assess([IncidentCount(ASSAULT, WINDOW.days, 5)]).score == 100


def test_the_score_falls_smoothly_and_stays_within_0_and_100() -> None:
    scores = [assess([IncidentCount(ASSAULT, 0, n)]).score for n in range(0, 60)]
    assert scores[0] == 100
    assert scores == sorted(scores, reverse=True)
    # Smooth: one more assault never costs more than the first one did.
    assert max(a - b for a, b in itertools.pairwise(scores)) == scores[0] - scores[1]
    assert scores[-1] == 0
    assert score_for_risk(1e9) == 0
    assert score_for_risk(-5) == 100


def test_risk_factors_share_the_reduction_and_describe_the_counts() -> None:
    result = assess([IncidentCount(ASSAULT, 2, 2), IncidentCount(ASSAULT, 10, 1), IncidentCount(THEFT, 0, 1)])
    names = [f.name for f in result.risk_factors]
    assert names == ["recent_assaults", "recent_thefts"]
    assert sum(f.weight for f in result.risk_factors) == pytest.approx(1.0, abs=1e-3)
    assault_risk = 2 * incident_weight(ASSAULT, 2) + incident_weight(ASSAULT, 10)
    assert result.risk_factors[0].weight == pytest.approx(
        assault_risk / (assault_risk + incident_weight(THEFT, 0)), abs=1e-4
    )
    assert result.risk_factors[0].description.startswith("3 assaults within 1000 m in the last 90 days")
    assert "2 days ago" in result.risk_factors[0].description
    assert result.risk_factors[1].description.startswith("1 theft")
    assert "within the last day" in result.risk_factors[1].description


def test_recommendations_follow_the_band_and_the_incident_types() -> None:
    safe = assess([IncidentCount(MEDICAL, 30, 1)])
    danger = assess([IncidentCount(ASSAULT, 0, 10), IncidentCount(THEFT, 0, 3)])
    assert safe.score >= 80
    assert danger.score < 50
    assert any("aware" in r for r in safe.recommendations)
    assert any("alone" in r for r in danger.recommendations)
    assert any("valuables" in r for r in danger.recommendations)
    assert not any("valuables" in r for r in safe.recommendations)


NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def event(**fields: object) -> EventInput:
    values: dict[str, object] = {
        "event_type": "app_open",
        "event_data": {"screen": "home"},
        "location": None,
        "event_time": None,
        "session_id": "s-1",
        "device_info": None,
    }
    values.update(fields)
    return EventInput(**values)  # type: ignore[arg-type]


def violations(events: list[EventInput]) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as err:
        validate_events(events, NOW)
    return {v.field: v.description for v in err.value.violations}


def test_events_are_validated_field_by_field() -> None:
    [ok] = validate_events([event()], NOW)
    assert ok.event_time == NOW
    assert ok.session_id == "s-1"
    assert "events" in violations([])
    assert "events" in violations([event()] * 101)
    bad = violations(
        [
            event(),
            event(event_type="AppOpen"),
            event(event_time=NOW + timedelta(minutes=6)),
            event(event_time=NOW - timedelta(days=31)),
            event(session_id="x" * 256),
            event(event_data={"blob": "x" * 17_000}),
            event(device_info={"n": float("nan")}),
        ]
    )
    assert set(bad) == {
        "events[1].event_type",
        "events[2].event_time",
        "events[3].event_time",
        "events[4].session_id",
        "events[5].event_data",
        "events[6].device_info",
    }


def test_report_windows_need_an_ordered_range_and_a_sane_interval() -> None:
    def fields(start: datetime | None, end: datetime | None, interval: timedelta | None) -> set[str]:
        v = Validator()
        validate_report_window(v, start, end, interval)
        return {x.field for x in v.violations}

    assert fields(NOW, NOW + timedelta(days=7), None) == set()
    assert fields(NOW, NOW, None) == {"end_time"}
    assert fields(NOW, NOW + timedelta(days=367), None) == {"end_time"}
    assert fields(NOW, NOW + timedelta(days=1), timedelta(minutes=59)) == {"interval"}
    assert fields(None, None, None) == {"start_time", "end_time"}
    v = Validator()
    window = validate_report_window(v, NOW, NOW + timedelta(hours=25), timedelta(hours=12))
    assert window is not None
    assert window.bucket_count == 3
