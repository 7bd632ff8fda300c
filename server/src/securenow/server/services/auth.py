"""Sign-up, sign-in, token rotation, and authentication of incoming credentials."""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from securenow.server.domain.accounts import (
    MAX_PASSWORD_LENGTH,
    MAX_SESSIONS_PER_USER,
    SYSTEM,
    Principal,
    PrincipalKind,
    User,
    password_as_hashed,
    validate_sign_up,
)
from securenow.server.domain.enums import Role, UserStatus
from securenow.server.domain.errors import (
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from securenow.server.domain.validation import Validator
from securenow.server.security.passwords import hash_password, verify_password
from securenow.server.security.tokens import (
    API_KEY_PREFIX,
    AccessClaims,
    AccessTokenCodec,
    InvalidToken,
    OpaqueSecretCodec,
)
from securenow.server.services.common import forget_sessions, request_id_reused, same_request
from securenow.server.storage.accounts_repo import SessionState
from securenow.server.storage.audit_repo import AuditEntry
from securenow.server.storage.idempotency_repo import IdempotencyKey
from securenow.server.storage.live_state import LiveState
from securenow.server.storage.postgres import Database, UnitOfWork

log = logging.getLogger(__name__)

# The idempotency scope of sign-ups, which have no caller yet.
SIGN_UP_SCOPE = "sign-up"


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    access_token_expire_time: datetime


class AuthService:
    def __init__(
        self,
        db: Database,
        live: LiveState,
        access_tokens: AccessTokenCodec,
        refresh_tokens: OpaqueSecretCodec,
        *,
        refresh_ttl: timedelta,
        sign_in_attempts_per_minute: int,
        sign_in_attempts_per_address: int,
    ) -> None:
        self._db = db
        self._live = live
        self._access = access_tokens
        self._refresh = refresh_tokens
        self._refresh_ttl = refresh_ttl
        self._sign_in_limit = sign_in_attempts_per_minute
        self._address_limit = sign_in_attempts_per_address

    async def sign_up(
        self,
        *,
        email: str,
        phone: str,
        first_name: str,
        last_name: str,
        password: str,
        role: Role | None,
        key: IdempotencyKey | None = None,
        address: str = "",
    ) -> tuple[User, TokenPair]:
        """`key` fingerprints the request without its password (a fast hash of a
        password must never be stored): a retry's password is checked against the
        account's, as at sign-in."""
        req = validate_sign_up(email, phone, first_name, last_name, password, role)
        await self._count_attempt(address)
        await self._live.hit_rate_limit(req.email, "sign_up", self._sign_in_limit)
        password_hash = await hash_password(req.password)
        new_id = str(uuid.uuid4())
        async with self._db.unit_of_work() as uow:
            prior = None
            if key is not None:
                prior = await uow.idempotency.claim(SIGN_UP_SCOPE, "SignUp", key, new_id)
            if prior is None:
                user = await uow.accounts.create_user(new_id, req, role=req.role, password_hash=password_hash)
                tokens = await self._start_session(uow, user)
                actor = Principal(PrincipalKind.USER, user.id, user.role)
                await uow.audit.record(actor, AuditEntry("auth.sign_up", "user", user.id, details={"role": user.role}))
                return user, tokens
        assert key is not None
        # A retry of a sign-up that went through: the same account, signed in again.
        user_id = same_request(prior, key)
        async with self._db.reader() as uow:
            found = await uow.accounts.find_credentials(email=req.email)
        if not await verify_password(found[1] if found else None, req.password) or not found or found[0].id != user_id:
            raise request_id_reused()  # the password differs
        return found[0], await self._open_session(found[0], {"retry_of": "sign_up"})

    async def create_admin(self, *, email: str, password: str, phone: str, first_name: str, last_name: str) -> User:
        """The first admin comes from the command line (never through SignUp)."""
        phone = phone or "+1555" + f"{secrets.randbelow(10**7):07d}"
        req = validate_sign_up(email, phone, first_name, last_name, password, Role.USER)
        password_hash = await hash_password(req.password)
        async with self._db.unit_of_work() as uow:
            user = await uow.accounts.create_user(str(uuid.uuid4()), req, role=Role.ADMIN, password_hash=password_hash)
            await uow.audit.record(SYSTEM, AuditEntry("user.create_admin", "user", user.id))
        return user

    async def sign_in(self, *, email: str, phone: str, password: str, address: str = "") -> tuple[User, TokenPair]:
        v = Validator()
        if not email and not phone:
            v.add("email", "email or phone is required")
        email = v.email("email", email, required=False) if email else ""
        phone = v.phone("phone", phone, required=False) if phone and not email else ""
        v.require("password", password)
        if len(password_as_hashed(password)) > MAX_PASSWORD_LENGTH:
            # Tells nothing about the account: no account was ever given such a password.
            v.add("password", f"must be at most {MAX_PASSWORD_LENGTH} characters")
        v.check()
        await self._count_attempt(address)
        async with self._db.reader() as uow:
            found = await uow.accounts.find_credentials(email=email, phone=phone)
        # One budget per account, whether its e-mail or its phone is tried (the seed's
        # rate_limit:{user_id}:sign_in); an identifier of no account has its own.
        subject = found[0].id if found else email or phone
        await self._live.hit_rate_limit(subject, "sign_in", self._sign_in_limit)
        ok = await verify_password(found[1] if found else None, password)
        if not found or not ok:
            raise Unauthenticated("wrong e-mail/phone or password", reason="BAD_CREDENTIALS")
        user = found[0]
        tokens = await self._open_session(user, {})
        try:
            await self._live.clear_rate_limit(subject, "sign_in")
        except Unavailable:
            pass
        return user, tokens

    async def _count_attempt(self, address: str) -> None:
        """Per caller address, every sign-in and sign-up counts, whatever the account:
        the per-account limit alone lets one address try a password on every account."""
        if address:
            await self._live.hit_rate_limit(address, "auth_attempt", self._address_limit)

    async def _open_session(self, user: User, details: dict[str, str]) -> TokenPair:
        """Signs in a user whose credentials were checked."""
        async with self._db.unit_of_work() as uow:
            # Under the account's row lock: a suspension or deletion that committed while
            # the password was checked is seen here, and one still to come (it takes this
            # lock too) revokes the session opened here.
            current = await uow.accounts.get_user(user.id, for_update=True)
            user = current or user
            if user.status is not UserStatus.ACTIVE:
                raise PermissionDenied(f"the account is {user.status.value}", reason=f"ACCOUNT_{user.status.name}")
            tokens = await self._start_session(uow, user)
            ended = await uow.accounts.revoke_sessions_beyond(user.id, MAX_SESSIONS_PER_USER, "session limit")
            if ended:
                uow.after_commit(lambda: forget_sessions(self._live, ended))
            await uow.accounts.touch_last_active(user.id)
            await uow.audit.record(
                Principal(PrincipalKind.USER, user.id, user.role),
                AuditEntry("auth.sign_in", "user", user.id, details=details or None),
            )
        return tokens

    async def _start_session(self, uow: UnitOfWork, user: User) -> TokenPair:
        now = datetime.now(UTC)
        session_end = now + self._refresh_ttl
        session_id = await uow.accounts.create_session(user.id, session_end)
        refresh = self._refresh.mint()
        await uow.accounts.add_refresh_token(refresh.id, session_id, refresh.digest, session_end)
        access, expire = self._access.issue(user.id, session_id, user.role.value, now, not_after=session_end)
        return TokenPair(access, refresh.token, expire)

    async def refresh(self, refresh_token: str) -> TokenPair:
        if not refresh_token:
            raise InvalidArgument.field("refresh_token", "is required")
        try:
            token_id, secret = self._refresh.parse(refresh_token)
        except InvalidToken:
            raise Unauthenticated("invalid refresh token", reason="INVALID_REFRESH_TOKEN") from None
        reused_session: str | None = None
        async with self._db.unit_of_work() as uow:
            row = await uow.accounts.get_refresh_token_for_update(token_id)
            if row is None or not self._refresh.matches(secret, row.token_hash):
                raise Unauthenticated("invalid refresh token", reason="INVALID_REFRESH_TOKEN")
            now = datetime.now(UTC)
            if row.session_revoked or row.session_expires_at <= now or row.expires_at <= now:
                raise Unauthenticated("the session has ended; sign in again", reason="SESSION_ENDED")
            if row.used_at is not None:
                # A spent token came back: someone holds a copy. End the whole session.
                # (Deliberately also when the holder only retries a refresh whose answer
                # it lost: the server cannot tell the two apart; see docs/decisions.md.)
                await uow.accounts.revoke_session(row.session_id, "refresh token reuse")
                owner = await uow.accounts.get_user(row.user_id)
                await uow.audit.record(
                    Principal(
                        PrincipalKind.USER, row.user_id, owner.role if owner else Role.USER, session_id=row.session_id
                    ),
                    AuditEntry("auth.refresh_token_reuse", "session", row.session_id, "UNAUTHENTICATED"),
                )
                reused_session = row.session_id
            else:
                user = await uow.accounts.get_user(row.user_id)
                assert user is not None
                if user.status is not UserStatus.ACTIVE:
                    raise Unauthenticated("the account is not active", reason=f"ACCOUNT_{user.status.name}")
                await uow.accounts.mark_refresh_token_used(row.id)
                new = self._refresh.mint()
                await uow.accounts.add_refresh_token(new.id, row.session_id, new.digest, row.session_expires_at)
                await uow.accounts.touch_last_active(user.id)
                # Never past the session's end: cached session state (up to a minute old
                # in Redis) would otherwise accept the token after the session expired.
                access, expire = self._access.issue(
                    user.id, row.session_id, user.role.value, now, not_after=row.session_expires_at
                )
                await uow.audit.record(
                    Principal(PrincipalKind.USER, user.id, user.role, session_id=row.session_id),
                    AuditEntry("auth.refresh", "session", row.session_id),
                )
        if reused_session is not None:
            await forget_sessions(self._live, [reused_session])
            raise Unauthenticated(
                "refresh token was already used; the session is revoked", reason="REFRESH_TOKEN_REUSED"
            )
        return TokenPair(access, new.token, expire)

    async def sign_out(self, principal: Principal) -> None:
        if principal.session_id is None:
            raise PermissionDenied("only user sessions can sign out", reason="NOT_A_SESSION")
        async with self._db.unit_of_work() as uow:
            await uow.accounts.revoke_session(principal.session_id, "sign out")
            await uow.audit.record(principal, AuditEntry("auth.sign_out", "session", principal.session_id))
        await forget_sessions(self._live, [principal.session_id])


class Authenticator:
    """Turns a bearer credential into a Principal: a user access token (checked
    against its live session, so revocation and suspension take effect at once) or an
    agency API key."""

    def __init__(
        self,
        db: Database,
        live: LiveState,
        access_tokens: AccessTokenCodec,
        api_keys: OpaqueSecretCodec,
        *,
        api_key_cache_seconds: float = 2.0,
    ) -> None:
        self._db = db
        self._live = live
        self._access = access_tokens
        self._api_keys = api_keys
        self._api_key_cache_seconds = api_key_cache_seconds
        self._api_key_cache: dict[str, tuple[float, Principal]] = {}
        # Bumped by every forget_api_keys: a lookup that read a key before a revocation
        # committed must not cache it after the revocation cleared the cache.
        self._api_key_generation = 0
        # Verified access-token claims, so each token's signature is checked once.
        self._claims_cache: dict[str, AccessClaims] = {}

    async def authenticate(self, credential: str) -> Principal:
        if credential.startswith(API_KEY_PREFIX + "_"):
            return await self._api_key(credential)
        claims = self._claims_cache.get(credential)
        if claims is None:
            try:
                claims = self._access.decode(credential)
            except InvalidToken:
                raise Unauthenticated("invalid or expired access token", reason="INVALID_TOKEN") from None
            if len(self._claims_cache) > 50_000:
                self._claims_cache.clear()
            self._claims_cache[credential] = claims
        elif claims.expire_time <= datetime.now(UTC):
            del self._claims_cache[credential]
            raise Unauthenticated("invalid or expired access token", reason="INVALID_TOKEN")
        state = await self.session_state(claims.session_id)
        if state is None or not state.live or state.user_id != claims.user_id:
            raise Unauthenticated("the session has ended; sign in again", reason="SESSION_ENDED")
        if state.user_status is not UserStatus.ACTIVE:
            raise Unauthenticated(
                f"the account is {state.user_status.value}", reason=f"ACCOUNT_{state.user_status.name}"
            )
        return Principal(PrincipalKind.USER, state.user_id, state.role, state.agency_id, state.session_id)

    async def session_state(self, session_id: str) -> SessionState | None:
        try:
            cached = await self._live.get_session(session_id)
        except Unavailable:
            cached = None  # Redis down: Postgres decides
        if cached is not None:
            return None if cached.get("revoked") else SessionState.from_json(cached)
        async with self._db.reader() as uow:
            state = await uow.accounts.session_state(session_id)
        if state is not None:
            try:
                await self._live.put_session(session_id, state.to_json())
            except Unavailable:
                pass
        return state

    async def _api_key(self, credential: str) -> Principal:
        now = time.monotonic()
        cached = self._api_key_cache.get(credential)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            key_id, secret = self._api_keys.parse(credential)
        except InvalidToken:
            raise Unauthenticated("invalid API key", reason="INVALID_API_KEY") from None
        generation = self._api_key_generation  # before the read (see forget_api_keys)
        async with self._db.reader() as uow:
            key = await uow.agency.get_api_key_secret(key_id)
        if key is None or not self._api_keys.matches(secret, key.secret_hash):
            raise Unauthenticated("invalid API key", reason="INVALID_API_KEY")
        if key.revoked:
            raise Unauthenticated("the API key was revoked", reason="API_KEY_REVOKED")
        if not key.department_active:
            raise Unauthenticated("the department is not active", reason="DEPARTMENT_INACTIVE")
        role = Role.SECURITY_AGENCY if key.agency_type == "security_agency" else Role.POLICE
        principal = Principal(PrincipalKind.API_KEY, key.id, role, key.department_id)
        if generation == self._api_key_generation:
            if len(self._api_key_cache) > 10_000:
                self._api_key_cache.clear()
            self._api_key_cache[credential] = (now + self._api_key_cache_seconds, principal)
        return principal

    def forget_api_keys(self) -> None:
        """After a committed revocation (or a department stopped) in this process: the
        cache is emptied, and a lookup that read the key before the commit will not put
        it back (other processes' copies live `api_key_cache_seconds`)."""
        self._api_key_generation += 1
        self._api_key_cache.clear()
