"""Benchmark: `imgrate rank` on a large folder, time and peak memory, as ratios in one run.

A small simulated world is crawled, featurized and given a trained ``pretrained`` model
(a few epochs: the bench measures the ranking, not the model). From its photos a folder of
``--photos`` distinct 1080 px JPEGs is made (each a 2 x 2 mosaic of four random photos of
the world, so no two are near-duplicates), and `imgrate rank` runs on it as a separate
process, with ``--csv`` and ``--html``:

- ``small``: the first tenth of the folder;
- ``large``: the whole folder. Memory that stays flat as the folder grows gives
  ``rss_large / rss_small`` near 1; time per photo should stay the same too;
- ``sparse``: the small folder plus an 8 GB sparse file, which must be refused by its
  size before it is read (``rss_sparse / rss_small`` near 1);
- ``--against DIR``: the same large folder ranked by another checkout's imgrate (e.g. the
  main branch before this change), for a before/after ratio on the same machine.

Peak RSS is the child process's own (``wait4``). Prints JSON.

    python bench/rank.py [--photos 2000] [--users 3] [--against /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image
from world import ROOT, build_world

from imgrate.params import load_params
from imgrate.shards import iter_members


def prepare(dest: Path, users: int) -> Path:
    """A world with models/pretrained.pt; returns the model file."""
    from imgrate.featurize import run_stage as featurize
    from imgrate.train import run_stage as train

    dest.mkdir(parents=True)
    paths = build_world(dest, users)
    params = load_params(ROOT / "params.yaml")
    featurize(params.featurize, paths)
    quick = dataclasses.replace(params.train, pretrained=dataclasses.replace(params.train.pretrained, epochs=5))
    train("pretrained", dataclasses.replace(params, train=quick), paths)
    return paths.model("pretrained")


def make_photos(world: Path, folder: Path, n: int, px: int = 1080, seed: int = 0) -> None:
    """``n`` JPEGs of ``px`` x ``px``: mosaics of four random photos of the world."""
    pool = []
    for shard in sorted((world / "data" / "raw" / "shards").glob("*.tar")):
        for name, data in iter_members(shard):
            if name.endswith(".jpg"):
                with Image.open(io.BytesIO(data)) as im:
                    pool.append(im.convert("RGB").resize((px // 2, px // 2)))
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for i in range(n):
        canvas = Image.new("RGB", (px, px))
        for k, tile in enumerate(rng.sample(pool, 4)):
            canvas.paste(tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else tile,
                         ((k % 2) * px // 2, (k // 2) * px // 2))
        canvas.save(folder / f"IMG_{i:05d}.jpg", quality=90)


def run_rank(folder: Path, model: Path, out: Path, pythonpath: Path | None = None) -> dict[str, float]:
    """Wall time and peak RSS of `imgrate rank` on ``folder`` in its own process."""
    env = {**os.environ, "IMGRATE_QUIET": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    cmd = [sys.executable, "-m", "imgrate.cli", "rank", str(folder), "--model", str(model), "--json"]
    if pythonpath is None:
        cmd += ["--csv", str(out / f"{folder.name}.csv"), "--html", str(out / f"{folder.name}.html")]
    start = time.perf_counter()
    with open(out / f"{folder.name}.json", "w") as stdout:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, env=env, cwd=out)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err}")
    ranked = len(json.loads((out / f"{folder.name}.json").read_text())["scores"])
    return {"photos": ranked, "seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=2000)
    ap.add_argument("--users", type=int, default=3)
    ap.add_argument("--against", type=Path, help="another checkout whose imgrate ranks the large folder too")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (the sheet, the CSV)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="imgrate-bench-rank-"))
    try:
        model = prepare(tmp / "world", args.users)
        large = tmp / "large"
        make_photos(tmp / "world", large, args.photos)
        small = tmp / "small"
        small.mkdir()
        for p in sorted(large.iterdir())[: max(args.photos // 10, 1)]:
            os.link(p, small / p.name)
        sparse = tmp / "sparse"
        shutil.copytree(small, sparse, copy_function=os.link)
        with open(sparse / "huge.jpg", "wb") as fh:
            fh.truncate(8 * 1024 ** 3)
        out = tmp / "out"
        out.mkdir()
        result: dict[str, object] = {}
        for name, folder in (("small", small), ("large", large), ("sparse", sparse)):
            result[name] = run_rank(folder, model, out)
        if args.against is not None:
            result["against"] = run_rank(large, model, out, pythonpath=args.against.resolve())
        s, lg, sp = (result[k] for k in ("small", "large", "sparse"))
        assert isinstance(s, dict) and isinstance(lg, dict) and isinstance(sp, dict)
        result["rss_large_over_small"] = round(lg["peak_rss_mb"] / s["peak_rss_mb"], 3)
        result["rss_sparse_over_small"] = round(sp["peak_rss_mb"] / s["peak_rss_mb"], 3)
        result["seconds_per_photo_large_over_small"] = round(
            (lg["seconds"] / lg["photos"]) / (s["seconds"] / s["photos"]), 3)
        if "against" in result:
            a = result["against"]
            assert isinstance(a, dict)
            result["seconds_over_against"] = round(lg["seconds"] / a["seconds"], 3)
            result["rss_over_against"] = round(lg["peak_rss_mb"] / a["peak_rss_mb"], 3)
        result["html_mb"] = round((out / "large.html").stat().st_size / 1024 ** 2, 1)
        print(json.dumps(result, indent=2))
        if args.keep:
            print(f"kept: {tmp}", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
