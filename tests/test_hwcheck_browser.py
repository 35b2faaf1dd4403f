"""The explorer's Hardware page in a real browser (Debian's Chromium driven by Playwright)
against a live network: a provider that passed its challenge shows its verified compute
units and price per verified unit, a provider that answered wrongly shows as flagged with
none, and the cloud index lists its rows with source and date. No console error.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from tests.helpers import HW_ENV
from tests.netutil import Network

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def shown(v: float, digits: int) -> str:
    """``v`` as the page shows it (``toLocaleString("en-US")``): rounded half away from
    zero on its shortest decimal form (409.65 -> 409.7, where Python's ``f"{v:.1f}"``
    rounds the binary value and gives 409.6), with thousands separators."""
    q = Decimal(repr(v)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{q:,.{digits}f}"


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    n = Network(tmp_path, heartbeat_timeout=6.0, verify=False)
    n.env.update({**HW_ENV, "DEAI_HW_TARGET_S": "0.3", "DEAI_HW_PERIOD_S": "3600"})
    n.start_coordinator()
    try:
        n.start_provider("steady", 900, "--name", "steady")
        n.start_provider("sloppy", 800, "--name", "sloppy", env={"DEAI_HW_CHEAT": "wrong"})
        n.wait_providers(2, timeout=400)
        yield n
    finally:
        n.close()


def test_hardware_page_shows_verified_units_and_the_cloud_index(net: Network) -> None:
    def judged() -> dict[str, dict[str, Any]]:
        data = httpx.get(f"{net.url}/api/hardware/claims", timeout=60).json()["claims"]
        return {c["name"]: c for c in data if c["last_outcome"]}

    for _ in range(600):
        got = judged()
        if {"steady", "sloppy"} <= set(got):
            break
        time.sleep(0.5)
    assert got["sloppy"]["status"] == "flagged", got
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = b.new_page(viewport={"width": 1366, "height": 900})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{net.url}/explorer/#/hardware")
        steady = page.locator(f"[data-testid=hw-claim-row][data-id='{got['steady']['provider']}']")
        sloppy = page.locator(f"[data-testid=hw-claim-row][data-id='{got['sloppy']['provider']}']")
        expect(steady).to_contain_text("steady", timeout=20_000)
        if got["steady"]["status"] == "verified":
            expect(steady).to_contain_text("verified")
            units = got["steady"]["verified_units"]
            expect(steady).to_contain_text(shown(units, 2))
            expect(steady).to_contain_text(shown(got["steady"]["price_per_verified_unit"], 1))
        expect(sloppy).to_contain_text("flagged")
        expect(sloppy).to_contain_text("0.00")
        cloud = page.get_by_test_id("cloud-index").locator("tbody tr")
        expect(cloud.first).to_be_visible()
        assert cloud.count() >= 4
        expect(page.get_by_test_id("cloud-index")).to_contain_text("H100")
        expect(page.get_by_test_id("cloud-index")).to_contain_text("2026-05")
        expect(page.get_by_test_id("hw-network")).to_be_visible()
        shots = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "hardware-laptop.png"), full_page=True)
        b.close()
    assert not errors, errors
