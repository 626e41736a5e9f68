"""The ``imgrate`` command: one command per pipeline stage, plus ``predict``, ``rank``,
``verify``, ``login`` and ``db``.

Each stage command runs the stage's declaration (``STAGE`` of its module) through the one
entry, :func:`imgrate.entry.main`, as its stage script does, so both do and print exactly
the same; `dvc repro` is the usual way to run them (it skips what is up to date). Errors:
library code raises :class:`ImgrateError`; one handler (:class:`_Group`, through
:func:`imgrate.progress.handle`) prints it as one line and exits with a named code
(:class:`imgrate.errors.ExitCode`: a crawl that did not get everything exits 3).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from imgrate.errors import ExitCode, ImgrateError, safe_text
from imgrate.params import Params, load_params
from imgrate.paths import Paths, project_paths
from imgrate.progress import console, handle, print_note, setup_logging


class _Group(TyperGroup):
    """The one top-level error handler: every command (and sub-command) runs inside it."""

    def invoke(self, ctx: Any) -> Any:  # typer passes its (vendored) click Context
        try:
            return super().invoke(ctx)
        except (ImgrateError, KeyboardInterrupt) as err:
            raise typer.Exit(code=int(handle(err))) from None


if TYPE_CHECKING:
    from rich.table import Table

    from imgrate.entry import Stage

app = typer.Typer(
    cls=_Group,
    help="imgrate: crawl photographers' posts, build a dataset, train CNNs, rank photos honestly.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold session cookies and database URIs
    add_completion=False,
)


def _stage(stage: Stage, *args: Any) -> None:
    """Run a pipeline stage through the one entry; a non-zero code (an incomplete crawl) exits with it."""
    from imgrate.entry import main

    code = main(stage, *args)
    if code:
        raise typer.Exit(code=int(code))


def _setup(*sections: str, verbose: bool = False) -> tuple[Params, Paths]:
    """Logging, the project's paths and its params: only ``sections`` are validated (a command
    reads its own section, as its DVC stage does), all of them when none is named."""
    setup_logging(verbose)
    paths = project_paths()
    return load_params(paths.params, sections or None), paths


@app.command()
def crawl(
    part: Annotated[str | None, typer.Option(
        help="crawl only part I of N of the users (e.g. 2/4), one part per machine; the parts' "
             "data/raw folders merge by union")] = None,
) -> None:
    """Crawl new posts of the users in users.txt into data/raw (stage crawl). Exits 3 when the
    crawl stopped early or did not crawl some users."""
    from imgrate.crawl.stage import STAGE

    _stage(STAGE, part)


@app.command()
def login(
    user: Annotated[str, typer.Argument(help="your Instagram account")],
    session_file: Annotated[Path | None, typer.Option(
        help="where to save the session (default ~/.config/imgrate/session-<user>); never inside the project")] = None,
) -> None:
    """Log in to Instagram (password and 2FA asked here) and save the session for `imgrate crawl`."""
    from imgrate.crawl.session import SESSION_USER_ENV, interactive_login
    from imgrate.paths import find_project

    setup_logging()
    # the project is found by its files (dvc.yaml upwards), not taken to be the current folder:
    # from ~ or / there is none, and ~/.config/imgrate/ is fine
    path = interactive_login(user, session_file, find_project())
    console.print(f"session saved to {path} (mode 600). Crawl logged in with: "
                  f"{SESSION_USER_ENV}={user.lower().lstrip('@')} imgrate crawl", highlight=False)


@app.command()
def verify(as_json: Annotated[bool, typer.Option("--json", help="print JSON on stdout")] = False) -> None:
    """Check data/raw: shards readable, images decode, no post twice, stamps not ahead of the posts."""
    from rich.table import Table

    from imgrate.crawl.users import read_users
    from imgrate.crawl.verify import verify_raw

    setup_logging()
    paths = project_paths()
    try:
        users_file = paths.root / load_params(paths.params, ["crawl"]).crawl.users_file
    except ImgrateError:  # verify checks data/raw, whatever params.yaml says
        users_file = paths.users_file
    try:
        listed: set[str] | None = set(read_users(users_file))
    except ImgrateError as err:  # the shards are still checked; only the users' check is left out
        print_note("note", f"{err}; posts are not checked against the users file")
        listed = None
    report = verify_raw(paths, listed)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        summary = Table("shards", "posts", "images", "users", "stamps files", "problems", title="data/raw")
        summary.add_row(str(report.shards), str(report.posts), str(report.images), str(report.users),
                        ", ".join(report.stamps_files) or "-", str(len(report.problems)))
        console.print(summary)
        if report.problems:
            problems = Table("kind", "where", "detail", title="problems")
            for p in report.problems[:50]:  # member names and details come from the shards: escaped
                problems.add_row(p.kind, safe_text(p.where), safe_text(p.detail))
            console.print(problems)
            if len(report.problems) > 50:
                console.print(f"... and {len(report.problems) - 50} more (--json lists all)")
    if not report.ok:
        raise typer.Exit(code=ExitCode.PROBLEMS)


@app.command()
def export() -> None:
    """Parse the shards into data/tables/{posts,users}.jsonl, and MongoDB when configured (stage export)."""
    from imgrate.export import STAGE

    _stage(STAGE)


@app.command()
def preprocess() -> None:
    """Build data/dataset/ (images, targets, splits) from the tables (stage preprocess)."""
    from imgrate.preprocess import STAGE

    _stage(STAGE)


@app.command()
def featurize() -> None:
    """Extract frozen backbone features of every post image into data/features/, new shards only (stage featurize)."""
    from imgrate.featurize import STAGE

    _stage(STAGE)


def _model_names() -> str:
    from imgrate.models import model_names

    return ", ".join(model_names())


@app.command()
def train(model: Annotated[str, typer.Argument(help=f"a model of the registry (imgrate/models/): {_model_names()}")]
          ) -> None:
    """Train a model into models/<model>.pt (stage train@<model>; train.nproc > 1 runs it under torchrun)."""
    from imgrate.train import STAGE

    _stage(STAGE, model)


@app.command()
def evaluate() -> None:
    """Score every model and baseline on the test split into metrics/evaluate/ and
    reports/leak.json, with plots/ and reports/figures/evaluate/ (stage evaluate)."""
    from imgrate.evaluate import STAGE

    _stage(STAGE)


@app.command()
def analyze() -> None:
    """Draw the data-analysis figures into reports/figures/data/ and the counts into reports/data.md (stage analyze)."""
    from imgrate.analyze import STAGE

    _stage(STAGE)


ModelOption = Annotated[str | None, typer.Option(
    help="a model file, a model name (models/<name>.pt), or `all` (every trained model; each one's percentile and "
         "their agreement); default: the trained model with the best validated within-user score")]
UserOption = Annotated[str | None, typer.Option(
    "--user", help="the photographer: percentiles against their own past posts (default: all photographers')")]
CsvOption = Annotated[Path | None, typer.Option(
    "--csv", help="also write the ranking as CSV: rank, file, score, percentile, unusual, distance_percentile, "
                  "model, group (per-model columns with --model all)")]
HtmlOption = Annotated[Path | None, typer.Option(
    "--html", help="also write a contact sheet: one self-contained HTML page (works offline), best first")]
MaxMbOption = Annotated[float, typer.Option(
    "--max-mb", min=0.001, help="refuse a file larger than this many MB unread (it cannot be a photo to post)")]
JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON on stdout")]


def _score(files: list[Path], model: str | None, as_json: bool, title: str, *, base: Path | None = None,
           user: str | None = None, csv_file: Path | None = None, html_file: Path | None = None,
           max_mb: float = 64.0) -> None:
    """Rank ``files``: a table (or JSON) on stdout, the CSV and the contact sheet when asked;
    files that are not photos are reported on stderr and at the end of the sheet. The table
    names files relative to ``base`` when given; JSON and CSV keep the paths."""
    from imgrate.errors import safe_text
    from imgrate.rank import check_outputs, load_models, rank_files, to_json, trust_words, write_csv

    check_outputs(csv_file, html_file)
    runs = load_models(model, project_paths())
    ranking = rank_files(files, runs, user, thumbnails=html_file is not None, limit=int(max_mb * 1024 * 1024))
    try:
        if csv_file is not None:
            write_csv(ranking, csv_file)
        if html_file is not None:
            from imgrate.sheet import write_sheet

            write_sheet(ranking, html_file, title, base)
    finally:
        ranking.close()
    primary = ranking.primary
    if as_json:
        print(json.dumps(to_json(ranking), indent=2))
    else:
        from rich.text import Text

        from imgrate.progress import out_console

        others = [r for r in ranking.runs if r is not primary]
        reference = primary.scorer.reference is not None
        table = fitted_table(f"{title}: ranked by {primary.name} ({primary.scorer.input_size}px)",
                             [("rank", "num"), ("file", "text"), ("score", "num")]
                             + ([("pct", "num")] if reference else [])
                             + [(f"pct {r.name}", "num") for r in others] + [("note", "text")])
        for p in ranking.photos:
            shown = str(Path(p.file).relative_to(base)) if base else p.file
            pl = p.placements[primary.name]
            notes = (["unusual photo: unlike the training photos"] if pl.unusual else []) + (
                [f"near-duplicate of #{p.group}"] if p.group != p.rank else [])
            cells: list[str | Text] = [str(p.rank), Text(safe_text(shown)), f"{p.scores[primary.name]:.4f}"]
            cells += [f"{pl.percentile:.0f}"] if reference and pl.percentile is not None else ([""] if reference else [])
            for r in others:
                pct = p.placements[r.name].percentile
                cells.append("" if pct is None else f"{pct:.0f}")
            table.add_row(*cells, "; ".join(notes))
        out_console.print(table)
        pool = ranking.pool()
        if pool:
            out_console.print(f"pct: the percentile, the share of {pool} that {primary.name} scores below the photo "
                              "(docs/ranking.md)", highlight=False, soft_wrap=True)
        else:
            print_note("note", "this model file has no reference block: retrain it for percentiles")
        for (a, b), rho in ranking.agreement.items():
            out_console.print(f"agreement of {a} and {b} over these photos: rank correlation "
                              + ("-" if rho is None else f"{rho:.2f}"), highlight=False, soft_wrap=True)
        out_console.print(f"how far to trust the order: {trust_words(primary)}", highlight=False, soft_wrap=True)
        if user is not None and reference and user not in primary.scorer.photographers():
            print_note("note", f"{safe_text(user)} is not among the model's photographers")
        for e in ranking.errors:
            print_note("not ranked", e["error"])
    for out, what in ((csv_file, "CSV"), (html_file, "contact sheet")):
        if out is not None:
            print_note(what, safe_text(out), style="green")
    if ranking.errors and not ranking.photos:
        raise typer.Exit(code=ExitCode.ERROR)


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="image files (any format and size Pillow reads)")],
    model: ModelOption = None,
    user: UserOption = None,
    as_json: JsonFlag = False,
    csv_file: CsvOption = None,
    html_file: HtmlOption = None,
    max_mb: MaxMbOption = 64.0,
) -> None:
    """Score photos with a trained model, best first; higher = predicted more popular for its photographer."""
    setup_logging()
    _score(images, model, as_json, "photos", user=user, csv_file=csv_file, html_file=html_file, max_mb=max_mb)


@app.command()
def rank(
    folder: Annotated[Path, typer.Argument(help="a folder of photos not posted yet (any format and size)")],
    model: ModelOption = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="include sub-folders")] = False,
    user: UserOption = None,
    as_json: JsonFlag = False,
    csv_file: CsvOption = None,
    html_file: HtmlOption = None,
    max_mb: MaxMbOption = 64.0,
) -> None:
    """Rank every photo in a folder, best first (table on stdout); files that are not photos are reported and skipped."""
    from imgrate.errors import safe_text
    from imgrate.rank import photo_files

    setup_logging()
    files = photo_files(folder, recursive)
    if not files:
        raise ImgrateError(f"{safe_text(folder)}: no files to rank")
    _score(files, model, as_json, str(folder), base=folder, user=user, csv_file=csv_file, html_file=html_file,
           max_mb=max_mb)


@app.command()
def experiments(
    baselines: Annotated[bool, typer.Option("--baselines", help="the baselines' metrics too (wider)")] = False,
) -> None:
    """DVC's experiments in a table that fits: the params that differ and the within-user metrics."""
    from imgrate.experiments import exp_show, parse_exp_show, table
    from imgrate.models import model_names
    from imgrate.paths import find_project

    root = find_project() or Path.cwd()
    rows = parse_exp_show(exp_show(root))
    names = model_names()
    if baselines:
        names += sorted({m for row in rows for m in row.metrics} - set(names))
    for line in table(rows, names):
        print(line)


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

    params, _ = _setup("export")
    uri = resolve_uri(params.export)
    if uri is None:
        raise ImgrateError(f"no MongoDB configured: set {ENV_URI} or export.mongo_uri in params.yaml")
    return uri, params.export.database, params.export.timeout_s


