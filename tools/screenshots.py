"""Screenshots of the collector's page for the README, at 1280 px and at a phone's 390 px.

Runs the demo's jobs through a CloudHandler into a local collector on
127.0.0.1, opens the page in headless Chromium (see ``tools/chromium.py``),
opens the most active failure group, and writes full-page PNGs (with the
latest eight events):

    python tools/screenshots.py            # docs/collector-1280.png, docs/collector-390.png
    python tools/screenshots.py --out DIR
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chromium import Browser

from massugc_logging import CloudHandler
from massugc_logging.cli.demo import demo_jobs
from massugc_logging.collector import Collector

REPO = Path(__file__).resolve().parent.parent
WIDTHS = ((1280, 900, False), (390, 844, True))


def fill(collector: Collector, spool_dir: Path) -> None:
    """The demo's 48 jobs, delivered the way the app delivers them."""
    handler = CloudHandler(api_url=collector.url, api_key="massugc_" + uuid.uuid4().hex,
                           spool_path=spool_dir / "spool.sqlite3",
                           extra_fields=("error_category",))
    log = logging.getLogger("massugc.screenshots")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    for fields in demo_jobs(48, "alice"):
        if "error_message" in fields:
            log.error("job failed", extra=fields)
        else:
            log.info("job succeeded", extra=fields)
    if not handler.force_flush(30):
        raise SystemExit("the demo's events were not delivered within 30 s")
    log.removeHandler(handler)
    handler.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs",
                        help="directory for the PNGs (default: docs/)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, Collector() as collector, \
            Browser.launch() as browser:
        fill(collector, Path(scratch))
        for width, height, mobile in WIDTHS:
            page = browser.new_page(width, height, mobile=mobile)
            page.goto(collector.url + "/?limit=8")  # eight events keep the image short
            page.evaluate("document.querySelector('#groups details').open = true")
            target = args.out / f"collector-{width}.png"
            target.write_bytes(page.screenshot(full_page=True))
            print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
