"""`imgrate experiments`: DVC's experiments as a table that fits a terminal.

`dvc exp show` prints every param and every metric of every tracked file (some 1,900 columns
here). This reads its JSON (`dvc exp show --json`) and keeps what a comparison needs: one row
per experiment (the workspace and the commit first), the params that differ between the rows,
and each trained model's within-user metrics from ``metrics/evaluate/<model>.json``.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgrate.errors import ImgrateError

# the within-user metrics of metrics/evaluate/<model>.json, as they head a column
WITHIN = {"spearman_within": "ρ", "pairwise_within": "pw"}
EVALUATE_METRICS = "metrics/evaluate/"


@dataclass(frozen=True)
class Experiment:
    """One row: a name, the flattened params of params.yaml, the evaluate metrics per file stem."""

    name: str
    params: dict[str, Any]
    metrics: dict[str, dict[str, Any]]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"seed": 0}}`` -> ``{"train.seed": 0}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _row(name: str, data: dict[str, Any]) -> Experiment:
    params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
    metrics = {path[len(EVALUATE_METRICS):].removesuffix(".json"): (entry or {}).get("data") or {}
               for path, entry in (data.get("metrics") or {}).items() if path.startswith(EVALUATE_METRICS)}
    return Experiment(name, flatten(params), metrics)


def _short(rev: object) -> str:
    """A commit's first 7 hex digits; "workspace" as it is."""
    text = str(rev or "?")
    return text[:7] if len(text) == 40 else text


def parse_exp_show(shown: list[dict[str, Any]]) -> list[Experiment]:
    """The rows of `dvc exp show --json`: the workspace, each commit, then its experiments."""
    rows: list[Experiment] = []
    for rev in shown:
        if rev.get("data"):
            rows.append(_row(rev.get("name") or _short(rev.get("rev")), rev["data"]))
        for exp in rev.get("experiments") or []:
            for sub in exp.get("revs") or []:
                if sub.get("data"):
                    rows.append(_row(sub.get("name") or exp.get("name") or _short(sub.get("rev")), sub["data"]))
    return rows


def changed_params(rows: list[Experiment]) -> list[str]:
    """The params keys whose value is not the same in every row, in params.yaml's order."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row.params))
    return [k for k in keys if len({json.dumps(row.params.get(k), sort_keys=True) for row in rows}) > 1]


def _param(value: Any) -> str:
    """A param as params.yaml has it (0.0001, not 0.000); text without quotes."""
    return value if isinstance(value, str) else json.dumps(value)


def _cell(value: Any) -> str:
    """A metric: 3 decimals; "-" where DVC has none (a failed or queued run)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)


def table(rows: list[Experiment], models: list[str]) -> list[str]:
    """The lines of the table: a header, a rule, a row per experiment, and a legend.

    ``models``: whose metrics to show (the registry's models, in its order); a model with no
    metrics file in any row is left out.
    """
    shown = [m for m in models if any(m in row.metrics for row in rows)]
    params = changed_params(rows)
    headers = ["experiment", *params, *(f"{m} {short}" for m in shown for short in WITHIN.values())]
    cells = [[row.name, *(_param(row.params.get(k)) for k in params),
              *(_cell(row.metrics.get(m, {}).get(metric)) for m in shown for metric in WITHIN)] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        first, *rest = values
        return "  ".join([first.ljust(widths[0]), *(v.rjust(w) for v, w in zip(rest, widths[1:]))]).rstrip()

    legend = ", ".join(f"{short}: {metric}" for metric, short in WITHIN.items())
    lines = [line(headers), "  ".join("-" * w for w in widths), *(line(c) for c in cells)]
    if not params:
        lines.append("(no param differs between these rows)")
    lines.append(f"{legend} (metrics/evaluate/<model>.json; 0 and 0.5 are chance)")
    return lines


def exp_show(root: Path) -> list[dict[str, Any]]:
    """`dvc exp show --json` in the project at ``root`` (the dvc beside this Python first)."""
    beside = Path(sys.executable).parent / "dvc"
    dvc = str(beside) if beside.exists() else shutil.which("dvc")
    if dvc is None:
        raise ImgrateError("dvc is not installed (`make setup`, then `source .venv/bin/activate`)")
    proc = subprocess.run([dvc, "exp", "show", "--json"], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise ImgrateError(f"dvc exp show failed (exit {proc.returncode}): {last}")
    try:
        shown = json.loads(proc.stdout)
    except json.JSONDecodeError as err:
        raise ImgrateError(f"dvc exp show printed no JSON: {err}") from err
    if not isinstance(shown, list):
        raise ImgrateError("dvc exp show printed JSON this DVC release does not shape as a list of revisions")
    return shown
