"""Compare repeats of the reproduction table: how far each row and each component repeats.

Reads the ``<row>/result.json`` files that ``pipelines/reproduce_table.py`` wrote under two or
more table folders (for example runs/table and the ``--second-stage-seed`` repeats
runs/table-stage2-seed1, runs/table-stage2-seed2) and prints, as Markdown:

- each row's Dice, AJI and PQ in every folder, for the selected model and for the model of the
  second stage's last epoch, with their mean and sample standard deviation;
- each component's change (a row against its ``parent`` in pipelines/table_rows.yaml) in every
  folder that holds both rows, its mean and standard deviation, and in how many folders it made
  each metric worse.

Nothing is trained or evaluated here. Usage (from the project root)::

    python pipelines/compare_runs.py runs/table runs/table-stage2-seed1 runs/table-stage2-seed2
    python pipelines/compare_runs.py runs/table runs/table-stage2-seed1 --rows mcr,s2lcm
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Sequence

from reproduce_table import RESULT_FILE, ROWS_FILE, TARGETS, Table, collect_results, load_table

from wsi_s2lcm.errors import ConfigError

COMPARED = tuple(TARGETS)
"""The metrics compared: those the evaluation issue sets targets for (Dice, AJI, PQ)."""
MODELS = ("selected", "last")
"""``selected``: the model chosen on the held-out scribbles; ``last``: the last epoch's."""


def read_runs(folders: Sequence[Path], table: Table) -> dict[str, dict[str, dict]]:
    """The results found in each folder: ``{folder name: {row: result}}``.

    Raises
    ------
    ConfigError
        When a folder does not exist or holds no result of any row.
    """
    runs: dict[str, dict[str, dict]] = {}
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"{folder}: no such table folder; name folders that "
                              "pipelines/reproduce_table.py wrote (for example runs/table).")
        found = {result["row"]: result for result in collect_results(table, folder)}
        if not found:
            raise ConfigError(f"{folder}: no {RESULT_FILE} of any row; run "
                              "pipelines/reproduce_table.py for it first.")
        runs[str(folder)] = found
    return runs


def figures(result: dict, model: str) -> dict[str, float] | None:
    """The compared metrics of one row's ``selected`` or ``last`` model (None if not recorded)."""
    source = result if model == "selected" else result.get("last")
    if not source:
        return None
    return {key: float(source[key]) for key in COMPARED}


def spread(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def component_changes(runs: dict[str, dict[str, dict]], table: Table, row_name: str,
                      model: str) -> dict[str, dict[str, float]]:
    """The change a row's component made against its parent, per folder holding both rows.

    Returns
    -------
    dict
        ``{folder: {metric: row - parent}}``.
    """
    parent = table.row(row_name).parent
    changes = {}
    for folder, results in runs.items():
        if row_name not in results or parent not in results:
            continue
        child, base = figures(results[row_name], model), figures(results[parent], model)
        if child is not None and base is not None:
            changes[folder] = {key: child[key] - base[key] for key in COMPARED}
    return changes


def format_comparison(runs: dict[str, dict[str, dict]], table: Table,
                      rows: Sequence[str]) -> str:
    """The Markdown report: the rows per folder, then the components."""
    names = list(runs)
    lines = ["Folders: " + ", ".join(f"`{n}`" for n in names) + ".", ""]
    header = ["row", "model"] + [f"{k} {i + 1}" for k in COMPARED for i in range(len(names))]
    header += [f"{k} mean (sd)" for k in COMPARED]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in rows:
        for model in MODELS:
            found = [figures(runs[n][name], model) if name in runs[n] else None for n in names]
            cells = [_value(f[key] if f else None) for key in COMPARED for f in found]
            present = [f for f in found if f]
            for key in COMPARED:
                cells.append(_mean_sd([f[key] for f in present]) if present else "")
            lines.append("| " + " | ".join([name, model] + cells) + " |")
    lines += ["", "Column `k i`: metric k in the i-th folder; sd: sample standard deviation "
              "over the folders that hold the row.", ""]
    for name in rows:
        parent = table.row(name).parent
        if not parent:
            continue
        for model in MODELS:
            changes = component_changes(runs, table, name, model)
            if not changes:
                lines.append(f"- {name} vs {parent} ({model}): no folder holds both")
                continue
            parts = []
            for key in COMPARED:
                values = [c[key] for c in changes.values()]
                worse = sum(v < 0 for v in values)
                parts.append(f"{key} {_mean_sd(values, signed=True)}, worse in {worse} of "
                             f"{len(values)}")
            lines.append(f"- {name} vs {parent} ({model}): " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def _value(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _mean_sd(values: Sequence[float], signed: bool = False) -> str:
    mean, sd = spread(values)
    text = f"{mean:+.4f}" if signed else f"{mean:.4f}"
    return text + (f" ({sd:.4f})" if sd is not None else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Print the comparison of the named table folders; the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="table folders (two or more)")
    parser.add_argument("--rows", default="", help="comma-separated row names (default: every "
                        "row found in any folder)")
    parser.add_argument("--rows-file", type=Path, default=ROWS_FILE, help="row definitions")
    args = parser.parse_args(argv)
    if len(args.folders) < 2:
        parser.error("name two or more table folders to compare.")
    try:
        table = load_table(args.rows_file)
        wanted = [table.row(n).name for n in args.rows.split(",") if n]
        runs = read_runs(args.folders, table)
    except ConfigError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    rows = wanted or [r.name for r in table.rows if any(r.name in found for found in runs.values())]
    sys.stdout.write(format_comparison(runs, table, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
