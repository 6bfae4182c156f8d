"""The overlaybd page in headless Chromium, inside a real Airflow UI (api-server + scheduler).

One real conversion succeeds and one fails (a missing source layout) through the
``overlaybd_convert`` DAG; the failure is recorded with ``record_failure`` as the operators'
callback does, beside rows of other images. The page is then loaded at 1280x900 in light and in
dark mode: screenshots go to the pytest tmp dir (paths printed), and the test checks that nothing
scrolls sideways, the failed conversion shows its error line, the run / task links are Airflow's
own pages (followed: they answer 200 and render the run and the task log), and the page is
painted with Airflow's theme colors, which differ between the two modes.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest
import requests
from airflow_live import LiveAirflow
from overlaybd_provider.hooks.conversion_failure import record_failure
from overlaybd_provider.hooks.dedup import OverlaybdDedupHook
from page_rows import seed_rows

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import demo_image  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
VIEWPORT = {"width": 1280, "height": 900}
ERROR_LINE = "pull oci:/no/such/layout:latest: the OCI layout has no index.json"

# Every element that scrolls sideways (and the document itself): the page must fit at 1280 px.
OVERFLOW_JS = """() => {
  const doc = document.scrollingElement;
  const out = [{what: "document", scroll: doc.scrollWidth, client: doc.clientWidth}];
  for (const el of document.querySelectorAll("*")) {
    const x = getComputedStyle(el).overflowX;
    if ((x === "auto" || x === "scroll") && el.clientWidth > 0)
      out.push({what: el.tagName + "." + el.className, scroll: el.scrollWidth, client: el.clientWidth});
  }
  return out;
}"""
# The page's colors next to the theme's own tokens, resolved the same way.
COLORS_JS = """() => {
  const probe = (prop, value) => {
    const el = document.createElement("div");
    el.style[prop] = value;
    document.body.appendChild(el);
    const got = getComputedStyle(el)[prop];
    el.remove();
    return got;
  };
  const page = document.querySelector("[data-testid=overlaybd-page]");
  const heading = page.querySelector("h2, h1, h3");
  const card = page.querySelector("[data-testid=stat-images]");
  const error = page.querySelector("[data-testid=failure-row] [data-testid=error-line]");
  return {
    htmlClass: document.documentElement.className,
    heading: getComputedStyle(heading).color,
    themeFg: probe("color", "var(--chakra-colors-fg)"),
    card: getComputedStyle(card).backgroundColor,
    themeBg: probe("backgroundColor", "var(--chakra-colors-bg)"),
    border: getComputedStyle(card).borderTopColor,
    themeBorder: probe("borderTopColor", "var(--chakra-colors-border)"),
    error: getComputedStyle(error).color,
    themeError: probe("color", "var(--chakra-colors-fg-error)"),
    font: getComputedStyle(page).fontFamily,
  };
}"""


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: scripts/bootstrap.sh installs the Debian package")
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[tuple[LiveAirflow, dict]]:
    """Airflow with one succeeded and one failed overlaybd_convert run, and the page's rows."""
    home = tmp_path_factory.mktemp("page-airflow")
    layout = home / "source"
    demo_image.make_image(layout, "latest", demo_image.demo_layers("page-app", base="page"))
    dedup = home / "dedup.db"
    airflow = LiveAirflow(
        home / "home",
        extra_env={
            "AIRFLOW_CONN_OVERLAYBD_DEDUP": json.dumps({"conn_type": "sqlite", "host": str(dedup)}),
            "AIRFLOW__OVERLAYBD__STAGING_BASE": str(home / "staging"),
        },
    )
    try:
        airflow.start()
        airflow.wait_dag("overlaybd_convert")
        airflow.unpause("overlaybd_convert")
        good = airflow.trigger(
            "overlaybd_convert",
            {"source": f"oci:{layout}:latest", "destination": f"oci:{home / 'target'}:overlaybd",
             "flatten": True, "verify": True},  # the row shows the verified and flattened badges
        )
        bad = airflow.trigger(
            "overlaybd_convert",
            {"source": "oci:/no/such/layout:latest", "destination": f"oci:{home / 'bad'}:overlaybd"},
        )
        assert airflow.wait_run("overlaybd_convert", good) == "success", airflow.logs()
        ti = _first_try_done(airflow, bad)
        hook = OverlaybdDedupHook(sqlite_path=str(dedup))
        seed_rows(hook)  # other images: alpine, debian (retrying), redis (failed, mapped)
        context = {
            "ti": SimpleNamespace(
                dag_id="overlaybd_convert",
                run_id=bad,
                task_id="convert",
                map_index=-1,
                try_number=ti["try_number"],
            ),
            "task": SimpleNamespace(task_id="convert", task_group=None),
            "params": {"source": "oci:/no/such/layout:latest", "destination": f"oci:{home / 'bad'}:overlaybd"},
        }
        assert record_failure(hook, context, ERROR_LINE)
        yield airflow, {"good": good, "bad": bad, "try": ti["try_number"]}
    finally:
        airflow.stop()


