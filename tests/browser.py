"""Open a page (`dvc plots show`'s, the contact sheet, the insights page) in headless Chromium
with the network cut off, and count what it drew: Vega plots with a canvas or SVG of marks,
and images that decoded (with their ``data-*`` attributes, in page order); or take a
screenshot of it.

Chromium is Debian's `chromium` package (`apt-get install chromium`); .ci/run installs it.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

# Appended to a copy of the page: after load, report what was drawn into a <pre> that
# Chromium's --dump-dom prints.
PROBE = """
<script>
window.addEventListener("load", function () {
  setTimeout(function () {
    var drawn = 0;
    document.querySelectorAll(".vega-embed").forEach(function (el) {
      if (el.querySelector("canvas, svg.marks")) { drawn += 1; }
    });
    var images = Array.from(document.images);
    var report = {
      vega_drawn: drawn,
      images: images.length,
      images_loaded: images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
      drawn: images.map(function (i) {
        var r = i.getBoundingClientRect();
        return {cls: i.className, rank: i.dataset.rank || null, file: i.dataset.file || null, alt: i.alt,
                loaded: i.complete && i.naturalWidth > 0, width: r.width, height: r.height};
      }),
      cards: Array.from(document.querySelectorAll(".card")).map(function (c) { return c.dataset.rank; }),
      scripts: document.scripts.length - 1,
      vega_loaded: typeof vegaEmbed === "function"
    };
    var pre = document.createElement("pre");
    pre.id = "imgrate-render-report";
    pre.textContent = JSON.stringify(report);
    document.body.appendChild(pre);
  }, 3000);
});
</script>
"""


def chromium() -> str | None:
    """The Chromium binary, or None when it is not installed."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def vega_plots(page: Path) -> int:
    """How many Vega plots the page asks for (DVC writes one vegaEmbed call per plot)."""
    return len(re.findall(r"vegaEmbed\('#", page.read_text(encoding="utf-8")))


def _flags(profile: str) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={profile}", "--no-first-run", "--disable-background-networking",
            # no network: every host resolves to nothing and any proxy use goes nowhere
            "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
            "--allow-file-access-from-files"]


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 2400, timeout_s: float = 300.0) -> Path:
    """A PNG of ``page`` as Chromium draws it with no network, ``width`` x ``height`` px."""
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed")
    with tempfile.TemporaryDirectory(prefix="imgrate-chromium-") as profile:
        cmd = [binary, *_flags(profile), "--hide-scrollbars", f"--window-size={width},{height}",
               "--virtual-time-budget=10000", f"--screenshot={png}", page.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env={**os.environ, "HOME": profile})
    if not png.exists():
        raise AssertionError(f"chromium wrote no screenshot (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return png


def render(page: Path, timeout_s: float = 300.0) -> dict[str, Any]:
    """Load ``page`` (beside its images) with no network; return the probe's report."""
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed")
    probe = page.with_name(f".probe-{page.name}")
    # imgrate's own pages forbid every script with a Content-Security-Policy; the probe is one,
    # so its copy of the page goes without that line (what the page loads is unchanged)
    text = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page.read_text(encoding="utf-8"))
    head, body_end, tail = text.rpartition("</body>")  # the last one: vega-embed's code holds the string too
    probe.write_text(head + PROBE + body_end + tail if body_end else text + PROBE, encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="imgrate-chromium-") as profile:
        cmd = [binary, *_flags(profile), "--virtual-time-budget=30000", "--dump-dom", probe.as_uri()]
        env = {**os.environ, "HOME": profile}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    probe.unlink(missing_ok=True)
    found = re.search(r'<pre id="imgrate-render-report">(.*?)</pre>', proc.stdout, re.S)
    if not found:
        raise AssertionError(f"chromium printed no report (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(html.unescape(found.group(1)))
