"""The dispatcher console in a real browser: a dispatcher works an SOS from the live
board while the person watches, searches the department's incidents, reads its response
report, an admin verifies a provider, errors read well, and a lost dispatch stream shows
a banner and resumes."""

from __future__ import annotations

import asyncio
import math
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from google.protobuf import timestamp_pb2
from playwright.async_api import Locator, Page, expect

from securenow.client import SecureNowClient
from securenow.server.runtime import Runtime
from securenow.v1 import agency_pb2, analytics_pb2, auth_pb2, common_pb2, providers_pb2, search_pb2, sos_pb2, users_pb2
from tests.browser.conftest import Console
from tests.dispatch_helpers import (
    LA,
    SF,
    Cad,
    Department,
    dispatcher_of,
    location,
    raise_sos,
    register_department,
    report_figures,
)
from tests.helpers import PASSWORD, Account, Api, unique_email, unique_phone, wait_for

TIMEOUT_MS = 15_000  # generous for a loaded CI machine; passing steps take milliseconds


async def sign_in(page: Page, email: str, password: str) -> None:
    await page.get_by_test_id("email").fill(email)
    await page.get_by_test_id("password").fill(password)
    await page.get_by_test_id("sign-in-button").click()


async def open_dispatch(console: Console, dispatcher: Account) -> None:
    """Opens the console, signs the dispatcher in and waits for the live board."""
    await console.page.goto(console.url)
    await sign_in(console.page, dispatcher.user.email, PASSWORD)
    await expect(console.page.get_by_test_id("connection-status")).to_have_text("Live", timeout=TIMEOUT_MS)


async def all_events_acked(redis_client: aioredis.Redis, dept: Department) -> bool:
    """True when the department's dispatch stream has no unacknowledged event."""
    info = await redis_client.xpending(f"dispatch:{dept.id}", "cad")
    return int(info["pending"]) == 0


@pytest.fixture
async def phone(runtime: Runtime) -> AsyncIterator[SecureNowClient]:
    """The person's app: the Python SDK, as the issue says the tests use it."""
    async with SecureNowClient(f"127.0.0.1:{runtime.grpc_port}") as client:
        yield client


async def collect(watch: AsyncIterator[sos_pb2.WatchSosResponse], into: list[sos_pb2.WatchSosResponse]) -> None:
    async for msg in watch:
        into.append(msg)


async def share_locations(phone: SecureNowClient, alert_id: str, points: list[tuple[float, float]]) -> None:
    async def fixes() -> AsyncIterator[sos_pb2.ShareLocationRequest]:
        for point in points:
            yield sos_pb2.ShareLocationRequest(alert_id=alert_id, location=location(point))

    await phone.sos.ShareLocation(fixes())


