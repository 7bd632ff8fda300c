// Admin: providers waiting for verification, with Verify / Reject.
import { providers, UNARY_TIMEOUT_MS } from "./api";
import { errorBlock } from "./errors";
import { VerificationStatus } from "./gen/securenow/v1/common_pb";
import { ProviderType, type Provider } from "./gen/securenow/v1/providers_pb";
import { enumLabel, enumToken, formatDateTime, h, replace } from "./ui";

export class ProvidersView {
  readonly element: HTMLElement;
  private readonly body = h("tbody");
  private readonly status = h("div", { class: "message", "aria-live": "polite" });
  private readonly empty = h("p", { class: "empty", "data-testid": "providers-empty", hidden: true }, "No providers are waiting for verification.");

  constructor() {
    this.element = h(
      "section",
      { class: "providers", "data-testid": "providers-view", "aria-label": "Providers" },
      h(
        "div",
        { class: "section-head" },
        h("h2", {}, "Providers waiting for verification"),
        h("button", { type: "button", class: "secondary", "data-testid": "providers-refresh", onclick: () => void this.load() }, "Refresh"),
      ),
      h(
        "table",
        { "data-testid": "providers" },
        h(
          "thead",
          {},
          h("tr", {}, h("th", {}, "Company"), h("th", {}, "Type"), h("th", {}, "License"), h("th", {}, "Registered"), h("th", {}, "Status"), h("th", {}, "Note"), h("th", {}, "")),
        ),
        this.body,
      ),
      this.empty,
      this.status,
    );
    void this.load();
  }

  async load(): Promise<void> {
    replace(this.status, h("p", { class: "pending" }, "Loading…"));
    try {
      const found: Provider[] = [];
      let pageToken = "";
      for (let page = 0; page < 10; page++) {
        const resp = await providers.listProviders(
          { verificationStatus: VerificationStatus.PENDING, pageSize: 100, pageToken },
          { timeoutMs: UNARY_TIMEOUT_MS },
        );
        found.push(...resp.providers);
        pageToken = resp.nextPageToken;
        if (!pageToken) break;
      }
      replace(this.body, ...found.flatMap((p) => this.rows(p)));
      this.empty.hidden = found.length > 0;
      replace(this.status);
    } catch (err) {
      replace(this.status, errorBlock(err, "providers-error", "Could not list providers — "));
    }
  }

  /** The provider's row, and a row under it for a failed decision. */
  private rows(provider: Provider): HTMLTableRowElement[] {
    const status = h("td", { "data-testid": "provider-status" });
    const note = h("input", { "data-testid": "provider-note", placeholder: "Reviewer's note", "aria-label": "Reviewer's note" });
    const verify = h("button", { type: "button", "data-testid": "verify-button" }, "Verify");
    const reject = h("button", { type: "button", class: "secondary", "data-testid": "reject-button" }, "Reject");
    const error = h("td", { colspan: 7 });
    const errorRow = h("tr", { class: "error-row", hidden: true }, error);
    const setStatus = (value: VerificationStatus) => {
      replace(status, h("span", { class: `status status-${enumToken(VerificationStatus, value)}` }, enumLabel(VerificationStatus, value)));
    };
    setStatus(provider.verificationStatus);

    const decide = async (decision: VerificationStatus) => {
      verify.disabled = reject.disabled = true;
      errorRow.hidden = true;
      try {
        const resp = await providers.verifyProvider(
          { providerId: provider.id, decision, note: note.value.trim() },
          { timeoutMs: UNARY_TIMEOUT_MS },
        );
        setStatus(resp.provider?.verificationStatus ?? decision);
        note.disabled = true;
      } catch (err) {
        verify.disabled = reject.disabled = false;
        replace(error, errorBlock(err, "provider-error", "Decision not saved — "));
        errorRow.hidden = false;
      }
    };
    verify.addEventListener("click", () => void decide(VerificationStatus.VERIFIED));
    reject.addEventListener("click", () => void decide(VerificationStatus.REJECTED));

    const row = h(
      "tr",
      { "data-testid": "provider-row", "data-provider-id": provider.id },
      h("td", { "data-testid": "provider-company" }, provider.companyName),
      h("td", {}, enumLabel(ProviderType, provider.businessType)),
      h("td", {}, provider.licenseNumber || "—"),
      h("td", {}, formatDateTime(provider.createTime)),
      status,
      h("td", {}, note),
      h("td", { class: "row-actions" }, verify, " ", reject),
    );
    return [row, errorRow];
  }
}
