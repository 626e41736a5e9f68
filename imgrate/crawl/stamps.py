"""Instaloader's latest-stamps files in ``data/raw``: one per crawl part, read as one.

A full crawl writes ``latest-stamps.ini``; ``imgrate crawl --part I/N`` writes
``latest-stamps.partIofN.ini`` with only its own users, so the data/raw folders of N crawlers
merge by plain union (no file is written by two of them). Readers take, per user, the
section with the newest ``post-timestamp`` over all files: a stamp says "every post up to
here is stored", so the newest one that any crawler committed is the one that holds.
"""

from __future__ import annotations

import configparser
import datetime as dt
import io
import re
from pathlib import Path

from imgrate.errors import DataError

POST_TIMESTAMP = "post-timestamp"  # instaloader.LatestStamps.POST_TIMESTAMP
ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%f%z"  # instaloader.LatestStamps.ISO_FORMAT
STAMPS_RE = re.compile(r"^latest-stamps(?:\.(?P<part>part\d+of\d+))?\.ini$")


def part_tag(part: tuple[int, int] | None) -> str | None:
    """``(2, 4)`` -> ``"part2of4"``: the prefix of that part's shards and its stamps file's infix."""
    return None if part is None else f"part{part[0]}of{part[1]}"


def stamps_files(raw: Path) -> list[Path]:
    """Every stamps file in ``raw`` (the full crawl's and each part's), sorted by name."""
    if not raw.is_dir():
        return []
    return sorted(p for p in raw.iterdir() if STAMPS_RE.match(p.name) and p.is_file())


def read_stamps(path: Path) -> configparser.ConfigParser:
    """One stamps file (empty when missing); a :class:`DataError` naming it when unreadable."""
    cp = configparser.ConfigParser(interpolation=None)
    if path.exists():
        try:
            cp.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError) as err:
            raise DataError(f"stamps file {path.name} is not a valid INI file: {err}") from err
    return cp


def post_timestamp(stamps: configparser.ConfigParser, user: str) -> dt.datetime | None:
    """The user's stamp (newest stored post, aware), or None when the user has none."""
    if not stamps.has_option(user, POST_TIMESTAMP):
        return None
    text = stamps.get(user, POST_TIMESTAMP)
    try:
        value = dt.datetime.strptime(text, ISO_FORMAT)
    except ValueError:
        try:
            value = dt.datetime.fromisoformat(text)
        except ValueError as err:
            raise DataError(f"stamp of {user} is not a timestamp: {text!r}") from err
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def merged_stamps(raw: Path) -> configparser.ConfigParser:
    """All stamps files as one: per user, the section with the newest post stamp."""
    merged = configparser.ConfigParser(interpolation=None)
    for path in stamps_files(raw):
        cp = read_stamps(path)
        for user in cp.sections():
            if merged.has_section(user):
                mine, theirs = post_timestamp(merged, user), post_timestamp(cp, user)
                if theirs is None or (mine is not None and mine >= theirs):
                    continue
                merged.remove_section(user)
            merged.add_section(user)
            for key, value in cp.items(user):
                merged.set(user, key, value)
    return merged


def in_utc(key: str, value: str) -> str:
    """A stamps value as imgrate stores it: a timestamp (``*-timestamp``) in UTC. Instaloader
    writes the machine's local time (``post.date_local``); stored in UTC, the same posts give
    the same bytes on every machine, and no process-wide time zone has to be set."""
    if not key.endswith("-timestamp"):
        return value
    try:
        when = dt.datetime.strptime(value, ISO_FORMAT)
    except ValueError:
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            return value  # post_timestamp names a bad value where it is read
    return when.astimezone(dt.UTC).strftime(ISO_FORMAT) if when.tzinfo else value


def render(stamps: configparser.ConfigParser) -> str:
    """The INI text of ``stamps``, sections sorted so that the file does not depend on crawl order."""
    ordered = configparser.ConfigParser(interpolation=None)
    for user in sorted(stamps.sections()):
        ordered.add_section(user)
        for key, value in sorted(stamps.items(user)):
            ordered.set(user, key, value)
    buf = io.StringIO()
    ordered.write(buf)
    return buf.getvalue()
