"""The ``imgrate`` command: one command per pipeline stage, plus ``predict`` and ``rank``.

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
from imgrate.progress import console, print_error, print_note, setup_logging

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
    print_error(err)  # the message is printed as it is: it can quote user text
    return typer.Exit(code=2)


@app.command()
def crawl(
    part: Annotated[str | None, typer.Option(
        help="crawl only part I of N of the users (e.g. 2/4), one part per machine; the parts' "
             "data/raw folders merge by union")] = None,
) -> None:
    """Crawl new posts of the users in users.txt into data/raw (stage crawl)."""
    from imgrate.crawl.stage import run_stage
    from imgrate.crawl.users import parse_part

    try:
        params, paths = _setup()
        report = run_stage(params.crawl, paths, part=parse_part(part) if part else None)
    except ImgrateError as err:
        raise _fail(err) from None
    totals = report.to_metrics()["totals"]
    console.print(f"{totals['new_posts']} new posts, {totals['ok']}/{totals['users']} users ok, "
                  f"{totals['shards_written']} new shards, {totals['requests']} requests; "
                  f"report in {paths.stage_metrics('crawl')}")
    for user in report.users:
        if user.status not in ("ok", "skipped") and not user.unreachable:
            print_note(user.username, f"{user.status}: {user.reason}")
    if report.stop_reason:
        skipped = sum(u.status == "skipped" for u in report.users)
        print_note(f"crawl stopped ({report.status})", f"{report.stop_reason}"
                   + (f"; {skipped} users not attempted" if skipped else ""), style="red")


@app.command()
def login(
    user: Annotated[str, typer.Argument(help="your Instagram account")],
    session_file: Annotated[Path | None, typer.Option(
        help="where to save the session (default ~/.config/imgrate/session-<user>); never inside the project")] = None,
) -> None:
    """Log in to Instagram (password and 2FA asked here) and save the session for `imgrate crawl`."""
    from imgrate.crawl.instagram import SESSION_USER_ENV, interactive_login

    from imgrate.paths import find_project

    setup_logging()
    try:
        # the project is found by its files (dvc.yaml upwards), not taken to be the current folder:
        # from ~ or / there is none, and ~/.config/imgrate/ is fine
        path = interactive_login(user, session_file, find_project())
    except ImgrateError as err:
        raise _fail(err) from None
    console.print(f"session saved to {path} (mode 600). Crawl logged in with: "
                  f"{SESSION_USER_ENV}={user.lower().lstrip('@')} imgrate crawl", highlight=False)


@app.command()
def verify(as_json: Annotated[bool, typer.Option("--json", help="print JSON on stdout")] = False) -> None:
    """Check data/raw: shards readable, images decode, no post twice, stamps not ahead of the posts."""
    from rich.table import Table

    from imgrate.crawl.verify import verify_raw

    setup_logging()
    try:
        report = verify_raw(project_paths())
    except ImgrateError as err:
        raise _fail(err) from None
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        summary = Table("shards", "posts", "images", "users", "stamps files", "problems", title="data/raw")
        summary.add_row(str(report.shards), str(report.posts), str(report.images), str(report.users),
                        ", ".join(report.stamps_files) or "-", str(len(report.problems)))
        console.print(summary)
        if report.problems:
            problems = Table("kind", "where", "detail", title="problems")
            for p in report.problems[:50]:
                problems.add_row(p.kind, p.where, p.detail)
            console.print(problems)
            if len(report.problems) > 50:
                console.print(f"... and {len(report.problems) - 50} more (--json lists all)")
    if not report.ok:
        raise typer.Exit(code=1)


@app.command()
def export() -> None:
    """Parse the shards into data/tables/{posts,users}.jsonl, and MongoDB when configured (stage export)."""
    from imgrate.export import run_stage
    from imgrate.mongo import sink_from_params

    try:
        params, paths = _setup()
        sink = sink_from_params(params.export, paths)
        m = run_stage(params.export, paths, sinks=[sink] if sink else [])
    except ImgrateError as err:
        raise _fail(err) from None
    console.print(f"{m['posts']} posts, {m['users']} users, {m['posts_skipped']} skipped")
    if sink:
        console.print(f"MongoDB {sink.where}: {m['posts_written']} posts and {m['users_written']} users written",
                      highlight=False)


@app.command()
def preprocess() -> None:
    """Build data/dataset/ (images, targets, splits) from the tables (stage preprocess)."""
    from imgrate.preprocess import run_stage

    try:
        params, paths = _setup()
        m = run_stage(params.preprocess, paths)
    except ImgrateError as err:
        raise _fail(err) from None
    console.print(f"{m['kept']} images ({m['decoded']} decoded, {m['from_cache']} from cache, "
                  f"{m['skipped']} skipped), splits {m['splits']}")


@app.command()
def train(model: Annotated[str, typer.Argument(help="paper_cnn or pretrained")] = "paper_cnn") -> None:
    """Train a model on data/dataset/ into models/<model>.pt (stage train@<model>; torchrun for DDP)."""
    from imgrate.train import run_stage

    try:
        params, paths = _setup()
        s = run_stage(model, params, paths)
    except ImgrateError as err:
        raise _fail(err) from None
    console.print(f"{model}: val_loss {s['val_loss']:.5f}, val_spearman_within {s['val_spearman_within']:.3f}")


@app.command()
def evaluate() -> None:
    """Score every model and baseline on the test split into metrics/evaluate.json and
    metrics/leak.json, with plots/ and reports/figures/evaluate/ (stage evaluate)."""
    from imgrate.evaluate import run_stage

    try:
        params, paths = _setup()
        report = run_stage(params.evaluate, paths, params.crawl)
    except ImgrateError as err:
        raise _fail(err) from None
    for table in report.tables():
        console.print(table)


@app.command()
def analyze() -> None:
    """Draw the data-analysis figures into reports/figures/data/ and the counts into reports/data.md (stage analyze)."""
    from imgrate.analyze import run_stage

    try:
        params, paths = _setup()
        c = run_stage(params.analyze, paths)
    except ImgrateError as err:
        raise _fail(err) from None
    console.print(f"{c['users']} users, {c['posts']} posts, {c['dataset']} dataset images; "
                  f"figures in {paths.data_figures}, counts in {paths.data_report}")


ModelOption = Annotated[Path | None, typer.Option(
    help="a trained model file (default: models/pretrained.pt, else models/paper_cnn.pt)")]


def _score(files: list[Path], model: Path | None, as_json: bool, title: str, base: Path | None = None) -> None:
    """Score ``files`` with ``model`` and print them ranked; unreadable files are reported.
    The table names files relative to ``base`` when given; JSON keeps the paths."""
    from imgrate.predict import Scorer

    if model is None:
        paths = project_paths()
        model = next((p for p in (paths.model("pretrained"), paths.model("paper_cnn")) if p.exists()),
                     paths.model("pretrained"))
    try:
        scorer = Scorer(model)
        ranked, errors = scorer.score_files(files)
    except ImgrateError as err:
        raise _fail(err) from None
    if as_json:
        print(json.dumps({**scorer.describe(), "scores": [{"rank": i, "file": r.file, "score": r.score}
                                                          for i, r in enumerate(ranked, start=1)],
                          "errors": errors}, indent=2))
    else:
        from rich.table import Table

        table = Table("rank", title=f"{title}\nranked by {model.name} ({scorer.input_size}px)")
        table.add_column("file", overflow="fold")
        table.add_column("score", justify="right")
        for i, r in enumerate(ranked, start=1):
            table.add_row(str(i), str(Path(r.file).relative_to(base)) if base else r.file, f"{r.score:.4f}")
        console.print(table)
        for e in errors:
            print_note("not ranked", e["error"])
    if errors and not ranked:
        raise typer.Exit(code=2)


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="image files (any format and size Pillow reads)")],
    model: ModelOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON on stdout")] = False,
) -> None:
    """Score photos with a trained model, best first; higher = predicted more popular for its photographer."""
    setup_logging()
    _score(images, model, as_json, "photos")


@app.command()
def rank(
    folder: Annotated[Path, typer.Argument(help="a folder of photos not posted yet (any format and size)")],
    model: ModelOption = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="include sub-folders")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON on stdout")] = False,
) -> None:
    """Rank every photo in a folder, best first; files that are not images are reported and skipped."""
    from imgrate.predict import image_files

    setup_logging()
    try:
        files = image_files(folder, recursive)
    except ImgrateError as err:
        raise _fail(err) from None
    if not files:
        raise _fail(ImgrateError(f"{folder}: no files to rank"))
    _score(files, model, as_json, str(folder), base=folder)


db_app = typer.Typer(
    help="Query the posts and users that export wrote to MongoDB ($IMGRATE_MONGODB_URI or export.mongo_uri).",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")

JsonOption = Annotated[bool, typer.Option("--json", help="print JSON on stdout")]
ThumbnailsOption = Annotated[
    Path | None, typer.Option(help="write the posts' stored JPEG thumbnails into this folder")
]


def _db() -> tuple[str, str, float]:
    """(uri, database, timeout_s) from the environment and params.yaml; exits if none is configured."""
    from imgrate.mongo import ENV_URI, resolve_uri

    params, _ = _setup()
    uri = resolve_uri(params.export)
    if uri is None:
        print_error(f"no MongoDB configured: set {ENV_URI} or export.mongo_uri in params.yaml")
        raise typer.Exit(code=2)
    return uri, params.export.database, params.export.timeout_s


def _posts(which: str, n: int, user: str | None, as_json: bool, thumbnails: Path | None) -> None:
    from imgrate.io import atomic_path
    from imgrate.mongo import extreme_posts

    try:
        uri, database, timeout_s = _db()
        rows = extreme_posts(uri, database, n=n, which=which, user=user, timeout_s=timeout_s,  # type: ignore[arg-type]
                             thumbnails=thumbnails is not None)
    except ImgrateError as err:
        raise _fail(err) from None
    from imgrate.crawl.metadata import is_shortcode

    for i, r in enumerate(rows, start=1):
        data = r.pop("thumbnail", None)
        if thumbnails is not None and data:
            # the database is input too: a shortcode that is not base64url never becomes a path
            code = r.get("shortcode")
            r["thumbnail_file"] = str(thumbnails / f"{which}{i:02d}_{code if is_shortcode(code) else 'post'}.jpg")
            with atomic_path(Path(r["thumbnail_file"])) as tmp:
                tmp.write_bytes(data)
    if thumbnails is not None and not any("thumbnail_file" in r for r in rows):
        print_note("no thumbnails stored", "set export.thumbnail_size and export again")
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    title = f"{which} {n} liked posts" + (f" of {user}" if user else "")
    table = Table("rank", "user", "shortcode", "date", "likes", "comments", "type", "shard", "image", title=title)
    for i, r in enumerate(rows, start=1):
        image = r.get("thumbnail_file") or (r["member"].rsplit("/", 1)[-1] if r.get("member") else "-")
        table.add_row(str(i), r["user"], r["shortcode"], r["date"][:10], f"{r['likes']:,}", f"{r['comments']:,}",
                      r["typename"], r["shard"], image)
    console.print(table)


@db_app.command("top")
def db_top(
    n: Annotated[int, typer.Option("--n", min=1, help="how many posts")] = 5,
    user: Annotated[str | None, typer.Option(help="only this user's posts")] = None,
    as_json: JsonOption = False,
    thumbnails: ThumbnailsOption = None,
) -> None:
    """The most-liked posts (the paper's top 5), of everyone or of one user."""
    _posts("top", n, user, as_json, thumbnails)


@db_app.command("bottom")
def db_bottom(
    n: Annotated[int, typer.Option("--n", min=1, help="how many posts")] = 5,
    user: Annotated[str | None, typer.Option(help="only this user's posts")] = None,
    as_json: JsonOption = False,
    thumbnails: ThumbnailsOption = None,
) -> None:
    """The least-liked posts (the paper's bottom 5), of everyone or of one user."""
    _posts("bottom", n, user, as_json, thumbnails)


@db_app.command("users")
def db_users(as_json: JsonOption = False) -> None:
    """Followers, post counts and likes statistics per user (one aggregation over the posts)."""
    from imgrate.mongo import user_stats

    try:
        uri, database, timeout_s = _db()
        rows = user_stats(uri, database, timeout_s=timeout_s)
    except ImgrateError as err:
        raise _fail(err) from None
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    def num(v: float | None, fmt: str = ",.0f") -> str:
        return "-" if v is None else format(v, fmt)

    table = Table("user", "followers", "posts", "likes total", "mean", "std", "min", "max", "likes/follower",
                  title=f"users in {database}")
    for r in rows:
        table.add_row(r["username"], num(r.get("followers")), str(r["posts"]), num(r["likes_total"]),
                      num(r["likes_mean"], ",.1f"), num(r["likes_std"], ",.1f"), num(r["likes_min"]),
                      num(r["likes_max"]), num(r["likes_per_follower"], ".4f"))
    console.print(table)


if __name__ == "__main__":
    app()
