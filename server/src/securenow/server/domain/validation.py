"""Input checks that collect every violation, named by the API field path."""

from __future__ import annotations

import math
import re
import unicodedata
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from securenow.server.domain.errors import FieldViolation, InvalidArgument

EMAIL_RE = re.compile(r"[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]{2,}")
PHONE_RE = re.compile(r"\+[1-9][0-9]{6,14}")  # E.164
REQUEST_ID_NAME = "request_id"
# An error names at most this many violations: the details travel in a response
# trailer, and a list of 100,000 bad entries would not fit in one.
MAX_REPORTED_VIOLATIONS = 20
# Control characters no text field may hold: PostgreSQL text cannot store NUL at all
# (the insert fails), and the others (C0 and C1 escape sequences, backspace, bidi
# overrides and isolates that make text display other than it reads) only serve to
# forge log lines or confuse a dispatcher's screen. Tab, line feed and carriage return
# stay allowed in multi-line text (descriptions, notes).
CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\u202a-\u202e\u2066-\u2069]")
LINE_BREAK_RE = re.compile(r"[\t\n\r\x85\u2028\u2029]")
# Characters that show nothing: a name made only of them is no name.
INVISIBLE_CATEGORIES = frozenset({"Cf", "Zs", "Zl", "Zp", "Cc", "Mn"})


@dataclass
class Validator:
    """Collects violations; `check()` raises one InvalidArgument with all of them."""

    violations: list[FieldViolation] = field(default_factory=list)
    prefix: str = ""

    def add(self, name: str, description: str) -> None:
        self.violations.append(FieldViolation(self._path(name), description))

    def _path(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    @contextmanager
    def nested(self, name: str) -> Iterator[Validator]:
        child = Validator(self.violations, self._path(name))
        yield child

    def require(self, name: str, value: object, description: str = "is required") -> bool:
        if value in (None, "", [], {}, 0) and value is not False:
            self.add(name, description)
            return False
        return True

    def characters(self, name: str, value: str, *, single_line: bool = False) -> bool:
        """False (with a violation) when `value` holds a control character; single-line
        text (names, labels, keys) refuses tabs and line breaks too."""
        if CONTROL_RE.search(value):
            self.add(name, "must not contain control characters")
            return False
        if single_line and LINE_BREAK_RE.search(value):
            self.add(name, "must be one line of text (no tabs or line breaks)")
            return False
        return True

    def text(
        self,
        name: str,
        value: str,
        *,
        required: bool = False,
        max_len: int = 255,
        min_len: int = 0,
        single_line: bool = False,
    ) -> str:
        value = value.strip()
        if value and not self.characters(name, value, single_line=single_line):
            return value
        if not value or all(unicodedata.category(c) in INVISIBLE_CATEGORIES for c in value):
            # Nothing a person can see counts as nothing (not stored as sent).
            if required:
                self.add(name, "is required")
            return ""
        if len(value) > max_len:
            self.add(name, f"must be at most {max_len} characters")
        elif len(value) < min_len:
            self.add(name, f"must be at least {min_len} characters")
        return value

    def email(self, name: str, value: str, *, required: bool = True) -> str:
        """Lower case and in Unicode NFC, so "é" typed as one code point or as "e" +
        combining accent is one address; invisible controls (bidi overrides, which show
        an address reversed) are refused."""
        value = unicodedata.normalize("NFC", value.strip().lower())
        if value and not self.characters(name, value, single_line=True):
            return value
        if not value:
            if required:
                self.add(name, "is required")
        elif len(value) > 255 or not EMAIL_RE.fullmatch(value):
            self.add(name, "must be a valid e-mail address")
        return value

    def phone(self, name: str, value: str, *, required: bool = True) -> str:
        value = re.sub(r"[\s\-()]", "", value)
        if not value:
            if required:
                self.add(name, "is required")
        elif not PHONE_RE.fullmatch(value):
            self.add(name, "must be an E.164 phone number such as +15551234567")
        return value

    def uuid(self, name: str, value: str, *, required: bool = True) -> str:
        if not value:
            if required:
                self.add(name, "is required")
            return ""
        try:
            return str(uuid.UUID(value))
        except ValueError:
            self.add(name, "must be a UUID")
            return ""

    def lat_lng(self, name: str, latitude: float, longitude: float) -> None:
        with self.nested(name) as v:
            if not math.isfinite(latitude) or not -90.0 <= latitude <= 90.0:
                v.add("latitude", "must be between -90 and 90")
            if not math.isfinite(longitude) or not -180.0 <= longitude <= 180.0:
                v.add("longitude", "must be between -180 and 180")

    def int_range(self, name: str, value: int, lo: int, hi: int) -> None:
        if not lo <= value <= hi:
            self.add(name, f"must be between {lo} and {hi}")

    def check(self) -> None:
        if self.violations:
            raise InvalidArgument(self.violations[:MAX_REPORTED_VIOLATIONS])


def parse_uuid(name: str, value: str) -> str:
    """A single id argument: returns the canonical UUID or raises INVALID_ARGUMENT."""
    v = Validator()
    out = v.uuid(name, value)
    v.check()
    return out


def parse_text(name: str, value: str, *, max_len: int, single_line: bool = False) -> str:
    """A single free-text argument (a reason, a note): stripped, or INVALID_ARGUMENT."""
    v = Validator()
    out = v.text(name, value, max_len=max_len, single_line=single_line)
    v.check()
    return out
