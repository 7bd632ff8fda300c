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
import { AlertPriority, IncidentStatus } from "./gen/securenow/v1/common_pb";
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
    await this.loadExisting();
    await this.follow();
  }

  stop(): void {
    this.abort.abort();
  }

  private get stopped(): boolean {
    return this.abort.signal.aborted;
  }

  /** Incidents from before this page load, so a reload shows the board again. */
  private async loadExisting(): Promise<void> {
    try {
      const listed = await agency.listIncidents(
        { pageSize: 100 },
        { signal: this.abort.signal, timeoutMs: UNARY_TIMEOUT_MS },
      );
      await Promise.all(
        listed.incidents.map(async (incident) => {
          try {
            const got = await sos.getSosAlert(
              { alertId: incident.sosAlertId },
              { signal: this.abort.signal, timeoutMs: UNARY_TIMEOUT_MS },
            );
            if (got.alert?.assignedAgencyId === this.agencyId) this.store.upsert(got.alert, incident, "");
          } catch (err) {
            if (!isCode(err, Code.NotFound)) throw err; // NOT_FOUND: the alert moved to another agency
          }
        }),
      );
    } catch (err) {
      if (!this.stopped) this.onError(`Could not load existing incidents — ${errorText(err)}`);
    }
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
          refreshed = true;
          try {
            await refresh(); // an expired token: retry at once with a fresh one
            continue;
          } catch {
            this.onState({ kind: "stopped", reason });
            return;
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
        if (kind.value.alert) this.store.upsert(kind.value.alert, kind.value.incident, "New alert");
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

  /** (Re)reads an alert; one this agency may no longer see is marked as gone. */
  private async fetch(alertId: string, note = ""): Promise<void> {
    try {
      const got = await sos.getSosAlert({ alertId }, { signal: this.abort.signal, timeoutMs: UNARY_TIMEOUT_MS });
      if (!got.alert) return;
      const moved = got.alert.assignedAgencyId !== "" && got.alert.assignedAgencyId !== this.agencyId;
      this.store.upsert(got.alert, moved ? undefined : got.incident, note);
      if (moved) this.store.markGone(alertId, "Moved to another agency");
    } catch (err) {
      if (isCode(err, Code.NotFound)) this.store.markGone(alertId, "Moved to another agency");
    }
  }
}

/** Event ids increase per department; today they look like "<seq>-0". Unknown shapes count as newer. */
function isAfter(id: string, cursor: string): boolean {
  const a = /^(\d+)-(\d+)$/.exec(id);
  const b = /^(\d+)-(\d+)$/.exec(cursor);
  if (!a || !b) return true;
  const [seqA, subA, seqB, subB] = [a[1], a[2], b[1], b[2]].map(BigInt);
  return seqA > seqB || (seqA === seqB && subA > subB);
}
