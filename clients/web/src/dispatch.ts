// The live feed of a dispatcher's agency: loads existing incidents, then follows
// AgencyService.WatchDispatch. Delivery is at least once, so events are deduplicated by
// event_id, acknowledged after processing (AckDispatchEvent), and the last processed
// id is kept in localStorage as the resume cursor for reconnects and reloads. A stream
// silent for longer than three heartbeats is treated as lost and reopened.
import { Code } from "@connectrpc/connect";
import { agency, sos, UNARY_TIMEOUT_MS } from "./api";
import { refresh } from "./auth";
import { errorText, isCode } from "./errors";
import type { StreamDispatchResponse } from "./gen/securenow/v1/agency_pb";
import type { PoliceIncident } from "./gen/securenow/v1/incidents_pb";
import { AlertPriority, IncidentStatus, SosStatus } from "./gen/securenow/v1/common_pb";
import type { AlertStore } from "./store";
import { enumLabel, sleep } from "./ui";

export type ConnectionState =
  | { kind: "connecting" }
  | { kind: "live" }
  | { kind: "reconnecting"; reason: string; retryInMs: number }
  | { kind: "stopped"; reason: string };

const BACKOFF_START_MS = 500;
const BACKOFF_MAX_MS = 10_000;
const SEEN_LIMIT = 2_000;
// The initial load: every open incident, and this many of the newest closed ones.
const OPEN_INCIDENT_STATUSES = [IncidentStatus.REPORTED, IncidentStatus.DISPATCHED, IncidentStatus.ON_SCENE];
const RECENT_INCIDENTS = 100;
const MAX_LIST_PAGES = 20; // of 500: a runaway bound, far above any real open workload
const LOAD_CONCURRENCY = 6;
const LOAD_RETRY_START_MS = 2_000;
const LOAD_RETRY_MAX_MS = 30_000;
// The server sends a heartbeat on WatchDispatch every 15 s. A connection that carries
// nothing for three of those is dead even if nobody closed it (a sleeping laptop, a NAT
// or proxy that dropped the flow): it is aborted and reopened, instead of a "Live"
// board that no longer updates.
const WATCHDOG_MS = 45_000;
// localStorage override of WATCHDOG_MS in milliseconds (at least 1000), for tests.
const WATCHDOG_KEY = "securenow.dispatch-watchdog-ms";

function watchdogMs(): number {
  const override = Number(localStorage.getItem(WATCHDOG_KEY) ?? "");
  return Number.isFinite(override) && override >= 1_000 ? override : WATCHDOG_MS;
}

/** The watchdog ended a connection that had gone quiet. */
class SilentConnection extends Error {
  constructor(silenceMs: number) {
    super(`no message from the server for ${Math.round(silenceMs / 1000)} s`);
  }
}

export class DispatchFeed {
  private abort = new AbortController();
  private seen = new Set<string>();
  private acks: Promise<void> = Promise.resolve();
  private readonly cursorKey: string;

  constructor(
    private readonly store: AlertStore,
    private readonly agencyId: string,
    private readonly onState: (state: ConnectionState) => void,
    /** The initial load's problem, or "" once it loaded. */
    private readonly onError: (message: string) => void,
  ) {
    this.cursorKey = `securenow.dispatch-cursor.${agencyId}`;
  }

  get cursor(): string {
    return localStorage.getItem(this.cursorKey) ?? "";
  }

  private set cursor(eventId: string) {
    if (eventId) localStorage.setItem(this.cursorKey, eventId);
    else localStorage.removeItem(this.cursorKey);
  }

  /** Loads the agency's incidents, then follows the stream until stop(). */
  async start(): Promise<void> {
    this.onState({ kind: "connecting" });
    if (!(await this.loadExisting())) void this.retryLoad();
    await this.follow();
  }

  /** A failed initial load (the server restarting, a network hiccup) is tried again in
   * the background until it works: the board must not stay without the open alerts
   * from before the page load. The live stream goes on meanwhile. */
  private async retryLoad(): Promise<void> {
    for (let attempt = 0; !this.stopped; attempt++) {
      await sleep(Math.min(LOAD_RETRY_MAX_MS, LOAD_RETRY_START_MS * 2 ** attempt), this.abort.signal);
      if (this.stopped || (await this.loadExisting())) return;
    }
  }

  stop(): void {
    this.abort.abort();
  }

  private get stopped(): boolean {
    return this.abort.signal.aborted;
  }

