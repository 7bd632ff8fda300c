"""Who may call what: the per-RPC role table. A method missing here is refused
(default deny); a test checks that every RPC of every service has an entry."""

from __future__ import annotations

from dataclasses import dataclass

from securenow.server.domain.enums import Role


@dataclass(frozen=True)
class Rule:
    roles: frozenset[Role] = frozenset()
    public: bool = False  # no credentials needed
    api_key: bool = False  # agency API keys may call it
    mutating: bool = False  # failures are audited too
    # Rate-limit class (per caller and minute, rate_limit:{caller}:{class} in Redis):
    # "lookup" for computed reads anyone may call, "booking" for creating bookings.
    # Nothing on the SOS path is ever limited.
    limit: str = ""

    def allows_role(self, role: Role) -> bool:
        return role in self.roles


ANY_USER = frozenset(Role)
ADMIN = frozenset({Role.ADMIN})
AGENCY = frozenset({Role.POLICE, Role.SECURITY_AGENCY})
AGENCY_OR_ADMIN = AGENCY | ADMIN
CUSTOMERS = frozenset({Role.USER, Role.PROVIDER})
PROVIDER = frozenset({Role.PROVIDER})
PROVIDER_OR_ADMIN = PROVIDER | ADMIN


def _rules(service: str, **methods: Rule) -> dict[str, Rule]:
    return {f"/securenow.v1.{service}/{name}": rule for name, rule in methods.items()}


PUBLIC_MUTATION = Rule(public=True, mutating=True)

RULES: dict[str, Rule] = {
    **_rules(
        "AuthService",
        SignUp=PUBLIC_MUTATION,
        SignIn=PUBLIC_MUTATION,
        RefreshToken=PUBLIC_MUTATION,
        SignOut=Rule(ANY_USER, mutating=True),
    ),
    **_rules(
        "UserService",
        GetUser=Rule(ANY_USER),
        UpdateUser=Rule(ANY_USER, mutating=True),
        DeleteUser=Rule(ANY_USER, mutating=True),
        SubmitKyc=Rule(ANY_USER, mutating=True),
        GetKyc=Rule(ANY_USER),
        ListUsers=Rule(ADMIN),
        SuspendUser=Rule(ADMIN, mutating=True),
        ReinstateUser=Rule(ADMIN, mutating=True),
        VerifyUser=Rule(ADMIN, mutating=True),
        SetUserRole=Rule(ADMIN, mutating=True),
    ),
    **_rules(
        "ProviderService",
        CreateProvider=Rule(PROVIDER, mutating=True),
        GetProvider=Rule(ANY_USER, api_key=True),
        UpdateProvider=Rule(PROVIDER, mutating=True),
        ListProviders=Rule(ANY_USER),
        VerifyProvider=Rule(ADMIN, mutating=True),
        UpdateProviderDuty=Rule(PROVIDER, mutating=True),
        SearchNearbyProviders=Rule(ANY_USER, api_key=True),
    ),
    **_rules(
        "BookingService",
        CreateBooking=Rule(CUSTOMERS, mutating=True, limit="booking"),
        GetBooking=Rule(ANY_USER),
        ListBookings=Rule(ANY_USER),
        ConfirmBooking=Rule(PROVIDER_OR_ADMIN, mutating=True),
        StartBooking=Rule(PROVIDER_OR_ADMIN, mutating=True),
        CompleteBooking=Rule(PROVIDER_OR_ADMIN, mutating=True),
        CancelBooking=Rule(ANY_USER, mutating=True),
        UpdateBookingPaymentStatus=Rule(ADMIN, mutating=True),
        ReviewBooking=Rule(CUSTOMERS, mutating=True),
    ),
    **_rules(
        "SosService",
        RaiseSos=Rule(ANY_USER, mutating=True),
        GetSosAlert=Rule(ANY_USER, api_key=True),
        ListSosAlerts=Rule(ANY_USER, api_key=True),
        CancelSos=Rule(ANY_USER, mutating=True),
        ShareLocation=Rule(ANY_USER, mutating=True),
        WatchSos=Rule(ANY_USER, api_key=True),
        ListAlertLocations=Rule(ANY_USER, api_key=True),
    ),
    **_rules(
        "AgencyService",
        RegisterDepartment=Rule(ADMIN, mutating=True),
        GetDepartment=Rule(AGENCY_OR_ADMIN, api_key=True),
        ListDepartments=Rule(ADMIN),
        UpdateDepartment=Rule(ADMIN, mutating=True),
        IssueApiKey=Rule(ADMIN, mutating=True),
        RevokeApiKey=Rule(ADMIN, mutating=True),
        ListApiKeys=Rule(ADMIN),
        StreamDispatch=Rule(AGENCY, api_key=True, mutating=True),
        WatchDispatch=Rule(AGENCY, api_key=True),
        AckDispatchEvent=Rule(AGENCY, api_key=True, mutating=True),
        AcceptSosAlert=Rule(AGENCY, api_key=True, mutating=True),
        DeclineSosAlert=Rule(AGENCY, api_key=True, mutating=True),
        GetIncident=Rule(AGENCY_OR_ADMIN, api_key=True),
        ListIncidents=Rule(AGENCY_OR_ADMIN, api_key=True),
        UpdateIncident=Rule(AGENCY, api_key=True, mutating=True),
    ),
    **_rules(
        "SearchService",
        SearchProviders=Rule(ANY_USER, api_key=True, limit="lookup"),
        SearchIncidents=Rule(AGENCY_OR_ADMIN, api_key=True, limit="lookup"),
    ),
    **_rules(
        "AnalyticsService",
        RecordEvents=Rule(ANY_USER, mutating=True),
        GetSafetyScore=Rule(ANY_USER, api_key=True, limit="lookup"),
        ListSafetyScores=Rule(ANY_USER, api_key=True, limit="lookup"),
        GetIncidentReport=Rule(AGENCY_OR_ADMIN, api_key=True),
    ),
    # Infrastructure.
    "/grpc.health.v1.Health/Check": Rule(public=True),
    "/grpc.health.v1.Health/Watch": Rule(public=True),
    "/grpc.health.v1.Health/List": Rule(public=True),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Rule(public=True),
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": Rule(public=True),
}
