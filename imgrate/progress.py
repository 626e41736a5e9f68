"""Progress bars and console output on stderr (stdout stays free for ``--json``).

The console reads no Rich markup: file names, usernames and messages are user text
(``IMG_001 [edit].jpg`` prints as it is). Styled output goes through :func:`print_error`
and :func:`print_note`, which style a label and print the message literally.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console, ConsoleDimensions
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from imgrate.errors import ExitCode, ImgrateError, error_message, safe_text

T = TypeVar("T")

# Lines written to a file or a pipe (logs, tests, CI) are never hard-wrapped, whatever COLUMNS
# says: a message must not depend on the width of a terminal that is not there.
UNWRAPPED_WIDTH = 10_000


class _Console(Console):
    """Rich's console, as wide as the terminal on a terminal and unwrapped anywhere else."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(UNWRAPPED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


console: Console = _Console(stderr=True, markup=False)  # user text is never read as markup
# results a command prints for a person or a pipe (`imgrate rank DIR > ranked.txt`): stdout
out_console: Console = _Console(stderr=False, markup=False)


def print_note(label: str, message: object, style: str = "yellow") -> None:
    """``label: message`` with the label styled and the message printed as it is (cut when huge),
    its control characters escaped (:func:`imgrate.errors.safe_text`): messages name files,
    members and users, and an escape sequence in one never reaches the terminal."""
    console.print(Text.assemble((f"{safe_text(label)}:", style), " ", safe_text(error_message(str(message)))),
                  highlight=False, soft_wrap=True)  # one line however narrow the terminal: logs and greps keep it whole


def print_error(message: object) -> None:
    """``error: message`` for the CLI's error handler: the one place errors are printed."""
    print_note("error", message, style="red")


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` with a progress bar on stderr (plain iteration when IMGRATE_QUIET=1)."""
    if os.environ.get("IMGRATE_QUIET") == "1":
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=not console.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr through rich; library modules log through ``logging.getLogger(__name__)``."""
    level = logging.DEBUG if verbose else logging.INFO
    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:  # a log file or pipe: one plain line per record, never wrapped
        handler = logging.StreamHandler(console.file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S"))
    handler.addFilter(_escape_record)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Instaloader and urllib3 are chatty at INFO; their warnings still show.
    for noisy in ("urllib3", "instaloader", "filelock", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _escape_record(record: logging.LogRecord) -> bool:
    """A log record's message with its control characters escaped: log lines quote member
    names, file names, usernames and server answers, none of which may drive the terminal or
    forge a line of the log. (Tracebacks, formatted apart, keep their lines.)"""
    message = record.getMessage()
    escaped = safe_text(message)
    if escaped != message:
        record.msg, record.args = escaped, None
    return True


def handle(err: BaseException) -> ExitCode:
    """Print ``err`` as one line on stderr and return its exit code; re-raise what is not ours."""
    if isinstance(err, KeyboardInterrupt):
        console.print("imgrate: interrupted", markup=False, highlight=False, soft_wrap=True)
        return ExitCode.INTERRUPTED
    if isinstance(err, ImgrateError):
        print_error(err)  # the one place errors are printed: the message literally, cut when huge
        return ExitCode.ERROR
    raise err