def _posts(which: str, n: int, user: str | None, as_json: bool, thumbnails: Path | None) -> None:
    from imgrate.io import atomic_path
    from imgrate.mongo import extreme_posts

    uri, database, timeout_s = _db()
    rows = extreme_posts(uri, database, n=n, which=which, user=user, timeout_s=timeout_s,  # type: ignore[arg-type]
                         thumbnails=thumbnails is not None)
    from imgrate.metadata import is_shortcode

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
        print(json.dumps(rows, indent=2, default=_json_value))
        return
    console.print(posts_table(rows, f"{which} {n} liked posts" + (f" of {user}" if user else "")))
    saved = [r["thumbnail_file"] for r in rows if r.get("thumbnail_file")]
    if saved:
        console.print(f"thumbnails: {len(saved)} files in {thumbnails}", highlight=False)


def fitted_table(title: str, columns: list[tuple[str, str]]) -> Table:
    """A table that fits an 80-column terminal without cutting anything: ``columns`` are
    (header, "num" or "text"); numbers never wrap, text wraps (folds) only when it must, and
    no cell is ever shortened with an ellipsis. (The full rows: --json.)"""
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=None, pad_edge=False, padding=(0, 1, 0, 0),
                  header_style="bold underline")
    for header, kind in columns:
        if kind == "num":
            table.add_column(header, justify="right", no_wrap=True, overflow="fold")
        else:
            table.add_column(header, overflow="fold")
    return table


