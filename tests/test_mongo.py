"""MongoDB: the export's upserts, `imgrate db`, and no password anywhere, against a real
wire-protocol server in its own process (the ``mongo_uri`` fixture in conftest.py)."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import lzma
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_USERS, mangle_first_post, tiny_params
from PIL import Image
from typer.testing import CliRunner

from imgrate.cli import app
from imgrate.crawl.stage import run as crawl
from imgrate.errors import DatabaseError, DataError, ParamsError
from imgrate.export import run_stage as export
from imgrate.io import read_jsonl
from imgrate.mongo import ENV_URI, MongoSink, mask_uri, redact, resolve_uri, row_hash, sink_from_params
from imgrate.params import ExportParams, parse_params
from imgrate.paths import Paths

SECRET = "s3cret-pw"
SECRET_URI = f"mongodb://imgrate:{SECRET}@127.0.0.1:1/"  # nothing listens on port 1


def _sink(uri: str, database: str, paths: Paths, **kw) -> MongoSink:
    kw = {"batch_size": 16, "timeout_s": 10.0, **kw}
    return MongoSink(uri=uri, database=database, shards_dir=paths.shards, **kw)


def _crawled(root: Path):
    """A fresh tiny world, crawled (no export yet)."""
    params = parse_params(tiny_params())
    paths = Paths(root)
    (root / "users.txt").write_text("\n".join(TINY_USERS) + "\n")
    crawl(params.crawl, paths)
    return params, paths


def _docs(coll, key: str) -> dict[str, dict]:
    return {d[key]: d for d in coll.find({}, {"_id": 0})}


# --- export -> MongoDB --------------------------------------------------------------------


def test_export_upserts_the_json_rows_then_only_what_changed(tmp_path: Path, mongo_uri: str, mongo_db) -> None:
    params, paths = _crawled(tmp_path)
    sink = _sink(mongo_uri, mongo_db.name, paths, thumbnail_size=32)

    m1 = export(params.export, paths, sinks=[sink])
    posts, users = read_jsonl(paths.posts_table), read_jsonl(paths.users_table)
    assert m1["posts_written"] == len(posts) == mongo_db.posts.count_documents({}) > 20
    assert m1["users_written"] == len(users) == mongo_db.users.count_documents({}) == len(TINY_USERS)
    assert json.loads(paths.stage_report("export").read_text())["posts_written"] == len(posts)
    docs = _docs(mongo_db.posts, "shortcode")
    for row in posts:  # each document is its JSON row, plus its hash and a thumbnail
        doc = dict(docs[row["shortcode"]])
        thumb = doc.pop("thumbnail", None)
        assert doc.pop("row_hash") == row_hash(row, 32)
        assert doc == row
        if row["member"] is None:  # a video
            assert thumb is None
        else:
            with Image.open(io.BytesIO(thumb)) as im:
                assert im.format == "JPEG" and max(im.size) == 32
    user_docs = _docs(mongo_db.users, "username")
    assert [{k: v for k, v in user_docs[u["username"]].items() if k != "row_hash"} for u in users] == users

    # nothing new: nothing is sent
    m2 = export(params.export, paths, sinks=[sink])
    assert (m2["posts_written"], m2["users_written"]) == (0, 0)
    assert (m2["posts_unchanged"], m2["users_unchanged"]) == (len(posts), len(users))

    # the clock moves: only new posts, re-read counts and changed users are (re)written
    mongo_db.posts.update_many({}, {"$set": {"probe": 1}})  # a document that is replaced loses it
    mongo_db.users.update_many({}, {"$set": {"probe": 1}})
    later = dataclasses.replace(params.crawl, demo=dataclasses.replace(params.crawl.demo, until="2025-03-20"))
    assert crawl(later, paths).new_posts > 0
    m3 = export(params.export, paths, sinks=[sink])
    posts3, users3 = read_jsonl(paths.posts_table), read_jsonl(paths.users_table)
    added = {p["shortcode"] for p in posts3} - {p["shortcode"] for p in posts}
    recounted = {p["shortcode"] for p in posts3 if p["shortcode"] not in added and p not in posts}
    changed = {u["username"] for u in users3 if u not in users}
    assert added and recounted and all(
        p["likes_observed_at"] == "2025-03-20T23:59:59Z" for p in posts3 if p["shortcode"] in recounted)
    assert m3["posts_written"] == len(added) + len(recounted)
    assert m3["posts_unchanged"] == len(posts) - len(recounted)
    assert m3["users_written"] == len(changed)
    assert {d["shortcode"] for d in mongo_db.posts.find({"probe": {"$exists": False}})} == added | recounted
    assert {d["username"] for d in mongo_db.users.find({"probe": {"$exists": False}})} == changed

    # one document per key, enforced by unique indexes
    assert mongo_db.posts.count_documents({}) == len(posts3) == len(mongo_db.posts.distinct("shortcode"))
    assert mongo_db.users.count_documents({}) == len(users3) == len(mongo_db.users.distinct("username"))
    indexes = {tuple(v["key"]): v.get("unique", False) for v in mongo_db.posts.index_information().values()}
    assert indexes[(("shortcode", 1),)] is True and (("user", 1), ("likes", -1)) in indexes
    user_indexes = {tuple(v["key"]): v.get("unique", False) for v in mongo_db.users.index_information().values()}
    assert user_indexes[(("username", 1),)] is True
    from pymongo.errors import DuplicateKeyError

    with pytest.raises(DuplicateKeyError):
        mongo_db.posts.insert_one({"shortcode": next(iter(added))})


def test_changing_the_thumbnail_size_rewrites_posts_only(tiny_world, mongo_uri: str, mongo_db) -> None:
    _, paths = tiny_world
    posts, users = read_jsonl(paths.posts_table), read_jsonl(paths.users_table)
    first = _sink(mongo_uri, mongo_db.name, paths, thumbnail_size=None).write(posts, users)
    assert first["posts_written"] == len(posts) and mongo_db.posts.count_documents({"thumbnail": {"$exists": True}}) == 0
    again = _sink(mongo_uri, mongo_db.name, paths, thumbnail_size=24, batch_size=7).write(posts, users)
    assert (again["posts_written"], again["users_written"]) == (len(posts), 0)
    with_image = [p for p in posts if p["member"]]
    thumbs = list(mongo_db.posts.find({"thumbnail": {"$exists": True}}, {"thumbnail": 1}))
    assert len(thumbs) == len(with_image)
    for d in thumbs:
        with Image.open(io.BytesIO(d["thumbnail"])) as im:
            assert max(im.size) == 24


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda b: b[: len(b) // 2], "corrupt metadata"),
        (lambda b: lzma.compress(lzma.decompress(b).replace(b'"__typename"', b'"__typenamX"')),
         "missing field"),
    ],
    ids=["corrupt-xz", "missing-typename"],
)
def test_bad_member_is_skipped_named_and_kept_out_of_mongo(tiny_world, tmp_path: Path, mongo_uri: str, mongo_db,
                                                           mangle, reason: str) -> None:
    _, good = tiny_world
    paths = mangle_first_post(good, tmp_path, mangle)
    sink = _sink(mongo_uri, mongo_db.name, paths)
    with pytest.raises(DataError, match=r"shard 000001\.tar, member .*_UTC\.json\.xz"):
        export(ExportParams(strict=True), paths, sinks=[sink])
    assert mongo_db.posts.count_documents({}) == 0  # strict fails before anything is written

    m = export(ExportParams(strict=False), paths, sinks=[sink])
    (skipped,) = read_jsonl(paths.skipped_table)
    assert skipped["shard"] == "000001.tar" and skipped["member"].endswith("_UTC.json.xz")
    assert skipped["reason"].startswith(reason)
    assert m["posts_skipped"] == 1 and m["skipped_reasons"] == {skipped["reason"]: 1}
    n = len(read_jsonl(good.posts_table)) - 1
    assert m["posts"] == m["posts_written"] == mongo_db.posts.count_documents({}) == n


# --- imgrate db ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def db_project(tiny_world, mongo_uri: str, tmp_path_factory: pytest.TempPathFactory):
    """A project with the tiny world's raw data, exported by the real stage script into MongoDB."""
    from pymongo import MongoClient

    _, world = tiny_world
    root = tmp_path_factory.mktemp("db-project")
    shutil.copytree(world.raw, root / "data" / "raw")
    params = tiny_params()
    database = f"imgrate_test_cli_{uuid.uuid4().hex[:8]}"
    params["export"].update(database=database, batch_size=25, thumbnail_size=40)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, ENV_URI: mongo_uri, "IMGRATE_QUIET": "1"}
    env.pop("IMGRATE_ROOT", None)
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "export.py")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "MongoDB" in proc.stderr
    yield root, database
    client = MongoClient(mongo_uri)
    client.drop_database(database)
    client.close()


