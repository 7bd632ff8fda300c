// What the board knows: the agency's alerts with their incidents and location trails.
// Fed by the initial load and the dispatch stream; views subscribe to changes.
import { AlertPriority, IncidentStatus, SosStatus, type LatLng, type Location } from "./gen/securenow/v1/common_pb";
import type { PoliceIncident } from "./gen/securenow/v1/incidents_pb";
import type { SosAlert } from "./gen/securenow/v1/sos_pb";
import { millis } from "./ui";

export interface Entry {
  alert: SosAlert;
  incident?: PoliceIncident;
  /** Location trail, oldest first. */
  trail: LatLng[];
  trailLoaded: boolean;
  /** Set when the alert left this agency (declined, or escalated elsewhere). */
  gone?: string;
  /** The last thing that happened, for the board. */
  note: string;
}

type Listener = (alertId: string | null) => void;

const CLOSED = new Set([SosStatus.RESOLVED, SosStatus.CANCELLED]);

export function isOpen(entry: Entry): boolean {
  return !entry.gone && !CLOSED.has(entry.alert.status);
}

export class AlertStore {
  private entries = new Map<string, Entry>();
  private alertOfIncident = new Map<string, string>();
  private listeners = new Set<Listener>();
  /** Alerts that arrived live and that the dispatcher has not opened yet. */
  private unseen = new Set<string>();
  private arrivalListeners = new Set<(alertId: string) => void>();

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private changed(alertId: string | null): void {
    for (const listener of this.listeners) listener(alertId);
  }

  /** Called for each alert that newly arrives on the live stream (not the initial load,
   * nor a redelivery of one already on the board). */
  onArrival(listener: (alertId: string) => void): () => void {
    this.arrivalListeners.add(listener);
    return () => this.arrivalListeners.delete(listener);
  }

  /** An alert raised for (or re-routed to) this agency came in on the stream. */
  arrived(alert: SosAlert, incident: PoliceIncident | undefined): void {
    const known = this.entries.has(alert.id);
    this.upsert(alert, incident, "New alert");
    const entry = this.entries.get(alert.id);
    if (known || !entry || !isOpen(entry)) return;
    this.unseen.add(alert.id);
    for (const listener of this.arrivalListeners) listener(alert.id);
    this.changed(alert.id);
  }

  /** The dispatcher opened the alert: it is no longer new. */
  markSeen(alertId: string): void {
    if (this.unseen.delete(alertId)) this.changed(alertId);
  }

  /** Open for this agency, arrived live, not opened yet. */
  isNew(alertId: string): boolean {
    const entry = this.entries.get(alertId);
    return this.unseen.has(alertId) && !!entry && isOpen(entry);
  }

  newCount(): number {
    let n = 0;
    for (const alertId of this.unseen) if (this.isNew(alertId)) n += 1;
    return n;
  }

  get(alertId: string): Entry | undefined {
    return this.entries.get(alertId);
  }

  has(alertId: string): boolean {
    return this.entries.has(alertId);
  }

  alertIdOfIncident(incidentId: string): string | undefined {
    return this.alertOfIncident.get(incidentId);
  }

  /** Open alerts first (highest priority, then newest), then closed ones, newest first. */
  list(): Entry[] {
    return [...this.entries.values()].sort((a, b) => {
      const open = Number(isOpen(b)) - Number(isOpen(a));
      if (open) return open;
      if (isOpen(a)) {
        const priority = b.alert.priority - a.alert.priority;
        if (priority) return priority;
      }
      return millis(b.alert.createTime) - millis(a.alert.createTime);
    });
  }

  /** Adds an alert, or refreshes a known one with a newer copy. */
  upsert(alert: SosAlert, incident: PoliceIncident | undefined, note: string): void {
    const known = this.entries.get(alert.id);
    if (known) {
      // A copy read before a change the stream already applied (a cancellation marks the
      // alert here without a new update_time) must not reopen it: closed stays closed.
      const reopens = CLOSED.has(known.alert.status) && !CLOSED.has(alert.status);
      if (millis(alert.updateTime) >= millis(known.alert.updateTime) && !reopens) known.alert = alert;
      if (incident) this.applyIncident(known, incident);
      known.note = note || known.note;
    } else {
      const entry: Entry = { alert, trail: [], trailLoaded: false, note };
      if (alert.location?.point) entry.trail.push(alert.location.point);
      if (incident) this.applyIncident(entry, incident);
      this.entries.set(alert.id, entry);
    }
    if (incident) this.alertOfIncident.set(incident.id, alert.id);
    this.changed(alert.id);
  }

