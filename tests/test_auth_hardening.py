"""Authentication seen by an attacker and by a fleet of replicas: a credential revoked
while a request was reading it, clocks that disagree by a second, ambiguous
credentials, a password hash an operator blanked, tokens that would outlive their
session."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import asyncpg
import grpc
import jwt
import pytest
import redis.asyncio as aioredis

from securenow.server.services.auth import Authenticator
from securenow.server.storage.live_state import LiveState
from securenow.server.storage.postgres import Database, UnitOfWork
from securenow.server.transport.access import ADMIN, RULES, Rule
from securenow.v1 import agency_pb2, auth_pb2, users_pb2
from tests.dispatch_helpers import SF, register_department
from tests.helpers import PASSWORD, Api, expect_error

GET_ME = users_pb2.GetUserRequest(user_id="me")


def bearer(*tokens: str) -> tuple[tuple[str, str], ...]:
    return tuple(("authorization", f"Bearer {t}") for t in tokens)


# A revocation racing a request that read the key ------------------------------------


class _Gate:
    """Holds the first read through it, after the read, until `go` is set."""

    def __init__(self) -> None:
        self.read = asyncio.Event()
        self.go = asyncio.Event()
        self._armed = True

    async def pass_through(self) -> None:
        if self._armed:
            self._armed = False
            self.read.set()
            await self.go.wait()


class _HeldReader(UnitOfWork):
    def __init__(self, db: Database, gate: _Gate) -> None:
        super().__init__(db, transactional=False)
        self._gate = gate

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await super().__aexit__(exc_type, exc, tb)
        await self._gate.pass_through()


class _HeldDatabase(Database):
    """The same PostgreSQL pool; its first read is held once it has read."""

    def __init__(self, db: Database, gate: _Gate) -> None:
        super().__init__(db.pool, db.acquire_timeout)
        self._gate = gate

    def reader(self) -> UnitOfWork:
        return _HeldReader(self, self._gate)


async def test_an_api_key_revoked_while_a_call_read_it_is_refused_right_after(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call reads the key (still good), the admin revokes it on this replica, then the
    call finishes: it may succeed (it came first), but the key must not be cached as
    good afterwards. The next call is refused at once, not after the cache's 2 s."""
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    await api.agency.ListApiKeys(agency_pb2.ListApiKeysRequest(department_id=dept.id), metadata=admin.md)
    authenticator: Authenticator = api.app.authenticator
    gate = _Gate()
    monkeypatch.setattr(authenticator, "_db", _HeldDatabase(api.app.db, gate))

    first = asyncio.ensure_future(
        api.agency.GetDepartment(agency_pb2.GetDepartmentRequest(department_id=dept.id), metadata=dept.md)
    )
    async with asyncio.timeout(10):
        await gate.read.wait()
    await api.agency.RevokeApiKey(agency_pb2.RevokeApiKeyRequest(key_id=dept.key_id), metadata=admin.md)
    gate.go.set()
    await first  # read before the revocation committed: answered

    await expect_error(
        api.agency.GetDepartment(agency_pb2.GetDepartmentRequest(department_id=dept.id), metadata=dept.md),
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_REVOKED",
    )


# Access tokens: clocks, algorithms, claims ------------------------------------------


def _signed(api: Api, claims: dict[str, object]) -> str:
    return jwt.encode(claims, api.app.settings.derived_key("access-token"), algorithm="HS256")


async def test_a_token_from_a_replica_whose_clock_runs_a_little_ahead_is_accepted(api: Api) -> None:
    """Replicas share the signing key, not a clock: a token issued a moment ago on a
    replica whose clock is a second ahead has an `iat` in this replica's future."""
    account = await api.sign_up()
    claims = jwt.decode(account.access_token, options={"verify_signature": False})
    now = int(time.time())
    ahead = _signed(api, {**claims, "iat": now + 2, "exp": now + 2 + 900})
    me = await api.users.GetUser(GET_ME, metadata=bearer(ahead))
    assert me.user.id == account.id


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # HS512 with our 32-byte key
async def test_tokens_not_signed_our_way_are_refused(api: Api) -> None:
    account = await api.sign_up()
    claims = jwt.decode(account.access_token, options={"verify_signature": False})
    now = int(time.time())
    unsigned = jwt.encode(claims, key="", algorithm="none")
    refused = [
        unsigned,
        unsigned.rsplit(".", 1)[0] + ".",
        _signed(api, {k: v for k, v in claims.items() if k != "iss"}),  # no issuer
        _signed(api, {**claims, "iss": "someone-else"}),
        _signed(api, {k: v for k, v in claims.items() if k != "iat"}),  # no issue time
        _signed(api, {**claims, "iat": now + 3600, "exp": now + 4500}),  # issued in an hour
        _signed(api, {**claims, "nbf": now + 3600}),  # not yet valid
        _signed(api, {**claims, "typ": "refresh"}),
        jwt.encode(claims, api.app.settings.derived_key("access-token"), algorithm="HS512"),
    ]
    for token in refused:
        await expect_error(
            api.users.GetUser(GET_ME, metadata=bearer(token)), grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN"
        )
    # Credentials of other kinds in the wrong place.
    await expect_error(
        api.users.GetUser(GET_ME, metadata=bearer(account.refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_TOKEN",
    )
    await expect_error(
        api.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=account.access_token)),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_REFRESH_TOKEN",
    )
    # The genuine token still works.
    assert (await api.users.GetUser(GET_ME, metadata=account.md)).user.id == account.id