async def test_dispatcher_works_an_sos_live_while_the_person_watches(
    api: Api, runtime: Runtime, console: Console, redis_client: aioredis.Redis, phone: SecureNowClient
) -> None:
    page = console.page
    admin = await api.admin()
    dept = await register_department(api, admin, SF, name="Bay City PD", ack_timeout_s=600)
    dispatcher = await dispatcher_of(api, admin, dept)
    await phone.sign_up(
        email=unique_email(), phone=unique_phone(), password=PASSWORD, first_name="Alice", last_name="Walker"
    )

    await open_dispatch(console, dispatcher)
    await expect(page.get_by_test_id("place")).to_have_text("Bay City PD", timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("board-empty")).to_be_visible()
    await expect(page.get_by_test_id("connection-banner")).to_be_hidden()
    await console.shot("01-dispatcher-signed-in")

    # Raised and watched from the person's app (the SDK's raise_sos and watch_sos); it must
    # reach the open page over WatchDispatch, without a reload.
    await page.evaluate("window.__sameDocument = true")
    alert = await phone.raise_sos(location=location(SF), description="Someone is following me")
    seen: list[sos_pb2.WatchSosResponse] = []
    collector = asyncio.create_task(collect(phone.watch_sos(alert.id), seen))
    try:
        await wait_for(lambda: _first(seen), what="the person's WatchSos snapshot")
        row = page.locator(f'[data-testid="alert-row"][data-alert-id="{alert.id}"]')
        await expect(row).to_be_visible(timeout=TIMEOUT_MS)
        await expect(row.get_by_test_id("alert-description")).to_have_text("Someone is following me")
        await expect(row.get_by_test_id("alert-priority")).to_have_text("High")
        await expect(row.get_by_test_id("alert-type")).to_have_text("Other")
        await expect(row.get_by_test_id("alert-status")).to_have_text("Active")
        await expect(row.get_by_test_id("incident-status")).to_have_text("Reported")
        assert await page.evaluate("window.__sameDocument === true"), "the page reloaded"
        # Processed events are acknowledged (AckDispatchEvent) and the cursor is kept.
        await wait_for(lambda: all_events_acked(redis_client, dept), what="the alert_raised event to be acked")
        cursor = await page.evaluate(f"localStorage.getItem('securenow.dispatch-cursor.{dept.id}')")
        assert isinstance(cursor, str)
        assert re.fullmatch(r"\d+-0", cursor), cursor
        await console.shot("02-alert-on-board")

        # From the keyboard: Enter on the row opens the alert and takes the focus there,
        # so the next Tab reaches its first action, not the next of many rows.
        await row.focus()
        await page.keyboard.press("Shift+Tab")
        await page.keyboard.press("Tab")  # reached from the keyboard: the focus must show
        await expect(row).to_be_focused()
        assert await row.evaluate("r => getComputedStyle(r).outlineStyle") != "none"
        await page.keyboard.press("Enter")
        detail = page.get_by_test_id("alert-detail")
        await expect(detail).to_be_visible()
        await page.keyboard.press("Tab")
        await expect(detail.get_by_test_id("accept-unit")).to_be_focused()
        await expect(detail.get_by_test_id("detail-alert-status")).to_have_text("Active")
        await expect(detail.get_by_test_id("detail-incident-status")).to_have_text("Reported")
        await expect(detail.get_by_test_id("detail-description")).to_have_text("Someone is following me")
        await expect(detail.get_by_test_id("trail")).to_have_attribute("data-points", "1", timeout=TIMEOUT_MS)
        await expect(detail.get_by_test_id("accept-button")).to_be_enabled()
        await expect(detail.get_by_test_id("decline-button")).to_be_enabled()
        await expect(detail.get_by_test_id("on-scene-button")).to_be_disabled()
        await expect(detail.get_by_test_id("resolve-button")).to_be_disabled()

        # The person moves; alert_location events extend the trail live.
        await share_locations(phone, alert.id, [(SF[0] + 0.001, SF[1] + 0.0005), (SF[0] + 0.002, SF[1] + 0.001)])
        await expect(detail.get_by_test_id("trail")).to_have_attribute(
            "data-points", re.compile(r"^([2-9]|\d{2,})$"), timeout=TIMEOUT_MS
        )
        assert await detail.locator("[data-testid=trail] polyline").count() == 1

        # A bad ETA is refused by the server; the console lists the field violation.
        await detail.get_by_test_id("accept-unit").fill("Unit-12")
        await detail.get_by_test_id("accept-eta").fill("5000")
        await detail.get_by_test_id("accept-button").click()
        error = detail.get_by_test_id("detail-error")
        await expect(error).to_be_visible(timeout=TIMEOUT_MS)
        await expect(error).to_contain_text("INVALID_ARGUMENT")
        await expect(detail.get_by_test_id("detail-error-fields")).to_contain_text("eta_minutes")
        await console.shot("03-invalid-eta")

        await detail.get_by_test_id("accept-eta").fill("4")
        # An impatient double click sends one command.
        accepts: list[str] = []
        page.on("request", lambda r: accepts.append(r.url) if r.url.endswith("/AcceptSosAlert") else None)
        await detail.get_by_test_id("accept-button").dblclick()
        await expect(detail.get_by_test_id("detail-incident-status")).to_have_text("Dispatched", timeout=TIMEOUT_MS)
        await expect(detail.get_by_test_id("detail-alert-status")).to_have_text("Responding")
        await expect(detail.get_by_test_id("detail-unit")).to_have_text("Unit-12")
        await expect(detail.get_by_test_id("detail-eta")).to_have_text("4 min")
        await expect(detail.get_by_test_id("accept-button")).to_be_disabled()
        await expect(detail.get_by_test_id("decline-button")).to_be_disabled()
        await expect(detail.get_by_test_id("resolve-button")).to_be_disabled()
        await expect(row.get_by_test_id("alert-status")).to_have_text("Responding")
        assert len(accepts) == 1, accepts
        await console.shot("04-accepted")

        await detail.get_by_test_id("on-scene-button").click()
        await expect(detail.get_by_test_id("detail-incident-status")).to_have_text("On scene", timeout=TIMEOUT_MS)
        await expect(detail.get_by_test_id("on-scene-button")).to_be_disabled()
        await expect(detail.get_by_test_id("resolve-button")).to_be_enabled()

        await detail.get_by_test_id("resolve-notes").fill("Person safe, escorted home")
        await detail.get_by_test_id("resolve-button").click()
        await expect(detail.get_by_test_id("detail-incident-status")).to_have_text("Resolved", timeout=TIMEOUT_MS)
        await expect(detail.get_by_test_id("detail-alert-status")).to_have_text("Resolved")
        await expect(detail.get_by_test_id("detail-resolution")).to_have_text("Person safe, escorted home")
        for button in ("accept-button", "decline-button", "on-scene-button", "resolve-button"):
            await expect(detail.get_by_test_id(button)).to_be_disabled()
        await expect(row.get_by_test_id("alert-status")).to_have_text("Resolved")
        await console.shot("05-resolved")

        # The person saw each step, in order; the SDK's watch ends by itself with the resolution.
        await asyncio.wait_for(collector, 10)
    finally:
        collector.cancel()
    steps = [(m.event, m.incident.status) for m in seen if m.event not in ("snapshot", "location")]
    assert steps == [
        ("accepted", common_pb2.INCIDENT_STATUS_DISPATCHED),
        ("incident_updated", common_pb2.INCIDENT_STATUS_ON_SCENE),
        ("resolved", common_pb2.INCIDENT_STATUS_RESOLVED),
    ], steps
    final = await phone.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=alert.id))
    assert final.alert.status == common_pb2.SOS_STATUS_RESOLVED
    assert final.incident.assigned_unit == "Unit-12"
    assert final.incident.resolution_notes == "Person safe, escorted home"

    # Whatever the person types is shown as text, never run as markup; the person
    # cancels an alert the dispatcher has open: it is marked and can no longer be worked.
    hostile = '<img src=x onerror="window.__xss=1">Help <b>now</b>'
    second = await phone.raise_sos(location=location(SF), description=hostile)
    row2 = page.locator(f'[data-testid="alert-row"][data-alert-id="{second.id}"]')
    await expect(row2.get_by_test_id("alert-description")).to_have_text(hostile, timeout=TIMEOUT_MS)
    await row2.click()
    await expect(detail.get_by_test_id("detail-description")).to_have_text(hostile)
    await expect(detail.get_by_test_id("accept-button")).to_be_enabled()
    reason = "<script>window.__xss=2</script>I am safe"
    await phone.sos.CancelSos(sos_pb2.CancelSosRequest(alert_id=second.id, reason=reason))
    await expect(row2.get_by_test_id("alert-status")).to_have_text("Cancelled", timeout=TIMEOUT_MS)
    await expect(row2.get_by_test_id("alert-note")).to_have_text(f"Cancelled by the person: {reason}")
    await expect(detail.get_by_test_id("detail-alert-status")).to_have_text("Cancelled")
    await expect(detail.get_by_test_id("detail-cancel-reason")).to_have_text(reason)
    for button in ("accept-button", "decline-button", "on-scene-button", "resolve-button"):
        await expect(detail.get_by_test_id(button)).to_be_disabled()
    await expect(page.get_by_test_id("open-count")).to_have_text("0")
    assert await page.evaluate("window.__xss === undefined")
    assert await page.locator("img[src=x], [data-testid=alert-board] b, #app script").count() == 0
    await console.shot("05b-cancelled-by-the-person")

    # A reload rebuilds the board from ListIncidents + GetSosAlert.
    await page.reload()
    row = page.locator(f'[data-testid="alert-row"][data-alert-id="{alert.id}"]')
    await expect(row.get_by_test_id("alert-status")).to_have_text("Resolved", timeout=TIMEOUT_MS)
    await expect(row.get_by_test_id("incident-status")).to_have_text("Resolved")
    await expect(row2.get_by_test_id("alert-status")).to_have_text("Cancelled")
    await expect(page.get_by_test_id("alert-row")).to_have_count(2)
    await expect(page.get_by_test_id("connection-status")).to_have_text("Live", timeout=TIMEOUT_MS)
    assert console.log.page_errors == []


async def test_dispatcher_declines_and_the_alert_moves_to_the_other_agency(api: Api, console: Console) -> None:
    """Two departments cover the place; the one it reached first declines from the console:
    the alert leaves its board (marked as moved, no more actions) and the other gets it."""
    page = console.page
    admin = await api.admin()
    city = await register_department(api, admin, SF, name="Bay City PD", ack_timeout_s=600)
    county = await register_department(api, admin, SF, half_deg=0.5, name="Bay County Sheriff", ack_timeout_s=600)
    dispatchers = {d.id: await dispatcher_of(api, admin, d) for d in (city, county)}
    person = await api.sign_up()
    alert = await raise_sos(api, person, SF, description="Break-in next door")
    first = alert.assigned_agency_id
    (other,) = {city.id, county.id} - {first}

    await open_dispatch(console, dispatchers[first])
    row = page.locator(f'[data-testid="alert-row"][data-alert-id="{alert.id}"]')
    await row.click()
    detail = page.get_by_test_id("alert-detail")
    await expect(detail.get_by_test_id("decline-button")).to_be_enabled(timeout=TIMEOUT_MS)
    await detail.get_by_test_id("decline-reason").fill("No unit available")
    await detail.get_by_test_id("decline-button").click()
    await expect(detail.get_by_test_id("detail-alert-status")).to_have_text(
        "Moved away (Declined: No unit available)", timeout=TIMEOUT_MS
    )
    await expect(row.get_by_test_id("alert-status")).to_have_text("Moved away")
    for button in ("accept-button", "decline-button", "on-scene-button", "resolve-button"):
        await expect(detail.get_by_test_id(button)).to_be_disabled()
    await console.shot("decline-moved-away")

    async def with_the_other() -> bool:
        got = await api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=alert.id), metadata=person.md)
        return got.alert.assigned_agency_id == other

    await wait_for(with_the_other, what="the declined alert to reach the other department")
    assert console.log.page_errors == []


