// The alert board: one row per alert of the agency, updated live from the store.
import { AlertPriority, IncidentStatus, IncidentType, SosStatus } from "./gen/securenow/v1/common_pb";
import { isOpen, type AlertStore, type Entry } from "./store";
import { enumLabel, enumToken, formatDateTime, formatTime, h, replace } from "./ui";

export class BoardView {
  readonly element: HTMLElement;
  private readonly body: HTMLTableSectionElement;
  private readonly empty: HTMLElement;
  private readonly count: HTMLElement;
  private selected: string | null = null;

  constructor(
    private readonly store: AlertStore,
    /** `viaKeyboard`: opened with Enter or Space, so the focus should follow. */
    private readonly onSelect: (alertId: string, viaKeyboard: boolean) => void,
  ) {
    this.body = h("tbody");
    this.empty = h("p", { class: "empty", "data-testid": "board-empty" }, "No alerts yet. New alerts appear here live.");
    this.count = h("span", { class: "count", "data-testid": "open-count" }, "0");
    this.element = h(
      "section",
      { class: "board", "data-testid": "alert-board", "aria-label": "Alerts" },
      h("h2", {}, "Alerts ", this.count),
      h(
        "table",
        {},
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", {}, "Priority"),
            h("th", {}, "Type"),
            h("th", {}, "Description"),
            h("th", {}, "Raised"),
            h("th", {}, "Status"),
            h("th", {}, "Incident"),
            h("th", {}, "Last change"),
          ),
        ),
        this.body,
      ),
      this.empty,
    );
    store.subscribe(() => this.render());
    this.render();
  }

  select(alertId: string | null): void {
    this.selected = alertId;
    for (const row of this.body.querySelectorAll<HTMLTableRowElement>("tr[data-alert-id]")) {
      row.classList.toggle("selected", row.dataset.alertId === alertId);
      if (row.dataset.alertId === alertId) row.setAttribute("aria-current", "true");
      else row.removeAttribute("aria-current");
    }
  }

  private render(): void {
    const entries = this.store.list();
    const focused = (document.activeElement as HTMLElement | null)?.dataset?.alertId;
    replace(this.body, ...entries.map((entry) => this.row(entry)));
    if (focused) this.body.querySelector<HTMLElement>(`tr[data-alert-id="${CSS.escape(focused)}"]`)?.focus();
    this.empty.hidden = entries.length > 0;
    this.count.textContent = String(entries.filter(isOpen).length);
    this.count.title = "open alerts";
  }

  private row(entry: Entry): HTMLTableRowElement {
    const { alert, incident } = entry;
    const open = (viaKeyboard = false) => this.onSelect(alert.id, viaKeyboard);
    const status = entry.gone ? "Moved away" : enumLabel(SosStatus, alert.status);
    const row = h(
      "tr",
      {
        "data-testid": "alert-row",
        "data-alert-id": alert.id,
        class: [
          `priority-${enumToken(AlertPriority, alert.priority)}`,
          isOpen(entry) ? "open" : "closed",
          this.store.isNew(alert.id) ? "new" : "",
          alert.id === this.selected ? "selected" : "",
        ].join(" "),
        tabindex: 0,
        role: "button",
        "aria-current": alert.id === this.selected ? "true" : null,
        onclick: () => open(),
        onkeydown: (ev: Event) => {
          if ((ev as KeyboardEvent).key === "Enter" || (ev as KeyboardEvent).key === " ") {
            ev.preventDefault();
            open(true);
          }
        },
      },
      h(
        "td",
        { "data-testid": "alert-priority" },
        h("span", { class: `badge priority-${enumToken(AlertPriority, alert.priority)}` }, enumLabel(AlertPriority, alert.priority)),
      ),
      h("td", { "data-testid": "alert-type" }, enumLabel(IncidentType, alert.incidentType)),
      h(
        "td",
        { class: "description" },
        this.store.isNew(alert.id) ? h("span", { class: "badge new", "data-testid": "alert-new" }, "New") : null,
        h("span", { "data-testid": "alert-description" }, alert.description || "—"),
      ),
      h("td", { "data-testid": "alert-time", title: formatDateTime(alert.createTime) }, formatTime(alert.createTime)),
      h("td", { "data-testid": "alert-status" }, h("span", { class: `status status-${entry.gone ? "gone" : enumToken(SosStatus, alert.status)}` }, status)),
      h("td", { "data-testid": "incident-status" }, incident ? enumLabel(IncidentStatus, incident.status) : "—"),
      h("td", { "data-testid": "alert-note", class: "note" }, entry.note),
    );
    return row;
  }
}
