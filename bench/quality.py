"""Benchmark: how much of what the photos show the models learn, over several simulated worlds.

For each world seed (``--seeds``, default 1-5; ``crawl.demo.seed``) the default world is
crawled, exported and preprocessed (``_common.build_world``), then ``imgrate featurize``,
``imgrate train paper_cnn``, ``imgrate train pretrained`` and ``imgrate evaluate`` run as a
user runs them. From each world's ``reports/evaluate.json`` it records every model's and
baseline's within-user Spearman on the test split, the two bounds (``image_ceiling``: the
visible appeal, what an image-only model could at best learn; ``oracle``: the true appeal,
including what no photo shows), ``pretrained / image_ceiling`` and ``pretrained / oracle``,
the paired differences with their verdicts, and each trained model's *validation*
within-user Spearman (what defaults are chosen by; the test figures only report).

``--variant KEY=VALUE`` (repeatable; e.g. ``train.pretrained.balance=discard``) trains
``pretrained`` again on each world with that params change and evaluates it, recording its
validation and test Spearman beside the default's, so a default can be chosen by validation
across the seeds.

Then, over the seeds: mean and sd of each figure. A world of the default size takes about
5 minutes to crawl on 2 shared cores, the whole run per seed 10-15 minutes; ``--smoke`` (3
users, 6 months, 64 px, 1-2 epochs): about a minute.

    python bench/quality.py [--seeds 1 2 3 4 5] [--variant train.pretrained.balance=discard]
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("IMGRATE_QUIET", "1")

from imgrate.models import read_model_file
from imgrate.paths import Paths

from _common import build_world, imgrate, load, parser, record, with_params, write_params

NAME = "quality"
GOAL = 0.85  # issue 18: pretrained >= 0.85 x image_ceiling


def _value(text: str) -> Any:
    """A --variant value as YAML reads it (numbers, null, true/false, strings)."""
    import yaml

    return yaml.safe_load(text)


def _val_spearman(paths: Paths, model: str) -> float | None:
    path = paths.model(model)
    if not path.exists():
        return None
    info, _ = read_model_file(path)
    v = info.summary.get("val_spearman_within")
    return round(float(v), 6) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def one_world(dest: Path, seed: int, smoke: bool, variants: list[tuple[str, Any]]) -> dict[str, Any]:
    """Build, train and evaluate one world; its figures."""
    demo = load().crawl.demo
    image_size, until = (64, "2025-06-30") if smoke else (demo.image_size, demo.until)
    paths = build_world(dest, 3 if smoke else 10_000, image_size=image_size, until=until,
                        changes={"crawl.demo.seed": seed})
    params = load(paths.params)
    if smoke:
        params = with_params(params, {"train.paper_cnn.epochs": 1, "train.pretrained.epochs": 2,
                                      "evaluate.n_boot": 50, "evaluate.n_sets": 100})
    write_params(dest, params)
    imgrate(dest, "featurize")
    for model in ("paper_cnn", "pretrained"):
        imgrate(dest, "train", model)
    imgrate(dest, "evaluate")
    report = json.loads(paths.stage_report("evaluate").read_text())
    paired = report.pop("paired", {})
    spearman = {name: m.get("spearman_within") for name, m in report.items()}
    pre, ceiling, oracle = spearman.get("pretrained"), spearman.get("image_ceiling"), spearman.get("oracle")
    out: dict[str, Any] = {
        "seed": seed,
        "n_test": report.get("pretrained", {}).get("n_test"),
        "spearman_within": spearman,
        "val_spearman_within": {m: _val_spearman(paths, m) for m in ("paper_cnn", "pretrained")},
        "pretrained_over_image_ceiling": _ratio(pre, ceiling),
        "pretrained_over_oracle": _ratio(pre, oracle),
        "paired": {k: {m: {"difference": v[m]["difference"], "ci": v[m]["ci"], "verdict": v[m]["verdict"]}
                       for m in ("spearman_within", "pairwise_within")} for k, v in paired.items()},
        "order_pretrained_paper_cnn_linear_regression": bool(
            None not in (pre, spearman.get("paper_cnn"), spearman.get("linear_regression"))
            and pre > spearman["paper_cnn"] > spearman["linear_regression"]),
        "variants": {},
    }
    for key, value in variants:
        write_params(dest, with_params(params, {key: value}))
        imgrate(dest, "train", "pretrained")
        imgrate(dest, "evaluate")
        again = json.loads(paths.stage_report("evaluate").read_text())
        test = again["pretrained"]["spearman_within"]
        out["variants"][f"{key}={value}"] = {
            "val_spearman_within": _val_spearman(paths, "pretrained"), "spearman_within": test,
            "over_image_ceiling": _ratio(test, again.get("image_ceiling", {}).get("spearman_within")),
            "paired_vs_ridge_features": again.get("paired", {}).get("pretrained-ridge_features", {}).get(
                "spearman_within")}
    write_params(dest, params)
    return out


def summary(worlds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sd over the worlds of every figure recorded per world."""

    def stats(values: list[float | None]) -> dict[str, float | None]:
        v = [x for x in values if x is not None]
        return {"mean": round(statistics.fmean(v), 4) if v else None,
                "sd": round(statistics.stdev(v), 4) if len(v) > 1 else None, "n": len(v)}

    names = sorted({n for w in worlds for n in w["spearman_within"]})
    variants = sorted({k for w in worlds for k in w["variants"]})
    return {
        "spearman_within": {n: stats([w["spearman_within"].get(n) for w in worlds]) for n in names},
        "val_spearman_within": {m: stats([w["val_spearman_within"].get(m) for w in worlds])
                                for m in ("paper_cnn", "pretrained")},
        "pretrained_over_image_ceiling": stats([w["pretrained_over_image_ceiling"] for w in worlds]),
        "pretrained_over_oracle": stats([w["pretrained_over_oracle"] for w in worlds]),
        "variants": {k: {f: stats([w["variants"].get(k, {}).get(f) for w in worlds])
                         for f in ("val_spearman_within", "spearman_within", "over_image_ceiling")}
                     for k in variants},
        "order_holds_on_every_seed": all(w["order_pretrained_paper_cnn_linear_regression"] for w in worlds),
    }


def main() -> None:
    ap = parser(__doc__, NAME)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="world seeds (crawl.demo.seed)")
    ap.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE",
                    help="also train pretrained with this params change (repeatable)")
    ap.add_argument("--keep", type=Path, help="build the worlds under this folder and keep them")
    args = ap.parse_args()
    if args.smoke:
        args.seeds = args.seeds[:1]
    variants = [(k, _value(v)) for k, _, v in (s.partition("=") for s in args.variant)]
    with_params(load(), dict(variants))  # a misspelt key fails now, naming it
    with record(args, NAME, seeds=args.seeds, variants=args.variant, goal=GOAL) as r, \
            tempfile.TemporaryDirectory(prefix="imgrate-bench-quality-") as tmp:
        root = args.keep or Path(tmp)
        worlds: list[dict[str, Any]] = []
        r["worlds"] = worlds
        for seed in args.seeds:
            worlds.append(one_world(root / f"seed-{seed}", seed, args.smoke, variants))
            r["summary"] = summary(worlds)
            r.step(f"world {seed}: pretrained / image_ceiling {worlds[-1]['pretrained_over_image_ceiling']}")
        mean = r["summary"]["pretrained_over_image_ceiling"]["mean"]
        r["goal_met_on_mean"] = mean is not None and mean >= GOAL


if __name__ == "__main__":
    main()