async def test_a_declined_alert_that_nobody_else_can_take_comes_back(api: Api, console: Console) -> None:
    """The only department covering the place declines: the alert is routed straight back
    to it. The console must show it as theirs again, with Accept, not as moved away."""
    page = console.page
    admin = await api.admin()
    dept = await register_department(api, admin, SF, name="Bay City PD", ack_timeout_s=600)
    dispatcher = await dispatcher_of(api, admin, dept)
    person = await api.sign_up()
    alert = await raise_sos(api, person, SF, description="Alarm at the bakery")

    await open_dispatch(console, dispatcher)
    row = page.locator(f'[data-testid="alert-row"][data-alert-id="{alert.id}"]')
    await row.click()
    detail = page.get_by_test_id("alert-detail")
    await detail.get_by_test_id("decline-reason").fill("All units busy")
    await detail.get_by_test_id("decline-button").click()
    await expect(detail.get_by_test_id("detail-message")).to_have_text(
        "Declined, but no other agency can take it: it is back with you", timeout=TIMEOUT_MS
    )
    got = await api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=alert.id), metadata=person.md)
    assert got.alert.assigned_agency_id == dept.id
    await expect(detail.get_by_test_id("detail-alert-status")).to_have_text("Active")
    await expect(row.get_by_test_id("alert-status")).to_have_text("Active")
    await expect(detail.get_by_test_id("accept-button")).to_be_enabled()
    await expect(page.get_by_test_id("open-count")).to_have_text("1")
    assert console.log.page_errors == []


async def search_for(page: Page, text: str, status: str = "Any status", *, submit_with_enter: bool = True) -> None:
    """Fills the search panel and submits it (Enter in the text box, or the Search button)."""
    await page.get_by_test_id("search-query").fill(text)
    await page.get_by_test_id("search-status").select_option(label=status)
    if submit_with_enter:
        await page.get_by_test_id("search-query").press("Enter")
    else:
        await page.get_by_test_id("search-submit").click()


async def test_dispatcher_searches_the_departments_incidents_and_opens_one(api: Api, console: Console) -> None:
    page = console.page
    admin = await api.admin()
    bay = await register_department(api, admin, SF, name="Bay City PD", ack_timeout_s=600)
    harbor = await register_department(api, admin, LA, name="Harbor PD", ack_timeout_s=600)
    dispatcher = await dispatcher_of(api, admin, bay)
    person = await api.sign_up(first_name="Alice")

    await open_dispatch(console, dispatcher)
    await expect(page.get_by_test_id("search-panel")).to_be_visible()
    await expect(page.get_by_test_id("search-more")).to_be_hidden()

    # Two alerts in the department's jurisdiction, one in the other department's that
    # shares the searched word.
    bicycle = await raise_sos(api, person, SF, description="Red bicycle stolen outside the library")
    alarm = await raise_sos(api, person, SF, description="Car alarm ringing for an hour")
    elsewhere = await raise_sos(api, person, LA, description="Blue bicycle taken from a garage")
    for alert in (bicycle, alarm):
        await expect(page.locator(f'[data-testid="alert-row"][data-alert-id="{alert.id}"]')).to_be_visible(
            timeout=TIMEOUT_MS
        )
    await api.agency.AcceptSosAlert(
        agency_pb2.AcceptSosAlertRequest(alert_id=bicycle.id, assigned_unit="Unit-7", eta_minutes=6), metadata=bay.md
    )
    other = await api.search.SearchIncidents(
        search_pb2.SearchIncidentsRequest(query="bicycle"), metadata=harbor.md
    )  # the word does match in the other department
    assert [r.incident.sos_alert_id for r in other.results] == [elsewhere.id]

    # A word: exactly the department's matching incident, as the dispatcher reads it.
    await search_for(page, "bicycles")  # stemmed: "bicycles" finds "bicycle"
    results = page.get_by_test_id("search-results").get_by_test_id("search-result")
    await expect(results).to_have_count(1, timeout=TIMEOUT_MS)
    hit = results.first
    await expect(hit).to_have_attribute("data-alert-id", bicycle.id)
    await expect(hit.get_by_test_id("search-result-description")).to_have_text("Red bicycle stolen outside the library")
    await expect(hit.get_by_test_id("search-result-status")).to_have_text("Dispatched")
    await expect(hit.get_by_test_id("search-result-type")).to_have_text("Other")
    await expect(hit.get_by_test_id("search-result-unit")).to_have_text("Unit-7")
    await expect(hit.get_by_test_id("search-result-time")).not_to_have_text("—")
    await expect(page.get_by_test_id("search-summary")).to_have_text("1 incident, best match first")
    await expect(page.get_by_test_id("search-empty")).to_have_count(0)
    await expect(page.get_by_test_id("search-more")).to_be_hidden()
    await expect(page.get_by_text("Blue bicycle taken from a garage")).to_have_count(0)
    await console.shot("11-search-results")

    # The status filter narrows the same words.
    await search_for(page, "bicycle", "Reported", submit_with_enter=False)
    empty = page.get_by_test_id("search-empty")
    await expect(empty).to_have_text("No reported incidents match “bicycle”.", timeout=TIMEOUT_MS)
    await expect(results).to_have_count(0)
    await search_for(page, "", "Reported")
    await expect(results).to_have_count(1, timeout=TIMEOUT_MS)
    await expect(results.first).to_have_attribute("data-alert-id", alarm.id)
    await expect(results.first.get_by_test_id("search-result-status")).to_have_text("Reported")
    await expect(page.get_by_test_id("search-summary")).to_have_text("1 incident, newest first")

    # A word nothing matches.
    await search_for(page, "zeppelin")
    await expect(empty).to_be_visible(timeout=TIMEOUT_MS)
    await expect(empty).to_have_text("No incidents match “zeppelin”.")
    await expect(results).to_have_count(0)
    await expect(page.get_by_test_id("search-summary")).to_be_hidden()
    await console.shot("12-search-no-match")

    # Clicking a result opens its alert in the detail view and selects its board row.
    await search_for(page, "library")
    await expect(results).to_have_count(1, timeout=TIMEOUT_MS)
    await expect(empty).to_have_count(0)
    await results.first.click()
    detail = page.get_by_test_id("alert-detail")
    await expect(detail).to_be_visible(timeout=TIMEOUT_MS)
    await expect(detail.get_by_test_id("detail-description")).to_have_text("Red bicycle stolen outside the library")
    await expect(detail.get_by_test_id("detail-incident-status")).to_have_text("Dispatched")
    await expect(detail.get_by_test_id("detail-unit")).to_have_text("Unit-7")
    await expect(detail.get_by_test_id("on-scene-button")).to_be_enabled()
    await expect(page.locator(f'[data-testid="alert-row"][data-alert-id="{bicycle.id}"]')).to_have_attribute(
        "aria-current", "true"
    )
    await expect(results.first).to_have_attribute("aria-current", "true")
    await console.shot("13-search-result-opened")

    # Acting on it from the detail view updates the result in place.
    await detail.get_by_test_id("on-scene-button").click()
    await expect(detail.get_by_test_id("detail-incident-status")).to_have_text("On scene", timeout=TIMEOUT_MS)
    await expect(results.first.get_by_test_id("search-result-status")).to_have_text("On scene")

    # A search that cannot reach the server says so.
    await page.route("**/securenow.v1.SearchService/SearchIncidents", lambda route: route.abort())
    await search_for(page, "library")
    error = page.get_by_test_id("search-error")
    await expect(error).to_be_visible(timeout=TIMEOUT_MS)
    await expect(error).to_contain_text("Search failed — UNAVAILABLE")
    await expect(error).to_contain_text("the server cannot be reached")
    await expect(results).to_have_count(0)
    await page.unroute("**/securenow.v1.SearchService/SearchIncidents")
    await page.get_by_test_id("search-submit").click()
    await expect(results).to_have_count(1, timeout=TIMEOUT_MS)
    await expect(error).to_have_count(0)
    assert console.log.page_errors == []


