"""Self-contained HTML pages: the pieces the contact sheet (:mod:`imgrate.sheet`) and the
insights page (:mod:`imgrate.insights`) share.

A page carries everything it shows: its style inline, every picture as a ``data:`` URI (a
small JPEG), no script, no font, no link to fetch: it opens offline, from an e-mail or a USB
stick. Every piece of text that came from outside (a file name, a username, an error) goes
through :func:`esc`: HTML-escaped, with control and invisible formatting characters written
as escapes (:func:`imgrate.errors.safe_text`), so a name is shown as text, never as markup.
"""

from __future__ import annotations

import base64
import html
import io

from PIL import Image

from imgrate.errors import safe_text

THUMB_PX = 256  # longer side of a page's thumbnails
THUMB_QUALITY = 80


def esc(text: object) -> str:
    """``text`` for an HTML page: escaped, control characters visible as escapes."""
    return html.escape(safe_text(text), quote=True)


def jpeg(image: Image.Image, px: int = THUMB_PX, quality: int = THUMB_QUALITY) -> bytes:
    """A JPEG of ``image`` shrunk to fit ``px`` x ``px`` (aspect kept; never enlarged)."""
    im = image.convert("RGB") if image.mode != "RGB" else image.copy()
    im.thumbnail((px, px), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def data_uri(jpeg_bytes: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes).decode("ascii")


def img(jpeg_bytes: bytes, alt: object, cls: str = "", **data: object) -> str:
    """An ``<img>`` of JPEG bytes, its ``alt`` text and ``data-*`` attributes escaped."""
    attrs = "".join(f' data-{k.replace("_", "-")}="{esc(v)}"' for k, v in data.items())
    return f'<img class="{cls}" src="{data_uri(jpeg_bytes)}" alt="{esc(alt)}"{attrs}>'


def bar(percent: float | None, label: str = "") -> str:
    """A horizontal bar filled to ``percent`` (0-100) with its number; a dash when None."""
    if percent is None:
        return '<span class="bar none">-</span>'
    p = min(max(float(percent), 0.0), 100.0)
    return (f'<span class="bar" title="{esc(label)}"><span class="fill" style="width:{p:.1f}%"></span>'
            f'<span class="num">{p:.0f}</span></span>')


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;max-width:1200px;
 padding:0 1em;color:#222;background:#fafafa;line-height:1.4}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;margin:1.5em 0 .4em;border-bottom:1px solid #ddd}
.lead{font-size:1.05em;max-width:60em}.muted{color:#666;font-size:.9em}
.claim{background:#eef6ee;border-left:4px solid #4a4;padding:.3em .6em;margin:.4em 0}
.noclaim{background:#f3f3f3;border-left:4px solid #aaa;padding:.3em .6em;margin:.4em 0}
.warn{background:#fff4e0;border-left:4px solid #e90;padding:.3em .6em;margin:.4em 0}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;width:272px;box-sizing:border-box}
.card.unusual{border-color:#e90}
.card img.photo{display:block;width:256px;height:256px;object-fit:contain;margin:0 auto 6px;background:#f0f0f0}
.rank{font-weight:700;font-size:1.1em}.file{word-break:break-all;font-size:.85em}
.flag{display:inline-block;background:#e90;color:#fff;border-radius:3px;padding:0 .4em;font-size:.8em}
.members{display:flex;flex-wrap:wrap;gap:4px;margin-top:6px;border-top:1px dashed #ccc;padding-top:6px}
.member{width:80px;font-size:.75em;text-align:center}.member img{width:80px;height:80px;object-fit:contain}
.bar{position:relative;display:inline-block;width:140px;height:14px;background:#eee;border-radius:3px;
 vertical-align:middle}
.bar .fill{position:absolute;left:0;top:0;bottom:0;background:#4c72b0;border-radius:3px}
.bar .num{position:absolute;right:4px;top:-2px;font-size:.8em;color:#000}
.bar.none{background:none;width:auto}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ddd;padding:.2em .5em;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.pos{background:#dcefdc}td.neg{background:#f6dcdc}
.thumbs{display:flex;flex-wrap:wrap;gap:6px}.thumbs figure{margin:0;width:132px;font-size:.75em;text-align:center}
.thumbs img{width:128px;height:128px;object-fit:contain;background:#f0f0f0}
ul.errors li{word-break:break-all}
"""


def start(title: str, heading: str) -> str:
    """The page up to its first heading (``title`` and ``heading`` are escaped here)."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
            f'style-src \'unsafe-inline\'">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n<h1>{esc(heading)}</h1>\n")


END = "</body></html>\n"
