"""Browser tests: the dispatcher console (clients/web/dist) in Debian's Chromium, driven
by Playwright, against the in-process test server (its HTTP listener serves the console
and the gRPC-Web endpoint).

The console must be built first (`npm run build` in clients/web; scripts/test.sh does it).
Screenshots go to tests/artifacts/: named ones at key steps, and one of every failure.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

from securenow.server.runtime import Runtime

REPO = Path(__file__).resolve().parents[2]
CONSOLE_DIST = REPO / "clients" / "web" / "dist"
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(REPORTS, {})[report.when] = report
    return report


@pytest.fixture(scope="session")
def console_built() -> Path:
    if not (CONSOLE_DIST / "index.html").is_file() or not any((CONSOLE_DIST / "assets").glob("app-*.js")):
        pytest.fail(
            f"The dispatcher console is not built ({CONSOLE_DIST} has no index.html and assets). "
            "Build it with `npm ci && npm run build` in clients/web (scripts/test.sh does this).",
            pytrace=False,
        )
    return CONSOLE_DIST


@pytest.fixture(scope="session")
async def browser(console_built: Path) -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(
            f"{CHROMIUM} is missing: run scripts/bootstrap.sh --browser (apt-get install chromium)", pytrace=False
        )
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@dataclass
class BrowserLog:
    """What the page said: console lines and uncaught errors (saved with failures)."""

    lines: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def console(self, msg: ConsoleMessage) -> None:
        self.lines.append(f"[{msg.type}] {msg.text}")

    def page_error(self, error: Exception) -> None:
        self.page_errors.append(str(error))
        self.lines.append(f"[pageerror] {error}")


@dataclass
class Console:
    page: Page
    url: str
    log: BrowserLog

    async def shot(self, name: str) -> Path:
        """Saves a screenshot as tests/artifacts/console-<name>.png."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"console-{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
async def console(browser: Browser, runtime: Runtime, request: pytest.FixtureRequest) -> AsyncIterator[Console]:
    """A fresh browser context (empty sessionStorage and localStorage) on the console."""
    url = f"http://127.0.0.1:{runtime.http_port}/"
    context = await browser.new_context(viewport={"width": 1366, "height": 900}, locale="en-US", timezone_id="UTC")
    page = await context.new_page()
    log = BrowserLog()
    page.on("console", log.console)
    page.on("pageerror", log.page_error)
    yield Console(page, url, log)
    reports = request.node.stash.get(REPORTS, {})
    if any(r.failed for r in reports.values()):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = request.node.name.replace("/", "_")
        try:
            await page.screenshot(path=str(ARTIFACTS / f"failure-{name}.png"), full_page=True)
        except Exception as exc:  # a crashed page still gets its log saved
            log.lines.append(f"[screenshot failed] {exc}")
        failures = [f"{r.when}: {r.longreprtext}" for r in reports.values() if r.failed]
        (ARTIFACTS / f"failure-{name}.log").write_text(
            "\n".join([*failures, "--- browser console ---", *log.lines]) + "\n"
        )
    await context.close()
