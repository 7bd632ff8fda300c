// One alert in detail: its fields, the incident, the location trail and the actions the
// incident's state allows (reported -> dispatched -> on_scene -> resolved).
import { Code } from "@connectrpc/connect";
import { agency, sos, UNARY_TIMEOUT_MS } from "./api";
import { errorBlock, isCode } from "./errors";
import { AlertPriority, IncidentStatus, IncidentType, SosStatus, type LatLng } from "./gen/securenow/v1/common_pb";
import type { PoliceIncident } from "./gen/securenow/v1/incidents_pb";
import { isOpen, type AlertStore, type Entry } from "./store";
import { trailSvg } from "./trail";
import { enumLabel, enumToken, field, formatDateTime, h, replace } from "./ui";

type Action = "accept" | "decline" | "on-scene" | "resolve";

export class DetailView {
  readonly element: HTMLElement;
  private alertId: string | null = null;
  private busy = false;
  private unsubscribe: () => void;
  // Parts that change with the alert (the inputs keep what the dispatcher typed).
  private readonly title = h("h2", { tabindex: -1, "data-testid": "detail-title" }, "Alert");
  private readonly facts = h("dl", { class: "facts" });
  private readonly trailBox = h("div", { class: "trail-box" });
  private readonly message = h("div", { class: "message", "aria-live": "polite" });
  private readonly unit = h("input", { "data-testid": "accept-unit", name: "unit", placeholder: "Unit-12", maxlength: 100 });
  private readonly eta = h("input", { "data-testid": "accept-eta", name: "eta", type: "number", min: 0, step: 1, placeholder: "4" });
  private readonly reason = h("input", { "data-testid": "decline-reason", name: "reason", placeholder: "No unit available" });
  private readonly notes = h("textarea", { "data-testid": "resolve-notes", name: "notes", rows: 2, placeholder: "All safe" });
  private readonly buttons: Record<Action, HTMLButtonElement>;

  constructor(
    private readonly store: AlertStore,
    /** Reads the alert again from the server (after an action it refused). */
    private readonly reread: (alertId: string) => Promise<void>,
  ) {
    this.buttons = {
      accept: h("button", { type: "submit", "data-testid": "accept-button" }, "Accept"),
      decline: h("button", { type: "submit", class: "secondary", "data-testid": "decline-button" }, "Decline"),
      "on-scene": h("button", { type: "button", "data-testid": "on-scene-button", onclick: () => void this.onScene() }, "On scene"),
      resolve: h("button", { type: "submit", "data-testid": "resolve-button" }, "Resolve"),
    };
    const actions = h(
      "div",
      { class: "actions" },
      h(
        "form",
        { class: "action", "data-testid": "accept-form", onsubmit: (ev: Event) => this.submit(ev, () => this.accept()) },
        h("h3", {}, "Accept and dispatch"),
        field("Unit", this.unit),
        field("ETA (minutes)", this.eta),
        this.buttons.accept,
      ),
      h(
        "form",
        { class: "action", "data-testid": "decline-form", onsubmit: (ev: Event) => this.submit(ev, () => this.decline()) },
        h("h3", {}, "Decline"),
        field("Reason", this.reason),
        this.buttons.decline,
      ),
      h("div", { class: "action" }, h("h3", {}, "Unit arrived"), this.buttons["on-scene"]),
      h(
        "form",
        { class: "action", "data-testid": "resolve-form", onsubmit: (ev: Event) => this.submit(ev, () => this.resolve()) },
        h("h3", {}, "Resolve"),
        field("Notes", this.notes),
        this.buttons.resolve,
      ),
    );
    this.element = h(
      "section",
      { class: "detail", "data-testid": "alert-detail", "aria-label": "Alert detail", hidden: true },
      this.title,
      this.facts,
      this.trailBox,
      actions,
      this.message,
    );
    this.unsubscribe = store.subscribe((changed) => {
      if (changed === null || changed === this.alertId) this.render();
    });
  }

  dispose(): void {
    this.unsubscribe();
  }

  show(alertId: string): void {
    if (alertId !== this.alertId) {
      this.alertId = alertId;
      this.unit.value = "";
      this.eta.value = "";
      this.reason.value = "";
      this.notes.value = "";
      replace(this.message);
      void this.loadTrail(alertId);
    }
    this.element.hidden = false;
    this.render();
  }

  /** Moves the keyboard focus to the alert (its title), so Tab goes on to its actions. */
  focus(): void {
    if (!this.element.hidden) this.title.focus();
  }

  private async loadTrail(alertId: string): Promise<void> {
    const points: LatLng[] = [];
    try {
      let pageToken = "";
      for (let page = 0; page < 10; page++) {
        const resp = await sos.listAlertLocations({ alertId, pageSize: 500, pageToken }, { timeoutMs: UNARY_TIMEOUT_MS });
        for (const loc of resp.locations) if (loc.point) points.push(loc.point);
        pageToken = resp.nextPageToken;
        if (!pageToken) break;
      }
      this.store.setTrail(alertId, points);
    } catch (err) {
      if (this.alertId === alertId) this.showError(err, "Could not load the location trail — ");
    }
  }