async def test_search_pages_with_more_and_opens_an_alert_not_on_the_board(
    api: Api, console: Console, redis_client: aioredis.Redis
) -> None:
    page = console.page
    admin = await api.admin()
    dept = await register_department(api, admin, SF, ack_timeout_s=600)
    dispatcher = await dispatcher_of(api, admin, dept)
    person = await api.sign_up()
    alerts = [await raise_sos(api, person, SF, description=f"Patrol check number {n:02d}") for n in range(1, 23)]

    await open_dispatch(console, dispatcher)
    await expect(page.get_by_test_id("alert-row")).to_have_count(22, timeout=TIMEOUT_MS)

    # No text: newest first, a page of 20, then "More" for the rest.
    await search_for(page, "", submit_with_enter=False)
    results = page.get_by_test_id("search-result")
    await expect(results).to_have_count(20, timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("search-summary")).to_have_text("Showing 20 of 22 incidents, newest first")
    await expect(results.first.get_by_test_id("search-result-description")).to_have_text("Patrol check number 22")
    more = page.get_by_test_id("search-more")
    await expect(more).to_be_visible()
    await console.shot("14-search-first-page")
    await more.click()
    await expect(results).to_have_count(22, timeout=TIMEOUT_MS)
    await expect(more).to_be_hidden()
    await expect(page.get_by_test_id("search-summary")).to_have_text("22 incidents, newest first")
    descriptions = await page.get_by_test_id("search-result-description").all_inner_texts()
    assert descriptions == [f"Patrol check number {n:02d}" for n in range(22, 0, -1)]

    # An alert the board does not hold is fetched when its result is opened, then shown on
    # the board too. Here the board's initial load fails after a reload (the cursor is past
    # every event, so nothing is redelivered): the board is empty, the search still works.
    await wait_for(lambda: all_events_acked(redis_client, dept), what="the alert_raised events to be acked")
    await page.route("**/securenow.v1.AgencyService/ListIncidents", lambda route: route.abort())
    await page.reload()
    await expect(page.get_by_test_id("app-error")).to_contain_text(
        "Could not load existing incidents", timeout=TIMEOUT_MS
    )
    await expect(page.get_by_test_id("connection-status")).to_have_text("Live", timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("board-empty")).to_be_visible()
    await search_for(page, "patrol 01")
    await expect(results).to_have_count(1, timeout=TIMEOUT_MS)
    await results.first.click()
    detail = page.get_by_test_id("alert-detail")
    await expect(detail.get_by_test_id("detail-description")).to_have_text("Patrol check number 01", timeout=TIMEOUT_MS)
    await expect(detail.get_by_test_id("detail-incident-status")).to_have_text("Reported")
    await expect(detail.get_by_test_id("accept-button")).to_be_enabled()
    row = page.locator(f'[data-testid="alert-row"][data-alert-id="{alerts[0].id}"]')
    await expect(row).to_have_attribute("aria-current", "true")
    await expect(page.get_by_test_id("alert-row")).to_have_count(1)
    await expect(results.first).to_have_attribute("aria-current", "true")
    await console.shot("15-search-opened-off-board")
    # Once the server answers again, the load is retried by itself: the board is whole.
    await page.unroute("**/securenow.v1.AgencyService/ListIncidents")
    await expect(page.get_by_test_id("alert-row")).to_have_count(22, timeout=40_000)
    await expect(page.get_by_test_id("app-error")).to_be_empty()

    # "Clear" empties the panel.
    await page.get_by_test_id("search-clear").click()
    await expect(results).to_have_count(0)
    await expect(more).to_be_hidden()
    await expect(page.get_by_test_id("search-query")).to_have_value("")
    assert console.log.page_errors == []


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def human_duration(seconds: float) -> str:
    """The console's response-time text (report.ts formatDuration; Math.round rounds
    halves up, Python's round() to even)."""
    if seconds < 59.95:
        tenths = math.floor(seconds * 10 + 0.5) / 10
        return f"{int(tenths)} s" if tenths == int(tenths) else f"{tenths:.1f} s"
    s = math.floor(seconds + 0.5)
    days, hours, minutes, secs = s // 86_400, s % 86_400 // 3_600, s % 3_600 // 60, s % 60
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min {secs} s" if secs else f"{minutes} min"


def report_buckets(alerts: list[sos_pb2.SosAlert]) -> dict[str, dict[str, Any]]:
    """What the hourly report should show for these alerts, by bucket start (as the
    console's data-start: ISO 8601 in UTC with milliseconds); quiet hours are absent."""
    by_hour: dict[str, list[sos_pb2.SosAlert]] = {}
    for alert in alerts:
        hour = alert.create_time.ToDatetime(tzinfo=UTC).replace(minute=0, second=0, microsecond=0)
        by_hour.setdefault(hour.strftime("%Y-%m-%dT%H:%M:%S.000Z"), []).append(alert)
    return {start: report_figures(inside) for start, inside in by_hour.items()}


async def expect_counts(row: Locator, want: dict[str, Any]) -> None:
    for key in ("alerts", "accepted", "escalated", "cancelled"):
        await expect(row.get_by_test_id(f"report-{key}")).to_have_text(str(want[key]), timeout=TIMEOUT_MS)


