"""The explorer in a real browser (Debian's Chromium driven by Playwright) against a live
network on loopback: a uvicorn coordinator and two provider agents running the real model.

Checks what a visitor sees: the running providers on the overview, a job submitted
during the test appearing and its shard map advancing to done with no reload, a
provider's hardware on its page, and no console error anywhere. Screenshots at laptop
and phone sizes go to ``artifacts/screenshots/``.

A second coordinator serves a history with every standing and shard mark
(``tests.explorer_world``): standings as coloured badges (a slashed provider that
heartbeats is never a green "online"), a shard redone after a verdict and corrected
after an audit, a legend for every colour on the map, ledger postings by account
name with paging, and at phone size (390×844) no page that scrolls sideways.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from deai.client.sdk import Client
from tests import explorer_world
from tests.explorer_world import DATASETS, World
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

    def __init__(self, browser: Browser, net: Network | str, size: str) -> None:
        self.size = size
        self.ctx = browser.new_context(viewport=SIZES[size],  # type: ignore[arg-type]
                                       color_scheme=THEMES[size])  # type: ignore[arg-type]
        self.page = self.ctx.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}")
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.base = f"{net if isinstance(net, str) else net.url}/explorer/"

    def open(self, hash_: str = "#/") -> Page:
        self.page.goto(self.base + hash_)
        return self.page

    def shot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}-{self.size}.png"
        self.page.wait_for_timeout(400)  # let chart animations settle
        self.page.screenshot(path=str(path), full_page=True)
        if self.size == "phone":  # no page scrolls sideways on a phone
            width = self.page.evaluate("document.documentElement.scrollWidth")
            assert width <= SIZES["phone"]["width"] + 1, (name, width)
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


# --- a history with every standing and shard mark (tests/explorer_world.py) ----------------

@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, str]]:
    w = explorer_world.build(tmp_path_factory.mktemp("explorer-world"))
    with explorer_world.serve(w.c) as url:
        yield w, url


@pytest.fixture(params=list(SIZES))
def wtab(request: pytest.FixtureRequest, browser: Browser,
         world: tuple[World, str]) -> Iterator[Tab]:
    explorer_world.beat(world[0])
    t = Tab(browser, world[1], request.param)
    try:
        yield t
    finally:
        t.close()


GREEN = "rgb(34, 197, 94)"  # --accepted: the colour of "online"


def test_standings_are_coloured_badges(wtab: Tab, world: tuple[World, str]) -> None:
    w, _ = world
    page = wtab.open("#/providers")
    rows = page.get_by_test_id("providers-table").get_by_test_id("provider-row")
    expect(rows).to_have_count(len(w.standing), timeout=30_000)
    green = page.evaluate("""() => { const e = document.createElement('span');
        e.style.color = 'var(--accepted)'; document.body.append(e);
        const c = getComputedStyle(e).color; e.remove(); return c; }""")
    assert green == GREEN or wtab.size == "phone", green  # the light theme's own green
    for pid, want in w.standing.items():
        badge = page.locator(f"[data-testid=provider-row][data-id='{pid}']").get_by_test_id(
            "standing")
        expect(badge).to_have_attribute("data-standing", want, timeout=15_000)
        if want == "online":  # retried: the table may be re-rendered by a refresh meanwhile
            expect(badge).to_have_css("color", green, timeout=15_000)
        else:
            colour = badge.evaluate("e => getComputedStyle(e).color")
            assert colour != green, (want, colour)
    expect(page.get_by_test_id("standing-legend")).to_contain_text("below stake")
    wtab.shot("providers-standing")
    slashed = next(pid for pid, s in w.standing.items() if s == "slashed")
    page.goto(wtab.base + f"#/providers/{slashed}")
    expect(page.locator(".page-head").get_by_test_id("standing")).to_have_text(
        "slashed", timeout=15_000)
    expect(page.get_by_test_id("money")).to_contain_text("Slashes")
    page.goto(wtab.base + "#/")
    badges = page.get_by_test_id("overview-providers").get_by_test_id("standing")
    expect(badges).to_have_count(len(w.standing), timeout=15_000)
    assert sorted(badges.evaluate_all("bs => bs.map(b => b.dataset.standing)")) == sorted(
        w.standing.values())


def test_job_page_marks_redone_and_corrected_shards(wtab: Tab,
                                                    world: tuple[World, str]) -> None:
    w, _ = world
    page = wtab.open(f"#/jobs/{w.job_id}")
    expect(page.get_by_test_id("stat-redone").locator(".value")).to_have_text("1",
                                                                              timeout=30_000)
    expect(page.get_by_test_id("stat-corrected").locator(".value")).to_have_text("1")
    cell = page.get_by_test_id("shard-map").locator(".cell")
    expect(cell).to_have_count(1)
    expect(cell).to_have_class(re.compile(r"\bredone\b.*\bcorrected\b"))
    # Every colour a cell can take, and every ring, has its swatch in the legend.
    look = """els => els.map(e => { const s = getComputedStyle(e);
        return [s.backgroundColor, ...(s.boxShadow.match(/rgba?\\([^)]*\\)/g) || [])]; })"""
    legend = page.get_by_test_id("shard-legend").locator("i.swatch")
    shown = {c for row in legend.evaluate_all(look) for c in row}
    # The map shows one shard here: add a cell for every state the API can send
    # (wire_explorer.ShardOut.state), with each mark, as the page's own update would.
    # One synchronous script (the page's own refresh could otherwise redraw the map
    # between adding the cells and reading their colours).
    used = {c for row in page.evaluate("""() => {
        const map = document.querySelector('[data-testid=shard-map]');
        for (const s of ['queued', 'running', 'verifying', 'accepted', 'failed'])
          for (const m of ['', 'redone', 'corrected', 'redone corrected']) {
            const d = document.createElement('div'); d.className = `cell ${m}`;
            d.dataset.state = s; map.append(d); }
        return [...map.querySelectorAll('.cell')].map(e => { const s = getComputedStyle(e);
          return [s.backgroundColor, ...(s.boxShadow.match(/rgba?\\([^)]*\\)/g) || [])]; });
        }""") for c in row}
    assert used <= shown, used - shown
    assert legend.count() == 7  # five states and two marks
    wtab.shot("job-marks")


def test_leases_page_shows_clusters_and_leases(wtab: Tab, world: tuple[World, str]) -> None:
    w, _ = world
    page = wtab.open("#/leases")
    expect(page.get_by_test_id("stat-clusters-running").locator(".value")).to_have_text(
        "1", timeout=30_000)
    clusters = page.get_by_test_id("clusters")
    expect(clusters.locator("tbody tr")).to_have_count(1, timeout=30_000)
    expect(clusters).to_contain_text("2 / 2")
    leases = page.get_by_test_id("leases")
    expect(leases.locator("tbody tr")).to_have_count(3, timeout=30_000)
    expect(leases).to_contain_text("ended: provider lost")
    head = next(pid for pid, st in w.standing.items() if st == "online")  # hosts the head
    expect(clusters.locator(f'a[href="#/providers/{head}"]')).to_have_text(w.names[head])
    hosts = page.get_by_test_id("lease-hosts")
    expect(hosts.locator("tbody tr")).to_have_count(3, timeout=30_000)
    expect(hosts).to_contain_text("2 / 4")  # CPUs held by a live lease, of the host's four
    expect(page.get_by_test_id("stat-lease-utilisation").locator(".value")).to_have_text("33%")
    assert not wtab.errors, wtab.errors
    wtab.shot("leases")
    # The host's own page: its prices, what is held and the leases it hosted.
    page = wtab.open(f"#/providers/{head}")
    hosting = page.get_by_test_id("provider-leases")
    expect(hosting).to_contain_text("lse_head", timeout=30_000)
    expect(hosting).to_contain_text("2 / 4")
    assert not nulls(page), nulls(page)
    assert not wtab.errors, wtab.errors
    wtab.shot("provider-leases")


def test_datasets_page_shows_terms_and_named_providers(wtab: Tab,
                                                       world: tuple[World, str]) -> None:
    page = wtab.open("#/datasets")
    table = page.get_by_test_id("datasets-table")
    expect(table.locator("tbody tr")).to_have_count(2, timeout=30_000)
    named = table.locator(f'tr[data-id="{DATASETS[1]}"]')
    expect(named).to_contain_text("runs on 2 named providers")
    expect(named).to_contain_text("at most 10 uses")
    expect(table.locator(f'tr[data-id="{DATASETS[0]}"]')).not_to_contain_text("named")
    expect(page.get_by_test_id("stat-datasets").locator(".value")).to_have_text("2")
    assert "never shown" not in page.content()  # the owner's wrapped key
    assert not nulls(page), nulls(page)
    assert not wtab.errors, wtab.errors
    wtab.shot("datasets")


def test_ledger_postings_by_name_and_paging(wtab: Tab, world: tuple[World, str]) -> None:
    w, _ = world
    page = wtab.open("#/ledger")
    journal = page.get_by_test_id("journal")
    expect(journal.get_by_test_id("journal-row")).to_have_count(30, timeout=30_000)
    postings = journal.get_by_test_id("posting")
    expect(postings.first).to_be_visible()
    texts = postings.locator("a").evaluate_all(
        "as => as.map(a => [a.textContent, a.title])")
    for text, title in texts:
        assert not re.search(r"[0-9a-f]{16}", text), (text, title)  # a name, not hex
        assert ":" in title or title in ("fee", "mint"), title  # the account in its title
    first = journal.get_by_test_id("journal-row").first.get_attribute("data-id")
    assert first is not None
    page.get_by_test_id("ledger-older").click()
    expect(journal.get_by_test_id("journal-row").first).to_have_attribute(
        "data-id", str(int(first) - 30), timeout=15_000)
    expect(page.get_by_test_id("ledger-newer")).to_be_enabled()
    wtab.shot("ledger-older")
    page.get_by_test_id("ledger-newer").click()
    expect(journal.get_by_test_id("journal-row").first).to_have_attribute(
        "data-id", first, timeout=15_000)
    expect(page.get_by_test_id("ledger-newer")).to_be_disabled()
    stake = next(pid for pid, s in w.standing.items() if s == "slashed")
    named = journal.locator(f"[data-testid=posting][data-account='stake:{stake}'] a")
    if named.count():  # on the newest page only if its slash is that recent
        expect(named.first).to_have_text(f"stake of {w.names[stake]}")
    page.goto(wtab.base + f"#/ledger/account/{stake}")
    expect(page.locator("h1")).to_have_text(w.names[stake], timeout=15_000)
    expect(page.get_by_test_id("posting").filter(has_text="stake of").first).to_be_visible()
    # the history says how far back it searched: this journal is short, so to its start
    expect(page.get_by_test_id("account-range")).to_have_text(
        "searched back to the journal's start")
    expect(page.get_by_test_id("account-older")).to_be_disabled()


def test_slash_amounts_read_in_deai(wtab: Tab, world: tuple[World, str]) -> None:
    _, url = world
    events = httpx.get(f"{url}/api/explorer/verification", timeout=30).json()["events"]
    slashes = [e for e in events if e["kind"] == "slash"]
    assert slashes and all(e["body"]["amount"] >= 1_000_000 for e in slashes)
    page = wtab.open("#/verification")
    stream = page.get_by_test_id("verification-stream")
    expect(stream.locator("li[data-kind=slash]")).to_have_count(len(slashes), timeout=30_000)
    for e, li in zip(slashes, stream.locator("li[data-kind=slash]").all(), strict=True):
        amount = f"{e['body']['amount'] / 1e6:,.2f} DEAI"
        expect(li).to_contain_text(f"amount {amount}")
        assert str(e["body"]["amount"]) not in (li.text_content() or "")  # no raw µ
    wtab.shot("verification-slashes")


def nulls(page: Page) -> list[str]:
    """Elements showing the text "null" or "undefined" (a null handed to replaceChildren)."""
    return page.evaluate("""() => [...document.querySelectorAll('main *')]
        .filter(e => [...e.childNodes].some(n => n.nodeType === 3
                                             && /^(null|undefined)$/.test(n.data.trim())))
        .slice(0, 5).map(e => e.tagName + '.' + e.className)""")


PAGES = ["#/", "#/providers", "#/jobs", "JOB", "#/verification", "#/ledger", "#/leases",
         "#/hardware", "#/chain", "PROVIDER", "ACCOUNT"]


def test_phone_pages_never_scroll_sideways(browser: Browser, world: tuple[World, str]) -> None:
    w, url = world
    explorer_world.beat(w)
    tab = Tab(browser, url, "phone")
    slashed = next(pid for pid, s in w.standing.items() if s == "slashed")
    where = {"JOB": f"#/jobs/{w.job_id}", "PROVIDER": f"#/providers/{slashed}",
             "ACCOUNT": f"#/ledger/account/{slashed}"}
    try:
        page = tab.open("#/")
        ledger = page.locator("#nav a[data-nav=ledger]")
        expect(ledger).to_be_in_viewport(ratio=1.0, timeout=15_000)
        box = ledger.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
        ledger.click()
        expect(page.get_by_test_id("journal")).to_be_visible(timeout=15_000)
        for hash_ in PAGES:
            target = where.get(hash_, hash_)
            page.goto(tab.base + target)
            expect(page.locator("main [data-view]")).to_be_visible(timeout=15_000)
            page.wait_for_function(
                "() => !document.querySelector('main .view-error') && "
                "document.querySelector('main [data-view]').children.length > 0",
                timeout=30_000)
            expect(page.locator("main .empty, main table, main .card").first).to_be_visible(
                timeout=30_000)
            page.wait_for_timeout(300)  # the first refresh has rendered its tables
            width = page.evaluate("document.documentElement.scrollWidth")
            name = target.strip("#/").split("/")[0] or "overview"
            tab.shot(f"phone-{name}")
            wide = page.evaluate("""() => [...document.querySelectorAll('body *')]
                .filter(e => e.getBoundingClientRect().right > 391
                             && !e.closest('.table-wrap, nav'))
                .slice(0, 5).map(e => e.tagName + '.' + e.className)""")
            assert width <= 391, (target, width, wide)
            assert not nulls(page), (target, nulls(page))
    finally:
        tab.close()
