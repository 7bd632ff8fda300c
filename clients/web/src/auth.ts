// Sign-in state: tokens in sessionStorage (per tab, gone when the tab closes), the
// access token refreshed before it expires. Refresh tokens are single use and a reused
// one revokes the session, so refreshes never run concurrently.
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { auth, setTokenProvider, UNARY_TIMEOUT_MS } from "./api";
import { isCode } from "./errors";
import { UserRole, type User } from "./gen/securenow/v1/users_pb";

export interface SessionUser {
  id: string;
  email: string;
  firstName: string;
  lastName: string;
  role: UserRole;
  agencyId: string;
}

export interface Session {
  accessToken: string;
  refreshToken: string;
  expiresAt: number; // epoch ms
  user: SessionUser;
}

const STORAGE_KEY = "securenow.session";
const REFRESH_BEFORE_MS = 60_000; // refresh a minute before expiry
const MIN_DELAY_MS = 5_000;
const RETRY_MS = 10_000;

let current: Session | null = load();
let refreshing: Promise<void> | null = null;
let timer: ReturnType<typeof setTimeout> | undefined;
let endedListener: (message: string) => void = () => {};

// Tabs that share a session. A duplicated tab starts with a copy of sessionStorage, so
// two tabs can hold the same single-use refresh token; if both exchanged it, the server
// would see it replayed and revoke the session in both. So exchanges run one at a time
// across tabs (a Web Lock), a tab tells the others what a token became ("renewed"), a
// tab about to exchange a token first asks whether another already did ("ask"), and a
// sign-out ends the session in every tab that holds it. Tokens travel only between
// this origin's open tabs, never to storage that outlives them.
type TabMessage =
  | { type: "renewed"; from: string; session: Session }
  | { type: "ask"; refreshToken: string }
  | { type: "signed-out"; refreshToken: string };
const channel = typeof BroadcastChannel === "function" ? new BroadcastChannel("securenow.session") : null;
const ASK_WAIT_MS = 250;
const spent = new Set<string>(); // refresh tokens this tab's session has left behind
let adopted: () => void = () => {};

channel?.addEventListener("message", (ev: MessageEvent<TabMessage>) => {
  const msg = ev.data;
  if (msg.type === "renewed") {
    if (current && current.refreshToken === msg.from) {
      spent.add(msg.from);
      store(msg.session);
      adopted();
    }
  } else if (msg.type === "ask") {
    if (current && spent.has(msg.refreshToken)) post({ type: "renewed", from: msg.refreshToken, session: current });
  } else if (msg.type === "signed-out") {
    if (current && (current.refreshToken === msg.refreshToken || spent.has(msg.refreshToken))) {
      store(null);
      endedListener("You signed out in another tab.");
    }
  }
});

function post(msg: TabMessage): void {
  try {
    channel?.postMessage(msg);
  } catch {
    // a closed channel: this tab is going away
  }
}

/** Runs `work` holding the cross-tab refresh lock (where Web Locks exist). */
function withRefreshLock<T>(work: () => Promise<T>): Promise<T> {
  const locks = (navigator as Navigator & { locks?: LockManager }).locks;
  return locks ? (locks.request("securenow.refresh", work) as Promise<T>) : work();
}

/** Asks the other tabs whether `refreshToken` was exchanged already; true when this tab
 * took over the result (within ASK_WAIT_MS). */
function askOtherTabs(refreshToken: string): Promise<boolean> {
  if (!channel) return Promise.resolve(false);
  return new Promise((resolve) => {
    const done = (taken: boolean) => {
      clearTimeout(wait);
      adopted = () => {};
      resolve(taken);
    };
    const wait = setTimeout(() => done(false), ASK_WAIT_MS);
    adopted = () => done(true);
    post({ type: "ask", refreshToken });
  });
}

setTokenProvider(accessToken, renewRefused);
schedule();

function load(): Session | null {
  try {
    const raw = sessionStorage.getItem(STORAGE_KEY);
    const parsed = raw ? (JSON.parse(raw) as Session) : null;
    return parsed && parsed.refreshToken ? parsed : null;
  } catch {
    return null;
  }
}

function store(session: Session | null): void {
  current = session;
  if (session) sessionStorage.setItem(STORAGE_KEY, JSON.stringify(session));
  else sessionStorage.removeItem(STORAGE_KEY);
  schedule();
}

/**
 * When the access token expires, on this browser's clock. The server's expire time is on
 * the server's clock, and a browser's clock can be minutes or hours off: fast, every
 * call would refresh first; slow, calls would go out with an expired token. So the
 * token's lifetime (its `exp` minus `iat`) counts from now, when it arrived; without
 * readable claims, the server's time is taken as it is.
 */
function expiry(token: string, ts: Timestamp | undefined): number {
  const lifetime = lifetimeMs(token);
  if (lifetime !== null) return Date.now() + lifetime;
  // No expiry given: assume the server default (15 min) rather than never.
  return ts ? timestampDate(ts).getTime() : Date.now() + 15 * 60_000;
}

