"""Money as an exact decimal amount in a currency."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from securenow.server.domain.validation import Validator

CURRENCY_RE = re.compile(r"[A-Z]{3}")
NANOS = Decimal(10) ** 9
CENTS = Decimal("0.01")
MAX_HOURLY_RATE = Decimal("100000")


@dataclass(frozen=True)
class Money:
    currency_code: str
    amount: Decimal

    @classmethod
    def from_units(cls, currency_code: str, units: int, nanos: int) -> Money:
        return cls(currency_code, Decimal(units) + Decimal(nanos) / NANOS)

    @property
    def units(self) -> int:
        return int(self.amount)  # truncates toward zero, as google.type.Money wants

    @property
    def nanos(self) -> int:
        return int((self.amount - Decimal(self.units)) * NANOS)

    def times(self, factor: int) -> Money:
        return Money(self.currency_code, (self.amount * factor).quantize(CENTS, rounding=ROUND_HALF_EVEN))

    def to_json(self) -> dict[str, object]:
        return {"currency_code": self.currency_code, "amount": str(self.amount)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Money:
        return cls(str(data["currency_code"]), Decimal(str(data["amount"])))


def validate_money(v: Validator, name: str, currency_code: str, units: int, nanos: int, *, positive: bool) -> Money:
    with v.nested(name) as m:
        if not CURRENCY_RE.fullmatch(currency_code):
            m.add("currency_code", "must be a three-letter ISO 4217 code")
        if abs(nanos) >= 10**9 or (units > 0 and nanos < 0) or (units < 0 and nanos > 0):
            m.add("nanos", "must be below 10^9 in magnitude with the sign of units")
    money = Money.from_units(currency_code, units, nanos)
    if positive and money.amount <= 0:
        v.add(name, "must be positive")
    if money.amount.quantize(CENTS) != money.amount:
        v.add(name, "must be a whole number of cents")
    return money
