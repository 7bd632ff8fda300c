"""AnalyticsService: app events (validated, stored in monthly partitions, audited), area
safety scores (computed from nearby alerts, stored per grid cell, reused while fresh,
refreshed by maintenance, listed best first) and the incident report (agencies see
their own department through row-level security, admins any or all)."""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from securenow.server.domain.enums import IncidentType
from securenow.server.domain.geo import Point
from securenow.server.domain.safety_score import IncidentCount, assess, cell_of
from securenow.server.services.analytics import refresh_safety_scores
from securenow.v1 import agency_pb2, analytics_pb2, common_pb2, sos_pb2, users_pb2
from tests.dispatch_helpers import LA, SF, dispatcher_of, location, register_department, report_figures
from tests.helpers import Account, Api, ErrorDetails, expect_error, wait_for

NO_SUCH_ID = "00000000-0000-4000-8000-000000000000"
JSON_COLUMNS = ("event_data", "location_data", "device_info", "details")
# A quiet spot with no alerts, and a block in San Francisco where alerts are raised.
QUIET = (41.0, -100.0)
BLOCK = (37.7793, -122.4193)


def offset(origin: tuple[float, float], meters_north: float, meters_east: float = 0.0) -> tuple[float, float]:
    lat = origin[0] + meters_north / 111_320.0
    lng = origin[1] + meters_east / (111_320.0 * math.cos(math.radians(origin[0])))
    return lat, lng


def latlng(point: tuple[float, float]) -> common_pb2.LatLng:
    return common_pb2.LatLng(latitude=point[0], longitude=point[1])


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def struct(**values: Any) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


async def expect_invalid(call: Awaitable[Any], *fields: str) -> ErrorDetails:
    """INVALID_ARGUMENT naming (at least) `fields` in its BadRequest details."""
    err = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert set(fields) <= set(err.fields), f"expected violations of {fields}, got {err.fields}"
    return err


async def raise_typed(api: Api, person: Account, point: tuple[float, float], incident_type: int) -> sos_pb2.SosAlert:
    req = sos_pb2.RaiseSosRequest(
        request_id=str(uuid.uuid4()), description="help", incident_type=incident_type, location=location(point)
    )
    return (await api.sos.RaiseSos(req, metadata=person.md)).alert


async def raise_many(api: Api, points: list[tuple[tuple[float, float], int]]) -> list[tuple[Account, sos_pb2.SosAlert]]:
    out = []
    for point, incident_type in points:
        person = await api.sign_up()
        out.append((person, await raise_typed(api, person, point, incident_type)))
    return out


async def score_at(api: Api, who: Account, point: tuple[float, float]) -> analytics_pb2.SafetyScore:
    resp = await api.analytics.GetSafetyScore(
        analytics_pb2.GetSafetyScoreRequest(location=latlng(point)), metadata=who.md
    )
    return resp.safety_score


# RecordEvents ---------------------------------------------------------------------


