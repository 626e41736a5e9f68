"""One error hierarchy for imgrate.

Library code raises these; one handler (:func:`imgrate.progress.handle`, used by the
``imgrate`` command and by every stage script through :func:`imgrate.progress.run_main`)
turns them into a one-line message and a named exit code (:class:`ExitCode`).
Each class also subclasses the builtin it specialises, so callers that catch
``ValueError`` or ``OSError`` keep working.
"""

from __future__ import annotations

import enum
import re


class ImgrateError(Exception):
    """Base class of every error imgrate raises on purpose."""


MESSAGE_LIMIT = 2000  # characters of an error message shown; the rest is counted, not printed


def excerpt(text: str, limit: int = 80) -> str:
    """``text`` as ``repr`` would quote it, cut to about ``limit`` characters.

    For quoting user input (a users.txt line, a params value) in a message: a 2 MB line
    is named by its start and its length, not echoed whole.
    """
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb]"
)


def safe_text(text: object) -> str:
    """``text`` with every control or invisible formatting character written as an escape
    (``\\x1b``, ``\\n``, ``\\u202e``), for showing untrusted text (a file or member name, a
    username, a caption) on a terminal or in a log: an escape sequence in a name never moves
    the cursor, clears the screen, opens a link or reverses the text around it. Printable
    characters, accented letters and emoji included, stay as they are."""
    s = str(text)
    if not _UNSAFE.search(s):
        return s
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), s)


def error_message(err: BaseException | str, limit: int = MESSAGE_LIMIT) -> str:
    """An error's message as printed: cut to ``limit`` characters (the rest counted)."""
    text = str(err)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


def one_line(err: BaseException | str, limit: int = 300) -> str:
    """A message on one line (whitespace runs become one space), cut to ``limit`` characters."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ParamsError(ImgrateError, ValueError):
    """params.yaml is missing a key, has an unknown one, or a value of the wrong type."""


class UsersFileError(ImgrateError, ValueError):
    """users.txt names an invalid username."""


class CrawlError(ImgrateError):
    """Crawling a user failed in a way that stops the crawl (strict mode or no users)."""


class DataError(ImgrateError, ValueError):
    """Stored data (a shard, a table, a dataset) is missing, corrupt or inconsistent."""


class ModelError(ImgrateError, ValueError):
    """A model file is missing, corrupt, or was trained with an unknown architecture."""


class ImageError(ImgrateError, ValueError):
    """A file that should be an image cannot be decoded."""


class StorageFull(ImgrateError, OSError):
    """A file could not be written: the device (or the user's quota) is full."""


class DatabaseError(ImgrateError, OSError):
    """A database (MongoDB) cannot be reached or refused a request; the message never holds a password."""


class ExitCode(enum.IntEnum):
    """The exit codes of ``imgrate`` and of the stage scripts."""

    OK = 0
    PROBLEMS = 1  # the command ran and found problems (``imgrate verify``)
    ERROR = 2  # an ImgrateError: bad params, input, data or model file; nothing to do
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