def _cli(args: list[str], root: Path, uri: str | None):
    env = {"IMGRATE_ROOT": str(root), "IMGRATE_QUIET": "1", "COLUMNS": "200"}
    env[ENV_URI] = uri  # None unsets it
    return CliRunner().invoke(app, args, env=env)


def test_stage_script_exports_to_mongo(db_project, mongo_uri: str) -> None:
    from pymongo import MongoClient

    root, database = db_project
    metrics = json.loads((root / "reports" / "export.json").read_text())  # the full report
    posts = read_jsonl(root / "data" / "tables" / "posts.jsonl")
    assert metrics["posts_written"] == metrics["posts"] == len(posts)
    assert metrics["users_written"] == len(TINY_USERS)
    with MongoClient(mongo_uri) as client:
        assert client[database].posts.count_documents({}) == len(posts)


@pytest.mark.parametrize("which", ["top", "bottom"])
@pytest.mark.parametrize("user", [None, TINY_USERS[1]])
def test_db_top_and_bottom_are_the_json_tables_extremes(db_project, mongo_uri: str, which: str, user) -> None:
    root, _ = db_project
    posts = read_jsonl(root / "data" / "tables" / "posts.jsonl")
    if user:
        posts = [p for p in posts if p["user"] == user]
    sign = -1 if which == "top" else 1
    expected = sorted(posts, key=lambda p: (sign * p["likes"], p["shortcode"]))[:5]
    args = ["db", which, "--n", "5", "--json"] + (["--user", user] if user else [])
    result = _cli(args, root, mongo_uri)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == expected


