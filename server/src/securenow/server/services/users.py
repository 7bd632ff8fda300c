"""Profiles, emergency contacts, KYC and user administration."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from functools import partial
from typing import Any

from securenow.server.domain.accounts import (
    AGENCY_ROLES,
    EmergencyContact,
    KycData,
    Principal,
    User,
    check_contacts_against_own_phone,
    validate_emergency_contacts,
    validate_kyc,
)
from securenow.server.domain.enums import Role, UserStatus, VerificationStatus
from securenow.server.domain.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from securenow.server.domain.paging import page_request
from securenow.server.domain.validation import Validator, parse_text, parse_uuid
from securenow.server.security.encryption import FieldEncryptor
from securenow.server.services.bookings import BookingService
from securenow.server.services.common import forget_sessions, replace_sessions, take_off_duty
from securenow.server.storage.audit_repo import AuditEntry
from securenow.server.storage.live_state import LiveState
from securenow.server.storage.postgres import Database, UnitOfWork

PROFILE_PATHS = ("first_name", "last_name", "phone", "emergency_contacts")


class UserService:
    def __init__(self, db: Database, live: LiveState, encryptor: FieldEncryptor, bookings: BookingService) -> None:
        self._db = db
        self._live = live
        self._enc = encryptor
        # Deleting an account cancels its bookings through the booking service's own path.
        self._bookings = bookings

    async def _withdraw(self, sessions: list[str], provider_id: str | None) -> None:
        """After an account is suspended or deleted: its sessions end, and its provider
        company (if any) leaves duty at once, so nobody finds or books it meanwhile."""
        await forget_sessions(self._live, sessions)
        if provider_id is not None:
            await take_off_duty(self._live, provider_id, reason="owner_inactive")

    def _resolve(self, caller: Principal, user_id: str, field: str = "user_id") -> str:
        if user_id in ("", "me"):
            if caller.user_id is None:
                raise InvalidArgument.field(field, "'me' needs a user account")
            return caller.user_id
        return parse_uuid(field, user_id)

    async def _keep_an_admin(self, uow: UnitOfWork, target: User) -> None:
        """Before an active admin is suspended, demoted or deleted: another active admin
        must remain, or nobody could administer the platform (nor undo this) any more."""
        active_admin = target.role is Role.ADMIN and target.status is UserStatus.ACTIVE
        if active_admin and await uow.accounts.other_active_admins(target.id) == 0:
            raise FailedPrecondition("this is the last active admin; make another admin first", reason="LAST_ADMIN")

    async def _visible_user(self, uow: UnitOfWork, caller: Principal, user_id: str, *, lock: bool = False) -> User:
        user = await uow.accounts.get_user(user_id, for_update=lock)
        if user is None or (user.id != caller.user_id and not caller.is_admin):
            raise NotFound("user not found", reason="USER_NOT_FOUND")
        return user

    async def get_user(self, caller: Principal, user_id: str) -> User:
        target = self._resolve(caller, user_id)
        async with self._db.unit_of_work() as uow:
            return await self._visible_user(uow, caller, target)

    async def update_user(
        self,
        caller: Principal,
        user_id: str,
        paths: list[str],
        *,
        first_name: str,
        last_name: str,
        phone: str,
        emergency_contacts: list[EmergencyContact],
    ) -> User:
        target = self._resolve(caller, user_id, "user.id")
        if target != caller.user_id:
            raise PermissionDenied("users can only update their own profile", reason="NOT_OWNER")
        v = Validator()
        if not paths:
            v.add("update_mask", "must name at least one field")
        changes: dict[str, Any] = {}
        for path in paths:
            if path == "first_name":
                changes[path] = v.text("user.first_name", first_name, required=True, max_len=100, single_line=True)
            elif path == "last_name":
                changes[path] = v.text("user.last_name", last_name, required=True, max_len=100, single_line=True)
            elif path == "phone":
                changes[path] = v.phone("user.phone", phone)
            elif path == "emergency_contacts":
                changes[path] = validate_emergency_contacts(v, "user.emergency_contacts", emergency_contacts)
            else:
                v.add("update_mask", f"unknown or read-only path {path!r}; allowed: {', '.join(PROFILE_PATHS)}")
        # A new phone or contacts are also checked against each other (the stored values
        # standing in for the one not being changed), every violation in one answer.
        against_own_phone = "phone" in changes or "emergency_contacts" in changes
        if not against_own_phone:
            v.check()
        async with self._db.unit_of_work() as uow:
            current = await self._visible_user(uow, caller, target, lock=True)
            if against_own_phone:
                check_contacts_against_own_phone(
                    v,
                    changes.get("phone", current.phone),
                    changes.get("emergency_contacts", current.emergency_contacts),
                    contacts_field="user.emergency_contacts",
                    phone_field=None if "emergency_contacts" in changes else "user.phone",
                )
                v.check()
            user = await uow.accounts.update_profile(target, changes)
            await uow.audit.record(caller, AuditEntry("user.update", "user", target, details={"paths": paths}))
        return user

    async def delete_user(self, caller: Principal, user_id: str) -> User:
        target = self._resolve(caller, user_id)
        async with self._db.unit_of_work() as uow:
            await self._keep_an_admin(uow, await self._visible_user(uow, caller, target, lock=True))
            await uow.accounts.set_status(target, UserStatus.DELETED)
            # Deletion is final (no reinstating): the person's data goes with it
            # (docs/decisions.md, "Deleting an account").
            user = await uow.accounts.erase_personal_data(target)
            # Nobody is left to receive the service: the account's open bookings as a
            # customer are cancelled (a paid one refunded), in this same transaction.
            await self._bookings.cancel_open_bookings_of_customer(uow, caller, target, "account deleted")
            sessions = await uow.accounts.revoke_user_sessions(target, "account deleted")
            provider_id = await uow.providers.id_owned_by(target)
            await uow.audit.record(caller, AuditEntry("user.delete", "user", target))
            uow.after_commit(lambda: self._withdraw(sessions, provider_id))
            # The last position shared (it would expire on its own within a day).
            uow.after_commit(lambda: self._live.forget_user_location(target))
        return user

    async def submit_kyc(self, caller: Principal, kyc: KycData) -> User:
        if caller.user_id is None:
            raise PermissionDenied("KYC is for user accounts", reason="NOT_A_USER")
        data = validate_kyc(kyc)
        async with self._db.unit_of_work() as uow:
            user = await self._visible_user(uow, caller, caller.user_id, lock=True)
            if user.verification_status is VerificationStatus.VERIFIED:
                raise FailedPrecondition("the account is already verified", reason="ALREADY_VERIFIED")
            envelope = self._enc.encrypt(asdict(data), bound_to=f"kyc:{user.id}")
            user = await uow.accounts.store_kyc(user.id, envelope)
            # The audit entry never holds the documents themselves.
            await uow.audit.record(caller, AuditEntry("user.kyc_submit", "user", user.id))
        return user

    async def get_kyc(self, caller: Principal, user_id: str) -> tuple[KycData, datetime]:
        target = self._resolve(caller, user_id)
        async with self._db.unit_of_work() as uow:
            await self._visible_user(uow, caller, target)
            stored = await uow.accounts.get_kyc(target)
            if stored is None:
                raise NotFound("no KYC data was submitted", reason="KYC_NOT_FOUND")
            # Reading KYC is sensitive: audited like a mutation.
            await uow.audit.record(caller, AuditEntry("user.kyc_read", "user", target))
        envelope, submitted = stored
        data = self._enc.decrypt(envelope, bound_to=f"kyc:{target}")
        return KycData(**data), submitted

    async def list_users(
        self,
        caller: Principal,
        *,
        page_size: int,
        page_token: str,
        role: Role | None,
        status: UserStatus | None,
        verification: VerificationStatus | None,
    ) -> tuple[list[User], str]:
        caller.require_admin("list users")
        page = page_request(page_size, page_token, filters=("users", role, status, verification))
        async with self._db.unit_of_work() as uow:
            users, cursor = await uow.accounts.list_users(page, role=role, status=status, verification=verification)
        return users, page.next_token(cursor)

    async def suspend_user(self, caller: Principal, user_id: str, reason: str) -> User:
        caller.require_admin("suspend accounts")
        target = parse_uuid("user_id", user_id)
        reason = parse_text("reason", reason, max_len=500)
        if target == caller.user_id:
            raise FailedPrecondition("admins cannot suspend themselves", reason="SELF_SUSPEND")
        async with self._db.unit_of_work() as uow:
            user = await self._visible_user(uow, caller, target, lock=True)
            if user.status is UserStatus.DELETED:
                raise FailedPrecondition("the account is deleted", reason="ACCOUNT_DELETED")
            if user.status is UserStatus.SUSPENDED:
                return user
            await self._keep_an_admin(uow, user)
            user = await uow.accounts.set_status(target, UserStatus.SUSPENDED)
            sessions = await uow.accounts.revoke_user_sessions(target, "suspended")
            provider_id = await uow.providers.id_owned_by(target)
            await uow.audit.record(caller, AuditEntry("user.suspend", "user", target, details={"reason": reason[:500]}))
            uow.after_commit(lambda: self._withdraw(sessions, provider_id))
        return user

    async def reinstate_user(self, caller: Principal, user_id: str) -> User:
        caller.require_admin("reinstate accounts")
        target = parse_uuid("user_id", user_id)
        async with self._db.unit_of_work() as uow:
            user = await self._visible_user(uow, caller, target, lock=True)
            if user.status is not UserStatus.SUSPENDED:
                raise FailedPrecondition(f"the account is {user.status.value}, not suspended", reason="NOT_SUSPENDED")
            user = await uow.accounts.set_status(target, UserStatus.ACTIVE)
            await uow.audit.record(caller, AuditEntry("user.reinstate", "user", target))
        return user

    async def verify_user(
        self,
        caller: Principal,
        user_id: str,
        decision: VerificationStatus | None,
        note: str,
        *,
        reviewed_submit_time: datetime | None = None,
    ) -> User:
        """Records a KYC decision. With `reviewed_submit_time` (when the documents the
        admin read were submitted), a newer submission refuses it: KYC_CHANGED."""
        caller.require_admin("verify users")
        target = parse_uuid("user_id", user_id)
        note = parse_text("note", note, max_len=500)
        if decision not in (VerificationStatus.VERIFIED, VerificationStatus.REJECTED):
            raise InvalidArgument.field("decision", "must be VERIFIED or REJECTED")
        if target == caller.user_id:
            raise FailedPrecondition("admins cannot review their own KYC", reason="SELF_VERIFY")
        async with self._db.unit_of_work() as uow:
            user = await self._visible_user(uow, caller, target, lock=True)
            if not user.kyc_submitted:
                raise FailedPrecondition("the user has not submitted KYC data", reason="KYC_NOT_SUBMITTED")
            if reviewed_submit_time is not None:
                # The user row is locked: a new submission waits until this decision is in.
                kyc = await uow.accounts.get_kyc(target)
                if kyc is None or kyc[1] != reviewed_submit_time:
                    raise FailedPrecondition(
                        "the user submitted KYC documents again after the ones reviewed; review those",
                        reason="KYC_CHANGED",
                    )
            user = await uow.accounts.set_verification(target, decision)
            await uow.audit.record(
                caller, AuditEntry("user.verify", "user", target, details={"decision": decision, "note": note[:500]})
            )
        return user

    async def set_role(self, caller: Principal, user_id: str, role: Role | None, agency_id: str) -> User:
        caller.require_admin("set roles")
        v = Validator()
        target = v.uuid("user_id", user_id)
        if role is None:
            v.add("role", "is required")
        agency = v.uuid("agency_id", agency_id, required=role in AGENCY_ROLES) if role in AGENCY_ROLES else ""
        if role not in AGENCY_ROLES and agency_id:
            v.add("agency_id", "only POLICE and SECURITY_AGENCY users belong to an agency")
        v.check()
        assert role is not None
        if target == caller.user_id:
            raise FailedPrecondition("admins cannot change their own role", reason="SELF_ROLE_CHANGE")
        async with self._db.unit_of_work() as uow:
            current = await self._visible_user(uow, caller, target, lock=True)
            if role is not Role.ADMIN:
                await self._keep_an_admin(uow, current)
            if agency:
                department = await uow.agency.get_department(agency)
                if department is None:
                    raise NotFound("agency not found", reason="DEPARTMENT_NOT_FOUND")
                want = Role.SECURITY_AGENCY if department.agency_type.value == "security_agency" else Role.POLICE
                if want is not role:
                    raise InvalidArgument.field("role", f"members of this agency have role {want.name}")
            user = await uow.accounts.set_role(target, role, agency or None)
            # Live tokens act with the new role at once: their cached state is replaced.
            sessions = await uow.accounts.session_states(await uow.accounts.user_session_ids(target))
            states = {session_id: state.to_json() for session_id, state in sessions.items()}
            await uow.audit.record(
                caller, AuditEntry("user.set_role", "user", target, details={"role": role, "agency_id": agency})
            )
            uow.after_commit(lambda: replace_sessions(self._live, states))
            if current.role is Role.PROVIDER and role is not Role.PROVIDER:
                # Without the provider role the user's company is no longer offered (as on
                # a suspension): it leaves duty at once. Given the role back, it is again.
                provider_id = await uow.providers.id_owned_by(target)
                if provider_id is not None:
                    uow.after_commit(partial(take_off_duty, self._live, provider_id, reason="owner_inactive"))
        return user
