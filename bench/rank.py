"""Benchmark: `imgrate rank` on a large folder, time and peak memory, as ratios in one run.

A small simulated world is crawled, exported and preprocessed (``_common.build_world``),
featurized and given a trained ``pretrained`` model (a few epochs: the bench measures the
ranking, not the model), all through the ``imgrate`` command. From its photos a folder of
``--photos`` distinct 1080 px JPEGs is made (each a 2 x 2 mosaic of four random photos of
the world, so no two are near-duplicates), and ``imgrate rank --json --csv --html`` runs on
it as its own process:

- ``small``: the first tenth of the folder;
- ``large``: the whole folder. Memory that stays flat as the folder grows gives
  ``rss_large_over_small`` near 1; time per photo stays about the same too;
- ``sparse``: the small folder plus an 8 GB sparse file, which must be refused by its
  size before it is read (``rss_sparse_over_small`` near 1);
- ``--against DIR``: the same large folder ranked by another checkout's imgrate (e.g. the
  main branch before a change), for a before/after ratio on the same machine.

Peak RSS is the child process's own (``wait4``). Full size (2,000 photos) takes 10-15
minutes on 2 busy cores; ``--smoke`` seconds.

    python bench/rank.py [--photos 2000] [--users 3] [--against /path/to/other/checkout]
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from imgrate.shards import iter_members

from _common import BIN, bench_env, build_world, imgrate, load, parser, record, with_params, write_params


def prepare(dest: Path, users: int, epochs: int) -> Path:
    """A world with models/pretrained.pt (``epochs`` epochs); returns the model file."""
    paths = build_world(dest, users)
    write_params(dest, with_params(load(paths.params), {"train.pretrained.epochs": epochs}))
    imgrate(dest, "featurize")
    imgrate(dest, "train", "pretrained")
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


def run_rank(folder: Path, model: Path, out: Path, against: Path | None = None) -> dict[str, Any]:
    """Wall time and peak RSS of `imgrate rank` on ``folder`` in its own process (``against``:
    another checkout's imgrate, with the options it has: --json only)."""
    import subprocess

    env = bench_env(out)
    tag = f"{folder.name}{'-against' if against else ''}"
    if against is None:
        cmd = [str(BIN / "imgrate"), "rank", str(folder), "--model", str(model), "--json",
               "--csv", str(out / f"{tag}.csv"), "--html", str(out / f"{tag}.html")]
    else:
        env["PYTHONPATH"] = str(against)
        cmd = [sys.executable, "-m", "imgrate.cli", "rank", str(folder), "--model", str(model), "--json"]
    start = time.perf_counter()
    with open(out / f"{tag}.json", "w") as stdout, open(out / f"{tag}.err", "w") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env, cwd=out)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {(out / f'{tag}.err').read_text()[-2000:]}")
    result = json.loads((out / f"{tag}.json").read_text())
    return {"photos": len(result["scores"]), "not_ranked": len(result["errors"]), "seconds": round(seconds, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    ap = parser(__doc__, "rank")
    ap.add_argument("--photos", type=int, default=2000)
    ap.add_argument("--users", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5, help="of the pretrained model (the bench ranks, not trains)")
    ap.add_argument("--against", type=Path, help="another checkout whose imgrate ranks the large folder too")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (the sheet, the CSV)")
    args = ap.parse_args()
    if args.smoke:
        args.photos, args.users, args.epochs = 20, 1, 1

    tmp = Path(tempfile.mkdtemp(prefix="imgrate-bench-rank-"))
    try:
        with record(args, "rank", photos=args.photos) as r:
            model = prepare(tmp / "world", args.users, args.epochs)
            large = tmp / "large"
            make_photos(tmp / "world", large, args.photos)
            small, sparse, out = tmp / "small", tmp / "sparse", tmp / "out"
            for folder in (small, sparse, out):
                folder.mkdir()
            for p in sorted(large.iterdir())[: max(args.photos // 10, 2)]:
                os.link(p, small / p.name)
                os.link(p, sparse / p.name)
            with open(sparse / "huge.jpg", "wb") as fh:
                fh.truncate(8 * 1024 ** 3)  # sparse: no disk used
            r.step("world, model and photos ready")
            for name, folder in (("small", small), ("large", large), ("sparse", sparse)):
                r[name] = run_rank(folder, model, out)
                r.step(f"ranked {name}")
            s, lg, sp = r["small"], r["large"], r["sparse"]
            r["rss_large_over_small"] = round(lg["peak_rss_mb"] / s["peak_rss_mb"], 3)
            r["rss_sparse_over_small"] = round(sp["peak_rss_mb"] / s["peak_rss_mb"], 3)
            r["seconds_per_photo_large_over_small"] = round((lg["seconds"] / lg["photos"]) / (s["seconds"] / s["photos"]), 3)
            r["html_mb"] = round((out / "large.html").stat().st_size / 1024 ** 2, 2)
            if args.against is not None:
                a = r["against"] = run_rank(large, model, out, against=args.against.resolve())
                r["seconds_over_against"] = round(lg["seconds"] / a["seconds"], 3)
                r["rss_over_against"] = round(lg["peak_rss_mb"] / a["peak_rss_mb"], 3)
        if args.keep:
            print(f"kept: {tmp}", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
