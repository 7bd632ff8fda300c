// The console's shell: sign-in, then the view for the account's role — the live alert
// board, incident search and the response report for dispatchers (POLICE /
// SECURITY_AGENCY with an agency), provider verification for admins.
import { agency, UNARY_TIMEOUT_MS, users } from "./api";
import { isAdmin, isDispatcher, onSessionEnded, session, signOut, updateUser, type Session } from "./auth";
import { ProvidersView } from "./admin";
import { Attention } from "./attention";
import { BoardView } from "./board";
import { DetailView } from "./detail";
import { DispatchFeed, type ConnectionState } from "./dispatch";
import { ReportView } from "./report";
import { SearchView } from "./search";
import { UserRole } from "./gen/securenow/v1/users_pb";
import { loginView } from "./login";
import { AlertStore } from "./store";
import { enumLabel, h, replace } from "./ui";

const root = document.getElementById("app") as HTMLElement;
let teardown: () => void = () => {};

function render(notice = ""): void {
  teardown();
  teardown = () => {};
  const current = session();
  if (!current) {
    replace(root, loginView(notice, () => render()));
  } else if (isDispatcher(current.user)) {
    dispatchView(current);
  } else if (isAdmin(current.user)) {
    adminView(current);
  } else {
    const main = h(
      "main",
      { class: "content" },
      h(
        "p",
        { class: "notice", "data-testid": "no-console" },
        "This console is for dispatchers (police or security agency accounts with an agency) and administrators.",
      ),
    );
    replace(root, shell(current, "Console"), main);
  }
}

/** Re-reads the account: a role or agency changed since sign-in shows the view it now
 * calls for (a dispatcher removed from the agency no longer gets a dead board). */
async function checkAccount(): Promise<void> {
  if (!session()) return;
  try {
    const resp = await users.getUser({ userId: "me" }, { timeoutMs: UNARY_TIMEOUT_MS });
    if (resp.user && updateUser(resp.user)) render();
  } catch {
    // keep the view; the calls it makes report what is wrong
  }
}

function shell(current: Session, place: string | HTMLElement, ...extra: HTMLElement[]): HTMLElement {
  const user = current.user;
  const name = [user.firstName, user.lastName].filter(Boolean).join(" ") || user.email;
  return h(
    "header",
    { class: "top" },
    h("span", { class: "brand" }, "SecureNow"),
    h("span", { class: "place", "data-testid": "place" }, place),
    ...extra,
    h(
      "span",
      { class: "who", "data-testid": "signed-in-as" },
      `${name} · ${enumLabel(UserRole, user.role)}`,
    ),
    h(
      "button",
      {
        type: "button",
        class: "secondary",
        "data-testid": "sign-out",
        onclick: async () => {
          await signOut();
          render("You are signed out.");
        },
      },
      "Sign out",
    ),
  );
}

function dispatchView(current: Session): void {
  const store = new AlertStore();
  // After a refused action the alert is read again (the stream may not have told yet).
  const detail = new DetailView(store, (alertId) => feed.reread(alertId));
  const open = (alertId: string, viaKeyboard: boolean) => {
    store.markSeen(alertId);
    board.select(alertId);
    search.select(alertId);
    detail.show(alertId);
    if (viaKeyboard) detail.focus(); // a keyboard user goes on from the alert, not from the list
  };
  const board = new BoardView(store, open);
  const attention = new Attention(store, document.title);
  const search = new SearchView(store, current.user.agencyId, (alertId, viaKeyboard) => {
    open(alertId, viaKeyboard);
    detail.element.scrollIntoView({ block: "nearest" });
  });
  const report = new ReportView();
  const status = h("span", { class: "conn conn-connecting", "data-testid": "connection-status" }, "Connecting…");
  const banner = h("div", { class: "banner", role: "status", "data-testid": "connection-banner", hidden: true });
  const problems = h("div", { class: "problems", "data-testid": "app-error", "aria-live": "polite" });
  const place = h("span", {}, "Dispatch");

  const onState = (state: ConnectionState) => {
    status.className = `conn conn-${state.kind}`;
    switch (state.kind) {
      case "connecting":
        status.textContent = "Connecting…";
        return;
      case "live":
        status.textContent = "Live";
        banner.hidden = true;
        return;
      case "reconnecting":
        status.textContent = "Reconnecting…";
        replace(
          banner,
          h("strong", {}, "Connection lost — reconnecting…"),
          h("span", { class: "why" }, ` (${state.reason}; next try in ${Math.ceil(state.retryInMs / 1000)} s)`),
        );
        banner.hidden = false;
        return;
      case "stopped":
        void checkAccount(); // stopped for lack of permission: perhaps no longer a dispatcher
        status.textContent = "Stopped";
        replace(
          banner,
          h("strong", {}, "Live updates stopped: "),
          state.reason,
          " ",
          h("button", { type: "button", onclick: () => window.location.reload() }, "Reload"),
        );
        banner.hidden = false;
        return;
    }
  };
  const onError = (message: string) => {
    if (message) replace(problems, h("p", { class: "error", role: "alert" }, message));
    else replace(problems);
  };
  const feed = new DispatchFeed(store, current.user.agencyId, onState, onError);

  replace(
    root,
    shell(current, place, status, attention.toggle),
    banner,
    problems,
    h("main", { class: "dispatch" }, h("div", { class: "dispatch-main" }, search.element, board.element, report.element), detail.element),
  );
  agency
    .getDepartment({ departmentId: current.user.agencyId }, { timeoutMs: UNARY_TIMEOUT_MS })
    .then((resp) => {
      if (resp.department) place.textContent = resp.department.departmentName;
    })
    .catch(() => undefined); // the name is a nicety
  void feed.start();
  teardown = () => {
    feed.stop();
    attention.dispose();
    detail.dispose();
    search.dispose();
    report.dispose();
  };
}

function adminView(current: Session): void {
  const view = new ProvidersView();
  replace(root, shell(current, "Administration"), h("main", { class: "content" }, view.element));
}

onSessionEnded((message) => render(message));
render();
void checkAccount();
