"""The explorer in a real browser (Debian's Chromium driven by Playwright) against a live
network on loopback: a uvicorn coordinator and two provider agents running the real model.

Checks what a visitor sees: the running providers on the overview, a job submitted
during the test appearing and its shard map advancing to done with no reload, a
provider's hardware on its page, and no console error anywhere. Screenshots at laptop
and phone sizes go to ``artifacts/screenshots/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from deai.client.sdk import Client
from tests.helpers import ARGS, CHROMIUM, SHOTS
from tests.netutil import Network

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"laptop": {"width": 1366, "height": 768}, "phone": {"width": 390, "height": 844}}
THEMES = {"laptop": "dark", "phone": "light"}  # so the screenshots show both themes
SPEC = {"kind": "embeddings", "model": "all-MiniLM-L6-v2", "max_price": 2000, "deadline": 900}
PROVIDERS = {"alpha-node": 800, "beta-node": 1200}


def sample(n: int) -> bytes:
    lines = (ROOT / "examples" / "sentences.jsonl").read_bytes().splitlines()[:n]
    return b"\n".join(lines) + b"\n"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("explorer"), heartbeat_timeout=6.0, challenge_window=2.0)
    n.start_coordinator()
    try:
        for name, price in PROVIDERS.items():
            n.start_provider(name, price, "--name", name)
        n.wait_providers(len(PROVIDERS))
        yield n
    finally:
        n.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make test does it)",
                    pytrace=False)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


class Tab:
    """A page at one viewport size that records every console error and page error."""

    def __init__(self, browser: Browser, net: Network, size: str) -> None:
        self.size = size
        self.ctx = browser.new_context(viewport=SIZES[size],  # type: ignore[arg-type]
                                       color_scheme=THEMES[size])  # type: ignore[arg-type]
        self.page = self.ctx.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}")
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.base = f"{net.url}/explorer/"

    def open(self, hash_: str = "#/") -> Page:
        self.page.goto(self.base + hash_)
        return self.page

    def shot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}-{self.size}.png"
        self.page.wait_for_timeout(400)  # let chart animations settle
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.ctx.close()
        assert not self.errors, self.errors


@pytest.fixture(params=list(SIZES))
def tab(request: pytest.FixtureRequest, browser: Browser, net: Network) -> Iterator[Tab]:
    t = Tab(browser, net, request.param)
    try:
        yield t
    finally:
        t.close()


def test_overview_shows_the_running_providers(tab: Tab, net: Network) -> None:
    page = tab.open("#/")
    expect(page.get_by_test_id("stat-providers-online").locator(".value")).to_have_text(
        str(len(PROVIDERS)), timeout=20_000)
    rows = page.get_by_test_id("overview-provider")
    expect(rows).to_have_count(len(PROVIDERS))
    for name in PROVIDERS:
        expect(page.get_by_test_id("overview-providers")).to_contain_text(name)
    expect(page.locator("#live")).to_have_class(re.compile(r"\bon\b"), timeout=10_000)
    assert page.evaluate("typeof window.Chart") == "function", "Chart.js is not served"
    expect(page.get_by_test_id("chart-price-cu").locator("canvas")).to_be_visible()
    tab.shot("overview")


def test_submitted_job_appears_and_its_shards_finish_without_reload(tab: Tab,
                                                                     net: Network) -> None:
    page = tab.open("#/jobs")
    expect(page.locator("#live")).to_have_class(re.compile(r"\bon\b"), timeout=10_000)
    page.evaluate("window.__sameDocument = true")

    c: Client = net.client(f"explorer-client-{tab.size}")
    c.faucet(1_000_000_000)
    data = sample(240)
    job = c.submit_job({**SPEC, "shard_size": 10}, c.upload(data).digest)
    shards = 24

    row = page.locator(f"[data-testid=job-row][data-id='{job.id}']")
    expect(row).to_be_visible(timeout=15_000)  # arrived through the event stream
    row.click()
    cells = page.get_by_test_id("shard-map").locator(".cell")
    expect(cells).to_have_count(shards, timeout=15_000)
    page.evaluate("""() => {
        window.__accepted = [];
        const map = document.querySelector('[data-testid=shard-map]');
        const count = () => window.__accepted.push(
            map.querySelectorAll('.cell[data-state=accepted]').length);
        count();
        new MutationObserver(count).observe(map, {attributes: true, subtree: true});
    }""")
    tab.shot("job-running")
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "completed",
                                                                timeout=240_000)
    expect(page.locator("[data-testid=shard-map] .cell[data-state=accepted]")).to_have_count(
        shards)
    seen = page.evaluate("window.__accepted")
    assert seen[-1] == shards and min(seen) < shards, seen  # it moved while we watched
    assert page.evaluate("window.__sameDocument") is True  # never reloaded
    tab.shot("job-done")
    assert net.wait_job(c, job.id) == "completed"


def test_provider_page_shows_its_hardware(tab: Tab, net: Network) -> None:
    c = net.client()
    target = next(p for p in c.providers() if p.name == "alpha-node")
    page = tab.open("#/providers")
    table = page.get_by_test_id("providers-table")
    expect(table.get_by_test_id("provider-row")).to_have_count(len(PROVIDERS), timeout=15_000)
    page.get_by_role("columnheader", name="Price", exact=True).click()  # sortable
    tab.shot("providers")
    table.locator(f"[data-id='{target.id}']").click()
    hw = page.get_by_test_id("hardware")
    expect(hw).to_contain_text(str(target.hardware["cpu_model"]), timeout=15_000)
    expect(hw).to_contain_text(str(target.hardware["cores"]))
    expect(page.get_by_test_id("benchmark")).to_contain_text("GFLOP/s")
    expect(page.get_by_test_id("offers")).to_contain_text("all-MiniLM-L6-v2")
    tab.shot("provider")


def test_ledger_and_verification_pages_render(tab: Tab, net: Network) -> None:
    page = tab.open("#/ledger")
    expect(page.get_by_test_id("audit")).to_contain_text("check out", timeout=20_000)
    expect(page.get_by_test_id("journal").locator("tbody tr").first).to_be_visible()
    tab.shot("ledger")
    page.get_by_role("link", name="Verification").click()
    expect(page.get_by_test_id("verification-stream")).to_be_visible()
    tab.shot("verification")


def test_without_the_chart_library_numbers_still_show(tab: Tab, net: Network) -> None:
    tab.page.route("**/explorer/lib/chart.js", lambda route: route.fulfill(
        status=200, content_type="text/javascript", body="window.DEAI_CHARTS_MISSING = 1;"))
    page = tab.open("#/")
    expect(page.locator("#notice")).to_contain_text("Charts are off")
    expect(page.get_by_test_id("stat-providers-online").locator(".value")).to_have_text(
        str(len(PROVIDERS)), timeout=20_000)
    expect(page.get_by_test_id("chart-price-cu")).to_contain_text("alpha-node")
