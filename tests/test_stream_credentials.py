"""Long-lived streams (WatchSos, ShareLocation, a dispatcher's WatchDispatch) end when the credential
they were opened with ends (revoked API key, suspended account, signed-out session, a
dispatcher taken off the agency), even while nothing happens: a stream must not keep
showing an emergency to someone who may no longer see it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

from securenow.v1 import agency_pb2, auth_pb2, common_pb2, sos_pb2, users_pb2
from tests.dispatch_helpers import SF, dispatcher_of, location, raise_sos, register_department
from tests.helpers import PASSWORD, Account, Api, error_details, expect_error, wait_for

# The monitor checks every 2 s; this leaves room for a busy machine.
ENDS_WITHIN_S = 15.0


async def open_watch(api: Api, alert_id: str, md: tuple[tuple[str, str], ...]) -> grpc.aio.UnaryStreamCall:
    watch = api.sos.WatchSos(sos_pb2.WatchSosRequest(alert_id=alert_id), metadata=md)
    first = await watch.read()
    assert first.event == "snapshot"
    return watch


def no_change(msg: sos_pb2.WatchSosResponse) -> None:
    assert msg.event == "snapshot", f"unexpected change {msg.event!r}"


async def ended_with(
    stream: grpc.aio.UnaryStreamCall, check: Callable[[Any], None] = no_change
) -> tuple[grpc.StatusCode, str]:
    """Reads until the stream ends; `check` vets each message meanwhile (by default, a
    WatchSos whose alert does not change)."""
    try:
        async with asyncio.timeout(ENDS_WITHIN_S):
            while True:
                msg = await stream.read()
                assert msg is not grpc.aio.EOF, "the stream ended without an error"
                check(msg)
    except grpc.aio.AioRpcError as err:
        return err.code(), error_details(err).reason
    raise AssertionError("unreachable")


async def test_suspending_the_person_ends_their_watch(api: Api) -> None:
    admin = await api.admin()
    await register_department(api, admin, SF)
    person = await api.sign_up()
    alert = await raise_sos(api, person, SF)
    watch = await open_watch(api, alert.id, person.md)

    await api.users.SuspendUser(users_pb2.SuspendUserRequest(user_id=person.id, reason="abuse"), metadata=admin.md)

    assert await ended_with(watch) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_ENDED")


async def test_signing_out_ends_the_watch_of_that_session_only(api: Api) -> None:
    admin = await api.admin()
    await register_department(api, admin, SF)
    person = await api.sign_up()
    alert = await raise_sos(api, person, SF)
    signed_in = await api.auth.SignIn(auth_pb2.SignInRequest(email=person.user.email, password=PASSWORD))
    other_device = Account(person.user, signed_in.access_token, signed_in.refresh_token)
    watch = await open_watch(api, alert.id, person.md)
    kept = await open_watch(api, alert.id, other_device.md)

    await api.auth.SignOut(auth_pb2.SignOutRequest(), metadata=person.md)

    assert await ended_with(watch) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_ENDED")
    # The other device's session is untouched: its stream still hears changes.
    await api.sos.CancelSos(sos_pb2.CancelSosRequest(alert_id=alert.id), metadata=other_device.md)
    async with asyncio.timeout(ENDS_WITHIN_S):
        while (msg := await kept.read()).event == "snapshot":
            pass
    assert msg.event == "cancelled"


async def test_revoking_the_api_key_ends_the_departments_watch(api: Api) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    alert = await raise_sos(api, person, SF)
    watch = await open_watch(api, alert.id, dept.md)

    await api.agency.RevokeApiKey(agency_pb2.RevokeApiKeyRequest(key_id=dept.key_id), metadata=admin.md)

    assert await ended_with(watch) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")


async def open_board(api: Api, dispatcher: Account) -> grpc.aio.UnaryStreamCall:
    """A dispatcher's board, known to be subscribed: an alert raised after opening it
    has arrived."""
    board = api.agency.WatchDispatch(agency_pb2.WatchDispatchRequest(), metadata=dispatcher.md)
    await raise_sos(api, await api.sign_up(), SF)
    async with asyncio.timeout(ENDS_WITHIN_S):
        while (await board.read()).event.WhichOneof("kind") != "alert_raised":
            pass
    return board


async def test_a_dispatcher_taken_off_the_agency_loses_the_board(api: Api) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    dispatcher = await dispatcher_of(api, admin, dept)
    board = await open_board(api, dispatcher)

    await api.users.SetUserRole(
        users_pb2.SetUserRoleRequest(user_id=dispatcher.id, role=users_pb2.USER_ROLE_USER), metadata=admin.md
    )

    assert await ended_with(board, lambda _: None) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_AN_AGENCY_MEMBER")


async def test_signing_out_ends_the_dispatchers_board(api: Api) -> None:
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    dispatcher = await dispatcher_of(api, admin, dept)
    board = await open_board(api, dispatcher)

    await api.auth.SignOut(auth_pb2.SignOutRequest(), metadata=dispatcher.md)

    assert await ended_with(board, lambda _: None) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_ENDED")


async def test_a_dispatcher_taken_off_the_agency_stops_watching_its_alert(api: Api) -> None:
    """WatchSos opened by a dispatcher on an alert of their agency shows that alert only
    while they are its dispatcher; moved to another agency, the stream ends."""
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    elsewhere = await register_department(api, admin, (SF[0] + 5, SF[1]), name="Elsewhere PD")
    dispatcher = await dispatcher_of(api, admin, dept)
    alert = await raise_sos(api, await api.sign_up(), SF)
    watch = await open_watch(api, alert.id, dispatcher.md)

    await api.users.SetUserRole(
        users_pb2.SetUserRoleRequest(user_id=dispatcher.id, role=users_pb2.USER_ROLE_POLICE, agency_id=elsewhere.id),
        metadata=admin.md,
    )

    assert await ended_with(watch) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_AN_AGENCY_MEMBER")


async def test_suspending_the_person_ends_their_location_sharing(api: Api) -> None:
    """A suspended account's open ShareLocation stream is ended by the server, and
    nothing it sent afterwards is stored."""
    admin = await api.admin()
    await register_department(api, admin, SF)
    person = await api.sign_up()
    alert = await raise_sos(api, person, SF)
    phone: asyncio.Queue[sos_pb2.ShareLocationRequest | None] = asyncio.Queue()

    async def fixes():  # type: ignore[no-untyped-def]
        while (item := await phone.get()) is not None:
            yield item

    async def trail() -> list[common_pb2.Location]:
        got = await api.sos.ListAlertLocations(sos_pb2.ListAlertLocationsRequest(alert_id=alert.id), metadata=admin.md)
        return list(got.locations)

    before = len(await trail())
    sharing = api.sos.ShareLocation(fixes(), metadata=person.md)
    phone.put_nowait(sos_pb2.ShareLocationRequest(alert_id=alert.id, location=location((SF[0] + 0.001, SF[1]))))

    stored = await wait_for(lambda: _longer_than(trail, before), what="the first shared fix in the trail")
    await api.users.SuspendUser(users_pb2.SuspendUserRequest(user_id=person.id, reason="abuse"), metadata=admin.md)

    # The phone keeps its stream open; the server ends it.
    async with asyncio.timeout(ENDS_WITHIN_S):
        await expect_error(sharing, grpc.StatusCode.UNAUTHENTICATED, "SESSION_ENDED")
    phone.put_nowait(sos_pb2.ShareLocationRequest(alert_id=alert.id, location=location((SF[0] + 0.002, SF[1]))))
    phone.put_nowait(None)
    assert len(await trail()) == len(stored)


async def _longer_than(read: Callable[[], Any], n: int) -> Any:
    items = await read()
    return items if len(items) > n else None