async def test_dispatcher_reads_the_response_report_of_the_department(
    api: Api, console: Console, db_conn: asyncpg.Connection
) -> None:
    page = console.page
    admin = await api.admin()
    bay = await register_department(api, admin, SF, name="Bay City PD", ack_timeout_s=600)
    harbor = await register_department(api, admin, LA, name="Harbor PD", ack_timeout_s=600)
    dispatcher = await dispatcher_of(api, admin, bay)
    person = await api.sign_up(first_name="Alice")

    await open_dispatch(console, dispatcher)
    panel = page.get_by_test_id("report-panel")
    rows, total = panel.get_by_test_id("report-row"), panel.get_by_test_id("report-total")
    # Loaded with the view: the last 7 days by day, every day listed though nothing happened.
    await expect(page.get_by_test_id("report-period")).to_have_value("7d")
    await expect(rows).to_have_count(7, timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("report-caption")).to_contain_text("newest first")
    await expect_counts(total, {"alerts": 0, "accepted": 0, "escalated": 0, "cancelled": 0})
    await expect(rows.first.get_by_test_id("report-median")).to_have_text("—")

    # Five alerts in the department's jurisdiction and one in the other department's.
    ours = [await raise_sos(api, person, SF, description=f"Report check {n}") for n in range(5)]
    elsewhere = await raise_sos(api, person, LA, description="Not ours")
    for alert in ours:
        await expect(page.locator(f'[data-testid="alert-row"][data-alert-id="{alert.id}"]')).to_be_visible(
            timeout=TIMEOUT_MS
        )
    # Three are accepted a few minutes after being raised (dated back so the response
    # times read like real ones), one is cancelled by the person, one still waits.
    accepted, cancelled = ours[:3], ours[3]
    for alert, seconds in zip(accepted, (130, 190, 275), strict=True):
        await db_conn.execute(
            "UPDATE sos_alerts SET created_at = created_at - make_interval(secs => $2) WHERE id = $1",
            alert.id,
            float(seconds),
        )
        await api.agency.AcceptSosAlert(
            agency_pb2.AcceptSosAlertRequest(alert_id=alert.id, assigned_unit="Unit-3", eta_minutes=5), metadata=bay.md
        )
    await api.sos.CancelSos(sos_pb2.CancelSosRequest(alert_id=cancelled.id, reason="False alarm"), metadata=person.md)

    async def current(alert: sos_pb2.SosAlert) -> sos_pb2.SosAlert:
        resp = await api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=alert.id), metadata=admin.md)
        return resp.alert

    ours_now = [await current(a) for a in ours]
    assert {a.assigned_agency_id for a in ours_now} == {bay.id}
    assert (await current(elsewhere)).assigned_agency_id == harbor.id
    want = report_buckets(ours_now)
    want_total = {key: sum(b[key] for b in want.values()) for key in ("alerts", "accepted", "escalated", "cancelled")}
    assert want_total["accepted"] == len(accepted)
    assert want_total["cancelled"] == 1
    # The other department's alert is in the same hours: its own report counts it.
    now = datetime.now(UTC)
    theirs = await api.analytics.GetIncidentReport(
        analytics_pb2.GetIncidentReportRequest(
            start_time=ts(now - timedelta(hours=24)), end_time=ts(now + timedelta(minutes=1))
        ),
        metadata=harbor.md,
    )
    assert sum(b.alert_count for b in theirs.buckets) == 1

    # The last 24 hours by hour: the department's figures only, newest bucket first.
    await page.get_by_test_id("report-period").select_option(label="Last 24 hours (hourly)")
    await expect(rows).to_have_count(24, timeout=TIMEOUT_MS)
    await expect_counts(total, want_total)
    await expect(total.get_by_test_id("report-median")).to_have_text("—")
    await expect(total.get_by_test_id("report-p90")).to_have_text("—")
    starts = [await row.get_attribute("data-start") or "" for row in await rows.all()]
    assert starts == sorted(starts, reverse=True), starts
    assert set(want) <= set(starts), (want, starts)
    for start, bucket in want.items():
        row = panel.locator(f'[data-testid="report-row"][data-start="{start}"]')
        await expect_counts(row, bucket)
        for key in ("median", "p90"):
            cell = row.get_by_test_id(f"report-{key}")
            if bucket[key] is None:
                await expect(cell).to_have_text("—")
            else:
                await expect(cell).to_have_text(human_duration(bucket[key]))
                assert float(await cell.get_attribute("data-seconds") or "nan") == pytest.approx(bucket[key])
    assert any(b["median"] is not None for b in want.values())
    quiet = next(row for row, start in zip(await rows.all(), starts, strict=True) if start not in want)
    await expect_counts(quiet, {"alerts": 0, "accepted": 0, "escalated": 0, "cancelled": 0})
    await expect(quiet.get_by_test_id("report-median")).to_have_text("—")
    await console.shot("16-report-last-24-hours")

    # One more alert: Refresh shows it (the report does not poll).
    await raise_sos(api, person, SF, description="Report check, one more")
    await page.get_by_test_id("report-refresh").click()
    await expect(total.get_by_test_id("report-alerts")).to_have_text(str(want_total["alerts"] + 1), timeout=TIMEOUT_MS)
    await expect(total.get_by_test_id("report-accepted")).to_have_text(str(want_total["accepted"]))
    await expect(rows).to_have_count(24)
    await console.shot("17-report-refreshed")

    # A report that cannot be fetched says so, instead of showing stale figures.
    await page.route("**/securenow.v1.AnalyticsService/GetIncidentReport", lambda route: route.abort())
    await page.get_by_test_id("report-refresh").click()
    error = page.get_by_test_id("report-error")
    await expect(error).to_contain_text("Could not load the report — UNAVAILABLE", timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("report-table")).to_be_hidden()
    await console.shot("18-report-error")
    await page.unroute("**/securenow.v1.AnalyticsService/GetIncidentReport")
    await page.get_by_test_id("report-refresh").click()
    await expect(page.get_by_test_id("report-table")).to_be_visible(timeout=TIMEOUT_MS)
    await expect(error).to_have_count(0)
    await expect(total.get_by_test_id("report-alerts")).to_have_text(str(want_total["alerts"] + 1))
    assert console.log.page_errors == []


async def test_admin_verifies_a_pending_provider(api: Api, console: Console) -> None:
    page = console.page
    admin = await api.admin()
    owner = await api.sign_up(users_pb2.USER_ROLE_PROVIDER)
    created = await api.providers.CreateProvider(
        providers_pb2.CreateProviderRequest(
            request_id=str(uuid.uuid4()),
            provider=providers_pb2.Provider(
                company_name="Night Owl Patrols",
                business_type=providers_pb2.PROVIDER_TYPE_SECURITY_GUARD,
                license_number="CA-PPO-777",
                pricing=providers_pb2.Pricing(
                    rates=[
                        providers_pb2.ServiceRate(
                            service_type=providers_pb2.SERVICE_TYPE_SECURITY_GUARD,
                            hourly_rate=common_pb2.Money(currency_code="USD", units=40),
                        )
                    ]
                ),
            ),
        ),
        metadata=owner.md,
    )
    provider_id = created.provider.id
    assert created.provider.verification_status == common_pb2.VERIFICATION_STATUS_PENDING

    await page.goto(console.url)
    await sign_in(page, admin.user.email, PASSWORD)
    row = page.locator(f'[data-testid="provider-row"][data-provider-id="{provider_id}"]')
    await expect(row).to_be_visible(timeout=TIMEOUT_MS)
    await expect(row.get_by_test_id("provider-company")).to_have_text("Night Owl Patrols")
    await expect(row.get_by_test_id("provider-status")).to_have_text("Pending")
    await console.shot("06-admin-pending-providers")

    await row.get_by_test_id("provider-note").fill("License and insurance checked")
    await row.get_by_test_id("verify-button").click()
    await expect(row.get_by_test_id("provider-status")).to_have_text("Verified", timeout=TIMEOUT_MS)
    await expect(row.get_by_test_id("verify-button")).to_be_disabled()
    await console.shot("07-admin-provider-verified")

    got = await api.providers.GetProvider(providers_pb2.GetProviderRequest(provider_id=provider_id), metadata=admin.md)
    assert got.provider.verification_status == common_pb2.VERIFICATION_STATUS_VERIFIED

    # Refreshed, the pending list no longer has it.
    await page.get_by_test_id("providers-refresh").click()
    await expect(row).to_have_count(0, timeout=TIMEOUT_MS)
    assert console.log.page_errors == []


async def test_bad_sign_in_shows_a_readable_error(api: Api, console: Console) -> None:
    page = console.page
    user = await api.sign_up()
    await page.goto(console.url)
    await sign_in(page, user.user.email, "not-the-password-1")
    error = page.get_by_test_id("sign-in-error")
    await expect(error).to_be_visible(timeout=TIMEOUT_MS)
    await expect(error).to_contain_text("Sign-in failed")
    await expect(error).to_contain_text("UNAUTHENTICATED")
    await expect(page.get_by_test_id("sign-in-form")).to_be_visible()
    await console.shot("08-bad-sign-in")

    # The right password for an account without a console role says so.
    await sign_in(page, user.user.email, PASSWORD)
    await expect(page.get_by_test_id("no-console")).to_be_visible(timeout=TIMEOUT_MS)
    await page.get_by_test_id("sign-out").click()
    await expect(page.get_by_test_id("sign-in-notice")).to_have_text("You are signed out.", timeout=TIMEOUT_MS)
    assert console.log.page_errors == []