  private render(): void {
    const entry = this.alertId ? this.store.get(this.alertId) : undefined;
    if (!entry) {
      this.element.hidden = true;
      return;
    }
    const { alert, incident } = entry;
    replace(
      this.title,
      "Alert ",
      h("code", { title: alert.id }, alert.id.slice(0, 8)),
      " ",
      h("span", { class: `badge priority-${enumToken(AlertPriority, alert.priority)}`, "data-testid": "detail-priority" }, enumLabel(AlertPriority, alert.priority)),
    );
    const loc = alert.location;
    const rows: [string, string, string][] = [
      ["Status", "detail-alert-status", entry.gone ? `Moved away (${entry.gone})` : enumLabel(SosStatus, alert.status)],
      ["Incident", "detail-incident-status", incident ? enumLabel(IncidentStatus, incident.status) : "—"],
      ["Type", "detail-type", enumLabel(IncidentType, alert.incidentType)],
      ["Description", "detail-description", alert.description || "—"],
      ["Raised", "detail-raised", formatDateTime(alert.createTime)],
      [
        "Location",
        "detail-location",
        loc?.point
          ? `${loc.point.latitude.toFixed(5)}, ${loc.point.longitude.toFixed(5)}` +
            (loc.accuracyM ? ` (±${Math.round(loc.accuracyM)} m)` : "") +
            (loc.address ? ` — ${loc.address}` : "")
          : "not known yet",
      ],
      ["Unit", "detail-unit", incident?.assignedUnit || "—"],
      ["ETA", "detail-eta", incident && incident.status >= IncidentStatus.DISPATCHED ? `${incident.estimatedArrivalMinutes} min` : "—"],
      ["Arrived", "detail-arrived", formatDateTime(incident?.actualArrivalTime)],
      ["Escalations", "detail-escalations", String(alert.escalationLevel)],
    ];
    if (alert.cancelReason) rows.push(["Cancel reason", "detail-cancel-reason", alert.cancelReason]);
    if (incident?.resolutionNotes) rows.push(["Resolution", "detail-resolution", incident.resolutionNotes]);
    replace(this.facts, ...rows.flatMap(([label, testId, value]) => [h("dt", {}, label), h("dd", { "data-testid": testId }, value)]));
    replace(this.trailBox, trailSvg(entry.trail));
    const allowed = allowedActions(entry);
    for (const [action, button] of Object.entries(this.buttons) as [Action, HTMLButtonElement][]) {
      button.disabled = this.busy || !allowed.has(action);
    }
  }

  private submit(ev: Event, run: () => Promise<void>): void {
    ev.preventDefault();
    void run();
  }

  private async act(
    label: string,
    call: () => Promise<PoliceIncident | undefined>,
    done: string | (() => string),
  ): Promise<void> {
    const alertId = this.alertId;
    if (!alertId || this.busy) return;
    this.busy = true;
    replace(this.message, h("p", { class: "pending" }, `${label}…`));
    this.render();
    try {
      const incident = await call();
      const text = typeof done === "string" ? done : done();
      if (incident) this.store.setIncident(incident, text);
      if (this.alertId === alertId) {
        replace(this.message, h("p", { class: "ok", "data-testid": "detail-message" }, text));
      }
    } catch (err) {
      if (this.alertId === alertId) this.showError(err, `${label} failed — `);
      // Refused because the alert changed (cancelled, resolved, moved to another agency):
      // show it as it is now, so the buttons match.
      if (isCode(err, Code.FailedPrecondition) || isCode(err, Code.NotFound)) await this.reread(alertId);
    } finally {
      this.busy = false;
      this.render();
    }
  }

  private showError(err: unknown, prefix: string): void {
    replace(this.message, errorBlock(err, "detail-error", prefix));
  }

  private accept(): Promise<void> {
    const alertId = this.alertId ?? "";
    const unit = this.unit.value.trim();
    const eta = Number.parseInt(this.eta.value || "0", 10);
    return this.act(
      "Accepting",
      async () => (await agency.acceptSosAlert({ alertId, assignedUnit: unit, etaMinutes: eta }, { timeoutMs: UNARY_TIMEOUT_MS })).incident,
      `Accepted: ${unit || "a unit"} dispatched, ETA ${eta} min`,
    );
  }

  private decline(): Promise<void> {
    const alertId = this.alertId ?? "";
    const reason = this.reason.value.trim();
    return this.act(
      "Declining",
      async () => {
        await agency.declineSosAlert({ alertId, reason }, { timeoutMs: UNARY_TIMEOUT_MS });
        this.store.markGone(alertId, reason ? `Declined: ${reason}` : "Declined", true);
        // Where it went: with no other agency to take it, it comes straight back here.
        await this.reread(alertId);
        return undefined;
      },
      () =>
        this.store.get(alertId)?.gone
          ? "Declined: the alert goes to another agency"
          : "Declined, but no other agency can take it: it is back with you",
    );
  }

  private onScene(): Promise<void> {
    const incidentId = this.store.get(this.alertId ?? "")?.incident?.id ?? "";
    return this.act(
      "Marking on scene",
      async () => (await agency.updateIncident({ incidentId, status: IncidentStatus.ON_SCENE }, { timeoutMs: UNARY_TIMEOUT_MS })).incident,
      "On scene",
    );
  }

  private resolve(): Promise<void> {
    const incidentId = this.store.get(this.alertId ?? "")?.incident?.id ?? "";
    const notes = this.notes.value.trim();
    return this.act(
      "Resolving",
      async () =>
        (await agency.updateIncident({ incidentId, status: IncidentStatus.RESOLVED, notes }, { timeoutMs: UNARY_TIMEOUT_MS })).incident,
      "Resolved",
    );
  }
}

/** What the incident's current state allows. */
export function allowedActions(entry: Entry): Set<Action> {
  const allowed = new Set<Action>();
  if (!isOpen(entry) || !entry.incident) return allowed;
  switch (entry.incident.status) {
    case IncidentStatus.REPORTED:
      if (entry.alert.status === SosStatus.ACTIVE) {
        allowed.add("accept");
        allowed.add("decline");
      }
      break;
    case IncidentStatus.DISPATCHED:
      allowed.add("on-scene");
      break;
    case IncidentStatus.ON_SCENE:
      allowed.add("resolve");
      break;
    default:
      break;
  }
  return allowed;
}
