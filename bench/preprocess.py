"""Benchmark: imgrate's thumbnail decoding against the naive Pillow recipe.

Both run in this process on the same JPEGs (drawn by the simulated Instagram at
``--source-px`` on the longest side, 1080 by default, quality 85), on one core, interleaved in
rounds so machine noise hits both alike; the best round of each counts. Reports images/s
per core for each and the ratio (target: imgrate >= 5x naive), plus two reference points
that explain the ratio:

- ``full_decode``: Pillow's full-size decode alone (what naive pays before resizing);
- ``draft_decode``: the reduced-scale (DCT-scaled) decode alone, without the resize. libjpeg
  still entropy-decodes every coefficient at any scale, so this is the floor for any
  libjpeg-based decoder, and ``naive / draft_decode`` the ceiling of the ratio.

The ratio depends on how much there is to entropy-decode: ``--quality Q`` re-encodes the
drawn photos at JPEG quality Q first (the simulated world writes 85, ~200 KB at 1080 px).

    python bench/preprocess.py [--n 60] [--rounds 5] [--size 50] [--source-px 1080] [--quality 85]
    python bench/preprocess.py --smoke                  # 6 images, one round: seconds
"""

from __future__ import annotations

import io
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from PIL import Image

from imgrate.demo.world import DemoWorld
from imgrate.images import load_thumbnail

from _common import load, parser, record, with_params

NAME = "preprocess"


def naive(data: bytes, size: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((size, size)))


def full_decode(data: bytes, size: int) -> None:
    with Image.open(io.BytesIO(data)) as im:
        im.load()


def draft_decode(data: bytes, size: int) -> None:
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (size, size))
        im.load()


def reencode(data: bytes, quality: int) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def main() -> None:
    ap = parser(__doc__, NAME)
    ap.add_argument("--n", type=int, default=60, help="images")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=50)
    ap.add_argument("--source-px", type=int, default=1080, help="longest side of the drawn JPEGs")
    ap.add_argument("--quality", type=int, help="re-encode the photos at this JPEG quality first")
    ap.add_argument("--square", action="store_true", help="square photos only (the issue's 1080x1080)")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.rounds = 6, 1

    users = ("bench_lens_demo", "bench_frames_demo", "bench_grain_demo")
    demo = with_params(load(), {"crawl.demo.seed": 1, "crawl.demo.image_size": args.source_px,
                                "crawl.demo.until": "2026-06-30"}).crawl.demo
    with record(args, NAME, size=args.size, quality=args.quality or 85) as r:
        world = DemoWorld(list(users), demo)
        posts = [p for u in users for p in world.posts(u)
                 if p.typename != "GraphVideo" and (p.width == p.height or not args.square)]
        blobs = [world.image(p.shortcode) for p in posts[: args.n]]
        if args.quality is not None:
            blobs = [reencode(b, args.quality) for b in blobs]
        r.update(images=len(blobs), source_px=sorted({Image.open(io.BytesIO(b)).size for b in blobs}),
                 mean_kb=round(sum(map(len, blobs)) / len(blobs) / 1024, 1))
        fns = {"naive": naive, "imgrate": load_thumbnail, "full_decode": full_decode, "draft_decode": draft_decode}
        rates: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                start = time.perf_counter()
                for b in blobs:
                    fn(b, args.size)
                rates[name].append(len(blobs) / (time.perf_counter() - start))
            best = {k: max(v) for k, v in rates.items()}
            r.update(rounds=len(rates["naive"]),
                     images_per_s_per_core={k: round(v, 1) for k, v in best.items()},
                     ms_per_image={k: round(1000 / v, 3) for k, v in best.items()},
                     speedup=round(best["imgrate"] / best["naive"], 2),
                     ceiling_naive_over_draft_decode=round(best["draft_decode"] / best["naive"], 2))
            r.save()


if __name__ == "__main__":
    main()