def test_db_users_statistics_match_the_json_tables(db_project, mongo_uri: str) -> None:
    root, _ = db_project
    posts = read_jsonl(root / "data" / "tables" / "posts.jsonl")
    users = read_jsonl(root / "data" / "tables" / "users.jsonl")
    result = _cli(["db", "users", "--json"], root, mongo_uri)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["username"] for r in rows] == sorted(u["username"] for u in users)
    for row, user in zip(rows, sorted(users, key=lambda u: u["username"])):
        likes = [p["likes"] for p in posts if p["user"] == user["username"]]
        assert row["followers"] == user["followers"] and row["posts"] == len(likes) == user["posts"]
        assert row["likes_total"] == sum(likes)
        assert (row["likes_min"], row["likes_max"]) == (min(likes), max(likes))
        assert row["likes_mean"] == pytest.approx(statistics.fmean(likes))
        assert row["likes_std"] == pytest.approx(statistics.pstdev(likes))
        assert row["likes_per_follower"] == pytest.approx(statistics.fmean(likes) / user["followers"])


def test_db_commands_print_tables_for_people(db_project, mongo_uri: str) -> None:
    root, _ = db_project
    posts = read_jsonl(root / "data" / "tables" / "posts.jsonl")
    best = sorted(posts, key=lambda p: (-p["likes"], p["shortcode"]))[0]
    top = _cli(["db", "top"], root, mongo_uri)
    assert top.exit_code == 0 and best["shortcode"] in top.output and "top 5 liked posts" in top.output
    users = _cli(["db", "users"], root, mongo_uri)
    assert users.exit_code == 0 and all(u in users.output for u in TINY_USERS)