async def test_events_are_stored_for_the_caller_in_their_monthly_partition_and_audited(
    api: Api, db_conn: asyncpg.Connection
) -> None:
    person = await api.sign_up()
    someone_else = await api.sign_up()
    now = datetime.now(UTC)
    earlier = now - timedelta(days=20)
    fix = location(BLOCK, accuracy=12.0)
    fix.time.CopyFrom(ts(earlier))  # sent late with its event: older than a live fix may be
    events = [
        analytics_pb2.AnalyticsEvent(event_type="app_open", event_data=struct(screen="home"), session_id="s-1"),
        analytics_pb2.AnalyticsEvent(
            id=str(uuid.uuid4()),
            user_id=someone_else.id,  # ignored: events always belong to the caller
            event_type="map_viewed",
            event_data=struct(zoom=14, layers=["safety"]),
            event_time=ts(earlier),
            location=fix,
            device_info=struct(model="Pixel 9", os="Android 16", app_version="3.2.0"),
            session_id="s-1",
        ),
        analytics_pb2.AnalyticsEvent(event_type="sos_button_seen"),
    ]
    resp = await api.analytics.RecordEvents(analytics_pb2.RecordEventsRequest(events=events), metadata=person.md)
    assert resp.accepted_count == 3

    rows = [
        {k: json.loads(v) if k in JSON_COLUMNS and v is not None else v for k, v in r.items()}
        for r in await db_conn.fetch(
            """SELECT tableoid::regclass::text AS part, user_id::text, event_type, event_data, location_data,
                      ST_Y(location::geometry) AS lat, ST_X(location::geometry) AS lng, timestamp, session_id,
                      device_info
               FROM analytics_events ORDER BY timestamp, event_type"""
        )
    ]
    assert [r["event_type"] for r in rows] == ["map_viewed", "app_open", "sos_button_seen"]
    assert {r["user_id"] for r in rows} == {person.id}
    for r in rows:
        stamp: datetime = r["timestamp"].astimezone(UTC)
        assert r["part"] == f"analytics_events_{stamp:%Y_%m}"
    mapped, opened, seen = rows
    assert abs(mapped["timestamp"] - earlier) < timedelta(milliseconds=1)
    assert abs(opened["timestamp"] - now) < timedelta(seconds=10)  # server time when unset
    assert mapped["event_data"] == {"zoom": 14, "layers": ["safety"]}
    assert (mapped["location_data"]["lat"], mapped["location_data"]["lng"]) == BLOCK
    assert mapped["location_data"]["accuracy_m"] == 12.0
    assert (mapped["lat"], mapped["lng"]) == pytest.approx(BLOCK)  # the PostGIS point beside it
    assert mapped["device_info"]["model"] == "Pixel 9"
    assert opened["session_id"] == "s-1"
    assert opened["location_data"] is None
    assert opened["lat"] is None
    assert seen["event_data"] == {}
    assert seen["session_id"] is None
    assert seen["device_info"] is None

    audit = await db_conn.fetch(
        "SELECT actor_id, outcome, details FROM audit_log WHERE action = 'analytics.record_events'"
    )
    assert len(audit) == 1
    assert audit[0]["actor_id"] == person.id
    assert audit[0]["outcome"] == "OK"
    assert json.loads(audit[0]["details"])["count"] == 3


async def test_a_retried_batch_is_stored_once(api: Api, db_conn: asyncpg.Connection) -> None:
    person = await api.sign_up()
    batch = analytics_pb2.RecordEventsRequest(
        events=[analytics_pb2.AnalyticsEvent(event_type="app_open"), analytics_pb2.AnalyticsEvent(event_type="tap")],
        request_id=str(uuid.uuid4()),
    )
    first = await api.analytics.RecordEvents(batch, metadata=person.md)
    again = await api.analytics.RecordEvents(batch, metadata=person.md)  # the answer was lost; the app retries
    assert first.accepted_count == again.accepted_count == 2
    assert await db_conn.fetchval("SELECT count(*) FROM analytics_events") == 2
    other = analytics_pb2.RecordEventsRequest(
        events=[analytics_pb2.AnalyticsEvent(event_type="scroll")], request_id=batch.request_id
    )
    await expect_error(
        api.analytics.RecordEvents(other, metadata=person.md), grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED"
    )
    assert await db_conn.fetchval("SELECT count(*) FROM analytics_events") == 2