/** exp - iat of a JWT, in ms (read, not verified: only for timing), or null. */
function lifetimeMs(token: string): number | null {
  try {
    const part = token.split(".")[1] ?? "";
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const claims = JSON.parse(atob(base64)) as { exp?: unknown; iat?: unknown };
    if (typeof claims.exp === "number" && typeof claims.iat === "number" && claims.exp > claims.iat) {
      return (claims.exp - claims.iat) * 1000;
    }
  } catch {
    // not a JWT we can read
  }
  return null;
}

function toSessionUser(user: User | undefined): SessionUser {
  return {
    id: user?.id ?? "",
    email: user?.email ?? "",
    firstName: user?.firstName ?? "",
    lastName: user?.lastName ?? "",
    role: user?.role ?? UserRole.UNSPECIFIED,
    agencyId: user?.agencyId ?? "",
  };
}

function schedule(): void {
  clearTimeout(timer);
  if (!current) return;
  const delay = Math.max(MIN_DELAY_MS, current.expiresAt - Date.now() - REFRESH_BEFORE_MS);
  timer = setTimeout(() => void refresh().catch(() => undefined), delay);
}

export function session(): Session | null {
  return current;
}

/** Called once when the session ends other than by signing out (refresh refused). */
export function onSessionEnded(listener: (message: string) => void): void {
  endedListener = listener;
}

export async function signIn(email: string, password: string): Promise<Session> {
  const resp = await auth.signIn({ email, password }, { timeoutMs: UNARY_TIMEOUT_MS });
  const session: Session = {
    accessToken: resp.accessToken,
    refreshToken: resp.refreshToken,
    expiresAt: expiry(resp.accessToken, resp.accessTokenExpireTime),
    user: toSessionUser(resp.user),
  };
  store(session);
  return session;
}

export async function signOut(): Promise<void> {
  const ending = current;
  if (ending) {
    try {
      await auth.signOut({}, { timeoutMs: 5_000 });
    } catch {
      // the session ends locally either way
    }
    post({ type: "signed-out", refreshToken: ending.refreshToken });
  }
  spent.clear();
  store(null);
}

/** Exchanges the refresh token for new tokens (one exchange at a time, across tabs). */
export function refresh(): Promise<void> {
  if (refreshing) return refreshing;
  const before = current;
  refreshing = withRefreshLock(async () => {
    // While this tab waited for the lock, another may have renewed the session (and
    // told this one), or it was signed out: nothing left to do.
    if (!before || current !== before) return;
    try {
      // Another tab holding this session may have exchanged the token already.
      if (await askOtherTabs(before.refreshToken)) return;
      if (current !== before) return; // signed out, or took another tab's result
      const resp = await auth.refreshToken({ refreshToken: before.refreshToken }, { timeoutMs: UNARY_TIMEOUT_MS });
      spent.add(before.refreshToken);
      if (current !== before) return; // signed out meanwhile
      const renewed: Session = {
        ...before,
        accessToken: resp.accessToken,
        refreshToken: resp.refreshToken,
        expiresAt: expiry(resp.accessToken, resp.accessTokenExpireTime),
      };
      store(renewed);
      post({ type: "renewed", from: before.refreshToken, session: renewed });
    } catch (err) {
      if (current !== before) return;
      if (isCode(err, Code.Unauthenticated) || isCode(err, Code.PermissionDenied)) {
        store(null);
        endedListener("Your session has ended. Please sign in again.");
      } else {
        clearTimeout(timer); // the server is unreachable: try again soon
        timer = setTimeout(() => void refresh().catch(() => undefined), RETRY_MS);
      }
      throw err;
    }
  }).finally(() => {
    refreshing = null;
  });
  return refreshing;
}

/** The access token for a call, refreshed first when it expires within 30 s. */
async function accessToken(): Promise<string | undefined> {
  if (current && current.expiresAt - Date.now() < 30_000) {
    try {
      await refresh();
    } catch {
      // use what we have; the call reports the error
    }
  }
  return current?.accessToken;
}

/** A token the server refused: renewed unless that happened meanwhile; the token to
 * retry with, or undefined (the renewal failed; a refused renewal ends the session). */
async function renewRefused(refused: string): Promise<string | undefined> {
  if (current?.accessToken === refused) {
    try {
      await refresh();
    } catch {
      return undefined;
    }
  }
  return current?.accessToken;
}

/**
 * Takes the account as the server sees it now (UserService.GetUser "me"): a role or
 * agency changed since sign-in (made dispatcher, removed from the agency) must change
 * the view. True when the role or agency differs from what the session held.
 */
export function updateUser(user: User): boolean {
  if (!current || user.id !== current.user.id) return false;
  const fresh = toSessionUser(user);
  const changed = fresh.role !== current.user.role || fresh.agencyId !== current.user.agencyId;
  store({ ...current, user: fresh });
  return changed;
}

export function isDispatcher(user: SessionUser): boolean {
  return (user.role === UserRole.POLICE || user.role === UserRole.SECURITY_AGENCY) && user.agencyId !== "";
}

export function isAdmin(user: SessionUser): boolean {
  return user.role === UserRole.ADMIN;
}