  /**
   * Incidents from before this page load, so a reload shows the board again: every open
   * one (each open status, all pages), whatever its age, and the most recent closed ones.
   */
  private async loadExisting(): Promise<boolean> {
    try {
      const incidents = new Map<string, PoliceIncident>();
      const lists = await Promise.all([
        this.listIncidents(IncidentStatus.UNSPECIFIED, RECENT_INCIDENTS, 1),
        ...OPEN_INCIDENT_STATUSES.map((status) => this.listIncidents(status, 500, MAX_LIST_PAGES)),
      ]);
      for (const list of lists) for (const incident of list) incidents.set(incident.id, incident);
      await eachLimited([...incidents.values()], LOAD_CONCURRENCY, async (incident) => {
        try {
          const got = await sos.getSosAlert(
            { alertId: incident.sosAlertId },
            { signal: this.abort.signal, timeoutMs: UNARY_TIMEOUT_MS },
          );
          if (got.alert?.assignedAgencyId === this.agencyId) this.store.upsert(got.alert, got.incident ?? incident, "");
        } catch (err) {
          if (!isCode(err, Code.NotFound)) throw err; // NOT_FOUND: the alert moved to another agency
        }
      });
      this.onError("");
      return true;
    } catch (err) {
      if (!this.stopped) this.onError(`Could not load existing incidents — ${errorText(err)}. Trying again…`);
      return false;
    }
  }

  /** The agency's incidents, newest first: with `status` UNSPECIFIED, any status. */
  private async listIncidents(status: IncidentStatus, pageSize: number, maxPages: number): Promise<PoliceIncident[]> {
    const found: PoliceIncident[] = [];
    let pageToken = "";
    for (let page = 0; page < maxPages; page++) {
      const resp = await agency.listIncidents(
        { status, pageSize, pageToken },
        { signal: this.abort.signal, timeoutMs: UNARY_TIMEOUT_MS },
      );
      found.push(...resp.incidents);
      pageToken = resp.nextPageToken;
      if (!pageToken) break;
    }
    return found;
  }