async def test_a_client_looping_on_record_events_is_slowed_down(api: Api, db_conn: asyncpg.Connection) -> None:
    person, other = await api.sign_up(), await api.sign_up()
    limit = api.app.settings.analytics_calls_per_minute
    one = analytics_pb2.RecordEventsRequest(events=[analytics_pb2.AnalyticsEvent(event_type="tick")])
    for _ in range(limit):
        await api.analytics.RecordEvents(one, metadata=person.md)
    details = await expect_error(
        api.analytics.RecordEvents(one, metadata=person.md), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert details.retry_delay_seconds is not None
    assert 0 < details.retry_delay_seconds <= 60
    assert await db_conn.fetchval("SELECT count(*) FROM analytics_events") == limit
    # The limit is per user.
    assert (await api.analytics.RecordEvents(one, metadata=other.md)).accepted_count == 1


async def test_bad_events_are_refused_naming_the_field_and_nothing_is_stored(
    api: Api, db_conn: asyncpg.Connection
) -> None:
    person = await api.sign_up()
    now = datetime.now(UTC)

    async def record(*events: analytics_pb2.AnalyticsEvent) -> analytics_pb2.RecordEventsResponse:
        return await api.analytics.RecordEvents(  # type: ignore[no-any-return]
            analytics_pb2.RecordEventsRequest(events=events), metadata=person.md
        )

    ok = analytics_pb2.AnalyticsEvent(event_type="app_open")
    await expect_invalid(record(), "events")
    await expect_invalid(record(*[ok] * 101), "events")
    await expect_invalid(record(ok, analytics_pb2.AnalyticsEvent(event_type="AppOpen")), "events[1].event_type")
    await expect_invalid(record(analytics_pb2.AnalyticsEvent(event_type="")), "events[0].event_type")
    await expect_invalid(record(analytics_pb2.AnalyticsEvent(event_type="x" * 101)), "events[0].event_type")
    await expect_invalid(
        record(analytics_pb2.AnalyticsEvent(event_type="a", event_time=ts(now + timedelta(minutes=10)))),
        "events[0].event_time",
    )
    await expect_invalid(
        record(analytics_pb2.AnalyticsEvent(event_type="a", event_time=ts(now - timedelta(days=45)))),
        "events[0].event_time",
    )
    await expect_invalid(
        record(analytics_pb2.AnalyticsEvent(event_type="a", event_time=timestamp_pb2.Timestamp(seconds=10**15))),
        "events[0].event_time",
    )
    await expect_invalid(
        record(analytics_pb2.AnalyticsEvent(event_type="a", location=location((91.0, 0.0)))),
        "events[0].location.point.latitude",
    )
    await expect_invalid(
        record(analytics_pb2.AnalyticsEvent(event_type="a", session_id="s" * 256)), "events[0].session_id"
    )
    await expect_invalid(
        record(analytics_pb2.AnalyticsEvent(event_type="a", event_data=struct(blob="x" * 20_000))),
        "events[0].event_data",
    )
    await expect_invalid(
        record(analytics_pb2.AnalyticsEvent(event_type="a", device_info=struct(bad=float("nan")))),
        "events[0].device_info",
    )
    await expect_invalid(
        record(analytics_pb2.AnalyticsEvent(event_type="a", event_data=struct(text="nul\x00byte"))),
        "events[0].event_data",
    )
    assert await db_conn.fetchval("SELECT count(*) FROM analytics_events") == 0

    await expect_error(
        api.analytics.RecordEvents(analytics_pb2.RecordEventsRequest(events=[ok])), grpc.StatusCode.UNAUTHENTICATED
    )


async def test_event_documents_are_measured_as_stored_and_only_real_nul_characters_are_refused(
    api: Api, db_conn: asyncpg.Connection
) -> None:
    person = await api.sign_up()

    async def record(event_data: struct_pb2.Struct) -> analytics_pb2.RecordEventsResponse:
        event = analytics_pb2.AnalyticsEvent(event_type="note_typed", event_data=event_data)
        return await api.analytics.RecordEvents(  # type: ignore[no-any-return]
            analytics_pb2.RecordEventsRequest(events=[event]), metadata=person.md
        )

    # 16 KiB of JSON as PostgreSQL stores it (UTF-8), not as ASCII escapes: 1,500 emoji
    # are 6 KB (an app in Chinese or Arabic must not hit the limit at a third of it).
    emoji = "\U0001f6a8" * 1500
    assert (await record(struct(text=emoji))).accepted_count == 1
    # Text that merely looks like a NUL escape (a backslash, then "u0000") is fine.
    windows_path = "C:\\u0000\\logs"
    assert (await record(struct(path=windows_path))).accepted_count == 1
    stored = [json.loads(r[0]) for r in await db_conn.fetch("SELECT event_data FROM analytics_events")]
    assert {"text": emoji} in stored
    assert {"path": windows_path} in stored
    # The limit still holds in UTF-8: 4,200 emoji are 16.8 KB.
    await expect_invalid(record(struct(text="\U0001f6a8" * 4200)), "events[0].event_data")
    # A real NUL anywhere, keys included, is refused.
    await expect_invalid(record(struct(**{"key\x00": "v"})), "events[0].event_data")
    assert await db_conn.fetchval("SELECT count(*) FROM analytics_events") == 2


async def test_a_late_event_location_without_its_own_time_is_dated_at_the_event(
    api: Api, db_conn: asyncpg.Connection
) -> None:
    person = await api.sign_up()
    earlier = datetime.now(UTC).replace(microsecond=0) - timedelta(days=20)
    event = analytics_pb2.AnalyticsEvent(event_type="map_viewed", event_time=ts(earlier), location=location(BLOCK))
    await api.analytics.RecordEvents(analytics_pb2.RecordEventsRequest(events=[event]), metadata=person.md)
    stored = json.loads(await db_conn.fetchval("SELECT location_data FROM analytics_events"))
    # The fix was taken with the event (uploaded 20 days late), not when it reached the server.
    assert datetime.fromisoformat(stored["time"]) == earlier


async def test_events_are_stored_when_maintenance_left_their_month_without_a_partition(
    api: Api, db_conn: asyncpg.Connection
) -> None:
    person = await api.sign_up()
    month = datetime.now(UTC)
    partition = f"analytics_events_{month:%Y_%m}"
    # As after months without the maintenance loop: this month has no partition.
    await db_conn.execute(f"DROP TABLE {partition}")
    try:
        resp = await api.analytics.RecordEvents(
            analytics_pb2.RecordEventsRequest(events=[analytics_pb2.AnalyticsEvent(event_type="app_open")]),
            metadata=person.md,
        )
        assert resp.accepted_count == 1
        assert await db_conn.fetchval("SELECT tableoid::regclass::text FROM analytics_events") == partition
    finally:
        await db_conn.execute("SELECT securenow_ensure_partitions()")


# Safety scores --------------------------------------------------------------------


async def test_a_quiet_area_scores_100_and_nearby_assaults_lower_the_score(api: Api) -> None:
    viewer = await api.sign_up()
    quiet = await score_at(api, viewer, QUIET)
    assert quiet.score == 100
    assert list(quiet.risk_factors) == []
    assert quiet.recommendations
    assert quiet.radius_m == 1000.0
    centre = cell_of(Point(*QUIET)).centre
    assert (quiet.location.latitude, quiet.location.longitude) == pytest.approx((centre.latitude, centre.longitude))
    assert quiet.valid_until_time.ToDatetime() - quiet.calculate_time.ToDatetime() == timedelta(hours=1)

    assault, theft = common_pb2.INCIDENT_TYPE_ASSAULT, common_pb2.INCIDENT_TYPE_THEFT
    raised = await raise_many(
        api,
        [
            (offset(BLOCK, 100), assault),
            (offset(BLOCK, -150, 80), assault),
            (offset(BLOCK, 0, 200), assault),
            (offset(BLOCK, 50, -50), theft),
            (offset(BLOCK, 60, 60), assault),  # cancelled below: does not count
            (offset(BLOCK, 3000), assault),  # 3 km away: outside the scored area
        ],
    )
    cancelled_by, cancelled = raised[4]
    await api.sos.CancelSos(sos_pb2.CancelSosRequest(alert_id=cancelled.id), metadata=cancelled_by.md)

    score = await score_at(api, viewer, BLOCK)
    expected = assess([IncidentCount(IncidentType.ASSAULT, 0, 3), IncidentCount(IncidentType.THEFT, 0, 1)])
    assert score.score == expected.score < 100
    assert [f.name for f in score.risk_factors] == ["recent_assaults", "recent_thefts"]
    assert score.risk_factors[0].weight > score.risk_factors[1].weight
    assert sum(f.weight for f in score.risk_factors) == pytest.approx(1.0, abs=1e-3)
    assert score.risk_factors[0].description.startswith("3 assaults within 1000 m")
    assert score.risk_factors[1].description.startswith("1 theft within 1000 m")
    assert list(score.recommendations) == list(expected.recommendations)

    # An agency's API key may read scores too; a caller without a token may not.
    admin = await api.admin()
    dept = await register_department(api, admin, LA)
    by_key = await api.analytics.GetSafetyScore(
        analytics_pb2.GetSafetyScoreRequest(location=latlng(BLOCK)), metadata=dept.md
    )
    assert by_key.safety_score.id == score.id
    await expect_error(
        api.analytics.GetSafetyScore(analytics_pb2.GetSafetyScoreRequest(location=latlng(BLOCK))),
        grpc.StatusCode.UNAUTHENTICATED,
    )


async def test_a_stored_score_is_reused_while_fresh_then_recomputed(api: Api, db_conn: asyncpg.Connection) -> None:
    viewer = await api.sign_up()
    quiet = await score_at(api, viewer, BLOCK)
    assert quiet.score == 100
    # A quiet place is answered live and not stored (asking about places must not fill
    # the table), under the id its cell always has.
    assert await db_conn.fetchval("SELECT count(*) FROM safety_scores") == 0
    same_cell = await score_at(api, viewer, offset(BLOCK, 30, 30))
    assert cell_of(Point(*offset(BLOCK, 30, 30))) == cell_of(Point(*BLOCK))
    assert same_cell.id == quiet.id

    # So the first incident shows at once; that score is stored and served while fresh.
    await raise_many(api, [(offset(BLOCK, 20), common_pb2.INCIDENT_TYPE_ASSAULT)])
    first = await score_at(api, viewer, BLOCK)
    assert first.id == quiet.id
    assert first.score == assess([IncidentCount(IncidentType.ASSAULT, 0, 1)]).score < 100
    await raise_many(api, [(offset(BLOCK, -20), common_pb2.INCIDENT_TYPE_THEFT)])
    cached = await score_at(api, viewer, BLOCK)
    assert cached == first  # still fresh: served as stored

    await db_conn.execute("UPDATE safety_scores SET valid_until = now() - INTERVAL '1 second'")
    fresh = await score_at(api, viewer, BLOCK)
    assert fresh.id == first.id  # one row per cell
    assert fresh.calculate_time.ToDatetime() > first.calculate_time.ToDatetime()
    expected = [IncidentCount(IncidentType.ASSAULT, 0, 1), IncidentCount(IncidentType.THEFT, 0, 1)]
    assert fresh.score == assess(expected).score < first.score
    assert await db_conn.fetchval("SELECT count(*) FROM safety_scores") == 1


async def test_bad_points_and_radii_are_refused(api: Api) -> None:
    viewer = await api.sign_up()
    await expect_invalid(
        api.analytics.GetSafetyScore(analytics_pb2.GetSafetyScoreRequest(), metadata=viewer.md), "location"
    )
    await expect_invalid(
        api.analytics.GetSafetyScore(
            analytics_pb2.GetSafetyScoreRequest(location=common_pb2.LatLng(latitude=95, longitude=10)),
            metadata=viewer.md,
        ),
        "location.latitude",
    )

    def listing(**fields: Any) -> Awaitable[analytics_pb2.ListSafetyScoresResponse]:
        return api.analytics.ListSafetyScores(  # type: ignore[no-any-return]
            analytics_pb2.ListSafetyScoresRequest(**fields), metadata=viewer.md
        )

    await expect_invalid(listing(), "near")
    await expect_invalid(listing(near=common_pb2.LatLng(latitude=0, longitude=200)), "near.longitude")
    await expect_invalid(listing(near=latlng(BLOCK), radius_m=-5), "radius_m")
    await expect_invalid(listing(near=latlng(BLOCK), radius_m=1e7), "radius_m")
    await expect_invalid(listing(near=latlng(BLOCK), page_size=-1), "page_size")
    await expect_invalid(listing(near=latlng(BLOCK), page_token="garbage!"), "page_token")
    await expect_error(
        api.analytics.ListSafetyScores(analytics_pb2.ListSafetyScoresRequest(near=latlng(BLOCK))),
        grpc.StatusCode.UNAUTHENTICATED,
    )


async def test_maintenance_maps_every_cell_with_recent_alerts_and_lists_them_best_first(
    api: Api, db_conn: asyncpg.Connection
) -> None:
    viewer = await api.sign_up()
    assault, theft, medical = (
        common_pb2.INCIDENT_TYPE_ASSAULT,
        common_pb2.INCIDENT_TYPE_THEFT,
        common_pb2.INCIDENT_TYPE_MEDICAL,
    )
    # Alerts in four cells 2 km apart (so no cell's radius reaches another's alerts).
    spots = [offset(BLOCK, 0), offset(BLOCK, 2000), offset(BLOCK, 0, 2000), offset(BLOCK, -2000)]
    raised = await raise_many(
        api,
        [
            (spots[0], assault),
            (spots[0], assault),
            (spots[1], theft),
            (spots[2], medical),
            (spots[3], assault),  # cancelled: this cell has nothing to score
            (LA, assault),  # far away: outside the listing radius
        ],
    )
    await api.sos.CancelSos(sos_pb2.CancelSosRequest(alert_id=raised[4][1].id), metadata=raised[4][0].md)

    # Several replicas run maintenance at once: one refreshes, the others skip.
    results = await asyncio.gather(*(refresh_safety_scores(api.app.db) for _ in range(3)))
    assert max(results) == 4
    assert all(r in (4, -1, 0) for r in results)
    assert await api.app.maintenance.refresh_safety_scores() == 4  # and running it again is harmless

    stored = {r["cell"] for r in await db_conn.fetch("SELECT cell FROM safety_scores")}
    assert stored == {cell_of(Point(*p)).name for p in (spots[0], spots[1], spots[2], LA)}

    everything = await api.analytics.ListSafetyScores(
        analytics_pb2.ListSafetyScoresRequest(near=latlng(BLOCK), radius_m=5000, page_size=500), metadata=viewer.md
    )
    scores = list(everything.safety_scores)
    assert everything.next_page_token == ""
    assert len(scores) == 3  # LA is not within 5 km
    assert [s.score for s in scores] == sorted((s.score for s in scores), reverse=True)
    assert scores[0].score == assess([IncidentCount(IncidentType.MEDICAL, 0, 1)]).score
    assert scores[1].score == assess([IncidentCount(IncidentType.THEFT, 0, 1)]).score
    assert scores[2].score == assess([IncidentCount(IncidentType.ASSAULT, 0, 2)]).score
    # What the map shows is what GetSafetyScore answers there.
    assert await score_at(api, viewer, spots[1]) == scores[1]

    # A person's own safety score is that of the last location they shared: walkers in
    # the assault cell and in a quiet place get those; nobody located keeps the default.
    async def walk_to(point: tuple[float, float]) -> Account:
        walker = await api.sign_up()

        async def fix() -> AsyncIterator[sos_pb2.ShareLocationRequest]:
            yield sos_pb2.ShareLocationRequest(location=location(point))

        assert (await api.sos.ShareLocation(fix(), metadata=walker.md)).accepted_count == 1
        return walker

    async def own_score(account: Account) -> int:
        me = await api.users.GetUser(users_pb2.GetUserRequest(user_id="me"), metadata=account.md)
        return me.user.safety_score

    in_danger, in_quiet = await walk_to(spots[0]), await walk_to(offset(BLOCK, 0, -5000))
    await api.app.maintenance.refresh_safety_scores()
    assert await own_score(in_danger) == scores[2].score
    assert await own_score(in_quiet) == 100
    assert await own_score(viewer) == 85

    # Ties are broken by id; pages of two walk the same list without gaps or repeats.
    # Quiet cells are not stored (nor listed); two more cells with one medical call each
    # tie with each other.
    await score_at(api, viewer, offset(BLOCK, 3000, 3000))  # quiet: answered, not listed
    far = [offset(BLOCK, 1500, 1500), offset(BLOCK, -1500, -1500)]
    await raise_many(api, [(p, common_pb2.INCIDENT_TYPE_MEDICAL) for p in far])
    for p in far:
        await score_at(api, viewer, p)
    full = list(
        (
            await api.analytics.ListSafetyScores(
                analytics_pb2.ListSafetyScoresRequest(near=latlng(BLOCK)), metadata=viewer.md
            )
        ).safety_scores
    )
    assert len(full) == 5
    assert [(-s.score, s.id) for s in full] == sorted((-s.score, s.id) for s in full)
    paged: list[analytics_pb2.SafetyScore] = []
    token = ""
    while True:
        page = await api.analytics.ListSafetyScores(
            analytics_pb2.ListSafetyScoresRequest(near=latlng(BLOCK), page_size=2, page_token=token),
            metadata=viewer.md,
        )
        assert len(page.safety_scores) <= 2
        paged += page.safety_scores
        token = page.next_page_token
        if not token:
            break
    assert [s.id for s in paged] == [s.id for s in full]
    # A token only continues the listing it came from.
    first = await api.analytics.ListSafetyScores(
        analytics_pb2.ListSafetyScoresRequest(near=latlng(BLOCK), page_size=2), metadata=viewer.md
    )
    await expect_invalid(
        api.analytics.ListSafetyScores(
            analytics_pb2.ListSafetyScoresRequest(
                near=latlng(BLOCK), radius_m=9000, page_size=2, page_token=first.next_page_token
            ),
            metadata=viewer.md,
        ),
        "page_token",
    )

    # Expired scores are not listed.
    await db_conn.execute("UPDATE safety_scores SET valid_until = now() - INTERVAL '1 second'")
    gone = await api.analytics.ListSafetyScores(
        analytics_pb2.ListSafetyScoresRequest(near=latlng(BLOCK)), metadata=viewer.md
    )
    assert list(gone.safety_scores) == []


# Incident report ------------------------------------------------------------------


def expected_buckets(
    alerts: list[sos_pb2.SosAlert], start: datetime, interval: timedelta, count: int
) -> list[dict[str, Any]]:
    """What the report should say, from the alerts as the API shows them."""
    out: list[dict[str, Any]] = []
    for k in range(count):
        lo, hi = start + k * interval, start + (k + 1) * interval
        inside = [a for a in alerts if lo <= a.create_time.ToDatetime(tzinfo=UTC) < hi]
        out.append({"start": lo, **report_figures(inside)})
    return out


def as_dicts(resp: analytics_pb2.GetIncidentReportResponse) -> list[dict[str, Any]]:
    return [
        {
            "start": b.start_time.ToDatetime(tzinfo=UTC),
            "alerts": b.alert_count,
            "accepted": b.accepted_count,
            "escalated": b.escalated_count,
            "cancelled": b.cancelled_count,
            "median": b.median_response_time.ToTimedelta().total_seconds()
            if b.HasField("median_response_time")
            else None,
            "p90": b.p90_response_time.ToTimedelta().total_seconds() if b.HasField("p90_response_time") else None,
        }
        for b in resp.buckets
    ]


def same_report(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        for key in ("median", "p90"):
            if w[key] is None:
                assert g[key] is None, (key, g, w)
            else:
                assert g[key] == pytest.approx(w[key], abs=1e-3), (key, g, w)
        assert {k: v for k, v in g.items() if k not in ("median", "p90")} == {
            k: v for k, v in w.items() if k not in ("median", "p90")
        }


async def test_the_incident_report_counts_alerts_per_bucket_for_the_right_department(
    api: Api, db_conn: asyncpg.Connection
) -> None:
    admin = await api.admin()
    metro = await register_department(api, admin, SF, name="Metro PD")
    other = await register_department(api, admin, LA, name="Harbor PD")
    hour = timedelta(hours=1)
    top = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = top - 4 * hour
    # Six alerts in Metro's city, dated into buckets 1 and 3 of five hourly buckets; one
    # in the other department's city, now.
    raised = await raise_many(api, [(offset(SF, 10 * i), common_pb2.INCIDENT_TYPE_ASSAULT) for i in range(6)])
    raised += await raise_many(api, [(LA, common_pb2.INCIDENT_TYPE_THEFT)])
    for (_, alert), (k, m) in zip(raised, [(1, 5), (1, 20), (1, 41), (3, 10), (3, 30), (3, 50)], strict=False):
        await db_conn.execute(
            "UPDATE sos_alerts SET created_at = $2 WHERE id = $1", alert.id, start + k * hour + timedelta(minutes=m)
        )

    async def accept(alert: sos_pb2.SosAlert) -> None:
        await api.agency.AcceptSosAlert(
            agency_pb2.AcceptSosAlertRequest(alert_id=alert.id, assigned_unit="U1", eta_minutes=5), metadata=metro.md
        )

    # Bucket 1: three accepted (response times of about 3 h, minus a few minutes each).
    for _, alert in raised[:3]:
        await accept(alert)
    # Bucket 3: one escalated (deadline forced past) and then accepted, one cancelled,
    # one left waiting.
    escalated = raised[3][1]
    await db_conn.execute("UPDATE sos_alerts SET escalate_at = now() - INTERVAL '1 second' WHERE id = $1", escalated.id)

    async def escalation_level() -> int:
        resp = await api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=escalated.id), metadata=admin.md)
        return resp.alert.escalation_level

    await wait_for(escalation_level, what="the forced escalation")
    await accept(escalated)
    await api.sos.CancelSos(sos_pb2.CancelSosRequest(alert_id=raised[4][1].id), metadata=raised[4][0].md)

    alerts = []
    for _, alert in raised:
        resp = await api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=alert.id), metadata=admin.md)
        alerts.append(resp.alert)
    metro_alerts = [a for a in alerts if a.assigned_agency_id == metro.id]
    assert len(metro_alerts) == 6

    def report(who: Any, department_id: str = "", **fields: Any) -> Awaitable[analytics_pb2.GetIncidentReportResponse]:
        req = analytics_pb2.GetIncidentReportRequest(
            department_id=department_id,
            start_time=ts(start),
            end_time=ts(top + hour),
            interval=duration_pb2.Duration(seconds=3600),
        )
        for name, value in fields.items():
            getattr(req, name).CopyFrom(value)
        return api.analytics.GetIncidentReport(req, metadata=who.md)  # type: ignore[no-any-return]

    want_metro = expected_buckets(metro_alerts, start, hour, 5)
    assert [b["alerts"] for b in want_metro] == [0, 3, 0, 3, 0]
    assert want_metro[1]["accepted"] == 3
    assert want_metro[3]["escalated"] == 1
    assert want_metro[3]["cancelled"] == 1
    assert want_metro[1]["median"] is not None
    assert want_metro[2]["median"] is None

    # The department's API key and its dispatcher get their own department.
    same_report(as_dicts(await report(metro)), want_metro)
    same_report(as_dicts(await report(metro, metro.id)), want_metro)
    dispatcher = await dispatcher_of(api, admin, metro)
    same_report(as_dicts(await report(dispatcher)), want_metro)
    # Admins: one department, or everything.
    same_report(as_dicts(await report(admin, metro.id)), want_metro)
    same_report(as_dicts(await report(admin)), expected_buckets(alerts, start, hour, 5))
    other_report = as_dicts(await report(other))
    assert [b["alerts"] for b in other_report] == [0, 0, 0, 0, 1]

    # The default interval is one day: one bucket for this range.
    day = await api.analytics.GetIncidentReport(
        analytics_pb2.GetIncidentReportRequest(start_time=ts(start), end_time=ts(top + hour)), metadata=metro.md
    )
    assert len(day.buckets) == 1
    assert day.buckets[0].alert_count == 6

    # Refusals.
    await expect_error(report(metro, other.id), grpc.StatusCode.PERMISSION_DENIED, "OTHER_DEPARTMENT")
    await expect_error(report(dispatcher, other.id), grpc.StatusCode.PERMISSION_DENIED, "OTHER_DEPARTMENT")
    person = await api.sign_up()
    await expect_error(report(person), grpc.StatusCode.PERMISSION_DENIED)
    await expect_error(report(admin, NO_SUCH_ID), grpc.StatusCode.NOT_FOUND, "DEPARTMENT_NOT_FOUND")
    await expect_error(
        api.analytics.GetIncidentReport(analytics_pb2.GetIncidentReportRequest()), grpc.StatusCode.UNAUTHENTICATED
    )


