"""The ``/cluster-app`` dashboard page in a real browser (Debian's chromium and chromedriver,
driven by selenium) on a local cluster during training."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

from cluster_app import AgentCluster, AgentSpec

pytestmark = pytest.mark.slow

# Bokeh 3 renders inside shadow roots: these walk them
_DEEP = """
const found = [];
const walk = (root) => {
  root.querySelectorAll(arguments[0]).forEach((e) => found.push(e));
  root.querySelectorAll('*').forEach((e) => { if (e.shadowRoot) walk(e.shadowRoot); });
};
walk(document);
return found.length;
"""
_CELLS = """
const found = [];
const walk = (root) => {
  root.querySelectorAll('.slick-cell').forEach((e) => found.push(e.textContent));
  root.querySelectorAll('*').forEach((e) => { if (e.shadowRoot) walk(e.shadowRoot); });
};
walk(document);
return found;
"""
_AGENTS = """
const doc = window.Bokeh && Bokeh.documents[0];
if (!doc) return null;
for (const m of doc.all_models) {
  if (m.data && m.data.worker !== undefined && m.data.step !== undefined) {
    return {worker: Array.from(m.data.worker), step: Array.from(m.data.step),
            role: Array.from(m.data.role)};
  }
}
return null;
"""


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        if os.environ.get("CLUSTER_APP_REQUIRE_SERVICES"):
            pytest.fail("chromium and chromedriver are not installed (.ci/run installs them)")
        pytest.skip("chromium and chromedriver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1800",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def _wait(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_fleet_page_renders_live_agents_in_a_real_browser(tmp_path):
    spec = AgentSpec.from_config(model="mlp", dataset="digits")
    with AgentCluster(n_workers=2, agent=spec, store_url=str(tmp_path / "store"), quiet=True) as ac:
        done = threading.Event()

        def train():
            try:
                # long enough for two looks at the page, whatever the machine
                ac.train(rounds=100_000, local_steps=20, max_seconds=40, progress=False)
            finally:
                done.set()

        threading.Thread(target=train, daemon=True).start()
        base = ac.client.dashboard_link.rsplit("/", 1)[0]
        browser = _browser()
        try:
            # the page is listed in the dashboard's "More" menu
            browser.get(f"{base}/status")
            _wait(lambda: "cluster-app" in browser.page_source, 30, "the More menu entry")
            browser.get(f"{base}/cluster-app")
            _wait(lambda: browser.execute_script(_DEEP, "canvas") >= 4, 60, "the plots")
            first = _wait(
                lambda: (a := browser.execute_script(_AGENTS)) and "active" in a["role"] and a,
                120,
                "agent rows with an active agent",
            )
            assert len(first["worker"]) == 2
            # the table draws what the page holds (an active agent), not its first look
            _wait(
                lambda: "active" in browser.execute_script(_CELLS),
                30,
                "the agents table to show an active agent",
            )
            # live: the agents' steps grow between two looks, pushed to this page by Bokeh
            _wait(
                lambda: sum(browser.execute_script(_AGENTS)["step"]) > sum(first["step"]),
                120,
                "the agents' steps to change",
            )
            assert not done.is_set(), "the run ended before the page showed it progress"
            browser.save_screenshot(str(tmp_path / "cluster-app-page.png"))
            assert (tmp_path / "cluster-app-page.png").stat().st_size > 10_000
            errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, errors
        finally:
            browser.quit()
        done.wait(300)