def test_db_top_writes_the_stored_thumbnails(db_project, mongo_uri: str, tmp_path: Path) -> None:
    root, _ = db_project
    result = _cli(["db", "top", "--n", "3", "--json", "--thumbnails", str(tmp_path / "thumbs")], root, mongo_uri)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 3 and "thumbnail" not in rows[0]
    for row in rows:
        assert row["member"] is None or Path(row["thumbnail_file"]).parent == tmp_path / "thumbs"
        if row["member"]:
            with Image.open(row["thumbnail_file"]) as im:
                assert im.format == "JPEG" and max(im.size) == 40


def test_db_without_a_configured_uri_says_how_to_set_one(db_project) -> None:
    root, _ = db_project
    result = _cli(["db", "top"], root, None)
    assert result.exit_code == 2 and ENV_URI in result.output


# --- unreachable servers and passwords ----------------------------------------------------


def _assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text


def test_unreachable_server_fails_in_time_naming_the_host_and_tables_are_complete(
    tiny_world, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, world = tiny_world
    paths = Paths(tmp_path)
    shutil.copytree(world.raw, paths.raw)
    params = ExportParams(timeout_s=1.0)
    sink = sink_from_params(params, paths, env={ENV_URI: SECRET_URI})
    caplog.set_level(logging.DEBUG)  # pymongo's own debug logs included
    t0 = time.monotonic()
    with pytest.raises(DatabaseError) as info:
        export(params, paths, sinks=[sink])
    assert time.monotonic() - t0 < params.timeout_s + 4
    err = info.value
    assert "127.0.0.1:1" in str(err) and "mongodb://imgrate:***@127.0.0.1:1/" in str(err)
    assert err.__cause__ is None and err.__context__ is None  # no chained pymongo error
    _assert_no_secret(str(err), repr(err), "".join(traceback.format_exception(err)), repr(sink), sink.where)
    _assert_no_secret(*(r.getMessage() for r in caplog.records), caplog.text)
    # the JSON tables were written before the database was tried, and are complete
    assert read_jsonl(paths.posts_table) == read_jsonl(world.posts_table)
    assert read_jsonl(paths.users_table) == read_jsonl(world.users_table)
    assert not paths.stage_metrics("export").exists()  # the stage failed: no metrics


def test_password_never_reaches_the_output_of_the_stage_or_the_cli(tiny_world, tmp_path: Path) -> None:
    _, world = tiny_world
    shutil.copytree(world.raw, tmp_path / "data" / "raw")
    params = tiny_params()
    params["export"]["timeout_s"] = 1.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, ENV_URI: SECRET_URI, "IMGRATE_QUIET": "1"}
    env.pop("IMGRATE_ROOT", None)
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "export.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "imgrate:***@127.0.0.1:1" in proc.stderr
    _assert_no_secret(proc.stdout, proc.stderr)
    assert (tmp_path / "data" / "tables" / "posts.jsonl").exists()
    for args in (["export"], ["db", "top"], ["db", "users", "--json"]):
        result = _cli(args, tmp_path, SECRET_URI)
        assert result.exit_code == 2, (args, result.output)
        assert "127.0.0.1:1" in result.output
        _assert_no_secret(result.output)
    for path in (tmp_path / "metrics").glob("*.json"):
        _assert_no_secret(path.read_text())


def test_params_uri_with_a_password_is_rejected_by_key_without_echoing_it() -> None:
    data = tiny_params()
    data["export"]["mongo_uri"] = SECRET_URI
    with pytest.raises(ParamsError, match=r"export\.mongo_uri.*password") as info:
        parse_params(data)
    _assert_no_secret(str(info.value))
    data["export"]["mongo_uri"] = "mongodb://reader@db.example.invalid:27017/?authMechanism=MONGODB-X509"
    assert parse_params(data).export.mongo_uri.startswith("mongodb://reader@")