  private async follow(): Promise<void> {
    let attempt = 0;
    let refreshed = false; // one immediate retry with a refreshed token, not a loop
    while (!this.stopped) {
      let reason = "the server ended the stream";
      try {
        await this.connect(() => {
          attempt = 0;
          refreshed = false;
          this.onState({ kind: "live" });
        });
      } catch (err) {
        if (this.stopped) return;
        reason = err instanceof SilentConnection ? err.message : errorText(err);
        if (isCode(err, Code.Unauthenticated) && !refreshed) {
          try {
            await refresh(); // an expired token: retry at once with a fresh one
            refreshed = true;
            continue;
          } catch (refreshError) {
            if (this.stopped) return;
            if (isCode(refreshError, Code.Unauthenticated) || isCode(refreshError, Code.PermissionDenied)) {
              // The session is over (auth.ts shows the sign-in page with a message).
              this.onState({ kind: "stopped", reason });
              return;
            }
            // The server could not renew it just now: try again after the backoff.
            reason = `${reason}; renewing the session failed: ${errorText(refreshError)}`;
          }
        }
        if (isCode(err, Code.PermissionDenied)) {
          this.onState({ kind: "stopped", reason });
          return;
        }
        if (isCode(err, Code.InvalidArgument) && this.cursor) {
          this.cursor = ""; // a cursor from another database: start from the unacknowledged events
        }
      }
      if (this.stopped) return;
      const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * 2 ** attempt * (0.8 + Math.random() * 0.4));
      attempt += 1;
      this.onState({ kind: "reconnecting", reason, retryInMs: delay });
      await sleep(delay, this.abort.signal);
    }
  }

  /** One WatchDispatch connection, followed until it ends; throws what ended it
   * (SilentConnection when the watchdog did). */
  private async connect(onMessage: () => void): Promise<void> {
    const connection = new AbortController(); // ended by stop() or by the watchdog
    const onStop = () => connection.abort();
    this.abort.signal.addEventListener("abort", onStop, { once: true });
    const silenceMs = watchdogMs();
    let silent = false;
    let watchdog: ReturnType<typeof setTimeout> | undefined;
    const rearm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => {
        silent = true;
        connection.abort();
      }, silenceMs);
    };
    try {
      rearm(); // also bounds the wait for the response headers
      const stream = agency.watchDispatch(
        { resumeAfterEventId: this.cursor },
        {
          signal: connection.signal,
          onHeader: () => {
            rearm();
            this.onState({ kind: "live" });
          },
        },
      );
      for await (const message of stream) {
        // Every message counts, heartbeats included. Nothing is read while an event is
        // handled, so silence is not measured then.
        clearTimeout(watchdog);
        onMessage();
        if (message.event) await this.handle(message.event);
        rearm();
      }
    } catch (err) {
      if (silent && !this.stopped) throw new SilentConnection(silenceMs);
      throw err;
    } finally {
      clearTimeout(watchdog);
      this.abort.signal.removeEventListener("abort", onStop);
    }
  }

  private async handle(event: StreamDispatchResponse): Promise<void> {
    const id = event.eventId;
    if (!id) return; // heartbeats and command results are not events
    if (!this.seen.has(id)) {
      this.remember(id);
      await this.apply(event);
    }
    if (isAfter(id, this.cursor)) this.cursor = id; // a redelivered older event does not move it back
    this.ack(id);
  }

  private remember(id: string): void {
    this.seen.add(id);
    if (this.seen.size > SEEN_LIMIT) {
      const oldest = this.seen.values().next().value;
      if (oldest !== undefined) this.seen.delete(oldest);
    }
  }

  private ack(eventId: string): void {
    this.acks = this.acks
      .then(() => agency.ackDispatchEvent({ eventId }, { timeoutMs: UNARY_TIMEOUT_MS }))
      .then(
        () => undefined,
        () => undefined, // unacknowledged events come again; they are deduplicated
      );
  }

  private async apply(event: StreamDispatchResponse): Promise<void> {
    const kind = event.kind;
    switch (kind.case) {
      case "alertRaised":
        if (kind.value.alert) this.store.arrived(kind.value.alert, kind.value.incident);
        return;
      case "alertCancelled":
        if (!this.store.cancel(kind.value.alertId, kind.value.reason)) await this.fetch(kind.value.alertId);
        return;
      case "alertEscalated": {
        const { alertId, priority, reason } = kind.value;
        if (!this.store.escalate(alertId, priority, reason)) await this.fetch(alertId);
        // Escalation can also mean the alert moved to another agency: check.
        await this.fetch(alertId, `Escalated to ${enumLabel(AlertPriority, priority)}`);
        return;
      }
      case "incidentUpdated":
        if (
          kind.value.incident &&
          !this.store.setIncident(kind.value.incident, `Incident ${enumLabel(IncidentStatus, kind.value.incident.status).toLowerCase()}`)
        ) {
          await this.fetch(kind.value.incident.sosAlertId);
        }
        return;
      case "alertLocation":
        if (kind.value.location && !this.store.location(kind.value.alertId, kind.value.location)) {
          await this.fetch(kind.value.alertId);
        }
        return;
      default:
        return;
    }
  }

  /** Reads an alert again (after an action was refused: the stream may not have told
   * yet that it was cancelled or moved). */
  reread(alertId: string): Promise<void> {
    return this.fetch(alertId);
  }

  /** (Re)reads an alert; one this agency may no longer see is marked as gone. */
  private async fetch(alertId: string, note = ""): Promise<void> {
    try {
      const got = await sos.getSosAlert({ alertId }, { signal: this.abort.signal, timeoutMs: UNARY_TIMEOUT_MS });
      if (!got.alert) return;
      const moved = got.alert.assignedAgencyId !== "" && got.alert.assignedAgencyId !== this.agencyId;
      const wasCancelled = this.store.get(alertId)?.alert.status === SosStatus.CANCELLED;
      this.store.upsert(got.alert, moved ? undefined : got.incident, note);
      if (moved) {
        this.store.markGone(alertId, "Moved to another agency");
        return;
      }
      // Ours (again): e.g. declined here, and no other agency could take it.
      if (got.alert.assignedAgencyId === this.agencyId) this.store.unmarkGone(alertId, "Back with your agency");
      if (got.alert.status === SosStatus.CANCELLED && !wasCancelled) this.store.cancel(alertId, got.alert.cancelReason);
    } catch (err) {
      if (isCode(err, Code.NotFound)) this.store.markGone(alertId, "Moved to another agency");
    }
  }
}

/** Runs `work` over the items, at most `limit` at a time; fails with the first failure. */
async function eachLimited<T>(items: T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await work(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** Event ids increase per department; today they look like "<seq>-0". Unknown shapes count as newer. */
function isAfter(id: string, cursor: string): boolean {
  const a = /^(\d+)-(\d+)$/.exec(id);
  const b = /^(\d+)-(\d+)$/.exec(cursor);
  if (!a || !b) return true;
  const [seqA, subA, seqB, subB] = [a[1], a[2], b[1], b[2]].map(BigInt);
  return seqA > seqB || (seqA === seqB && subA > subB);
}
