"""One error hierarchy for imgrate.

Library code raises these; one handler (:func:`handle`, used by the ``imgrate`` command and
by every stage script through :func:`run_main`) turns them into a one-line message and a
named exit code (:class:`ExitCode`).
Each class also subclasses the builtin it specialises, so callers that catch
``ValueError`` or ``OSError`` keep working.
"""

from __future__ import annotations

import enum
from collections.abc import Callable


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


def error_message(err: BaseException | str, limit: int = MESSAGE_LIMIT) -> str:
    """An error's message as printed: cut to ``limit`` characters (the rest counted)."""
    text = str(err)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


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


class DatabaseError(ImgrateError, OSError):
    """A database (MongoDB) cannot be reached or refused a request; the message never holds a password."""


class ExitCode(enum.IntEnum):
    """The exit codes of ``imgrate`` and of the stage scripts."""

    OK = 0
    PROBLEMS = 1  # the command ran and found problems (``imgrate verify``)
    ERROR = 2  # an ImgrateError: bad params, input, data or model file; nothing to do
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


def handle(err: BaseException) -> ExitCode:
    """Print ``err`` as one line on stderr and return its exit code; re-raise what is not ours."""
    from imgrate.progress import console, print_error

    if isinstance(err, KeyboardInterrupt):
        console.print("imgrate: interrupted", markup=False, highlight=False, soft_wrap=True)
        return ExitCode.INTERRUPTED
    if isinstance(err, ImgrateError):
        print_error(err)  # the one place errors are printed: the message literally, cut when huge
        return ExitCode.ERROR
    raise err


def run_main(main: Callable[[], object]) -> None:
    """Run a stage script's entry point under :func:`handle`."""
    try:
        main()
    except (ImgrateError, KeyboardInterrupt) as err:
        raise SystemExit(int(handle(err))) from None
