// The response-report panel: the department's alert volume and response times per time
// bucket (AnalyticsService.GetIncidentReport, empty department_id = the caller's own
// department), for the last 24 hours by hour or the last 7 / 30 days by day. Loaded when
// the view opens, when the period changes and on Refresh; no polling.
import { timestampDate, timestampFromMs, durationFromMs, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";
import { analytics, UNARY_TIMEOUT_MS } from "./api";
import { errorBlock } from "./errors";
import type { IncidentReportBucket } from "./gen/securenow/v1/analytics_pb";
import { h, replace } from "./ui";

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;

interface Period {
  key: string;
  label: string;
  intervalMs: number; // bucket size
  buckets: number; // how many, the running hour / UTC day being the last
}

const PERIODS: Period[] = [
  { key: "24h", label: "Last 24 hours (hourly)", intervalMs: HOUR_MS, buckets: 24 },
  { key: "7d", label: "Last 7 days (daily)", intervalMs: DAY_MS, buckets: 7 },
  { key: "30d", label: "Last 30 days (daily)", intervalMs: DAY_MS, buckets: 30 },
];
const DEFAULT_PERIOD = "7d";

/** The asked range: buckets aligned to whole UTC hours (hourly) or UTC midnights (daily). */
interface Window {
  period: Period;
  startMs: number;
  endMs: number; // exclusive: the end of the running hour / UTC day
  asOf: Date;
}

/** The period ending with the running bucket: now rounded up to the next full UTC hour or
 * UTC midnight (an exact boundary still includes the bucket it opens). */
function windowOf(period: Period, now: Date): Window {
  const endMs = (Math.floor(now.getTime() / period.intervalMs) + 1) * period.intervalMs;
  return { period, startMs: endMs - period.buckets * period.intervalMs, endMs, asOf: now };
}

export class ReportView {
  readonly element: HTMLElement;
  private readonly period = h(
    "select",
    { name: "period", "data-testid": "report-period", "aria-label": "Report period", onchange: () => void this.load() },
    ...PERIODS.map((p) => h("option", { value: p.key, selected: p.key === DEFAULT_PERIOD }, p.label)),
  );
  private readonly refreshButton = h(
    "button",
    { type: "button", class: "secondary", "data-testid": "report-refresh", onclick: () => void this.load() },
    "Refresh",
  );
  private readonly message = h("div", { class: "report-message", "aria-live": "polite" });
  private readonly caption = h("caption", { "data-testid": "report-caption" });
  private readonly body = h("tbody");
  private readonly foot = h("tfoot");
  private readonly table = h(
    "table",
    { class: "report-table", "data-testid": "report-table", hidden: true },
    this.caption,
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col" }, "Start (UTC)"),
        h("th", { scope: "col", class: "num" }, "Alerts"),
        h("th", { scope: "col", class: "num" }, "Accepted"),
        h("th", { scope: "col", class: "num" }, "Escalated"),
        h("th", { scope: "col", class: "num" }, "Cancelled"),
        h("th", { scope: "col", class: "num", title: "Median time from raising to acceptance" }, "Median response"),
        h("th", { scope: "col", class: "num", title: "90th percentile time from raising to acceptance" }, "P90 response"),
      ),
    ),
    this.body,
    this.foot,
  );
  private generation = 0; // a newer load makes the answers to older ones moot

  constructor() {
    this.element = h(
      "section",
      { class: "report", "data-testid": "report-panel", "aria-label": "Response report" },
      h(
        "div",
        { class: "section-head" },
        h("h2", {}, "Response report"),
        h("div", { class: "report-controls" }, this.period, this.refreshButton),
      ),
      this.message,
      h("div", { class: "report-scroll" }, this.table),
    );
    void this.load();
  }

  dispose(): void {
    this.generation++;
  }

  private async load(): Promise<void> {
    const generation = ++this.generation;
    const period = PERIODS.find((p) => p.key === this.period.value) ?? PERIODS[1];
    const window = windowOf(period, new Date());
    this.refreshButton.disabled = true;
    this.element.setAttribute("aria-busy", "true");
    replace(this.message, h("p", { class: "pending", "data-testid": "report-pending" }, "Loading…"));
    try {
      const resp = await analytics.getIncidentReport(
        {
          departmentId: "", // the caller's own department
          startTime: timestampFromMs(window.startMs),
          endTime: timestampFromMs(window.endMs),
          interval: durationFromMs(period.intervalMs),
        },
        { timeoutMs: UNARY_TIMEOUT_MS },
      );
      if (generation !== this.generation) return;
      replace(this.message);
      this.render(window, resp.buckets);
    } catch (err) {
      if (generation !== this.generation) return;
      // Figures for another period or time must not pass for the asked ones.
      this.table.hidden = true;
      replace(this.message, errorBlock(err, "report-error", "Could not load the report — "));
    } finally {
      if (generation === this.generation) {
        this.refreshButton.disabled = false;
        this.element.removeAttribute("aria-busy");
      }
    }
  }

  private render(window: Window, buckets: IncidentReportBucket[]): void {
    const hourly = window.period.intervalMs < DAY_MS;
    const unit = hourly ? "hour" : "day";
    replace(
      this.caption,
      `${buckets.length} ${hourly ? "hourly" : "daily"} buckets (whole UTC ${unit}s), newest first, from `,
      formatStart(timestampFromMs(window.startMs), true),
      " to ",
      formatStart(timestampFromMs(window.endMs), true),
      ` UTC; the newest is the running ${unit}, as of ${formatClock(window.asOf)} UTC. `,
      "An alert counts in the bucket it was raised in; response is the time from raising to acceptance.",
    );
    const totals = { alerts: 0n, accepted: 0n, escalated: 0n, cancelled: 0n };
    const rows: HTMLTableRowElement[] = [];
    for (const b of buckets) {
      totals.alerts += b.alertCount;
      totals.accepted += b.acceptedCount;
      totals.escalated += b.escalatedCount;
      totals.cancelled += b.cancelledCount;
      const start = b.startTime ? timestampDate(b.startTime).toISOString() : "";
      rows.push(
        h(
          "tr",
          { "data-testid": "report-row", "data-start": start, class: b.alertCount > 0n ? null : "quiet" },
          h("td", {}, h("time", { "data-testid": "report-start", datetime: start || null }, formatStart(b.startTime, hourly))),
          count("report-alerts", b.alertCount),
          count("report-accepted", b.acceptedCount),
          count("report-escalated", b.escalatedCount),
          count("report-cancelled", b.cancelledCount),
          duration("report-median", b.medianResponseTime),
          duration("report-p90", b.p90ResponseTime),
        ),
      );
    }
    rows.reverse(); // the server answers in time order; newest first reads better live
    replace(this.body, ...rows);
    const notComputable = "Percentiles of the whole period cannot be computed from the per-bucket figures";
    replace(
      this.foot,
      h(
        "tr",
        { class: "report-total", "data-testid": "report-total" },
        h("th", { scope: "row" }, "Total"),
        count("report-alerts", totals.alerts),
        count("report-accepted", totals.accepted),
        count("report-escalated", totals.escalated),
        count("report-cancelled", totals.cancelled),
        h("td", { class: "num", "data-testid": "report-median", title: notComputable }, "—"),
        h("td", { class: "num", "data-testid": "report-p90", title: notComputable }, "—"),
      ),
    );
    this.table.hidden = false;
  }
}

