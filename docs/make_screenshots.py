"""Screenshots of the demo's report and of inspect's feature browser for docs/demo.md and docs/inspect.md.

    python docs/make_screenshots.py                      # runs `saevit demo` into saevit_runs/demo first if needed
    python docs/make_screenshots.py --demo DIR           # a demo folder that already holds report.html

Writes docs/img/report.png and docs/img/inspect.png with the playwright package driving the system Chromium
(Debian's ``chromium``; no browser is downloaded).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

IMG = Path(__file__).parent / "img"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=None, help="Demo folder (default: <workdir>/demo).")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from sae_vit.core.defaults import workdir
    from sae_vit.pipeline.demo import run_demo

    demo = args.demo or workdir() / "demo"
    if not (demo / "report.html").is_file():
        print(f"running the demo into {demo}")
        run_demo(demo, progress=print)
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    IMG.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1500})
        page.goto((demo / "report.html").resolve().as_uri())
        page.wait_for_load_state("load")
        page.screenshot(path=str(IMG / "report.png"))
        page.set_viewport_size({"width": 1400, "height": 1100})
        page.goto((demo / "inspect" / "index.html").resolve().as_uri())
        page.evaluate("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; })")
        page.wait_for_function("Array.from(document.images).every(i => i.complete)")
        page.select_option("#sort", "steer")
        page.screenshot(path=str(IMG / "inspect.png"))
        browser.close()
    print(f"wrote {IMG / 'report.png'} and {IMG / 'inspect.png'} from {demo}")


if __name__ == "__main__":
    main()
