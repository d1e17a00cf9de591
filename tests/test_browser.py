"""The demo's report.html and inspect's feature browser in a real browser: headless Chromium (Debian's
``chromium``, which ``.ci/run`` installs) driven by the ``playwright`` package; no browser is downloaded.

Every image loads, nothing is logged to the console as an error, and sorting and the text filter change the
visible features. Screenshots go to the test's tmp folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sae_vit.pipeline.demo import DemoConfig, run_demo

pytestmark = pytest.mark.browser


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").is_file():
        found = "/usr/bin/chromium"
    if found is None:
        pytest.skip("no system Chromium (install Debian's chromium package; .ci/run does)")
    return found


@pytest.fixture
def browser():
    sync = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (dev extra)")
    executable = _chromium()
    with sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield b
        b.close()


def _open(browser, path: Path):
    """A page on ``path`` (file://) with every console error and page error recorded in ``page.errors``."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    return page


def _all_images_load(page) -> int:
    """Load lazy images too, wait for every one, and assert none is broken; returns their number."""
    page.evaluate("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; })")
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    broken = page.evaluate("Array.from(document.images).filter(i => !(i.naturalWidth > 0)).map(i => i.src)")
    assert broken == []
    return page.evaluate("document.images.length")


def _visible(page) -> list[str]:
    return page.evaluate("Array.from(document.querySelectorAll('#grid > article'))"
                         ".filter(a => !a.hidden).map(a => a.dataset.feature)")


def test_report_and_feature_browser_in_chromium(browser, tmp_path):
    cfg = DemoConfig(n_images=80, layers=(2, 8), tokens=("cls", "patches", "all"), n_tokens=20_000,
                     steer_features=12, steer_images=4, suppress_images=80, suppress_n_features=(2, 8),
                     typo_images=24, inspect_features=8, inspect_images=32, inspect_top_images=3)
    result = run_demo(tmp_path / "demo", cfg)

    report = _open(browser, result.report)
    assert _all_images_load(report) == 4  # one plot per claim
    assert report.locator("section.claim").count() == 4
    report.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert report.errors == []

    report.click("#browser-link")  # the report's link opens the feature browser
    report.wait_for_load_state("load")
    assert report.url.endswith("/inspect/index.html")
    page = _open(browser, tmp_path / "demo" / "inspect" / "index.html")
    assert _all_images_load(page) > 0
    shown = _visible(page)
    assert len(shown) == result.results["inspect"]["n_features"] >= 4

    cards = page.evaluate("Array.from(document.querySelectorAll('#grid > article')).map(a => "
                          "({f: a.dataset.feature, max: parseFloat(a.dataset.max), text: a.dataset.text}))")
    page.select_option("#sort", "feature")
    by_id = _visible(page)
    assert by_id == sorted(shown, key=int)
    page.select_option("#sort", "max")
    by_max = _visible(page)
    maxima = {c["f"]: c["max"] for c in cards}
    assert [maxima[f] for f in by_max] == sorted(maxima.values(), reverse=True)
    assert by_max != by_id  # sorting changes the order the features are shown in

    # a word some cards have and some do not: the filter shows exactly those
    words = {w for c in cards for w in c["text"].split()[1:]}
    word = next((w for w in sorted(words) if 0 < sum(w in c["text"] for c in cards) < len(cards)), None)
    assert word is not None, "the features' labels do not tell them apart"
    page.fill("#filter", word)
    kept = _visible(page)
    assert set(kept) == {c["f"] for c in cards if word in c["text"]} and 0 < len(kept) < len(cards)
    assert page.inner_text("#count").startswith(f"{len(kept)} of {len(cards)}")
    page.fill("#filter", "no-such-label")
    assert _visible(page) == []
    page.fill("#filter", "")
    page.screenshot(path=str(tmp_path / "inspect.png"))
    assert page.errors == []
    assert (tmp_path / "report.png").stat().st_size > 0 and (tmp_path / "inspect.png").stat().st_size > 0
