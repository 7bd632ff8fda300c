"""AuthService: sign-up, sign-in, refresh rotation with reuse detection, sign-out."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable

import asyncpg
import grpc
import jwt

from securenow.v1 import auth_pb2, auth_pb2_grpc, users_pb2
from tests.conftest import extra_replica
from tests.helpers import PASSWORD, Api, expect_error, unique_email, unique_phone


async def test_sign_up_returns_account_and_working_tokens(api: Api) -> None:
    email = unique_email()
    resp = await api.auth.SignUp(
        auth_pb2.SignUpRequest(
            email=email.upper(), phone="+1 (555) 010-9999", first_name="Maya", last_name="Lin", password=PASSWORD
        )
    )
    assert resp.user.email == email  # stored lower-case
    assert resp.user.phone == "+15550109999"
    assert resp.user.role == users_pb2.USER_ROLE_USER
    assert resp.user.status == users_pb2.USER_STATUS_ACTIVE
    assert resp.access_token
    assert resp.refresh_token
    assert resp.access_token_expire_time.seconds > 0
    me = await api.users.GetUser(
        users_pb2.GetUserRequest(user_id="me"), metadata=(("authorization", f"Bearer {resp.access_token}"),)
    )
    assert me.user.id == resp.user.id


async def test_sign_up_rejects_bad_input_naming_every_field(api: Api) -> None:
    err = await expect_error(
        api.auth.SignUp(auth_pb2.SignUpRequest(email="not-an-email", phone="123", first_name="", password="short")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(err.fields) == {"email", "phone", "first_name", "last_name", "password"}


async def test_sign_up_cannot_choose_admin_role(api: Api) -> None:
    err = await expect_error(
        api.auth.SignUp(
            auth_pb2.SignUpRequest(
                email=unique_email(),
                phone=unique_phone(),
                first_name="E",
                last_name="Vil",
                password=PASSWORD,
                role=users_pb2.USER_ROLE_ADMIN,
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "role" in err.fields


async def test_duplicate_email_is_already_exists(api: Api) -> None:
    first = await api.sign_up()
    err = await expect_error(api.sign_up(email=first.user.email), grpc.StatusCode.ALREADY_EXISTS, "ACCOUNT_EXISTS")
    assert err.metadata == {"field": "email"}


def sign_up_request(request_id: str, **changes: str) -> auth_pb2.SignUpRequest:
    fields = {"email": unique_email(), "phone": unique_phone(), "first_name": "Ana", "last_name": "Ruiz"}
    fields |= {"password": PASSWORD, **changes}
    return auth_pb2.SignUpRequest(request_id=request_id, **fields)


async def test_a_retried_sign_up_gets_the_account_it_created(api: Api, db_conn: asyncpg.Connection) -> None:
    """The phone lost the answer and sends the same request again: same account, signed
    in again (a new session whose tokens work), not ALREADY_EXISTS."""
    req = sign_up_request(str(uuid.uuid4()))
    first = await api.auth.SignUp(req)
    again = await api.auth.SignUp(req)
    assert again.user == first.user
    assert again.refresh_token != first.refresh_token
    for resp in (first, again):
        me = await api.users.GetUser(
            users_pb2.GetUserRequest(user_id="me"), metadata=(("authorization", f"Bearer {resp.access_token}"),)
        )
        assert me.user.id == first.user.id
    assert await db_conn.fetchval("SELECT count(*) FROM users WHERE email = $1", req.email) == 1
    actions = await db_conn.fetch(
        "SELECT action, details FROM audit_log WHERE resource_id = $1 ORDER BY id", first.user.id
    )
    assert [a["action"] for a in actions] == ["auth.sign_up", "auth.sign_in"]


async def test_concurrent_retries_of_one_sign_up_create_one_account(api: Api, db_conn: asyncpg.Connection) -> None:
    req = sign_up_request(str(uuid.uuid4()))
    answers = await asyncio.gather(*(api.auth.SignUp(req) for _ in range(4)))
    assert len({a.user.id for a in answers}) == 1
    assert await db_conn.fetchval("SELECT count(*) FROM users WHERE email = $1", req.email) == 1


async def test_a_sign_up_request_id_reused_with_other_fields_or_password_is_refused(api: Api) -> None:
    req = sign_up_request(str(uuid.uuid4()))
    await api.auth.SignUp(req)
    for changed in (
        sign_up_request(req.request_id, email=req.email, phone=req.phone, first_name="Other"),
        sign_up_request(req.request_id, email=req.email, phone=req.phone, password=PASSWORD + "!"),
    ):
        err = await expect_error(api.auth.SignUp(changed), grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
        assert err.metadata == {"field": "request_id"}
    await expect_error(api.auth.SignUp(sign_up_request("not-a-uuid")), grpc.StatusCode.INVALID_ARGUMENT)


async def test_sign_in_with_email_or_phone(api: Api) -> None:
    account = await api.sign_up()
    by_email = await api.auth.SignIn(auth_pb2.SignInRequest(email=account.user.email, password=PASSWORD))
    by_phone = await api.auth.SignIn(auth_pb2.SignInRequest(phone=account.user.phone, password=PASSWORD))
    assert by_email.user.id == by_phone.user.id == account.id
    assert by_email.access_token != by_phone.access_token  # two sessions


async def test_wrong_password_and_unknown_account_look_the_same(api: Api) -> None:
    account = await api.sign_up()
    wrong = await expect_error(
        api.auth.SignIn(auth_pb2.SignInRequest(email=account.user.email, password="Wrong-pass-1")),
        grpc.StatusCode.UNAUTHENTICATED,
        "BAD_CREDENTIALS",
    )
    unknown = await expect_error(
        api.auth.SignIn(auth_pb2.SignInRequest(email=unique_email(), password="Wrong-pass-1")),
        grpc.StatusCode.UNAUTHENTICATED,
        "BAD_CREDENTIALS",
    )
    assert wrong.message == unknown.message


async def test_repeated_failed_sign_ins_are_rate_limited(api: Api) -> None:
    account = await api.sign_up()
    limit = api.app.settings.sign_in_attempts_per_minute
    for _ in range(limit):
        await expect_error(
            api.auth.SignIn(auth_pb2.SignInRequest(email=account.user.email, password="Wrong-pass-1")),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    err = await expect_error(
        api.auth.SignIn(auth_pb2.SignInRequest(email=account.user.email, password=PASSWORD)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert err.retry_delay_seconds is not None
    assert 0 < err.retry_delay_seconds <= 60


async def test_one_address_trying_many_accounts_is_rate_limited(api: Api) -> None:
    """Password spraying: one password tried on many accounts stays under every
    per-account limit; the per-address one stops it. Another caller behind the same
    proxy (a different forwarded address) is not affected."""
    async with (
        extra_replica("few-attempts", sign_in_attempts_per_address_per_minute=5) as rt,
        grpc.aio.insecure_channel(f"127.0.0.1:{rt.grpc_port}") as channel,
    ):
        auth = auth_pb2_grpc.AuthServiceStub(channel)

        def spray(**metadata: str) -> Awaitable[auth_pb2.SignInResponse]:
            request = auth_pb2.SignInRequest(email=unique_email(), password="Summer-2026!")
            return auth.SignIn(request, metadata=tuple(metadata.items()))

        for _ in range(5):
            await expect_error(spray(), grpc.StatusCode.UNAUTHENTICATED, "BAD_CREDENTIALS")
        err = await expect_error(spray(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert err.retry_delay_seconds is not None
        assert 0 < err.retry_delay_seconds <= 60
        # Sign-ups count too.
        await expect_error(auth.SignUp(sign_up_request(str(uuid.uuid4()))), grpc.StatusCode.RESOURCE_EXHAUSTED)
        # The gateway on loopback is a trusted proxy: the browser behind it has its own budget.
        other = {"x-forwarded-for": "198.51.100.23"}
        await expect_error(spray(**other), grpc.StatusCode.UNAUTHENTICATED, "BAD_CREDENTIALS")


async def test_refresh_rotates_and_reuse_revokes_the_session(api: Api) -> None:
    account = await api.sign_up()
    first = await api.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=account.refresh_token))
    assert first.refresh_token != account.refresh_token
    # The new access token works.
    await api.users.GetUser(
        users_pb2.GetUserRequest(user_id="me"), metadata=(("authorization", f"Bearer {first.access_token}"),)
    )
    # Presenting the spent token again: someone has a copy -> the whole session ends.
    await expect_error(
        api.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=account.refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
        "REFRESH_TOKEN_REUSED",
    )
    await expect_error(
        api.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=first.refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
        "SESSION_ENDED",
    )
    await expect_error(
        api.users.GetUser(
            users_pb2.GetUserRequest(user_id="me"), metadata=(("authorization", f"Bearer {first.access_token}"),)
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "SESSION_ENDED",
    )


async def test_malformed_refresh_token(api: Api) -> None:
    await expect_error(
        api.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token="rt_nonsense")),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_REFRESH_TOKEN",
    )
    err = await expect_error(api.auth.RefreshToken(auth_pb2.RefreshTokenRequest()), grpc.StatusCode.INVALID_ARGUMENT)
    assert "refresh_token" in err.fields


async def test_sign_out_ends_the_session(api: Api) -> None:
    account = await api.sign_up()
    await api.auth.SignOut(auth_pb2.SignOutRequest(), metadata=account.md)
    await expect_error(
        api.users.GetUser(users_pb2.GetUserRequest(user_id="me"), metadata=account.md),
        grpc.StatusCode.UNAUTHENTICATED,
        "SESSION_ENDED",
    )
    await expect_error(
        api.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=account.refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
    )


async def test_missing_malformed_forged_and_expired_tokens(api: Api) -> None:
    account = await api.sign_up()
    get_me = users_pb2.GetUserRequest(user_id="me")
    await expect_error(api.users.GetUser(get_me), grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS")
    await expect_error(
        api.users.GetUser(get_me, metadata=(("authorization", "Basic abc"),)),
        grpc.StatusCode.UNAUTHENTICATED,
        "MALFORMED_CREDENTIALS",
    )
    claims = jwt.decode(account.access_token, options={"verify_signature": False})
    forged = jwt.encode(
        {**claims, "role": "admin"}, "not-the-server-key-but-just-as-long-0123456789", algorithm="HS256"
    )
    await expect_error(
        api.users.GetUser(get_me, metadata=(("authorization", f"Bearer {forged}"),)),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_TOKEN",
    )
    expired, _ = api.app.access_tokens.issue(account.id, claims["sid"], "user")
    expired_claims = jwt.decode(expired, options={"verify_signature": False})
    expired_token = jwt.encode(
        {**expired_claims, "exp": expired_claims["iat"] - 10},
        api.app.settings.derived_key("access-token"),
        algorithm="HS256",
    )
    await expect_error(
        api.users.GetUser(get_me, metadata=(("authorization", f"Bearer {expired_token}"),)),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_TOKEN",
    )