async def test_lost_dispatch_stream_shows_a_banner_and_resumes_from_the_cursor(
    api: Api, runtime: Runtime, console: Console
) -> None:
    page = console.page
    admin = await api.admin()
    dept = await register_department(api, admin, SF, ack_timeout_s=600)
    dispatcher = await dispatcher_of(api, admin, dept)
    person = await api.sign_up()

    await page.goto(console.url)
    await sign_in(page, dispatcher.user.email, PASSWORD)
    status, banner = page.get_by_test_id("connection-status"), page.get_by_test_id("connection-banner")
    await expect(status).to_have_text("Live", timeout=TIMEOUT_MS)
    first = await raise_sos(api, person, SF, description="first")
    await expect(page.locator(f'[data-alert-id="{first.id}"]')).to_be_visible(timeout=TIMEOUT_MS)

    # The network to the stream goes away, then the server ends the open stream.
    await page.route("**/securenow.v1.AgencyService/WatchDispatch", lambda route: route.abort())
    runtime.app.dispatch_hub.close_all()
    await expect(banner).to_be_visible(timeout=TIMEOUT_MS)
    await expect(banner).to_contain_text("Connection lost — reconnecting…")
    await expect(status).to_have_text("Reconnecting…")
    await console.shot("09-connection-lost")

    # Cancelled while the console cannot hear it: accepting it is refused, and the
    # detail then shows the alert as it is, instead of an "Active" one to accept again.
    await api.sos.CancelSos(sos_pb2.CancelSosRequest(alert_id=first.id, reason="Found my friend"), metadata=person.md)
    first_row = page.locator(f'[data-testid="alert-row"][data-alert-id="{first.id}"]')
    await first_row.click()
    detail = page.get_by_test_id("alert-detail")
    await expect(detail.get_by_test_id("detail-alert-status")).to_have_text("Active")
    await detail.get_by_test_id("accept-unit").fill("Unit-5")
    await detail.get_by_test_id("accept-button").click()
    error = detail.get_by_test_id("detail-error")
    await expect(error).to_contain_text("FAILED_PRECONDITION", timeout=TIMEOUT_MS)
    await expect(error).to_contain_text("cancelled")
    await expect(detail.get_by_test_id("detail-alert-status")).to_have_text("Cancelled", timeout=TIMEOUT_MS)
    await expect(detail.get_by_test_id("detail-cancel-reason")).to_have_text("Found my friend")
    await expect(detail.get_by_test_id("accept-button")).to_be_disabled()
    await expect(first_row.get_by_test_id("alert-status")).to_have_text("Cancelled")

    # Raised while the console is away: delivered when it resumes from its cursor.
    during = await raise_sos(api, person, SF, description="raised during the outage")
    await page.unroute("**/securenow.v1.AgencyService/WatchDispatch")
    await expect(banner).to_be_hidden(timeout=20_000)
    await expect(status).to_have_text("Live")
    row = page.locator(f'[data-testid="alert-row"][data-alert-id="{during.id}"]')
    await expect(row.get_by_test_id("alert-description")).to_have_text("raised during the outage", timeout=TIMEOUT_MS)
    await expect(page.locator('[data-testid="alert-row"]')).to_have_count(2)
    await expect(first_row.get_by_test_id("alert-status")).to_have_text("Cancelled")
    await console.shot("10-reconnected")

    # The dispatcher leaves the agency: live updates stop for good, and the console stops
    # offering the board (on the spot, and after a reload) instead of a dead one.
    await api.users.SetUserRole(
        users_pb2.SetUserRoleRequest(user_id=dispatcher.id, role=users_pb2.USER_ROLE_USER), metadata=admin.md
    )
    await expect(page.get_by_test_id("no-console")).to_be_visible(timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("alert-board")).to_have_count(0)
    await page.reload()
    await expect(page.get_by_test_id("no-console")).to_be_visible(timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("alert-board")).to_have_count(0)
    assert console.log.page_errors == []


async def test_a_silent_dispatch_stream_counts_as_lost_and_is_reopened(api: Api, console: Console) -> None:
    page = console.page
    admin = await api.admin()
    dept = await register_department(api, admin, SF, ack_timeout_s=600)
    dispatcher = await dispatcher_of(api, admin, dept)
    person = await api.sign_up()

    # The console gives up on a stream after 45 s without a message (the server sends a
    # heartbeat every 15 s). Here 2 s: the open stream, quiet for 15 s, reads as a
    # connection that died without being closed.
    await page.goto(console.url)
    await page.evaluate("localStorage.setItem('securenow.dispatch-watchdog-ms', '2000')")
    await sign_in(page, dispatcher.user.email, PASSWORD)
    status, banner = page.get_by_test_id("connection-status"), page.get_by_test_id("connection-banner")
    await expect(status).to_have_text("Live", timeout=TIMEOUT_MS)
    await expect(banner).to_be_visible(timeout=TIMEOUT_MS)
    await expect(banner).to_contain_text("Connection lost — reconnecting…")
    await expect(banner).to_contain_text("no message from the server for 2 s")
    await console.shot("19-silent-stream")

    # It reconnects by itself, and alerts still arrive.
    await expect(status).to_have_text("Live", timeout=TIMEOUT_MS)
    alert = await raise_sos(api, person, SF, description="after a silent stream")
    row = page.locator(f'[data-testid="alert-row"][data-alert-id="{alert.id}"]')
    await expect(row.get_by_test_id("alert-description")).to_have_text("after a silent stream", timeout=TIMEOUT_MS)
    assert console.log.page_errors == []


async def _first(items: list[sos_pb2.WatchSosResponse]) -> sos_pb2.WatchSosResponse | None:
    return items[0] if items else None