TYPE_NAMES = {"GraphImage": "photo", "GraphSidecar": "sidecar", "GraphVideo": "video"}


def posts_table(rows: list[dict[str, Any]], title: str) -> Table:
    """`imgrate db top/bottom`: rank, user, shortcode, date, likes, comments, type."""
    table = fitted_table(title, [("#", "num"), ("user", "text"), ("shortcode", "text"), ("date", "num"),
                                 ("likes", "num"), ("comments", "num"), ("type", "text")])
    for i, r in enumerate(rows, start=1):
        likes = "hidden" if r.get("likes") is None else _cell(r["likes"])
        typename = r.get("typename")
        table.add_row(str(i), _cell(r.get("user")), _cell(r.get("shortcode")), _day(r.get("date")), likes,
                      _cell(r.get("comments")), TYPE_NAMES.get(typename, _cell(typename)) if isinstance(typename, str)
                      else _cell(typename))
    return table


# A database is input too: a document may hold any type where export writes a string or a
# number (a datetime `date`, a string count), and text with escape sequences. Cells show what
# is there, escaped; nothing in a document can raise or drive the terminal.


def _cell(value: object, fmt: str = ",.0f") -> str:
    """A stored value as a table cell: numbers formatted, text escaped, nothing missing shown as -."""
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, ",") if isinstance(value, int) and fmt == ",.0f" else format(value, fmt)
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    text = value if isinstance(value, str) else repr(value)
    return safe_text(text if len(text) <= 80 else text[:80] + "...")


