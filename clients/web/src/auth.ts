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

setTokenProvider(accessToken);
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

function expiry(ts: Timestamp | undefined): number {
  // No expiry given: assume the server default (15 min) rather than never.
  return ts ? timestampDate(ts).getTime() : Date.now() + 15 * 60_000;
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
    expiresAt: expiry(resp.accessTokenExpireTime),
    user: toSessionUser(resp.user),
  };
  store(session);
  return session;
}

export async function signOut(): Promise<void> {
  if (current) {
    try {
      await auth.signOut({}, { timeoutMs: 5_000 });
    } catch {
      // the session ends locally either way
    }
  }
  store(null);
}

/** Exchanges the refresh token for new tokens (one exchange at a time). */
export function refresh(): Promise<void> {
  refreshing ??= (async () => {
    const before = current;
    if (!before) return;
    try {
      const resp = await auth.refreshToken({ refreshToken: before.refreshToken }, { timeoutMs: UNARY_TIMEOUT_MS });
      if (current !== before) return; // signed out meanwhile
      store({
        ...before,
        accessToken: resp.accessToken,
        refreshToken: resp.refreshToken,
        expiresAt: expiry(resp.accessTokenExpireTime),
      });
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
  })().finally(() => {
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

export function isDispatcher(user: SessionUser): boolean {
  return (user.role === UserRole.POLICE || user.role === UserRole.SECURITY_AGENCY) && user.agencyId !== "";
}

export function isAdmin(user: SessionUser): boolean {
  return user.role === UserRole.ADMIN;
}
