"""Area safety scores: a fixed grid of map cells, each scored from the SOS alerts raised
near its centre recently (docs/analytics.md).

- Grid: cells of 1/100 degree (0.01 deg: about 1.1 km north-south, 1.1 km x cos(latitude)
  east-west), indexed i = floor(latitude * 100), j = floor(longitude * 100) and named
  "100:<i>:<j>". A score describes the cell's centre and everything within
  SCORE_RADIUS_M of it (which covers the whole cell at every latitude).
- Incidents: non-cancelled alerts with a location within SCORE_RADIUS_M of the centre,
  raised in the last WINDOW. Each weighs TYPE_WEIGHTS[type] * 0.5 ** (age / HALF_LIFE).
- Score: round(100 * exp(-risk / RISK_SCALE)) where risk is the sum of the weights: 100
  with no incidents, falling smoothly towards 0, never below.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from securenow.server.domain.enums import IncidentType
from securenow.server.domain.geo import Point

CELLS_PER_DEGREE = 100
# Score ids are derived from the cell: the same area keeps the same id, stored or not.
SCORE_ID_NAMESPACE = uuid.UUID("6f1d3c7e-2b8a-4d52-9a61-5c0e8b7f4a13")
SCORE_RADIUS_M = 1000.0
WINDOW = timedelta(days=90)
HALF_LIFE_DAYS = 30.0
RISK_SCALE = 50.0
# A stored score is served until this long after it was computed.
VALIDITY = timedelta(hours=1)
# Score bands for the advice given.
SAFE_FROM = 80
CAUTION_FROM = 50

# How much one incident that happened today lowers the area's safety, by type: violence
# against people weighs most; a medical emergency says little about danger.
TYPE_WEIGHTS: dict[IncidentType, float] = {
    IncidentType.ASSAULT: 10.0,
    IncidentType.THEFT: 5.0,
    IncidentType.SUSPICIOUS_ACTIVITY: 3.0,
    IncidentType.OTHER: 2.0,
    IncidentType.MEDICAL: 1.0,
}
FACTOR_NAMES: dict[IncidentType, str] = {
    IncidentType.ASSAULT: "recent_assaults",
    IncidentType.THEFT: "recent_thefts",
    IncidentType.SUSPICIOUS_ACTIVITY: "recent_suspicious_activity",
    IncidentType.OTHER: "recent_other_emergencies",
    IncidentType.MEDICAL: "recent_medical_emergencies",
}
_NOUNS: dict[IncidentType, tuple[str, str]] = {
    IncidentType.ASSAULT: ("assault", "assaults"),
    IncidentType.THEFT: ("theft", "thefts"),
    IncidentType.SUSPICIOUS_ACTIVITY: ("report of suspicious activity", "reports of suspicious activity"),
    IncidentType.OTHER: ("other emergency", "other emergencies"),
    IncidentType.MEDICAL: ("medical emergency", "medical emergencies"),
}
_TYPE_ADVICE: dict[IncidentType, str] = {
    IncidentType.ASSAULT: "Travel in company where you can and keep to populated areas.",
    IncidentType.THEFT: "Keep phones, bags and valuables out of sight.",
    IncidentType.SUSPICIOUS_ACTIVITY: "Report anything suspicious with an SOS alert or to local police.",
    IncidentType.MEDICAL: "Know where the nearest hospital or pharmacy is.",
}
_BAND_ADVICE: dict[str, tuple[str, ...]] = {
    "safe": ("Stay aware of your surroundings as usual.",),
    "caution": (
        "Prefer busy, well-lit streets, especially after dark.",
        "Share your live location with a trusted contact when travelling here.",
    ),
    "danger": (
        "Avoid walking alone here, especially at night.",
        "Keep SecureNow open and share your live location with a trusted contact.",
    ),
}


@dataclass(frozen=True)
class Cell:
    """One grid cell; build it with `cell_of` or `Cell.at`."""

    i: int
    j: int

    @classmethod
    def at(cls, i: int, j: int) -> Cell:
        """The cell with these indices, clamped at the poles and wrapped at +-180 deg."""
        span = 180 * CELLS_PER_DEGREE
        return cls(min(max(i, -span // 2), span // 2 - 1), (j + span) % (2 * span) - span)

    @property
    def name(self) -> str:
        return f"{CELLS_PER_DEGREE}:{self.i}:{self.j}"

    @property
    def score_id(self) -> str:
        return str(uuid.uuid5(SCORE_ID_NAMESPACE, self.name))

    @property
    def centre(self) -> Point:
        return Point((self.i + 0.5) / CELLS_PER_DEGREE, (self.j + 0.5) / CELLS_PER_DEGREE)


def cell_of(point: Point) -> Cell:
    return Cell.at(math.floor(point.latitude * CELLS_PER_DEGREE), math.floor(point.longitude * CELLS_PER_DEGREE))


@dataclass(frozen=True)
class IncidentCount:
    """`count` alerts of one type raised `age_days` whole days ago (0: within 24 hours)."""

    incident_type: IncidentType
    age_days: int
    count: int


@dataclass(frozen=True)
class RiskFactor:
    name: str
    # Share of the score reduction, 0..1 (the factors of a score add up to 1).
    weight: float
    description: str


@dataclass(frozen=True)
class Assessment:
    score: int
    risk_factors: tuple[RiskFactor, ...]
    recommendations: tuple[str, ...]


@dataclass(frozen=True)
class SafetyScore:
    """A stored assessment of a cell."""

    id: str
    cell: str
    centre: Point
    radius_m: float
    score: int
    risk_factors: tuple[RiskFactor, ...]
    recommendations: tuple[str, ...]
    calculate_time: datetime
    valid_until: datetime


def incident_weight(incident_type: IncidentType, age_days: float) -> float:
    """What one incident adds to an area's risk: its type's weight, halved every
    HALF_LIFE_DAYS; nothing once it is older than the window."""
    if age_days >= WINDOW.days:
        return 0.0
    return TYPE_WEIGHTS[incident_type] * math.pow(0.5, max(age_days, 0.0) / HALF_LIFE_DAYS)


def score_for_risk(risk: float) -> int:
    return max(0, min(100, round(100.0 * math.exp(-max(risk, 0.0) / RISK_SCALE))))


def band(score: int) -> str:
    if score >= SAFE_FROM:
        return "safe"
    return "caution" if score >= CAUTION_FROM else "danger"


def _describe(incident_type: IncidentType, count: int, newest_age_days: int) -> str:
    singular, plural = _NOUNS[incident_type]
    noun = singular if count == 1 else plural
    when = "within the last day" if newest_age_days == 0 else f"{newest_age_days} days ago"
    which = "it was" if count == 1 else "the latest"
    return f"{count} {noun} within {SCORE_RADIUS_M:.0f} m in the last {WINDOW.days} days; {which} reported {when}"


def assess(incidents: Iterable[IncidentCount]) -> Assessment:
    """The score, risk factors (one per incident type present, largest share first) and
    advice for an area with these incidents."""
    risk: dict[IncidentType, float] = {}
    counts: dict[IncidentType, int] = {}
    newest: dict[IncidentType, int] = {}
    for item in incidents:
        if item.count <= 0 or item.age_days >= WINDOW.days:
            continue
        t = item.incident_type
        risk[t] = risk.get(t, 0.0) + item.count * incident_weight(t, item.age_days)
        counts[t] = counts.get(t, 0) + item.count
        newest[t] = min(newest.get(t, item.age_days), max(item.age_days, 0))
    total = sum(risk.values())
    score = score_for_risk(total)
    order = sorted(risk, key=lambda t: (-risk[t], FACTOR_NAMES[t]))
    factors = tuple(
        RiskFactor(FACTOR_NAMES[t], round(risk[t] / total, 4), _describe(t, counts[t], newest[t])) for t in order
    )
    advice = list(_BAND_ADVICE[band(score)])
    advice += [_TYPE_ADVICE[t] for t in order if t in _TYPE_ADVICE]
    return Assessment(score, factors, tuple(advice))
