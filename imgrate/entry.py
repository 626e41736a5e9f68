"""The one shape of a pipeline stage: its declaration, its summary, and its entry.

Every stage module declares one :class:`Stage` (``STAGE``): the params sections it reads,
the data it reads, its outputs (:class:`Output`: each named once, here), and the function
that runs it. From the declarations:

- ``dvc.yaml`` is generated (:mod:`imgrate.lineage`, ``make lineage``), outputs and all;
- a stage removes the temporary files a killed run left in its outputs before it writes
  (:func:`clean_outputs` of ``STAGE.outputs(...)``: the same list);
- ``stages/<stage>.py`` and ``imgrate <stage>`` both run a stage through :func:`main`, which
  loads the params sections it reads, runs it, prints its :class:`Summary` and exits with
  :class:`imgrate.errors.ExitCode`; :func:`run` does the same without printing or exiting
  (benches, notebooks).

Exit codes (:class:`imgrate.errors.ExitCode`): 0 done; 3 (``INCOMPLETE``) the stage ran but
did not get everything (a crawl that stopped early or skipped users): run by hand, cron sees
it; as a DVC stage it exits 0 so the pipeline goes on with what it got, unless params say
otherwise (:attr:`Stage.keep_going`, e.g. ``crawl.on_incomplete: fail``); 4 an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from imgrate.errors import ExitCode, ImgrateError
from imgrate.io import remove_stale_tmp
from imgrate.params import Params, load_params
from imgrate.paths import Paths, project_paths

log = logging.getLogger(__name__)

T = TypeVar("T")

Kind = Literal["outs", "metrics", "plots"]


@dataclass(frozen=True)
class Output:
    """One output of a stage as dvc.yaml declares it (``kind``: outs, metrics or plots)."""

    path: Path
    kind: Kind = "outs"
    folder: bool = False  # a folder of files (cleaned inside), not one file
    cache: bool = True  # false: git carries it (metrics, reports, plot tables)
    persist: bool = False  # true: DVC does not delete it before the stage runs
    note: str = ""  # why, for dvc.yaml's reader
    plot: Mapping[str, str] = field(default_factory=dict)  # a plots entry's template, x, y
    clean: bool = True  # false: the stage cleans it itself (under its own lock)


@dataclass(frozen=True)
class Dep:
    """Data a stage reads (a DVC dependency), as dvc.yaml names it."""

    path: str
    note: str = ""


@dataclass
class Summary(Generic[T]):
    """What every stage's ``run_stage`` returns: its numbers (``summary[key]``), the line and
    notes its entry prints, whether it got everything, and the stage's own detailed result."""

    stage: str
    values: dict[str, Any]
    line: str | None = None  # None: nothing to print (e.g. a torchrun rank other than 0)
    notes: list[tuple[str, str, str]] = field(default_factory=list)  # (label, message, style)
    outcome: Literal["done", "incomplete"] = "done"
    detail: T | None = None  # e.g. the crawl's CrawlReport, evaluate's Report
    printables: list[Any] = field(default_factory=list)  # rich renderables printed after the line

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)


def _nothing(item: str) -> list[str]:
    return []


@dataclass(frozen=True)
class Stage:
    """A stage's declaration (see the module docstring).

    ``run(params, paths, *args)`` runs it with the params sections it reads loaded.
    ``reads(paths, item)`` gives its data dependencies and ``outputs(paths, item)`` its
    outputs, where ``item`` is the key of a stage that runs once per item (``each``: train, once
    per model) or ``""``; dvc.yaml's template passes ``"${key}"``. ``imports(item)`` names the
    modules it imports by name (the model registry's), whose code it depends on too."""

    name: str
    about: str
    sections: tuple[str, ...]
    reads: Callable[[Paths, str], list[Dep]]
    outputs: Callable[[Paths, str], list[Output]]
    run: Callable[..., Summary[Any]]
    params: Callable[[], list[str]] | None = None  # dvc.yaml's params (default: the sections)
    imports: Callable[[str], list[str]] = _nothing
    each: Callable[[], list[str]] | None = None  # one DVC stage <name>@<item> per item
    top_plots: Callable[[Paths, str], dict[str, dict[str, Any]]] | None = None  # dvc.yaml's plots, per item
    always_changed: bool = False
    keep_going: Callable[[Params], bool] | None = None  # DVC stage: exit 0 on an incomplete run when true

    def dvc_params(self) -> list[str]:
        return self.params() if self.params is not None else list(self.sections)


def clean_outputs(outputs: list[Output]) -> list[str]:
    """Remove the temporary files a killed run left in a stage's ``outputs`` (its declaration's,
    ``STAGE.outputs(paths, item)``; see :func:`imgrate.io.remove_stale_tmp`): every one inside an
    output folder, and those of each output file beside it. Returns the names removed."""
    removed = []
    for out in outputs:
        if not out.clean:
            continue
        if out.folder:
            removed += remove_stale_tmp(out.path)
        else:
            removed += remove_stale_tmp(out.path.parent, [out.path.name])
    if removed:
        log.info("removed %d temporary files of a killed run: %s", len(removed), ", ".join(removed[:5]))
    return removed


def run(stage: Stage, *args: Any, paths: Paths | None = None, params: Params | None = None) -> Summary[Any]:
    """Run ``stage`` as its entry does, without printing or exiting: the project at ``paths``
    (default: the current one), its params.yaml's sections that the stage reads."""
    paths = paths or project_paths()
    params = params or load_params(paths.params, stage.sections)
    return stage.run(params, paths, *args)


def exit_code(summary: Summary[Any], stage: Stage, params: Params, dvc: bool) -> ExitCode:
    """:data:`ExitCode.INCOMPLETE` for an incomplete run, except as a DVC stage whose params say
    to keep going; else OK."""
    if summary.outcome != "incomplete":
        return ExitCode.OK
    if dvc and stage.keep_going is not None and stage.keep_going(params):
        return ExitCode.OK
    return ExitCode.INCOMPLETE


def main(stage: Stage, *args: Any, dvc: bool = False, verbose: bool = False) -> ExitCode:
    """``imgrate <stage>`` and ``python stages/<stage>.py``: run the stage, print its summary;
    returns the exit code (errors raise :class:`ImgrateError` for the one handler)."""
    from imgrate.progress import console, print_note, setup_logging

    setup_logging(verbose)
    paths = project_paths()
    params = load_params(paths.params, stage.sections)
    summary = stage.run(params, paths, *args)
    if summary.line is not None:
        console.print(summary.line, highlight=False, soft_wrap=True)
    for label, message, style in summary.notes:
        print_note(label, message, style)
    for item in summary.printables:
        console.print(item)
    code = exit_code(summary, stage, params, dvc)
    if code == ExitCode.INCOMPLETE and dvc:
        print_note(stage.name, "incomplete: the DVC stage fails (params say so)", style="red")
    return code


def script(stage: Stage, *args: Any) -> None:
    """The body of ``stages/<stage>.py``: :func:`main` as the DVC stage, under the one error
    handler; exits with its code."""
    from imgrate.progress import handle

    try:
        code = main(stage, *args, dvc=True)
    except (ImgrateError, KeyboardInterrupt) as err:
        raise SystemExit(int(handle(err))) from None
    if code:
        raise SystemExit(int(code))
