// The incident search panel: the agency's incidents by free text (web-search syntax over
// the alert description and the resolution notes) and status, best match first (newest
// first without text), a page at a time (next_page_token). A result opens its alert in
// the detail view, fetching the alert first when the board does not have it.
import { Code } from "@connectrpc/connect";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { search, sos, UNARY_TIMEOUT_MS } from "./api";
import { errorBlock, isCode } from "./errors";
import { IncidentStatus, IncidentType } from "./gen/securenow/v1/common_pb";
import type { PoliceIncident } from "./gen/securenow/v1/incidents_pb";
import type { IncidentSearchResult } from "./gen/securenow/v1/search_pb";
import type { AlertStore } from "./store";
import { enumLabel, enumToken, formatDateTime, h, millis, replace } from "./ui";

const PAGE_SIZE = 20;
const STATUSES = [IncidentStatus.REPORTED, IncidentStatus.DISPATCHED, IncidentStatus.ON_SCENE, IncidentStatus.RESOLVED];

/** What was asked; "More" asks the same again (page tokens are bound to the question). */
interface Question {
  text: string;
  statuses: IncidentStatus[];
}

interface Shown {
  result: IncidentSearchResult;
  incident: PoliceIncident;
  item: HTMLLIElement;
}

export class SearchView {
  readonly element: HTMLElement;
  private readonly query = h("input", {
    type: "search",
    name: "query",
    "data-testid": "search-query",
    "aria-label": "Search text (words in the alert description or the resolution notes)",
    placeholder: 'Words, "a phrase", -exclude',
    maxlength: 200, // the server refuses longer questions (domain/search.py MAX_QUERY_LENGTH)
    autocomplete: "off",
  });
  private readonly status = h(
    "select",
    { name: "status", "data-testid": "search-status", "aria-label": "Incident status" },
    h("option", { value: "" }, "Any status"),
    ...STATUSES.map((s) => h("option", { value: String(s) }, enumLabel(IncidentStatus, s))),
  );
  private readonly submitButton = h("button", { type: "submit", "data-testid": "search-submit" }, "Search");
  private readonly clearButton = h(
    "button",
    { type: "button", class: "secondary", "data-testid": "search-clear", hidden: true, onclick: () => this.clear() },
    "Clear",
  );
  private readonly summary = h("p", { class: "search-summary", "data-testid": "search-summary", hidden: true });
  private readonly list = h("ol", { class: "search-results", "data-testid": "search-results", "aria-label": "Search results" });
  private readonly moreButton = h(
    "button",
    { type: "button", class: "secondary search-more", "data-testid": "search-more", hidden: true, onclick: () => void this.more() },
    "More",
  );
  private readonly message = h("div", { class: "search-message", "aria-live": "polite" });
  private question: Question | null = null;
  private nextPageToken = "";
  private total = 0;
  private generation = 0; // a newer question makes the answers to older ones moot
  private readonly shown = new Map<string, Shown>(); // by incident id, in result order
  private selected: string | null = null;
  private readonly unsubscribe: () => void;

  constructor(
    private readonly store: AlertStore,
    private readonly agencyId: string,
    /** `viaKeyboard`: opened with Enter or Space, so the focus should follow. */
    private readonly onOpen: (alertId: string, viaKeyboard: boolean) => void,
  ) {
    this.element = h(
      "section",
      { class: "search", "data-testid": "search-panel", "aria-label": "Search incidents" },
      h("h2", {}, "Search incidents"),
      h(
        "form",
        { class: "search-form", role: "search", "data-testid": "search-form", onsubmit: (ev: Event) => this.submit(ev) },
        this.query,
        this.status,
        this.submitButton,
        this.clearButton,
      ),
      this.message,
      this.summary,
      this.list,
      this.moreButton,
    );
    // Results show the incident as the board knows it now (accepted, resolved...).
    this.unsubscribe = store.subscribe((alertId) => {
      for (const shown of this.shown.values()) {
        if (alertId === null || shown.incident.sosAlertId === alertId) this.refresh(shown);
      }
    });
  }

  dispose(): void {
    this.unsubscribe();
    this.generation++;
  }

  /** Marks the alert open in the detail view (or none). */
  select(alertId: string | null): void {
    this.selected = alertId;
    for (const { incident, item } of this.shown.values()) this.mark(item, incident.sosAlertId === alertId);
  }

  private submit(ev: Event): void {
    ev.preventDefault();
    const status = this.status.value;
    this.question = { text: this.query.value.trim(), statuses: status ? [Number(status) as IncidentStatus] : [] };
    this.reset();
    this.clearButton.hidden = false;
    void this.fetch(this.question, "");
  }

  private more(): Promise<void> {
    if (!this.question || !this.nextPageToken) return Promise.resolve();
    return this.fetch(this.question, this.nextPageToken);
  }

  private clear(): void {
    this.generation++;
    this.question = null;
    this.query.value = "";
    this.status.value = "";
    this.reset();
    this.clearButton.hidden = true;
    this.submitButton.disabled = false;
    this.query.focus();
  }

  private reset(): void {
    this.shown.clear();
    this.nextPageToken = "";
    this.total = 0;
    replace(this.list);
    replace(this.message);
    this.summary.hidden = true;
    this.moreButton.hidden = true;
  }