function count(testId: string, value: bigint): HTMLTableCellElement {
  return h("td", { class: "num", "data-testid": testId }, value.toString());
}

/** A response-time cell: human-readable, the exact seconds in data-seconds; "—" when unset. */
function duration(testId: string, value: Duration | undefined): HTMLTableCellElement {
  if (!value) return h("td", { class: "num", "data-testid": testId, title: "No accepted alert" }, "—");
  const seconds = durationSeconds(value);
  return h("td", { class: "num", "data-testid": testId, "data-seconds": seconds, title: `${seconds} s` }, formatDuration(seconds));
}

function durationSeconds(value: Duration): number {
  return Number(value.seconds) + value.nanos / 1e9;
}

/** 45 -> "45 s", 190 -> "3 min 10 s", 3900 -> "1 h 5 min", 97200 -> "1 d 3 h"; under a
 * minute one decimal is kept when there is one (a median can fall between two seconds). */
export function formatDuration(totalSeconds: number): string {
  if (totalSeconds < 59.95) {
    const rounded = Math.round(totalSeconds * 10) / 10;
    return `${Number.isInteger(rounded) ? rounded : rounded.toFixed(1)} s`;
  }
  const s = Math.round(totalSeconds);
  const days = Math.floor(s / 86_400);
  const hours = Math.floor((s % 86_400) / 3_600);
  const minutes = Math.floor((s % 3_600) / 60);
  const seconds = s % 60;
  if (days > 0) return hours > 0 ? `${days} d ${hours} h` : `${days} d`;
  if (hours > 0) return minutes > 0 ? `${hours} h ${minutes} min` : `${hours} h`;
  return seconds > 0 ? `${minutes} min ${seconds} s` : `${minutes} min`;
}

/** A bucket's start in UTC: "Jun 5, 14:00" (hourly) or "Jun 5" (daily). */
function formatStart(ts: Timestamp | undefined, withTime: boolean): string {
  if (!ts) return "—";
  return timestampDate(ts).toLocaleString(undefined, {
    timeZone: "UTC",
    month: "short",
    day: "numeric",
    ...(withTime ? { hour: "2-digit", minute: "2-digit", hourCycle: "h23" } : {}),
  });
}

function formatClock(date: Date): string {
  return date.toLocaleTimeString(undefined, { timeZone: "UTC", hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
}
