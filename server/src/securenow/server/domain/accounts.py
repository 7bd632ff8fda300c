"""Users, principals (who is calling) and account rules."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from securenow.server.domain.enums import Role, UserStatus, VerificationStatus
from securenow.server.domain.errors import PermissionDenied
from securenow.server.domain.geo import LocationFix
from securenow.server.domain.validation import PHONE_RE, Validator

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 256
MAX_EMERGENCY_CONTACTS = 10
# Live sessions (signed-in devices) per account; signing in once more ends the one used
# least recently, so a client that never signs out cannot pile up sessions.
MAX_SESSIONS_PER_USER = 20
SIGN_UP_ROLES = (Role.USER, Role.PROVIDER)
AGENCY_ROLES = (Role.POLICE, Role.SECURITY_AGENCY)


class PrincipalKind(StrEnum):
    USER = "user"
    API_KEY = "api_key"
    SYSTEM = "system"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of an RPC."""

    kind: PrincipalKind
    id: str
    role: Role
    agency_id: str | None = None
    session_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def require_admin(self, what: str) -> None:
        """For admin-only operations. The access table already refuses everyone else;
        checking again where the work is done keeps one wrong rule there from opening
        the operation to anyone."""
        if not self.is_admin:
            raise PermissionDenied(f"only admins {what}", reason="ROLE_NOT_ALLOWED")

    @property
    def user_id(self) -> str | None:
        return self.id if self.kind is PrincipalKind.USER else None


SYSTEM = Principal(PrincipalKind.SYSTEM, "system", Role.ADMIN)


@dataclass(frozen=True)
class EmergencyContact:
    name: str
    phone: str
    email: str = ""
    relationship: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "phone": self.phone, "email": self.email, "relationship": self.relationship}


@dataclass(frozen=True)
class KycData:
    document_type: str
    document_number: str
    full_legal_name: str
    date_of_birth: str
    issuing_country: str
    address: str


@dataclass
class User:
    id: str
    email: str
    phone: str
    first_name: str
    last_name: str
    role: Role
    status: UserStatus
    safety_score: int
    verification_status: VerificationStatus
    create_time: datetime
    update_time: datetime
    last_active_time: datetime | None = None
    last_location: LocationFix | None = None
    emergency_contacts: list[EmergencyContact] = field(default_factory=list)
    kyc_submitted: bool = False
    agency_id: str | None = None


@dataclass(frozen=True)
class SignUp:
    email: str
    phone: str
    first_name: str
    last_name: str
    password: str
    role: Role


def password_as_hashed(password: str) -> str:
    """The password in Unicode NFKC, the form security/passwords.py hashes; one far too
    long to be accepted anyway is returned as sent (normalising megabytes is work for
    nothing)."""
    return password if len(password) > 4 * MAX_PASSWORD_LENGTH else unicodedata.normalize("NFKC", password)


def validate_password(v: Validator, name: str, password: str) -> None:
    password = password_as_hashed(password)
    if len(password) < MIN_PASSWORD_LENGTH:
        v.add(name, f"must be at least {MIN_PASSWORD_LENGTH} characters")
    elif len(password) > MAX_PASSWORD_LENGTH:
        v.add(name, f"must be at most {MAX_PASSWORD_LENGTH} characters")
    elif password.isdigit() or (password.isalpha() and password.islower()):
        v.add(name, "is too simple: mix letters with digits, capitals or symbols")


def validate_sign_up(
    email: str, phone: str, first_name: str, last_name: str, password: str, role: Role | None
) -> SignUp:
    v = Validator()
    sign_up = SignUp(
        email=v.email("email", email),
        phone=v.phone("phone", phone),
        first_name=v.text("first_name", first_name, required=True, max_len=100, single_line=True),
        last_name=v.text("last_name", last_name, required=True, max_len=100, single_line=True),
        password=password,
        role=role or Role.USER,
    )
    validate_password(v, "password", password)
    if sign_up.role not in SIGN_UP_ROLES:
        v.add("role", "only USER or PROVIDER accounts can sign up")
    v.check()
    return sign_up