def _day(value: object) -> str:
    """The day of a post's ``date``: an ISO string (as export writes it) or a BSON datetime."""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d")
    return safe_text(value[:10]) if isinstance(value, str) else _cell(value)


def _json_value(value: object) -> object:
    """What ``json.dumps`` cannot write, as JSON: a datetime in ISO form, anything else as text."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


def users_table(rows: list[dict[str, Any]], title: str) -> Table:
    """`imgrate db users`: followers, posts and likes statistics per user."""

    def num(v: object, fmt: str = ",.0f") -> str:
        return _cell(v, fmt)

    table = fitted_table(title, [("user", "text"), ("followers", "num"), ("posts", "num"), ("likes", "num"),
                                 ("mean", "num"), ("max", "num"), ("/follower", "num")])
    for r in rows:  # std and min of the likes: --json (eight numbers and a name overflow 80 columns)
        table.add_row(_cell(r.get("username")), num(r.get("followers")), num(r.get("posts")),
                      num(r.get("likes_total")), num(r.get("likes_mean")), num(r.get("likes_max")),
                      num(r.get("likes_per_follower"), ".4f"))
    return table


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

    uri, database, timeout_s = _db()
    rows = user_stats(uri, database, timeout_s=timeout_s)
    if as_json:
        print(json.dumps(rows, indent=2, default=_json_value))
        return
    console.print(users_table(rows, f"users in {database}: likes in all, per post (mean, max), per follower"))


if __name__ == "__main__":
    app()
