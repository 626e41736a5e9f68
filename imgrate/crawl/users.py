"""Read and validate users.txt before any request is made."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from imgrate.errors import DataError, UsersFileError, excerpt
from imgrate.io import read_utf8

# Instagram usernames: letters, digits, '.' and '_', at most 30 characters.
USERNAME_RE = re.compile(r"^[A-Za-z0-9._]{1,30}$")


def parse_users(text: str, source: str = "users.txt") -> list[str]:
    """Usernames in file order, lower-cased, duplicates collapsed.

    Blank lines and ``#`` comments (whole-line or trailing) are ignored. An invalid name
    raises :class:`UsersFileError` naming the line.
    """
    users: list[str] = []
    seen: set[str] = set()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        name = raw.split("#", 1)[0].strip()
        if not name:
            continue
        if name.startswith("@"):
            name = name[1:]
        if not USERNAME_RE.match(name) or name.strip(".") == "":
            raise UsersFileError(
                f"{source}:{lineno}: invalid Instagram username {excerpt(raw.strip())} "
                "(letters, digits, '.' and '_' only, at most 30 characters)"
            )
        name = name.lower()
        if name not in seen:
            seen.add(name)
            users.append(name)
    return users


def read_users(path: Path) -> list[str]:
    """Parse the users file at ``path``; it must name at least one user."""
    try:
        text = read_utf8(path)
    except FileNotFoundError as err:
        raise UsersFileError(f"users file not found: {path}") from err
    except DataError as err:
        raise UsersFileError(str(err).replace(str(path), path.name, 1)) from None
    users = parse_users(text, source=str(path.name))
    if not users:
        raise UsersFileError(f"{path.name}: names no users")
    return users


def select_part(users: list[str], part: int, parts: int) -> list[str]:
    """A deterministic 1/``parts`` of ``users`` (``part`` counts from 1), stable under reordering."""
    if not 1 <= part <= parts:
        raise UsersFileError(f"--part {part}/{parts}: part must be between 1 and {parts}")
    return [
        u for u in users
        if int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest(), "big") % parts == part - 1
    ]


def parse_part(text: str) -> tuple[int, int]:
    """``"2/4"`` -> ``(2, 4)``: which part of the users one crawler takes (``imgrate crawl --part``)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None:
        raise UsersFileError(f"--part {text!r}: expected I/N, e.g. 2/4")
    part, parts = int(m[1]), int(m[2])
    if parts < 1 or not 1 <= part <= parts:
        raise UsersFileError(f"--part {text}: expected 1 <= I <= N")
    return part, parts