def validate_emergency_contacts(v: Validator, name: str, contacts: list[EmergencyContact]) -> list[EmergencyContact]:
    if len(contacts) > MAX_EMERGENCY_CONTACTS:
        v.add(name, f"at most {MAX_EMERGENCY_CONTACTS} contacts")
    out: list[EmergencyContact] = []
    first_with: dict[str, int] = {}  # phone -> index of the first contact with it
    for i, c in enumerate(contacts):
        with v.nested(f"{name}[{i}]") as cv:
            contact = EmergencyContact(
                name=cv.text("name", c.name, required=True, max_len=200, single_line=True),
                phone=cv.phone("phone", c.phone),
                email=cv.email("email", c.email, required=False),
                relationship=cv.text("relationship", c.relationship, max_len=100, single_line=True),
            )
            # One number twice is one person told twice (or, the second time, nobody new).
            if PHONE_RE.fullmatch(contact.phone):
                first = first_with.setdefault(contact.phone, i)
                if first != i:
                    cv.add("phone", f"is the number of {name.rpartition('.')[2]}[{first}] already")
            out.append(contact)
    return out


def check_contacts_against_own_phone(
    v: Validator, phone: str, contacts: list[EmergencyContact], *, contacts_field: str, phone_field: str | None
) -> None:
    """The person in danger is not their own emergency contact. The violation names
    the contact (when the contacts are being changed) or else the phone (`phone_field`)."""
    if not PHONE_RE.fullmatch(phone):
        return  # refused as a phone number already
    for i, c in enumerate(contacts):
        if c.phone == phone:
            if phone_field is None:
                v.add(f"{contacts_field}[{i}].phone", "is the account's own phone number")
            else:
                v.add(phone_field, f"is the number of {contacts_field.rpartition('.')[2]}[{i}]")


DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
COUNTRY_RE = re.compile(r"[A-Z]{2}")


def _ascii_upper(value: str) -> str:
    return value.upper() if value.isascii() else value


def validate_kyc(kyc: KycData) -> KycData:
    v = Validator()
    with v.nested("kyc") as k:
        out = KycData(
            # One-line values: an admin compares them with a document, field by field.
            document_type=k.text("document_type", kyc.document_type, required=True, max_len=50, single_line=True),
            document_number=k.text(
                "document_number", kyc.document_number, required=True, max_len=100, single_line=True
            ),
            full_legal_name=k.text(
                "full_legal_name", kyc.full_legal_name, required=True, max_len=300, single_line=True
            ),
            date_of_birth=k.text("date_of_birth", kyc.date_of_birth, required=True, max_len=10, single_line=True),
            # Upper-cased only when ASCII: "ß".upper() is "SS", which is not what was sent.
            issuing_country=_ascii_upper(
                k.text("issuing_country", kyc.issuing_country, required=True, max_len=2, single_line=True)
            ),
            address=k.text("address", kyc.address, max_len=500),
        )
        if out.date_of_birth:
            # strptime also reads "2000-1-1" and non-ASCII digits; stored data is exactly YYYY-MM-DD.
            if not DATE_RE.fullmatch(out.date_of_birth):
                k.add("date_of_birth", "must be YYYY-MM-DD")
            else:
                try:
                    born = datetime.strptime(out.date_of_birth, "%Y-%m-%d")
                    if born.year < 1900 or born > datetime.now():
                        k.add("date_of_birth", "must be a real date of birth")
                except ValueError:
                    k.add("date_of_birth", "must be YYYY-MM-DD")
        if out.issuing_country and not COUNTRY_RE.fullmatch(out.issuing_country):
            k.add("issuing_country", "must be an ISO 3166-1 alpha-2 code")
    v.check()
    return out