def _first_try_done(airflow: LiveAirflow, run_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        [ti] = airflow.task_instances("overlaybd_convert", run_id) or [{}]
        if ti.get("state") in ("up_for_retry", "failed"):
            return ti
        time.sleep(1)
    raise AssertionError(f"run {run_id} never failed a try\n{airflow.logs()}")


@pytest.fixture(scope="module")
def browser(live):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def _page(browser, airflow: LiveAirflow, theme: str):
    context = browser.new_context(viewport=VIEWPORT, color_scheme=theme)
    context.add_cookies([{"name": "_token", "value": airflow.token(), "url": airflow.url}])
    context.add_init_script(f"localStorage.setItem('theme', '{theme}')")  # the UI's color mode
    page = context.new_page()
    page.goto(f"{airflow.url}/plugin/overlaybd")
    page.wait_for_selector("[data-testid=failure-row]", timeout=60_000)
    page.wait_for_load_state("networkidle")
    return page


def test_page_in_light_and_dark_mode_fits_links_and_uses_the_theme(live, browser, tmp_path):
    airflow, runs = live
    colors = {}
    for theme in ("light", "dark"):
        page = _page(browser, airflow, theme)
        overflow = [o for o in page.evaluate(OVERFLOW_JS) if o["scroll"] > o["client"]]
        assert not overflow, f"{theme}: scrolls sideways at 1280 px: {overflow}"
        png = tmp_path / f"overlaybd-page-{theme}.png"
        page.screenshot(path=str(png))
        print(f"screenshot ({theme}, 1280x900): {png}")
        assert png.stat().st_size > 50_000
        colors[theme] = page.evaluate(COLORS_JS)
        c = colors[theme]
        assert theme in c["htmlClass"].split()
        # painted with Airflow's theme tokens, not colors of its own
        assert (c["heading"], c["card"], c["border"], c["error"]) == (
            c["themeFg"],
            c["themeBg"],
            c["themeBorder"],
            c["themeError"],
        ), c
        assert c["font"].startswith("Inter"), c["font"]  # Airflow's font

        badge = page.locator("[data-testid=verify-badge]")  # the real conversion ran with verify + flatten
        assert badge.count() == 1 and badge.inner_text() == "verified"
        assert badge.get_attribute("title").startswith("0 differences: the image matches its source (")
        flat = page.locator("[data-testid=flatten-badge]")
        assert flat.count() == 1 and flat.inner_text().startswith("flattened ") and flat.inner_text().endswith("→ 1")

        failed = page.locator("[data-testid=failure-row]", has_text="no/such/layout")
        assert failed.count() == 1
        assert failed.locator("[data-testid=error-line]").inner_text() == ERROR_LINE
        assert failed.locator("[data-testid=status]").inner_text() in ("failed", "up for retry")
        run_href = failed.locator("[data-testid=run-link]").get_attribute("href")
        task_href = failed.locator("[data-testid=task-link]").get_attribute("href")
        run_path = f"/dags/overlaybd_convert/runs/{quote(runs['bad'], safe='')}"
        assert run_href == run_path
        assert task_href == f"{run_path}/tasks/convert?try_number={runs['try']}"
        mapped = page.locator("[data-testid=failure-row]", has_text="redis").locator("[data-testid=task-link]")
        assert "/tasks/convert.pull/mapped/1?try_number=3" in mapped.get_attribute("href")

        page.get_by_label("Build time avoided: how it is computed").hover()
        hint = page.locator("[data-testid=hint-content]")
        hint.wait_for(state="visible", timeout=10_000)
        assert "recorded" in hint.inner_text() and "never an estimate" in hint.inner_text()
        page.context.close()
    assert colors["light"]["heading"] != colors["dark"]["heading"]
    assert colors["light"]["card"] != colors["dark"]["card"]


def test_run_and_task_links_open_airflows_pages(live, browser):
    airflow, runs = live
    page = _page(browser, airflow, "light")
    try:
        good = page.locator("[data-testid=conversion-row][data-status=success]", has_text="overlaybd")
        good = good.filter(has=page.locator(f"[data-testid=run-link]:text-is('{runs['good']}')"))
        assert good.count() == 1, "the real conversion's row"
        run_href = good.locator("[data-testid=run-link]").get_attribute("href")
        assert requests.get(airflow.url + run_href, cookies={"_token": airflow.token()}, timeout=30).status_code == 200
        good.locator("[data-testid=run-link]").click()
        page.wait_for_url(re.compile(r".*/dags/overlaybd_convert/runs/.+"))
        page.get_by_text(runs["good"]).first.wait_for(timeout=30_000)  # the dag run page shows the run

        page.go_back()
        failed = page.locator("[data-testid=failure-row]", has_text="no/such/layout")
        failed.wait_for(timeout=30_000)
        task_href = failed.locator("[data-testid=task-link]").get_attribute("href")
        assert requests.get(airflow.url + task_href, timeout=30).status_code == 200
        failed.locator("[data-testid=task-link]").click()
        page.wait_for_url(re.compile(r".*/dags/overlaybd_convert/runs/.+/tasks/convert.*"))
        # the task instance page opens on its log, which shows the real failure of try 1
        page.get_by_text(re.compile("no/such/layout")).first.wait_for(timeout=60_000)
    finally:
        page.context.close()