async def test_bad_report_ranges_and_intervals_are_refused(api: Api, db_conn: asyncpg.Connection) -> None:
    admin = await api.admin()
    now = datetime.now(UTC)

    def report(**fields: Any) -> Awaitable[analytics_pb2.GetIncidentReportResponse]:
        return api.analytics.GetIncidentReport(  # type: ignore[no-any-return]
            analytics_pb2.GetIncidentReportRequest(**fields), metadata=admin.md
        )

    await expect_invalid(report(end_time=ts(now)), "start_time")
    await expect_invalid(report(start_time=ts(now)), "end_time")
    await expect_invalid(report(start_time=ts(now), end_time=ts(now - timedelta(days=1))), "end_time")
    await expect_invalid(report(start_time=ts(now), end_time=ts(now)), "end_time")
    await expect_invalid(report(start_time=ts(now - timedelta(days=400)), end_time=ts(now)), "end_time")
    await expect_invalid(
        report(start_time=ts(now - timedelta(days=1)), end_time=ts(now), interval=duration_pb2.Duration(seconds=1800)),
        "interval",
    )
    await expect_invalid(
        report(start_time=ts(now - timedelta(days=1)), end_time=ts(now), interval=duration_pb2.Duration(seconds=-3600)),
        "interval",
    )
    await expect_invalid(
        report(start_time=ts(now - timedelta(days=1)), end_time=ts(now), department_id="not-a-uuid"), "department_id"
    )
    await expect_invalid(report(start_time=timestamp_pb2.Timestamp(seconds=-(10**14)), end_time=ts(now)), "start_time")
    # A full year by the hour is allowed (8784 buckets), every one of them present.
    year = await report(
        start_time=ts(now - timedelta(days=366)), end_time=ts(now), interval=duration_pb2.Duration(seconds=3600)
    )
    assert len(year.buckets) == 366 * 24
    assert sum(b.alert_count for b in year.buckets) == 0
    assert not year.buckets[0].HasField("median_response_time")