async def test_two_authorization_headers_are_refused(api: Api) -> None:
    """Which of two credentials counts is a guess (a proxy may check one, the server
    use the other): neither does."""
    alice = await api.sign_up()
    bob = await api.sign_up()
    for tokens in ((alice.access_token, bob.access_token), (alice.access_token, alice.access_token)):
        await expect_error(
            api.users.GetUser(GET_ME, metadata=bearer(*tokens)),
            grpc.StatusCode.UNAUTHENTICATED,
            "MALFORMED_CREDENTIALS",
        )
    await expect_error(
        api.users.GetUser(GET_ME, metadata=(*alice.md, ("authorization", "Basic eDp5"))),
        grpc.StatusCode.UNAUTHENTICATED,
        "MALFORMED_CREDENTIALS",
    )


async def test_an_access_token_never_outlives_its_session(api: Api, db_conn: asyncpg.Connection) -> None:
    """A refresh shortly before the session's end gets an access token that ends with
    the session, not 15 minutes later (cached session state would accept it meanwhile)."""
    account = await api.sign_up()
    session_end = await db_conn.fetchval(
        """UPDATE auth_sessions SET expires_at = date_trunc('second', now()) + interval '2 minutes'
           WHERE user_id = $1 RETURNING expires_at""",
        account.id,
    )
    resp = await api.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=account.refresh_token))
    expire = resp.access_token_expire_time.ToDatetime(tzinfo=UTC)
    assert expire <= session_end
    claims = jwt.decode(resp.access_token, options={"verify_signature": False})
    assert datetime.fromtimestamp(claims["exp"], UTC) <= session_end
    assert (await api.users.GetUser(GET_ME, metadata=bearer(resp.access_token))).user.id == account.id


async def test_an_api_key_needs_its_role_in_the_rule_too(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule marked open to API keys by mistake, on an admin-only method, keeps keys
    out: keys are police or security agencies, and the rule names admins only."""
    admin = await api.admin()
    dept = await register_department(api, admin, SF)
    monkeypatch.setitem(RULES, "/securenow.v1.AgencyService/ListDepartments", Rule(ADMIN, api_key=True))
    await expect_error(
        api.agency.ListDepartments(agency_pb2.ListDepartmentsRequest(), metadata=dept.md),
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_ALLOWED",
    )
    await api.agency.ListDepartments(agency_pb2.ListDepartmentsRequest(), metadata=admin.md)


# Passwords ------------------------------------------------------------------------------


async def test_a_blanked_password_hash_matches_no_password(api: Api, db_conn: asyncpg.Connection) -> None:
    """An operator who blanks a password to lock an account locks it: no password, not
    even the one the server uses to keep unknown accounts as slow as known ones, opens
    it."""
    account = await api.sign_up()
    await db_conn.execute("UPDATE users SET password_hash = '' WHERE id = $1", account.id)
    for password in ("securenow-timing-equaliser", PASSWORD):
        await expect_error(
            api.auth.SignIn(auth_pb2.SignInRequest(email=account.user.email, password=password)),
            grpc.StatusCode.UNAUTHENTICATED,
            "BAD_CREDENTIALS",
        )


class _HeldRead(LiveState):
    """LiveState whose first Redis read of a session waits, once it has read, until
    released: a request that read the session just before a revocation was written."""

    def __init__(self, client: aioredis.Redis) -> None:
        super().__init__(client)
        self.read_done = asyncio.Event()
        self.release = asyncio.Event()
        self._held = False

    async def _get_session(self, session_id: str) -> dict[str, Any] | None:
        data = await super()._get_session(session_id)
        if not self._held:
            self._held = True
            self.read_done.set()
            await self.release.wait()
        return data


async def test_a_session_read_racing_its_revocation_does_not_bring_it_back_locally(
    redis_client: aioredis.Redis,
) -> None:
    """The process that signs a session out must refuse it at once: a read of the old
    state that was under way must not refill this process's one-second copy."""
    live = _HeldRead(redis_client)
    session_id = str(uuid.uuid4())
    await live.put_session(session_id, {"session_id": session_id, "live": True})
    racing = asyncio.create_task(live.get_session(session_id))
    await asyncio.wait_for(live.read_done.wait(), 10)
    await live.drop_sessions([session_id])
    live.release.set()
    assert (await racing) == {"session_id": session_id, "live": True}  # it read before the revocation
    assert await live.get_session(session_id) == {"revoked": True}
