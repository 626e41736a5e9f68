"""The ``imgrate`` command: one command per pipeline stage, plus ``predict``.

Each stage command does exactly what its DVC stage does, from params.yaml; `dvc repro`
is the usual way to run them (it skips what is up to date).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from imgrate.errors import ImgrateError
from imgrate.params import Params, load_params
from imgrate.paths import Paths, project_paths
from imgrate.progress import console, setup_logging

app = typer.Typer(
    help="imgrate: crawl photographers' posts, build a dataset, train CNNs, rank photos honestly.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold session cookies and database URIs
    add_completion=False,
)


def _setup(verbose: bool = False) -> tuple[Params, Paths]:
    setup_logging(verbose)
    paths = project_paths()
    return load_params(paths.params), paths


def _fail(err: ImgrateError) -> typer.Exit:
    console.print(f"[red]error:[/red] {err}", markup=True, highlight=False)
    return typer.Exit(code=2)


@app.command()
def crawl() -> None:
    """Crawl new posts of the users in users.txt into data/raw (stage crawl)."""
    from imgrate.crawl.stage import run_stage

    try:
        params, paths = _setup()
        report = run_stage(params.crawl, paths)
    except ImgrateError as err:
        raise _fail(err) from None
    totals = report.to_metrics()["totals"]
    console.print(f"{totals['new_posts']} new posts, {totals['ok']}/{totals['users']} users ok, "
                  f"{totals['shards_written']} new shards; report in {paths.stage_metrics('crawl')}")


@app.command()
def export() -> None:
    """Parse the shards into data/tables/{posts,users}.jsonl (stage export)."""
    from imgrate.export import run_stage

    try:
        params, paths = _setup()
        m = run_stage(params.export, paths)
    except ImgrateError as err:
        raise _fail(err) from None
    console.print(f"{m['posts']} posts, {m['users']} users, {m['posts_skipped']} skipped")


@app.command()
def preprocess() -> None:
    """Build data/dataset/ (images, targets, splits) from the tables (stage preprocess)."""
    from imgrate.preprocess import run_stage

    try:
        params, paths = _setup()
        m = run_stage(params.preprocess, paths)
    except ImgrateError as err:
        raise _fail(err) from None
    console.print(f"{m['kept']} images, splits {m['splits']}")


@app.command()
def train(model: Annotated[str, typer.Argument(help="architecture to train")] = "paper_cnn") -> None:
    """Train a model on data/dataset/ into models/<model>.pt (stage train@<model>)."""
    from imgrate.train import run_stage

    try:
        params, paths = _setup()
        s = run_stage(model, params, paths)
    except ImgrateError as err:
        raise _fail(err) from None
    console.print(f"{model}: val_loss {s['val_loss']:.5f}, val_spearman_within {s['val_spearman_within']:.3f}")


@app.command()
def evaluate() -> None:
    """Score every model and baseline on the test split into metrics/evaluate.json (stage evaluate)."""
    from rich.table import Table

    from imgrate.evaluate import run_stage

    try:
        params, paths = _setup()
        results = run_stage(params.evaluate, paths)
    except ImgrateError as err:
        raise _fail(err) from None
    table = Table("model", "spearman within", "pairwise within", "rank acc mixed k=2/5/10", "mse")
    for name, m in results.items():
        mixed = "/".join(f"{v:.3f}" for v in m["ranking_accuracy_mixed"].values())
        table.add_row(name, f"{m['spearman_within']:.3f}", f"{m['pairwise_within']:.3f}", mixed, f"{m['mse']:.4f}")
    console.print(table)


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="image files (any format Pillow reads)")],
    model: Annotated[Path, typer.Option(help="a trained model file")] = Path("models/paper_cnn.pt"),
    as_json: Annotated[bool, typer.Option("--json", help="print JSON on stdout")] = False,
) -> None:
    """Score photos with a trained model; higher = predicted more popular for its photographer."""
    import numpy as np
    import torch

    from imgrate.dataset import to_tensor_batch
    from imgrate.models import load_checkpoint
    from imgrate.preprocess import load_image_file

    setup_logging()
    try:
        net, ckpt = load_checkpoint(model)
        size = int(ckpt["preprocess"]["size"])
        rows, errors = [], []
        arrays = []
        for path in images:
            try:
                arrays.append(load_image_file(path, size))
                rows.append(str(path))
            except ImgrateError as err:
                errors.append({"file": str(path), "error": str(err)})
        scores: list[float] = []
        if arrays:
            x = torch.from_numpy(to_tensor_batch(np.stack(arrays)))
            with torch.inference_mode():
                scores = net(x).float().tolist()
    except ImgrateError as err:
        raise _fail(err) from None
    ranked = sorted(zip(rows, scores), key=lambda t: -t[1])
    if as_json:
        print(json.dumps({"model": str(model), "scores": [{"file": f, "score": s} for f, s in ranked],
                          "errors": errors}, indent=2))
    else:
        from rich.table import Table

        table = Table("rank", "file", "score", title=f"{model.name}")
        for i, (f, s) in enumerate(ranked, start=1):
            table.add_row(str(i), f, f"{s:.4f}")
        console.print(table)
        for e in errors:
            console.print(f"[yellow]skipped[/yellow] {e['error']}", highlight=False)
    if errors and not ranked:
        raise typer.Exit(code=2)


if __name__ == "__main__":
    app()
