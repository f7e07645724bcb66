"""Screenshot MLflow's compare-runs page of dfd evaluate runs, as in docs/images/mlflow-compare*.png.

    python infra/mlflow/screenshot_compare.py http://127.0.0.1:5077 EXPERIMENT_ID RUN_ID RUN_ID ... \
        -o docs/images/mlflow-compare.png [--rows run|bicubic] [--chromium /usr/bin/chromium]

Needs playwright-python (``pip install playwright``, in any virtual environment) and a Chromium: Debian's
``apt-get install chromium`` works where playwright's own browser download cannot be reached.

It opens ``#/compare-runs?runs=[...]&experiments=[...]`` (the page the experiment's "Compare" button opens), closes
the "MLflow Assistant" side panel and collapses the plots and the parameters, as a user would click. MLflow 3.17
shows at most 300 px (6.7 rows) of the metrics table, which lists metrics alphabetically: ``--rows bicubic`` leaves
it at its top (the bicubic_* baseline rows), ``--rows run`` scrolls it to its bottom (the run's own identity_distance,
landmark_distance, psnr, psnr_y, ssim, ssim_y). Nothing on the page is edited.
"""
from __future__ import annotations

import argparse
import json
from urllib.parse import quote


def compare_url(base: str, experiment: str, runs: list[str]) -> str:
    """The compare page of MLflow 3.17: JSON arrays of run ids and experiment ids in the hash route's query."""
    return (f"{base.rstrip('/')}/#/compare-runs?runs={quote(json.dumps(runs, separators=(',', ':')))}"
            f"&experiments={quote(json.dumps([experiment]))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("server")
    parser.add_argument("experiment")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--rows", choices=("run", "bicubic"), default="run")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--size", default="1600x1000", help="viewport WIDTHxHEIGHT")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    from playwright.sync_api import sync_playwright

    url = compare_url(args.server, args.experiment, args.runs)
    print(url)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(url)
        page.get_by_text("Run details", exact=True).wait_for(timeout=60_000)
        page.get_by_text("identity_distance", exact=True).first.wait_for(timeout=60_000)
        page.wait_for_timeout(2000)
        close = page.get_by_role("button", name="Close", exact=True)  # the MLflow Assistant panel
        if close.count():
            close.first.click()
        for section in ("Visualizations", "Parameters"):
            page.get_by_text(section, exact=True).first.click()
            page.wait_for_timeout(500)
        if args.rows == "run":
            # Two virtualised grids: metric names, then values; the names follow the values' scroll.
            box = page.locator(".ReactVirtualized__Grid").nth(1).bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.wheel(0, 1000)
            page.wait_for_timeout(1500)
            # Make sure the names grid is at the same offset (a screenshot must never pair a name with another
            # row's values).
            offsets = page.evaluate("""() => { const g = [...document.querySelectorAll('.ReactVirtualized__Grid')];
                g[0].scrollTop = g[1].scrollTop; return g.map(x => x.scrollTop); }""")
            if len(set(offsets)) != 1:
                raise SystemExit(f"metric names and values are not aligned: {offsets}")
        page.wait_for_timeout(1500)
        page.screenshot(path=args.output)
        browser.close()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
