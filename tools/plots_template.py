"""Build .dvc/plots-offline.html: `dvc plots show`'s page template with Vega inlined.

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so offline it draws
nothing. This template carries the three libraries (their npm builds, at the pinned versions
below) inside the page; .dvc/config names it as the project's `plots.html_template`.

    make plots-template      # npm pack at the pinned versions, then this script

    python tools/plots_template.py vega-X.tgz vega-lite-Y.tgz vega-embed-Z.tgz
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

# The versions DVC's renderer speaks (Vega-Lite v5 specs), newest of each major line.
PINNED = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}
BUILDS = {"vega": "package/build/vega.min.js", "vega-lite": "package/build/vega-lite.min.js",
          "vega-embed": "package/build/vega-embed.min.js"}
OUT = Path(__file__).resolve().parents[1] / ".dvc" / "plots-offline.html"

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>imgrate: DVC plots</title>
    <!-- Built by tools/plots_template.py (make plots-template) from npm:
{sources}
         Each library is BSD-3-Clause licensed (copyright the University of Washington
         Interactive Data Lab); no scripts placeholder, so DVC adds no CDN links. -->
{scripts}
    <style>
        body {{ font-family: sans-serif; }}
        table {{ border-spacing: 15px; }}
        img {{ max-width: 100%; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def read_build(tgz: Path) -> tuple[str, str, str]:
    """(name, version, minified build) of one `npm pack` tarball."""
    with tarfile.open(tgz) as tar:
        meta = json.load(tar.extractfile("package/package.json"))  # type: ignore[arg-type]
        name, version = meta["name"], meta["version"]
        if name not in BUILDS:
            raise SystemExit(f"{tgz}: unexpected package {name}")
        if version != PINNED[name]:
            raise SystemExit(f"{tgz}: {name} {version}, pinned {PINNED[name]}")
        js = io.TextIOWrapper(tar.extractfile(BUILDS[name]), encoding="utf-8").read()  # type: ignore[arg-type]
    if "</script" in js.lower():
        raise SystemExit(f"{tgz}: the build contains </script and cannot be inlined")
    return name, version, js


def main(argv: list[str]) -> None:
    builds = {name: (version, js) for name, version, js in map(read_build, map(Path, argv))}
    missing = sorted(set(PINNED) - set(builds))
    if missing:
        raise SystemExit(f"missing packages: {', '.join(missing)}")
    order = ["vega", "vega-lite", "vega-embed"]  # vega-embed needs the other two
    sources = "\n".join(f"         {n}@{builds[n][0]} {BUILDS[n].removeprefix('package/')} "
                        f"(sha256 {hashlib.sha256(builds[n][1].encode()).hexdigest()[:16]})" for n in order)
    scripts = "\n".join(f'    <script type="text/javascript">/* {n}@{builds[n][0]} */\n{builds[n][1]}\n    </script>'
                        for n in order)
    page = PAGE.format(sources=sources, scripts=scripts)
    OUT.write_text(page, encoding="utf-8")
    print(f"{OUT}: {len(page.encode()) / 1024:.0f} KiB")


if __name__ == "__main__":
    main(sys.argv[1:])
