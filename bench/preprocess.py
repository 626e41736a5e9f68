"""Benchmark: imgrate's thumbnail decoding against the naive Pillow recipe.

Both run in this process on the same 1080x1080 JPEGs (drawn by the simulated Instagram),
one core, interleaved in rounds so machine noise hits both alike. Reports images/s for each
and the ratio (target: imgrate >= 5x naive).

    python bench/preprocess.py [--n 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from imgrate.crawl.demo import DemoWorld, WorldConfig  # noqa: E402
from imgrate.preprocess import load_thumbnail  # noqa: E402


def naive(data: bytes, size: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((size, size)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=60, help="images")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=50)
    args = ap.parse_args()

    world = DemoWorld(["bench_lens_demo", "bench_frames_demo"], WorldConfig(seed=1, image_size=1080, until="2026-06-30"))
    posts = [p for u in ("bench_lens_demo", "bench_frames_demo") for p in world.posts(u) if p.typename != "GraphVideo"]
    blobs = [world.image(p.shortcode) for p in posts[: args.n]]
    rates: dict[str, list[float]] = {"naive": [], "imgrate": []}
    for _ in range(args.rounds):
        for name, fn in (("naive", naive), ("imgrate", load_thumbnail)):
            start = time.perf_counter()
            for b in blobs:
                fn(b, args.size)
            rates[name].append(len(blobs) / (time.perf_counter() - start))
    best = {k: max(v) for k, v in rates.items()}
    result = {
        "images": len(blobs),
        "source_px": "1080 (longest side)",
        "naive_images_per_s": round(best["naive"], 1),
        "imgrate_images_per_s": round(best["imgrate"], 1),
        "speedup": round(best["imgrate"] / best["naive"], 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
