// The sign-in form (AuthService.SignIn with e-mail and password).
import { signIn } from "./auth";
import { errorBlock } from "./errors";
import { field, h, replace } from "./ui";

export function loginView(notice: string, onSignedIn: () => void): HTMLElement {
  const email = h("input", { type: "email", name: "email", autocomplete: "username", required: true, "data-testid": "email" });
  const password = h("input", {
    type: "password",
    name: "password",
    autocomplete: "current-password",
    required: true,
    "data-testid": "password",
  });
  const submit = h("button", { type: "submit", "data-testid": "sign-in-button" }, "Sign in");
  const message = h("div", { class: "message", "aria-live": "polite" });
  if (notice) replace(message, h("p", { class: "notice", "data-testid": "sign-in-notice" }, notice));

  const form = h(
    "form",
    { class: "login", "data-testid": "sign-in-form" },
    h("h1", {}, "SecureNow dispatch"),
    h("p", { class: "hint" }, "Sign in with a dispatcher or administrator account."),
    field("E-mail", email),
    field("Password", password),
    submit,
    message,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    replace(message, h("p", { class: "pending" }, "Signing in…"));
    try {
      await signIn(email.value.trim(), password.value);
      onSignedIn();
    } catch (err) {
      replace(message, errorBlock(err, "sign-in-error", "Sign-in failed — "));
      password.select();
    } finally {
      submit.disabled = false;
    }
  });
  queueMicrotask(() => email.focus());
  return h("main", { class: "login-page" }, form);
}
