"""Long-lived streams (WatchSos, a dispatcher's WatchDispatch) end when the credential
they were opened with ends (revoked API key, suspended account, signed-out session, a
dispatcher taken off the agency), even while nothing happens: a stream must not keep
showing an emergency to someone who may no longer see it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

from securenow.v1 import agency_pb2, auth_pb2, sos_pb2, users_pb2
from tests.dispatch_helpers import SF, dispatcher_of, raise_sos, register_department
from tests.helpers import PASSWORD, Account, Api, error_details

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