  /** Applies an incident change; false when its alert is not known here. */
  setIncident(incident: PoliceIncident, note: string): boolean {
    const entry = this.entries.get(incident.sosAlertId);
    if (!entry) return false;
    this.alertOfIncident.set(incident.id, incident.sosAlertId);
    this.applyIncident(entry, incident);
    entry.note = note;
    this.changed(incident.sosAlertId);
    return true;
  }

  private applyIncident(entry: Entry, incident: PoliceIncident): void {
    if (entry.incident && millis(incident.updateTime) < millis(entry.incident.updateTime)) return; // stale
    entry.incident = incident;
    // The alert follows its incident: accepted -> RESPONDING, resolved -> RESOLVED. A
    // cancelled alert stays cancelled (its incident is resolved by the cancellation).
    const alert = entry.alert;
    if (CLOSED.has(alert.status)) return;
    if (incident.status === IncidentStatus.RESOLVED) alert.status = SosStatus.RESOLVED;
    else if (incident.status >= IncidentStatus.DISPATCHED && alert.status === SosStatus.ACTIVE) {
      alert.status = SosStatus.RESPONDING;
    }
    if (incident.priority > alert.priority) alert.priority = incident.priority;
  }

  cancel(alertId: string, reason: string): boolean {
    const entry = this.entries.get(alertId);
    if (!entry) return false;
    entry.alert.status = SosStatus.CANCELLED;
    entry.alert.cancelReason = reason;
    entry.note = reason ? `Cancelled by the person: ${reason}` : "Cancelled by the person";
    this.changed(alertId);
    return true;
  }

  escalate(alertId: string, priority: AlertPriority, reason: string): boolean {
    const entry = this.entries.get(alertId);
    if (!entry) return false;
    if (priority > entry.alert.priority) entry.alert.priority = priority;
    entry.alert.escalationLevel += 1;
    entry.note = reason ? `Escalated: ${reason}` : "Escalated";
    this.changed(alertId);
    return true;
  }

  /**
   * Marks an alert as no longer this agency's. The stream only knows that it moved; a
   * reason this dispatcher gave (`specific`: they declined it) is kept over that,
   * whichever arrives first.
   */
  markGone(alertId: string, reason: string, specific = false): void {
    const entry = this.entries.get(alertId);
    if (!entry || (entry.gone && !specific)) return;
    entry.gone = reason;
    entry.note = reason;
    this.changed(alertId);
  }

  /** The alert is this agency's (again): routed back after a decline that no other
   * agency could take, or re-routed here. */
  unmarkGone(alertId: string, note: string): void {
    const entry = this.entries.get(alertId);
    if (!entry?.gone) return;
    entry.gone = undefined;
    entry.note = note;
    this.changed(alertId);
  }

  location(alertId: string, location: Location): boolean {
    const entry = this.entries.get(alertId);
    if (!entry) return false;
    entry.alert.location = location;
    const point = location.point;
    const last = entry.trail[entry.trail.length - 1];
    if (point && (!last || last.latitude !== point.latitude || last.longitude !== point.longitude)) {
      entry.trail.push(point);
    }
    this.changed(alertId);
    return true;
  }

  setTrail(alertId: string, points: LatLng[]): void {
    const entry = this.entries.get(alertId);
    if (!entry) return;
    // Keep live points that arrived after the listed ones.
    const latest = entry.alert.location?.point;
    entry.trail = [...points];
    const last = points[points.length - 1];
    if (latest && (!last || last.latitude !== latest.latitude || last.longitude !== latest.longitude)) {
      entry.trail.push(latest);
    }
    entry.trailLoaded = true;
    this.changed(alertId);
  }
}
