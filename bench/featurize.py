"""Benchmark: the featurize stage's extraction with every core against one core, in one run.

The real path of :class:`imgrate.featurize.Extractor` (tar shard -> JPEG decode at the
input size -> EfficientNet-Lite -> features), on the same shards, in rounds that alternate:

- ``one_core``: ``workers: 1``, decode and embed in this process with one torch thread;
- ``all_cores``: ``workers: N`` (default: every core), N worker processes of one torch
  thread each, each decoding and embedding whole batches;
- ``backbone_only``: the backbone alone, one torch thread, on the same images already
  decoded in memory: N times it is the ceiling of ``all_cores``.

The best round of each counts; the ratios all_cores / one_core and one_core / backbone_only
are printed as JSON (on a machine with other work running, all_cores / one_core falls
below the number of cores by what the others take). Data: ``--root`` (a project with data/raw and data/tables), else a
small simulated world crawled into a temporary folder.

    python bench/featurize.py [--root PATH] [--users 6] [--backbone efficientnet-lite0]
                              [--size 128] [--images 512] [--rounds 2] [--workers 0]
    python bench/featurize.py --smoke                   # 2 users, 32 images, 1 round: seconds

It times the extractor itself, so it calls the featurize library, not the ``imgrate
featurize`` command (whose wall time holds loading the weights and writing too).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from imgrate.errors import ImageError
from imgrate.featurize import BACKBONES, Extractor, FeatureMeta, cores, embed, wanted_members
from imgrate.images import load_thumbnail
from imgrate.params import FeaturizeParams
from imgrate.paths import Paths
from imgrate.shards import iter_members

from _common import build_world, parser, record

NAME = "featurize"
CPU = torch.device("cpu")


def pick(paths: Paths, limit: int) -> dict[str, set[str]]:
    """Up to ``limit`` post images, whole shards first."""
    out: dict[str, set[str]] = {}
    n = 0
    for shard, members in sorted(wanted_members(paths).items()):
        take = set(sorted(members)[: limit - n])
        out[shard] = take
        n += len(take)
        if n >= limit:
            break
    return out


def decode(data: bytes, size: int) -> np.ndarray | None:
    try:
        return load_thumbnail(data, size)
    except ImageError:
        return None


def run(paths: Paths, images: dict[str, set[str]], meta: FeatureMeta, batch: int, workers: int) -> float:
    """images/s of the extractor with ``workers`` cores."""
    with Extractor(meta, CPU, batch, workers) as ex:
        ex.warm()  # weights loaded and workers started outside the timing
        start = time.perf_counter()
        n = sum(len(ex.shard(paths.shards / s, m).members) for s, m in images.items())
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = parser(__doc__, NAME)
    ap.add_argument("--root", type=Path, help="a project with data/raw and data/tables")
    ap.add_argument("--users", type=int, default=6, help="users of the simulated world (without --root)")
    ap.add_argument("--backbone", default=FeaturizeParams().backbone, choices=sorted(BACKBONES))
    ap.add_argument("--size", type=int, default=FeaturizeParams().input_size)
    ap.add_argument("--batch", type=int, default=FeaturizeParams().batch_size)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="all-cores workers; 0 = every core")
    args = ap.parse_args()
    if args.smoke:
        args.users, args.size, args.batch, args.images, args.rounds = 2, 64, 16, 32, 1

    workers = args.workers or cores()
    with record(args, NAME, torch=torch.__version__, cores=cores(), workers=workers, backbone=args.backbone,
                input_size=args.size, batch_size=args.batch) as r:
        tmp = None
        if args.root is None:
            tmp = Path(tempfile.mkdtemp(prefix="imgrate-bench-world-"))
            paths = build_world(tmp, args.users, preprocess=False, image_size=args.size if args.smoke else 320,
                                until="2025-04-30" if args.smoke else "2025-09-30")
        else:
            paths = Paths(args.root.resolve())
        meta = FeatureMeta(args.backbone, args.size, BACKBONES[args.backbone].width)
        try:
            r.step("world ready")
            images = pick(paths, args.images)
            decoded = [img for s, m in images.items() for _, data in iter_members(paths.shards / s, m)
                       if (img := decode(data, args.size)) is not None]
            r["images"] = len(decoded)
            rates: dict[str, list[float]] = {"one_core": [], "all_cores": [], "backbone_only_one_core": []}
            with Extractor(meta, CPU, args.batch, 1) as ex:
                backbone = ex.backbone
            for _ in range(args.rounds):
                rates["one_core"].append(run(paths, images, meta, args.batch, 1))
                rates["all_cores"].append(run(paths, images, meta, args.batch, workers))
                torch.set_num_threads(1)
                start = time.perf_counter()
                for i in range(0, len(decoded), args.batch):
                    embed(backbone, np.stack(decoded[i : i + args.batch]), CPU)
                rates["backbone_only_one_core"].append(len(decoded) / (time.perf_counter() - start))
                best = {k: max(v) for k, v in rates.items()}
                r.update(rounds=len(rates["one_core"]), images_per_s={k: round(v, 1) for k, v in best.items()},
                         all_cores_vs_one_core=round(best["all_cores"] / best["one_core"], 2),
                         one_core_vs_backbone_only_one_core=round(best["one_core"] / best["backbone_only_one_core"], 2))
                r.save()
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
