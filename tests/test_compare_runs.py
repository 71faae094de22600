"""Comparing repeats of the reproduction table (pipelines/compare_runs.py), on written results."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from wsi_s2lcm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare():
    """pipelines/compare_runs.py, imported with pipelines/ on the path (it imports its sibling)."""
    sys.path.insert(0, str(ROOT / "pipelines"))
    try:
        module = importlib.import_module("compare_runs")
        yield module
    finally:
        sys.path.remove(str(ROOT / "pipelines"))
        sys.modules.pop("compare_runs", None)
        sys.modules.pop("reproduce_table", None)


def _write(folder: Path, row: str, dice: float, aji: float, pq: float,
           last: tuple[float, float, float] | None = None) -> None:
    result = {"row": row, "dice": dice, "aji": aji, "pq": pq}
    if last:
        result["last"] = dict(zip(("dice", "aji", "pq"), last), epoch=30)
    (folder / row).mkdir(parents=True)
    (folder / row / "result.json").write_text(json.dumps(result), encoding="utf-8")


@pytest.fixture()
def two_runs(tmp_path):
    first, second = tmp_path / "table", tmp_path / "table-stage2-seed1"
    _write(first, "mcr", 0.80, 0.56, 0.53, last=(0.79, 0.55, 0.52))
    _write(first, "s2lcm", 0.81, 0.55, 0.54, last=(0.80, 0.57, 0.53))
    _write(second, "mcr", 0.79, 0.55, 0.52, last=(0.80, 0.56, 0.53))
    _write(second, "s2lcm", 0.80, 0.57, 0.50, last=(0.80, 0.56, 0.55))
    return first, second


def test_component_changes_per_folder(compare, two_runs):
    table = compare.load_table()
    runs = compare.read_runs(list(two_runs), table)
    selected = compare.component_changes(runs, table, "s2lcm", "selected")
    assert list(selected) == [str(f) for f in two_runs]
    assert selected[str(two_runs[0])]["aji"] == pytest.approx(-0.01)
    assert selected[str(two_runs[1])]["aji"] == pytest.approx(0.02)
    last = compare.component_changes(runs, table, "s2lcm", "last")
    assert last[str(two_runs[1])]["dice"] == pytest.approx(0.0)
    assert last[str(two_runs[1])]["pq"] == pytest.approx(0.02)
    assert compare.component_changes(runs, table, "mcr", "selected") == {}  # no ema row


def test_report_counts_the_folders_where_a_component_was_worse(compare, two_runs):
    table = compare.load_table()
    report = compare.format_comparison(compare.read_runs(list(two_runs), table), table,
                                       ["mcr", "s2lcm"])
    line = next(x for x in report.splitlines() if x.startswith("- s2lcm vs mcr (selected)"))
    assert "dice +0.0100 (0.0000), worse in 0 of 2" in line
    assert "aji +0.0050 (0.0212), worse in 1 of 2" in line
    assert "pq -0.0050 (0.0212), worse in 1 of 2" in line
    assert "- mcr vs ema (selected): no folder holds both" in report
    row = next(x for x in report.splitlines() if x.startswith("| mcr | selected |"))
    assert row.split(" | ")[-2] == "0.5550 (0.0071)"


def test_spread_of_one_value_has_no_deviation(compare):
    assert compare.spread([0.5]) == (0.5, None)
    mean, sd = compare.spread([0.5, 0.7])
    assert mean == pytest.approx(0.6) and sd == pytest.approx(0.1414, abs=1e-4)


def test_missing_or_empty_folders_are_errors(compare, tmp_path):
    table = compare.load_table()
    with pytest.raises(ConfigError, match="no such table folder"):
        compare.read_runs([tmp_path / "absent"], table)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no result.json of any row"):
        compare.read_runs([tmp_path / "empty"], table)
    assert compare.main([str(tmp_path / "empty"), str(tmp_path / "absent")]) == 2