@pytest.mark.parametrize(
    ("key", "value"),
    [("batch_size", 0), ("timeout_s", 0), ("thumbnail_size", -1), ("database", "a.b"), ("database", ""),
     ("mongo_uri", "http://localhost/"), ("mongo_uri", 27017)],
)
def test_bad_export_params_name_the_key(key: str, value) -> None:
    data = tiny_params()
    data["export"][key] = value
    with pytest.raises(ParamsError, match=rf"export\.{key}"):
        parse_params(data)


def test_masking_and_uri_resolution() -> None:
    assert mask_uri(SECRET_URI) == "mongodb://imgrate:***@127.0.0.1:1/"
    assert mask_uri("mongodb+srv://u:p%40ss@cluster0.example.invalid/db?retryWrites=true") == (
        "mongodb+srv://u:***@cluster0.example.invalid/db?retryWrites=true")
    assert mask_uri("mongodb://localhost:27017/") == "mongodb://localhost:27017/"
    assert redact("auth failed for p@ss and p%40ss", "mongodb://u:p%40ss@h/") == "auth failed for *** and ***"
    p = ExportParams(mongo_uri="mongodb://localhost:27017/")
    assert resolve_uri(p, env={}) == "mongodb://localhost:27017/"
    assert resolve_uri(p, env={ENV_URI: SECRET_URI}) == SECRET_URI  # the environment wins
    assert resolve_uri(ExportParams(), env={}) is None
    assert sink_from_params(ExportParams(), Paths(Path(".")), env={}) is None


def test_export_without_a_uri_never_imports_pymongo(tiny_world, tmp_path: Path) -> None:
    _, world = tiny_world
    shutil.copytree(world.raw, tmp_path / "data" / "raw")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    code = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__'); "
            "assert 'pymongo' not in sys.modules, 'pymongo imported'")
    env = {k: v for k, v in os.environ.items() if k not in (ENV_URI, "IMGRATE_ROOT")}
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT / "stages" / "export.py")], cwd=tmp_path,
                          env={**env, "IMGRATE_QUIET": "1"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "posts_written" not in (tmp_path / "metrics" / "export.json").read_text()


def test_db_top_thumbnails_never_write_outside_the_folder(db_project, mongo_uri: str, tmp_path: Path) -> None:
    """A document whose shortcode is a path (written by another tool: the database is input
    too) gets a file inside the folder, under a plain name."""
    from pymongo import MongoClient

    root, database = db_project
    with MongoClient(mongo_uri) as client:
        coll = client[database].posts
        doc = coll.find_one({"thumbnail": {"$exists": True}}, {"_id": 0})
        evil = {**doc, "shortcode": "../../../escape", "likes": 10**9}
        coll.insert_one(evil)
        try:
            out = tmp_path / "a" / "thumbs"
            result = _cli(["db", "top", "--n", "2", "--json", "--thumbnails", str(out)], root, mongo_uri)
        finally:
            coll.delete_one({"shortcode": "../../../escape"})
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows[0]["shortcode"] == "../../../escape"
    assert Path(rows[0]["thumbnail_file"]) == out / "top01_post.jpg"
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert written and all(p.parent == out for p in written)
    assert not (tmp_path / "escape.jpg").exists() and not list(tmp_path.parent.glob("*escape*"))


QUERY_SECRET = "k3y-pa55"
QUERY_SECRET_URI = f"mongodb://127.0.0.1:1/?tls=true&tlsCertificateKeyFilePassword={QUERY_SECRET}&retryWrites=true"


@pytest.mark.parametrize("option", ["tlsCertificateKeyFilePassword", "sslPEMKeyPassword", "apiToken", "clientSecret",
                                    "authMechanismProperties"])
def test_a_secret_in_the_uri_query_is_refused_in_params_by_key_and_option(option: str) -> None:
    data = tiny_params()
    data["export"]["mongo_uri"] = f"mongodb://db.example.invalid:27017/?tls=true&{option}={QUERY_SECRET}"
    with pytest.raises(ParamsError, match=rf"export\.mongo_uri: must not contain a secret option \('{option}'"
                       ) as info:
        parse_params(data)
    assert QUERY_SECRET not in str(info.value)


def test_query_secrets_are_masked_like_passwords() -> None:
    assert mask_uri(QUERY_SECRET_URI) == (
        "mongodb://127.0.0.1:1/?tls=true&tlsCertificateKeyFilePassword=***&retryWrites=true")
    assert mask_uri("mongodb://u:pw@h/?authMechanismProperties=AWS_SESSION_TOKEN:abc") == (
        "mongodb://u:***@h/?authMechanismProperties=***")
    # an unescaped "@" in the option's value is not taken for the end of a user name
    assert mask_uri("mongodb://h:27017/?tlsCertificateKeyFilePassword=p@ss") == (
        "mongodb://h:27017/?tlsCertificateKeyFilePassword=***")
    assert redact("bad key password k3y-pa55 (k3y%2Dpa55)", "mongodb://h/?sslPEMKeyPassword=k3y%2Dpa55") == (
        "bad key password *** (***)")


def test_a_query_secret_never_reaches_the_output_of_the_stage_or_the_cli(tiny_world, tmp_path: Path) -> None:
    _, world = tiny_world
    shutil.copytree(world.raw, tmp_path / "data" / "raw")
    params = tiny_params()
    params["export"]["timeout_s"] = 1.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, ENV_URI: QUERY_SECRET_URI, "IMGRATE_QUIET": "1"}
    env.pop("IMGRATE_ROOT", None)
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "export.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "tlsCertificateKeyFilePassword=***" in proc.stderr, proc.stderr
    assert QUERY_SECRET not in proc.stdout + proc.stderr
    for args in (["export"], ["db", "top"]):
        result = _cli(args, tmp_path, QUERY_SECRET_URI)
        assert result.exit_code == 2, (args, result.output)
        assert "127.0.0.1:1" in result.output and QUERY_SECRET not in result.output