async def test_access_token_is_refreshed_before_it_expires(api: Api, console: Console) -> None:
    page = console.page
    admin = await api.admin()
    dept = await register_department(api, admin, SF, ack_timeout_s=600)
    dispatcher = await dispatcher_of(api, admin, dept)
    await open_dispatch(console, dispatcher)
    before = await page.evaluate("JSON.parse(sessionStorage.getItem('securenow.session'))")
    assert before["accessToken"]
    assert before["refreshToken"]

    # Pretend the access token expires in 20 s: the reloaded console refreshes it first.
    await page.evaluate(
        "(() => { const s = JSON.parse(sessionStorage.getItem('securenow.session'));"
        " s.expiresAt = Date.now() + 20000; sessionStorage.setItem('securenow.session', JSON.stringify(s)); })()"
    )
    await page.reload()
    await page.wait_for_function(
        "old => JSON.parse(sessionStorage.getItem('securenow.session') || '{}').refreshToken !== old",
        arg=before["refreshToken"],
        timeout=TIMEOUT_MS,
    )
    after = await page.evaluate("JSON.parse(sessionStorage.getItem('securenow.session'))")
    assert after["accessToken"] != before["accessToken"]
    assert after["expiresAt"] >= before["expiresAt"]  # a full lifetime again
    await expect(page.get_by_test_id("connection-status")).to_have_text("Live", timeout=TIMEOUT_MS)
    me = await api.users.GetUser(
        users_pb2.GetUserRequest(user_id="me"), metadata=(("authorization", f"Bearer {after['accessToken']}"),)
    )
    assert me.user.id == dispatcher.id

    # An access token the server refuses although its expiry is still ahead (the browser's
    # clock lags the server's; the server's signing key changed): calls renew it once and
    # go through, instead of every panel reading UNAUTHENTICATED.
    status, banner = page.get_by_test_id("connection-status"), page.get_by_test_id("connection-banner")
    await page.evaluate(REFUSED_ACCESS_TOKEN)
    await page.reload()
    await expect(status).to_have_text("Live", timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("place")).to_have_text(dept.department.department_name, timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("report-table")).to_be_visible(timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("report-error")).to_have_count(0)
    await expect(page.get_by_test_id("app-error")).to_be_empty()
    await search_for(page, "")
    await expect(page.get_by_test_id("search-empty")).to_be_visible(timeout=TIMEOUT_MS)

    # The same while the server cannot renew it for a moment: live updates keep retrying
    # (not "stopped" for good) and come back once it can.
    await page.evaluate(REFUSED_ACCESS_TOKEN)
    await page.route("**/securenow.v1.AuthService/RefreshToken", lambda route: route.abort())
    await page.reload()
    await expect(banner).to_contain_text("Connection lost — reconnecting…", timeout=TIMEOUT_MS)
    await page.unroute("**/securenow.v1.AuthService/RefreshToken")
    await expect(status).to_have_text("Live", timeout=20_000)
    await expect(banner).to_be_hidden()

    # The browser's clock two hours fast: the token's lifetime counts from when it came,
    # so it is renewed once, not before every call.
    refreshes: list[str] = []
    page.on("request", lambda r: refreshes.append(r.url) if r.url.endswith("/RefreshToken") else None)
    await page.clock.set_system_time(datetime.now(UTC) + timedelta(hours=2))
    await page.reload()
    await expect(status).to_have_text("Live", timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("report-table")).to_be_visible(timeout=TIMEOUT_MS)
    await search_for(page, "")
    await expect(page.get_by_test_id("search-empty")).to_be_visible(timeout=TIMEOUT_MS)
    await page.get_by_test_id("report-refresh").click()
    await expect(page.get_by_test_id("report-refresh")).to_be_enabled(timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("report-error")).to_have_count(0)
    assert len(refreshes) == 1, refreshes

    # The session ends elsewhere (signed out from another device, revoked): the console
    # says so and goes back to the sign-in form, forgetting the tokens.
    token = await page.evaluate("JSON.parse(sessionStorage.getItem('securenow.session')).accessToken")
    await api.auth.SignOut(auth_pb2.SignOutRequest(), metadata=(("authorization", f"Bearer {token}"),))
    await expect(page.get_by_test_id("sign-in-notice")).to_have_text(
        "Your session has ended. Please sign in again.", timeout=TIMEOUT_MS
    )
    await expect(page.get_by_test_id("sign-in-form")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('securenow.session')") is None
    assert console.log.page_errors == []


# Replaces the stored access token with one the server refuses, due to expire in 10 min.
REFUSED_ACCESS_TOKEN = (
    "(() => { const s = JSON.parse(sessionStorage.getItem('securenow.session'));"
    " s.accessToken = 'refused.by.the.server'; s.expiresAt = Date.now() + 600000;"
    " sessionStorage.setItem('securenow.session', JSON.stringify(s)); })()"
)


FIJI = (-17.7, 179.8)  # Taveuni, a few kilometres west of the antimeridian


async def test_location_trail_stays_local_across_the_antimeridian(
    api: Api, console: Console, phone: SecureNowClient
) -> None:
    """A person walking east over the 180th meridian (longitude 179.9... -> -179.9...)
    moved a few kilometres, not around the world: the trail keeps going east."""
    page = console.page
    admin = await api.admin()
    dept = await register_department(api, admin, FIJI, half_deg=0.19, name="Taveuni Police", ack_timeout_s=600)
    dispatcher = await dispatcher_of(api, admin, dept)
    await phone.sign_up(
        email=unique_email(), phone=unique_phone(), password=PASSWORD, first_name="Mere", last_name="Tui"
    )
    alert = await phone.raise_sos(location=location((FIJI[0], 179.97)), description="Lost on the trail")

    # East in steps of about 2 km from where it was raised, over the meridian.
    east = [(FIJI[0], lng) for lng in (179.99, -179.99, -179.97)]
    await share_locations(phone, alert.id, east)

    async def whole_trail() -> bool:
        got = await phone.sos.ListAlertLocations(sos_pb2.ListAlertLocationsRequest(alert_id=alert.id))
        return len(got.locations) == 4

    await wait_for(whole_trail, what="the raise point and three fixes to be stored")
    await open_dispatch(console, dispatcher)
    await page.locator(f'[data-testid="alert-row"][data-alert-id="{alert.id}"]').click()
    trail = page.get_by_test_id("alert-detail").get_by_test_id("trail")
    await expect(trail).to_have_attribute("data-points", "4", timeout=TIMEOUT_MS)
    points = await trail.locator("polyline").get_attribute("points") or ""
    xs = [float(pair.split(",")[0]) for pair in points.split()]
    assert len(xs) == 4, points
    assert xs == sorted(xs), f"the trail does not keep going east: {points}"
    assert xs[-1] - xs[0] > 100, f"the trail does not fill the box: {points}"
    title = await trail.locator("title").text_content() or ""
    match = re.search(r"spanning about (\d+) m", title)
    assert match, title
    assert 5_000 < int(match.group(1)) < 7_000, title  # 0.06 degrees of longitude at 17.7 S
    await console.shot("20-trail-antimeridian")
    assert console.log.page_errors == []


async def test_a_reload_puts_every_open_alert_back_on_the_board(
    api: Api, console: Console, redis_client: aioredis.Redis
) -> None:
    """More alerts than one page of ListIncidents: after a reload the board still holds
    the oldest open one (a unit is on its way), not only the newest hundred."""
    page = console.page
    admin = await api.admin()
    dept = await register_department(api, admin, SF, ack_timeout_s=600)
    dispatcher = await dispatcher_of(api, admin, dept)
    person = await api.sign_up()
    oldest = await raise_sos(api, person, SF, description="Oldest, unit on the way")
    await api.agency.AcceptSosAlert(
        agency_pb2.AcceptSosAlertRequest(alert_id=oldest.id, assigned_unit="Unit-1", eta_minutes=9), metadata=dept.md
    )
    for batch in range(4):
        await asyncio.gather(*(raise_sos(api, person, SF, description=f"Newer {batch}-{n}") for n in range(26)))
    total = 1 + 4 * 26

    await open_dispatch(console, dispatcher)
    rows = page.get_by_test_id("alert-row")
    await expect(rows).to_have_count(total, timeout=TIMEOUT_MS)
    await wait_for(lambda: all_events_acked(redis_client, dept), what="every event to be acked")

    # The cursor is past every event: the board comes from the initial load alone.
    await page.reload()
    await expect(page.get_by_test_id("connection-status")).to_have_text("Live", timeout=TIMEOUT_MS)
    await expect(rows).to_have_count(total, timeout=TIMEOUT_MS)
    row = page.locator(f'[data-testid="alert-row"][data-alert-id="{oldest.id}"]')
    await expect(row.get_by_test_id("incident-status")).to_have_text("Dispatched")
    await expect(page.get_by_test_id("open-count")).to_have_text(str(total))
    await expect(page.get_by_test_id("app-error")).to_be_empty()
    assert console.log.page_errors == []


async def test_the_board_dates_an_alert_raised_before_today(
    api: Api, console: Console, db_conn: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    """A board left open overnight: an alert of an earlier day shows its date, not only
    a time that reads as today's."""
    page = console.page
    admin = await api.admin()
    dept = await register_department(api, admin, SF, ack_timeout_s=600)
    dispatcher = await dispatcher_of(api, admin, dept)
    person = await api.sign_up()
    earlier = await raise_sos(api, person, SF, description="From two days ago")
    today = await raise_sos(api, person, SF, description="From today")
    # The CAD took both events (so the console's stream brings no copy of the alert as
    # it was raised), and the first alert is made two days old.
    cad = Cad(api.channel, dept.api_key)
    try:
        for msg in await cad.events_until(today.id):
            cad.ack(msg.event_id)
        await wait_for(lambda: all_events_acked(redis_client, dept), what="both events to be acked")
    finally:
        await cad.close()
    raised = (datetime.now(UTC) - timedelta(days=2)).replace(hour=12, minute=0, second=0, microsecond=0)
    await db_conn.execute("UPDATE sos_alerts SET created_at = $2 WHERE id = $1", uuid.UUID(earlier.id), raised)

    await open_dispatch(console, dispatcher)
    old_time = page.locator(f'[data-testid="alert-row"][data-alert-id="{earlier.id}"] [data-testid="alert-time"]')
    await expect(old_time).to_contain_text(f"{raised:%b} {raised.day}", timeout=TIMEOUT_MS)  # the console runs in UTC
    new_time = page.locator(f'[data-testid="alert-row"][data-alert-id="{today.id}"] [data-testid="alert-time"]')
    await expect(new_time).to_have_text(re.compile(r"^\d\d:\d\d:\d\d( [AP]M)?$"))


# Counts the chimes the page plays: each Web Audio oscillator started is one tone.
COUNT_TONES = """
window.__tones = 0;
const start = OscillatorNode.prototype.start;
OscillatorNode.prototype.start = function (...args) { window.__tones += 1; return start.apply(this, args); };
"""


async def test_a_new_alert_chimes_and_shows_in_the_title_until_opened(api: Api, console: Console) -> None:
    """A dispatcher looking at another tab still notices an SOS: a chime (unless muted)
    and the count of new alerts in the title; opening the alert makes it no longer new."""
    page = console.page
    await page.add_init_script(COUNT_TONES)
    admin = await api.admin()
    dept = await register_department(api, admin, SF, ack_timeout_s=600)
    dispatcher = await dispatcher_of(api, admin, dept)
    person = await api.sign_up()
    earlier = await raise_sos(api, person, SF, description="Raised before the console opened")

    await open_dispatch(console, dispatcher)
    await expect(page.get_by_test_id("alert-row")).to_have_count(1, timeout=TIMEOUT_MS)
    base_title = await page.title()
    assert "New SOS" not in base_title  # the alert that was already there is not news
    assert await page.evaluate("window.__tones") == 0
    await expect(page.get_by_test_id("sound-toggle")).to_have_text("Sound on")

    first = await raise_sos(api, person, SF, description="First new one")
    row = page.locator(f'[data-testid="alert-row"][data-alert-id="{first.id}"]')
    await expect(row.get_by_test_id("alert-new")).to_be_visible(timeout=TIMEOUT_MS)
    await expect(page).to_have_title(f"(1) New SOS · {base_title}")
    await wait_for(lambda: _tones(page, 2), what="the chime (two tones)")
    second = await raise_sos(api, person, SF, description="Second new one")
    await expect(page).to_have_title(f"(2) New SOS · {base_title}", timeout=TIMEOUT_MS)
    await wait_for(lambda: _tones(page, 4), what="a chime for the second alert")
    old_row = page.locator(f'[data-testid="alert-row"][data-alert-id="{earlier.id}"]')
    await expect(old_row.get_by_test_id("alert-new")).to_have_count(0)
    await console.shot("20-new-alerts")

    await row.click()
    await expect(page.get_by_test_id("alert-detail")).to_be_visible()
    await expect(row.get_by_test_id("alert-new")).to_have_count(0)
    await expect(page).to_have_title(f"(1) New SOS · {base_title}")
    # A new alert cancelled by the person is no longer waiting for anyone.
    await api.sos.CancelSos(sos_pb2.CancelSosRequest(alert_id=second.id, reason="safe now"), metadata=person.md)
    await expect(page).to_have_title(base_title, timeout=TIMEOUT_MS)

    # Muted (kept across reloads): the title still counts, no chime plays.
    await page.get_by_test_id("sound-toggle").click()
    await expect(page.get_by_test_id("sound-toggle")).to_have_text("Sound off")
    await page.reload()
    await expect(page.get_by_test_id("connection-status")).to_have_text("Live", timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("sound-toggle")).to_have_text("Sound off")
    third = await raise_sos(api, person, SF, description="Third, muted")
    third_row = page.locator(f'[data-testid="alert-row"][data-alert-id="{third.id}"]')
    await expect(third_row.get_by_test_id("alert-new")).to_be_visible(timeout=TIMEOUT_MS)
    await expect(page).to_have_title(f"(1) New SOS · {base_title}")
    assert await page.evaluate("window.__tones") == 0
    assert console.log.page_errors == []


async def _tones(page: Page, at_least: int) -> bool:
    return bool(await page.evaluate("window.__tones") >= at_least)


async def test_a_duplicated_tab_shares_the_renewed_session(api: Api, console: Console) -> None:
    """A duplicated tab starts with a copy of the tab's sessionStorage, so both hold the
    same single-use refresh token. Renewing it in both would replay it, and the server
    revokes a session whose refresh token comes back: both tabs would be thrown out. One
    tab renews, the other takes the result."""
    page = console.page
    admin = await api.admin()
    dept = await register_department(api, admin, SF, ack_timeout_s=600)
    dispatcher = await dispatcher_of(api, admin, dept)
    await open_dispatch(console, dispatcher)
    stored = await page.evaluate("JSON.parse(sessionStorage.getItem('securenow.session'))")
    stored["expiresAt"] = await page.evaluate("Date.now() + 20000")  # both renew as they load
    duplicate = await page.context.new_page()
    duplicate.on("pageerror", console.log.page_error)
    await duplicate.goto(console.url)
    for tab in (page, duplicate):
        await tab.evaluate("s => sessionStorage.setItem('securenow.session', JSON.stringify(s))", stored)
    await asyncio.gather(page.reload(), duplicate.reload())

    renewed = []
    for tab in (page, duplicate):
        await tab.wait_for_function(
            "old => JSON.parse(sessionStorage.getItem('securenow.session') || '{}').refreshToken !== old",
            arg=stored["refreshToken"],
            timeout=TIMEOUT_MS,
        )
        await expect(tab.get_by_test_id("connection-status")).to_have_text("Live", timeout=TIMEOUT_MS)
        renewed.append(await tab.evaluate("JSON.parse(sessionStorage.getItem('securenow.session'))"))
    assert renewed[0]["refreshToken"] == renewed[1]["refreshToken"]
    me = await api.users.GetUser(
        users_pb2.GetUserRequest(user_id="me"), metadata=(("authorization", f"Bearer {renewed[1]['accessToken']}"),)
    )
    assert me.user.id == dispatcher.id
    for tab in (page, duplicate):
        await expect(tab.get_by_test_id("sign-in-form")).to_have_count(0)
        await expect(tab.get_by_test_id("connection-status")).to_have_text("Live")

    # Signing out in one ends the session in both.
    await page.get_by_test_id("sign-out").click()
    await expect(page.get_by_test_id("sign-in-notice")).to_have_text("You are signed out.", timeout=TIMEOUT_MS)
    await expect(duplicate.get_by_test_id("sign-in-notice")).to_have_text(
        "You signed out in another tab.", timeout=TIMEOUT_MS
    )
    assert await duplicate.evaluate("sessionStorage.getItem('securenow.session')") is None
    assert console.log.page_errors == []
