"""Release check for a person (`make app-check`): start `rcdm app`, have it draw the Samples view of the first
example image, screenshot the page with headless Chromium, and fail unless the page shows rendered images.

    python scripts/app_check.py [--model M ...] [--out app-check.png]

Without --model it offers what `rcdm app` offers (the bundled pack, else --runs). Look at the PNG before a release.
Exit codes: 0 page rendered with images, 1 it did not, 2 no Chromium or no model.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def browse(url: str, args: list[str], budget_ms: int) -> subprocess.CompletedProcess:
    """Run headless Chromium on `url` with a fresh profile; JS gets `budget_ms` of virtual time to render."""
    browser = chromium()
    assert browser is not None
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            browser,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            *args,
            url,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def rendered_images(dom: str, url: str) -> int:
    """How many <img> elements the rendered page has whose source the app served (not icons or data: URIs)."""
    import re

    sources = re.findall(r"<img[^>]*\ssrc=\"([^\"]+)\"", dom)
    return sum(
        1 for s in sources if "/file=" in s or s.startswith(url.rstrip("/")) or s.startswith("/gradio_api/")
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", default=None)
    p.add_argument("--runs", action="append", default=None)
    p.add_argument("--trust-remote-code", action="store_true", help="as `rcdm app --trust-remote-code`")
    p.add_argument("--out", default="app-check.png", help="screenshot file (PNG)")
    p.add_argument("--size", default="1280,1100", help="window WIDTH,HEIGHT")
    p.add_argument("--budget-ms", type=int, default=60000, help="virtual time for the page to render")
    args = p.parse_args(argv)
    if chromium() is None:
        print("app-check: no Chromium found; install Debian's chromium package (apt-get install chromium)")
        return 2
    from rcdm.app import build_app, discover_models, start
    from rcdm.errors import RCDMError

    try:
        choices = discover_models(args.model or (), args.runs or (), trust_remote_code=args.trust_remote_code)
    except RCDMError as e:
        print(f"app-check: {e}")
        return 2
    app = build_app(choices, "cpu", prefill=True)
    url = start(app, "127.0.0.1", None)
    try:
        dom = browse(url, ["--dump-dom"], args.budget_ms).stdout
        shot = browse(
            url, [f"--screenshot={Path(args.out).resolve()}", f"--window-size={args.size}"], args.budget_ms
        )
    finally:
        app.close()
    n = rendered_images(dom, url)
    if not Path(args.out).is_file():
        print(f"app-check: FAIL: Chromium wrote no screenshot ({shot.stderr.strip()[-300:]})")
        return 1
    if n < 2:  # the input preview and the Samples figure
        print(
            f"app-check: FAIL: the page shows {n} served image(s), expected the input and the samples figure"
        )
        return 1
    print(f"app-check: ok: {n} images rendered; look at {args.out} ({len(choices)} model(s) at {url})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