def test_db_top_shows_documents_another_tool_wrote_without_a_traceback(db_project, mongo_uri: str) -> None:
    """Issue 20: a post document whose `date` is a BSON datetime (written by another tool: the
    database is input too) ended `imgrate db top` in a 39-line traceback. Now it shows, as a
    table and as JSON; an escape sequence in a stored username reaches neither escaped."""
    import datetime as dt

    from pymongo import MongoClient

    root, database = db_project
    with MongoClient(mongo_uri) as client:
        posts, users = client[database].posts, client[database].users
        doc = posts.find_one({}, {"_id": 0, "thumbnail": 0})
        odd = {**doc, "shortcode": "OddDoc", "likes": 10**9, "comments": "many",
               "date": dt.datetime(2025, 3, 1, 12, 0), "user": "evil\x1b[2J\x1b]8;;http://x\x07"}
        posts.insert_one(odd)
        users.insert_one({"username": "evil\x1b[31m", "followers": "lots"})
        try:
            table = _cli(["db", "top", "--n", "2"], root, mongo_uri)
            as_json = _cli(["db", "top", "--n", "1", "--json"], root, mongo_uri)
            stats = _cli(["db", "users"], root, mongo_uri)
        finally:
            posts.delete_one({"shortcode": "OddDoc"})
            users.delete_one({"username": "evil\x1b[31m"})
    assert table.exit_code == 0, table.output
    assert "OddDoc" in table.output and "2025-03-01" in table.output and "Traceback" not in table.output
    assert "\x1b" not in table.output and "\\x1b[2J" in table.output and "\x07" not in table.output
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)[0]["date"] == "2025-03-01T12:00:00"
    assert stats.exit_code == 0, stats.output
    assert "\x1b" not in stats.output and "\\x1b[31m" in stats.output
