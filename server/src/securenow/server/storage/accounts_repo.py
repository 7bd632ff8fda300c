"""Users, sessions and refresh tokens."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from securenow.server.domain.accounts import EmergencyContact, SignUp, User
from securenow.server.domain.enums import Role, UserStatus, VerificationStatus
from securenow.server.domain.errors import AlreadyExists
from securenow.server.domain.geo import LocationFix
from securenow.server.domain.paging import PageRequest
from securenow.server.storage.rows import Conn, must, newest_first, sid

USER_COLUMNS = """u.id, u.email, u.phone, u.first_name, u.last_name, u.role, u.status, u.safety_score,
    u.location_data, u.emergency_contacts, u.created_at, u.updated_at, u.last_active,
    u.verification_status, u.kyc_submitted_at, u.agency_id"""


def user_from_row(r: asyncpg.Record) -> User:
    return User(
        id=str(r["id"]),
        email=r["email"],
        phone=r["phone"],
        first_name=r["first_name"],
        last_name=r["last_name"],
        role=Role(r["role"]),
        status=UserStatus(r["status"]),
        safety_score=r["safety_score"] if r["safety_score"] is not None else 85,
        verification_status=VerificationStatus(r["verification_status"] or "pending"),
        create_time=r["created_at"],
        update_time=r["updated_at"],
        last_active_time=r["last_active"],
        last_location=LocationFix.from_json(r["location_data"]),
        emergency_contacts=[EmergencyContact(**c) for c in (r["emergency_contacts"] or [])],
        kyc_submitted=r["kyc_submitted_at"] is not None,
        agency_id=sid(r["agency_id"]),
    )


@dataclass(frozen=True)
class SessionState:
    """What the authentication interceptor needs to accept an access token."""

    session_id: str
    user_id: str
    role: Role
    user_status: UserStatus
    agency_id: str | None
    live: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "user_id": self.user_id,
            "role": self.role.value,
            "user_status": self.user_status.value,
            "agency_id": self.agency_id,
            "live": self.live,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SessionState:
        return cls(
            d["session_id"], d["user_id"], Role(d["role"]), UserStatus(d["user_status"]), d["agency_id"], d["live"]
        )


@dataclass(frozen=True)
class RefreshTokenRow:
    id: str
    session_id: str
    token_hash: bytes
    expires_at: datetime
    used_at: datetime | None
    session_revoked: bool
    session_expires_at: datetime
    user_id: str


def _unique_violation(exc: asyncpg.UniqueViolationError) -> AlreadyExists:
    constraint = exc.constraint_name or ""
    field = "email" if "email" in constraint else "phone" if "phone" in constraint else "user"
    return AlreadyExists(
        f"an account with this {field} already exists", reason="ACCOUNT_EXISTS", metadata={"field": field}
    )


class AccountsRepo:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def create_user(self, user_id: str, account: SignUp, *, role: Role, password_hash: str) -> User:
        try:
            row = await self.conn.fetchrow(
                f"""INSERT INTO users AS u (id, email, phone, first_name, last_name, role, password_hash,
                        verification_status, emergency_contacts)
                    VALUES ($7, $1, $2, $3, $4, $5, $6, 'pending', '[]'::jsonb)
                    RETURNING {USER_COLUMNS}""",
                account.email,
                account.phone,
                account.first_name,
                account.last_name,
                role.value,
                password_hash,
                user_id,
            )
        except asyncpg.UniqueViolationError as exc:
            raise _unique_violation(exc) from None
        return user_from_row(must(row))

    async def get_user(self, user_id: str, *, for_update: bool = False) -> User | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await self.conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1{lock}", user_id)
        return user_from_row(row) if row else None

    async def status_for_share(self, user_id: str) -> UserStatus | None:
        """The account's status under a FOR SHARE lock until the transaction ends: a
        suspension or deletion (an UPDATE of the row) waits for this transaction, or
        this read waits for it to commit and sees its outcome."""
        status = await self.conn.fetchval("SELECT status FROM users WHERE id = $1 FOR SHARE", user_id)
        return None if status is None else UserStatus(status)

    async def find_credentials(self, *, email: str = "", phone: str = "") -> tuple[User, str] | None:
        if email:
            row = await self.conn.fetchrow(
                f"SELECT {USER_COLUMNS}, u.password_hash FROM users u WHERE u.email = $1", email
            )
        else:
            row = await self.conn.fetchrow(
                f"SELECT {USER_COLUMNS}, u.password_hash FROM users u WHERE u.phone = $1", phone
            )
        return (user_from_row(row), row["password_hash"]) if row else None

    async def update_profile(self, user_id: str, changes: dict[str, Any]) -> User:
        """changes: subset of first_name, last_name, phone, emergency_contacts (list)."""
        sets, args = [], [user_id]
        for column, value in changes.items():
            if column == "emergency_contacts":
                value = [c.to_json() for c in value]
            args.append(value)
            sets.append(f"{column} = ${len(args)}")
        try:
            row = await self.conn.fetchrow(
                f"""UPDATE users u SET {", ".join(sets)}, updated_at = now() WHERE u.id = $1
                    RETURNING {USER_COLUMNS}""",
                *args,
            )
        except asyncpg.UniqueViolationError as exc:
            raise _unique_violation(exc) from None
        return user_from_row(must(row))

    async def delete_sessions_ended_before_days(self, days: int) -> int:
        """Deletes sessions that ended (revoked or expired; least() skips a NULL
        revoked_at) more than `days` ago, with their refresh tokens (ON DELETE CASCADE);
        returns how many sessions."""
        result = await self.conn.execute(
            """DELETE FROM auth_sessions
               WHERE least(revoked_at, expires_at) < now() - make_interval(days => $1)""",
            days,
        )
        return int(result.split()[-1])

    async def set_status(self, user_id: str, status: UserStatus) -> User:
        row = await self.conn.fetchrow(
            f"UPDATE users u SET status = $2, updated_at = now() WHERE u.id = $1 RETURNING {USER_COLUMNS}",
            user_id,
            status.value,
        )
        await self._owner_changed(user_id)
        return user_from_row(must(row))

    async def _owner_changed(self, user_id: str) -> None:
        """Whether the user's provider company is offered follows the account's status
        and role: a newer version of it for the search index (storage/search_feed.py
        follows providers.updated_at). Updating the row also orders the change against a
        duty change, which holds that row's lock (services/providers.py)."""
        await self.conn.execute("UPDATE providers SET updated_at = now() WHERE user_id = $1", user_id)

    async def erase_personal_data(self, user_id: str) -> User:
        """For a deleted account: its name, contact data, last location, emergency
        contacts, KYC documents and password are erased. The e-mail address and phone
        number become placeholders that no sign-up can type (`@deleted.invalid`, `~...`),
        so both are free for a new account; the row itself stays, as its SOS alerts,
        bookings and audit entries refer to it."""
        key = base64.urlsafe_b64encode(uuid.UUID(user_id).bytes).decode()
        row = await self.conn.fetchrow(
            f"""UPDATE users u SET email = $2, phone = $3, first_name = '', last_name = '',
                       location_data = NULL, location = NULL, emergency_contacts = '[]'::jsonb,
                       kyc_data = NULL, kyc_submitted_at = NULL, password_hash = '!', updated_at = now()
                WHERE u.id = $1 RETURNING {USER_COLUMNS}""",
            user_id,
            f"deleted-{user_id}@deleted.invalid",
            f"~{key[:19]}",
        )
        return user_from_row(must(row))

    async def set_verification(self, user_id: str, status: VerificationStatus) -> User:
        row = await self.conn.fetchrow(
            f"""UPDATE users u SET verification_status = $2, updated_at = now() WHERE u.id = $1
                RETURNING {USER_COLUMNS}""",
            user_id,
            status.value,
        )
        return user_from_row(must(row))

    async def set_role(self, user_id: str, role: Role, agency_id: str | None) -> User:
        row = await self.conn.fetchrow(
            f"""UPDATE users u SET role = $2, agency_id = $3, updated_at = now() WHERE u.id = $1
                RETURNING {USER_COLUMNS}""",
            user_id,
            role.value,
            agency_id,
        )
        await self._owner_changed(user_id)
        return user_from_row(must(row))

    async def store_kyc(self, user_id: str, envelope: dict[str, Any]) -> User:
        row = await self.conn.fetchrow(
            f"""UPDATE users u SET kyc_data = $2, kyc_submitted_at = now(), verification_status = 'pending',
                       updated_at = now()
                WHERE u.id = $1 RETURNING {USER_COLUMNS}""",
            user_id,
            envelope,
        )
        return user_from_row(must(row))

    async def get_kyc(self, user_id: str) -> tuple[dict[str, Any], datetime] | None:
        row = await self.conn.fetchrow(
            "SELECT kyc_data, kyc_submitted_at FROM users WHERE id = $1 AND kyc_data IS NOT NULL", user_id
        )
        return (row["kyc_data"], row["kyc_submitted_at"]) if row else None

    async def touch_last_active(self, user_id: str) -> None:
        await self.conn.execute("UPDATE users SET last_active = now() WHERE id = $1", user_id)

    async def list_users(
        self,
        page: PageRequest,
        *,
        role: Role | None,
        status: UserStatus | None,
        verification: VerificationStatus | None,
    ) -> tuple[list[User], list[Any] | None]:
        filters = {"u.role": role, "u.status": status, "u.verification_status": verification}
        equal = {column: None if value is None else value.value for column, value in filters.items()}
        rows, cursor = await newest_first(self.conn, page, f"SELECT {USER_COLUMNS} FROM users u", "u", equal)
        return [user_from_row(r) for r in rows], cursor

    # Sessions and refresh tokens -------------------------------------------------

    async def create_session(self, user_id: str, expires_at: datetime) -> str:
        session_id = await self.conn.fetchval(
            "INSERT INTO auth_sessions (user_id, expires_at) VALUES ($1, $2) RETURNING id", user_id, expires_at
        )
        return str(session_id)

    async def add_refresh_token(self, token_id: str, session_id: str, digest: bytes, expires_at: datetime) -> None:
        await self.conn.execute(
            "INSERT INTO refresh_tokens (id, session_id, token_hash, expires_at) VALUES ($1, $2, $3, $4)",
            token_id,
            session_id,
            digest,
            expires_at,
        )

    async def get_refresh_token_for_update(self, token_id: str) -> RefreshTokenRow | None:
        row = await self.conn.fetchrow(
            """SELECT t.id, t.session_id, t.token_hash, t.expires_at, t.used_at,
                      s.revoked_at IS NOT NULL AS session_revoked, s.expires_at AS session_expires_at, s.user_id
               FROM refresh_tokens t JOIN auth_sessions s ON s.id = t.session_id
               WHERE t.id = $1 FOR UPDATE OF t, s""",
            token_id,
        )
        if row is None:
            return None
        return RefreshTokenRow(
            id=str(row["id"]),
            session_id=str(row["session_id"]),
            token_hash=bytes(row["token_hash"]),
            expires_at=row["expires_at"],
            used_at=row["used_at"],
            session_revoked=row["session_revoked"],
            session_expires_at=row["session_expires_at"],
            user_id=str(row["user_id"]),
        )

    async def mark_refresh_token_used(self, token_id: str) -> None:
        await self.conn.execute("UPDATE refresh_tokens SET used_at = now() WHERE id = $1", token_id)

    async def revoke_session(self, session_id: str, reason: str) -> None:
        await self.conn.execute(
            "UPDATE auth_sessions SET revoked_at = now(), revoke_reason = $2 WHERE id = $1 AND revoked_at IS NULL",
            session_id,
            reason,
        )

    async def revoke_user_sessions(self, user_id: str, reason: str) -> list[str]:
        rows = await self.conn.fetch(
            """UPDATE auth_sessions SET revoked_at = now(), revoke_reason = $2
               WHERE user_id = $1 AND revoked_at IS NULL RETURNING id""",
            user_id,
            reason,
        )
        return [str(r["id"]) for r in rows]

    async def revoke_sessions_beyond(self, user_id: str, keep: int, reason: str) -> list[str]:
        """Revokes the user's live sessions beyond the `keep` used most recently (by the
        newest refresh token each holds); returns their ids."""
        rows = await self.conn.fetch(
            """UPDATE auth_sessions SET revoked_at = now(), revoke_reason = $3
               WHERE id IN (
                   SELECT s.id FROM auth_sessions s
                   WHERE s.user_id = $1 AND s.revoked_at IS NULL AND s.expires_at > now()
                   ORDER BY (SELECT max(t.issued_at) FROM refresh_tokens t WHERE t.session_id = s.id)
                                DESC NULLS LAST,
                            s.created_at DESC, s.id
                   OFFSET $2)
                 AND revoked_at IS NULL
               RETURNING id""",
            user_id,
            keep,
            reason,
        )
        return [str(r["id"]) for r in rows]

    async def other_active_admins(self, user_id: str) -> int:
        """How many active admins there are besides `user_id`. Every change that takes an
        admin's rights away asks this first, in turn (a transaction-level advisory lock),
        so two admins removing each other at once cannot leave nobody."""
        await self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('securenow_active_admins'))")
        return int(
            await self.conn.fetchval(
                "SELECT count(*) FROM users WHERE role = 'admin' AND status = 'active' AND id <> $1", user_id
            )
        )

    async def user_session_ids(self, user_id: str) -> list[str]:
        rows = await self.conn.fetch(
            "SELECT id FROM auth_sessions WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now()", user_id
        )
        return [str(r["id"]) for r in rows]

    async def agency_session_ids(self, agency_id: str) -> list[str]:
        """Live sessions of the agency's dispatchers."""
        rows = await self.conn.fetch(
            """SELECT s.id FROM auth_sessions s JOIN users u ON u.id = s.user_id
               WHERE u.agency_id = $1 AND s.revoked_at IS NULL AND s.expires_at > now()""",
            agency_id,
        )
        return [str(r["id"]) for r in rows]

    async def session_state(self, session_id: str) -> SessionState | None:
        return (await self.session_states([session_id])).get(session_id)

    async def session_states(self, session_ids: list[str]) -> dict[str, SessionState]:
        """The state of each of these sessions that exists, by id (one query)."""
        rows = await self.conn.fetch(
            # A dispatcher acts for the agency only while it is active.
            """SELECT s.id, s.user_id, u.role, u.status,
                      CASE WHEN d.status = 'active' THEN u.agency_id END AS agency_id,
                      (s.revoked_at IS NULL AND s.expires_at > now()) AS live
               FROM auth_sessions s JOIN users u ON u.id = s.user_id
               LEFT JOIN police_departments d ON d.id = u.agency_id
               WHERE s.id = ANY($1::uuid[])""",
            session_ids,
        )
        return {
            str(row["id"]): SessionState(
                session_id=str(row["id"]),
                user_id=str(row["user_id"]),
                role=Role(row["role"]),
                user_status=UserStatus(row["status"]),
                agency_id=sid(row["agency_id"]),
                live=row["live"],
            )
            for row in rows
        }
