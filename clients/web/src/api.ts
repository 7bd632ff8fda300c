// The gRPC-Web transport and typed clients. The console is served by the same HTTP
// listener as the embedded gRPC-Web endpoint, so calls go to window.location.origin.
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AgencyService } from "./gen/securenow/v1/agency_pb";
import { AnalyticsService } from "./gen/securenow/v1/analytics_pb";
import { AuthService } from "./gen/securenow/v1/auth_pb";
import { ProviderService } from "./gen/securenow/v1/providers_pb";
import { SearchService } from "./gen/securenow/v1/search_pb";
import { SosService } from "./gen/securenow/v1/sos_pb";
import { UserService } from "./gen/securenow/v1/users_pb";

/** Supplies a valid access token (refreshing it first when it is about to expire). */
type TokenProvider = () => Promise<string | undefined>;
/** Called with a token the server refused: renews it (once for all callers) and
 * returns the token to retry with, or undefined when there is none. */
type TokenRenewer = (refused: string) => Promise<string | undefined>;

let tokenProvider: TokenProvider = async () => undefined;
let tokenRenewer: TokenRenewer = async () => undefined;

export function setTokenProvider(provider: TokenProvider, renewer: TokenRenewer): void {
  tokenProvider = provider;
  tokenRenewer = renewer;
}

// Calls that authenticate by their body, not by a bearer token.
const PUBLIC_METHODS = new Set(["SignIn", "SignUp", "RefreshToken"]);

// A unary call refused as UNAUTHENTICATED with a token we believed good (the browser's
// clock runs behind the server's, the server's signing key changed) is retried once with
// a renewed token: refused at the door, it did nothing. Streams retry on their own
// (dispatch.ts); their request cannot be sent twice.
const authorize: Interceptor = (next) => async (req) => {
  if (PUBLIC_METHODS.has(req.method.name)) return next(req);
  const token = await tokenProvider();
  if (token) req.header.set("authorization", `Bearer ${token}`);
  try {
    return await next(req);
  } catch (err) {
    if (req.stream || !token || !(err instanceof ConnectError) || err.code !== Code.Unauthenticated) throw err;
    const renewed = await tokenRenewer(token);
    if (!renewed || renewed === token || req.signal.aborted) throw err;
    req.header.set("authorization", `Bearer ${renewed}`);
    return next(req);
  }
};

const transport = createGrpcWebTransport({
  baseUrl: window.location.origin,
  useBinaryFormat: true,
  interceptors: [authorize],
});

export const auth = createClient(AuthService, transport);
export const users = createClient(UserService, transport);
export const agency = createClient(AgencyService, transport);
export const sos = createClient(SosService, transport);
export const providers = createClient(ProviderService, transport);
export const search = createClient(SearchService, transport);
export const analytics = createClient(AnalyticsService, transport);

/** Default deadline for unary calls (ms); streams have none. */
export const UNARY_TIMEOUT_MS = 15_000;