  private async fetch(question: Question, pageToken: string): Promise<void> {
    const generation = ++this.generation;
    if (pageToken) {
      this.moreButton.disabled = true;
      this.moreButton.textContent = "Loading…";
      replace(this.message);
    } else {
      this.submitButton.disabled = true;
      replace(this.message, h("p", { class: "pending", "data-testid": "search-pending" }, "Searching…"));
    }
    try {
      const resp = await search.searchIncidents(
        { query: question.text, statuses: question.statuses, pageSize: PAGE_SIZE, pageToken },
        { timeoutMs: UNARY_TIMEOUT_MS },
      );
      if (generation !== this.generation) return;
      replace(this.message);
      for (const result of resp.results) {
        const incident = result.incident;
        // Offset paging: an incident raised meanwhile can push one onto the next page again.
        if (!incident || this.shown.has(incident.id)) continue;
        const shown: Shown = { result, incident, item: h("li") };
        this.shown.set(incident.id, shown);
        this.refresh(shown);
        this.list.append(shown.item);
      }
      this.total = Number(resp.totalSize);
      this.nextPageToken = resp.nextPageToken;
      this.renderFooter(question);
    } catch (err) {
      if (generation !== this.generation) return;
      // A failed "More" keeps its token: pressing More again retries that page.
      replace(this.message, errorBlock(err, "search-error", pageToken ? "Could not load more results — " : "Search failed — "));
    } finally {
      if (generation === this.generation) {
        this.submitButton.disabled = false;
        this.moreButton.disabled = false;
        this.moreButton.textContent = "More";
      }
    }
  }

  private renderFooter(question: Question): void {
    const count = this.shown.size;
    if (count === 0 && !this.nextPageToken) {
      this.summary.hidden = true;
      replace(this.message, h("p", { class: "empty", "data-testid": "search-empty" }, noMatch(question)));
    } else {
      const order = question.text ? "best match first" : "newest first";
      const total = Math.max(this.total, count);
      this.summary.textContent =
        total > count
          ? `Showing ${count} of ${total} incidents, ${order}`
          : `${count} incident${count === 1 ? "" : "s"}, ${order}`;
      this.summary.hidden = false;
    }
    this.moreButton.hidden = !this.nextPageToken;
  }

  /** Draws a result with the newest copy of its incident (the board's, when fresher). */
  private refresh(shown: Shown): void {
    const known = this.store.get(shown.result.incident?.sosAlertId ?? "")?.incident;
    const incident =
      known && known.id === shown.incident.id && millis(known.updateTime) >= millis(shown.incident.updateTime)
        ? known
        : shown.incident;
    shown.incident = incident;
    const alertId = incident.sosAlertId;
    const open = (viaKeyboard = false) => void this.open(shown, viaKeyboard);
    const item = h(
      "li",
      {
        class: "search-result",
        "data-testid": "search-result",
        "data-alert-id": alertId,
        "data-incident-id": incident.id,
        tabindex: 0,
        role: "button",
        title: `Open the alert (score ${shown.result.score.toFixed(3)})`,
        onclick: () => open(),
        onkeydown: (ev: Event) => {
          if ((ev as KeyboardEvent).key === "Enter" || (ev as KeyboardEvent).key === " ") {
            ev.preventDefault();
            open(true);
          }
        },
      },
      h(
        "div",
        { class: "result-head" },
        h(
          "span",
          { class: `status status-${enumToken(IncidentStatus, incident.status)}`, "data-testid": "search-result-status" },
          enumLabel(IncidentStatus, incident.status),
        ),
        h("span", { "data-testid": "search-result-type" }, enumLabel(IncidentType, incident.incidentType)),
        h(
          "time",
          {
            "data-testid": "search-result-time",
            datetime: incident.createTime ? timestampDate(incident.createTime).toISOString() : null,
          },
          formatDateTime(incident.createTime),
        ),
      ),
      h("div", { class: "result-description", "data-testid": "search-result-description" }, shown.result.description || "—"),
      h(
        "div",
        { class: "note" },
        "Unit: ",
        h("span", { "data-testid": "search-result-unit" }, incident.assignedUnit || "none assigned"),
      ),
    );
    this.mark(item, alertId === this.selected);
    const focused = document.activeElement === shown.item;
    shown.item.replaceWith(item);
    shown.item = item;
    if (focused) item.focus();
  }

  private mark(item: HTMLElement, selected: boolean): void {
    item.classList.toggle("selected", selected);
    if (selected) item.setAttribute("aria-current", "true");
    else item.removeAttribute("aria-current");
  }

  /** Opens the result's alert in the detail view; alerts not on the board are fetched first. */
  private async open(shown: Shown, viaKeyboard: boolean): Promise<void> {
    const incident = shown.incident;
    const alertId = incident.sosAlertId;
    if (!this.store.has(alertId)) {
      const generation = this.generation;
      try {
        const got = await sos.getSosAlert({ alertId }, { timeoutMs: UNARY_TIMEOUT_MS });
        if (!got.alert) throw new Error("the server returned no alert");
        const current = got.incident?.id === incident.id ? got.incident : incident;
        this.store.upsert(got.alert, current, "");
        if (got.alert.assignedAgencyId !== this.agencyId) this.store.markGone(alertId, "With another agency");
      } catch (err) {
        if (generation !== this.generation) return;
        replace(
          this.message,
          isCode(err, Code.NotFound)
            ? h("p", { class: "error", role: "alert", "data-testid": "search-error" }, "This alert is no longer with your agency.")
            : errorBlock(err, "search-error", "Could not open the alert — "),
        );
        return;
      }
    }
    replace(this.message);
    this.onOpen(alertId, viaKeyboard);
  }
}

function noMatch(question: Question): string {
  const status = question.statuses.length ? enumLabel(IncidentStatus, question.statuses[0]).toLowerCase() : "";
  if (question.text) {
    return `No ${status ? `${status} ` : ""}incidents match “${question.text}”.`;
  }
  return status ? `No ${status} incidents.` : "Your agency has no incidents yet.";
}
