// Human-readable errors: "INVALID_ARGUMENT: bad request" plus the field violations of
// the google.rpc.BadRequest detail the server attaches (AIP-193).
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb";
import { append, h } from "./ui";

export interface Described {
  code: string; // "INVALID_ARGUMENT"
  message: string; // the server's message
  reason: string; // google.rpc.ErrorInfo reason, when present
  violations: { field: string; description: string }[];
}

/** Code.InvalidArgument -> "INVALID_ARGUMENT". */
export function codeName(code: Code): string {
  const camel = Code[code] ?? "Unknown";
  return camel.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

export function describeError(err: unknown): Described {
  if (err instanceof ConnectError) {
    const violations: Described["violations"] = [];
    let reason = "";
    try {
      for (const bad of err.findDetails(BadRequestSchema)) {
        for (const v of bad.fieldViolations) violations.push({ field: v.field, description: v.description });
      }
      reason = err.findDetails(ErrorInfoSchema)[0]?.reason ?? "";
    } catch {
      // undecodable details: the status message alone still says what went wrong
    }
    // fetch() itself failed ("Failed to fetch", "NetworkError…", "Load failed"): no status.
    if (/failed to fetch|networkerror|load failed|network error/i.test(err.rawMessage)) {
      return { code: "UNAVAILABLE", message: "the server cannot be reached", reason, violations };
    }
    return { code: codeName(err.code), message: err.rawMessage, reason, violations };
  }
  const message = err instanceof Error ? err.message : String(err);
  return { code: "UNKNOWN", message, reason: "", violations: [] };
}

/** One line: "INVALID_ARGUMENT: bad request (eta_minutes: must be between 0 and 1440)". */
export function errorText(err: unknown): string {
  const d = describeError(err);
  let text = `${d.code}: ${d.message || "no message"}`;
  if (d.violations.length) {
    text += ` — ${d.violations.map((v) => `${v.field}: ${v.description}`).join("; ")}`;
  }
  return text;
}

export function isCode(err: unknown, code: Code): boolean {
  return err instanceof ConnectError && err.code === code;
}

/** The error as a block: the status line, then one line per field violation. */
export function errorBlock(err: unknown, testId: string, prefix = ""): HTMLElement {
  const d = describeError(err);
  // The server's message often just repeats the violations; then the list says it all.
  const repeated = d.violations.length > 0 && d.violations.every((v) => d.message.includes(v.description));
  const box = h(
    "div",
    { class: "error", role: "alert", "data-testid": testId, "data-code": d.code },
    h("strong", {}, `${prefix}${d.code}`),
    repeated ? "" : `: ${d.message || "no message"}`,
  );
  if (d.violations.length) {
    append(
      box,
      h(
        "ul",
        { "data-testid": `${testId}-fields` },
        ...d.violations.map((v) => h("li", {}, h("code", {}, v.field), ` ${v.description}`)),
      ),
    );
  }
  return box;
}
