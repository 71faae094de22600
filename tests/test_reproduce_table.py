"""The reproduction table (pipelines/reproduce_table.py): row definitions and a quick smoke run."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from wsi_s2lcm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
USE_FLAGS = ("use_pseudo", "use_mcr", "use_mil")


@pytest.fixture(scope="module")
def table_module():
    """pipelines/reproduce_table.py, imported from its path (pipelines/ is not a package)."""
    spec = importlib.util.spec_from_file_location("reproduce_table",
                                                  ROOT / "pipelines" / "reproduce_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def table(table_module):
    return table_module.load_table()


def _diff(a: dict, b: dict) -> dict:
    return {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}


def test_each_component_row_adds_exactly_one_term(table_module, table):
    second = {r.name: table_module.stage_values(table, r, "s2lcm") for r in table.rows
              if r.supervision != "evaluation"}
    chain = []
    for row in table.rows:
        if not row.parent:
            continue
        diff = _diff(second[row.parent], second[row.name])
        assert len(diff) == 1, (row.name, diff)
        (flag, values), = diff.items()
        assert flag in USE_FLAGS and values == (False, True), (row.name, diff)
        assert table.row(row.parent).ratio == row.ratio
        chain.append(flag)
    assert chain == list(USE_FLAGS)
    # The chain starts with every term off and ends at the default recipe, unchanged.
    assert not any(second["pce-only"][f] for f in USE_FLAGS)
    recipe = {**table.recipe["shared"], **table.recipe["s2lcm"]}
    assert second[table_module.DEFAULT_ROW] == recipe
    assert table.row(table_module.DEFAULT_ROW).ratio == table.recipe["scribble_ratio"]


def test_ratio_full_and_postprocess_rows_change_one_thing(table_module, table):
    default = table.row("s2lcm")
    values = table_module.stage_values(table, default, "s2lcm")
    for name, ratio in (("s2lcm-r0.1", 0.1), ("s2lcm-r1.0", 1.0)):
        row = table.row(name)
        assert row.ratio == ratio and row.supervision == "scribbles"
        assert table_module.stage_values(table, row, "s2lcm") == values
    full = table.row("full-supervision")
    assert full.supervision == "full"
    assert (table_module.stage_values(table, full, "s2lcm")
            == table_module.stage_values(table, table.row("pce-only"), "s2lcm"))
    separate, merged = table.row("postproc-separate"), table.row("postproc-no-separate")
    assert separate.model == merged.model == "s2lcm"
    assert (separate.postprocess, merged.postprocess) == ({"separate": True}, {"separate": False})
    # The warm-up stage does not depend on the row: rows of one ratio share it.
    warmups = {table_module.warmup_name(r): table_module.stage_values(table, r, "warmup")
               for r in table.rows if r.supervision != "evaluation"}
    assert set(warmups) == {"warmup-r0.5", "warmup-r0.1", "warmup-r1.0", "warmup-full"}
    assert all(v == warmups["warmup-r0.5"] for v in warmups.values())
    assert not any(warmups["warmup-r0.5"][f] for f in USE_FLAGS)


def test_recipe_is_the_one_of_the_shell_script(table):
    """table_rows.yaml copies pipelines/train_default_model.sh with MPP=0.25 (the recipe of
    the default model, s2lcm-monuseg): fail when they drift apart."""
    script = (ROOT / "pipelines" / "train_default_model.sh").read_text(encoding="utf-8")
    assert table.recipe["shared"]["mpp"] == 0.25 and "0.25) NAME=s2lcm-monuseg;" in script
    block = re.search(r'SHARED="(.*?)"', script, re.S).group(1).replace("$MPP", "0.25")
    shared = yaml.safe_load(block)
    stage1, stage2 = [yaml.safe_load(f.replace("\\n", "\n").replace("%s", "INIT"))
                      for f in re.findall(r"printf '%s\\n(.*?)'", script)]
    assert stage2.pop("init_model") == "INIT"
    stage2.update({key: yaml.safe_load(value)
                   for key, value in re.findall(r"s/\^(\w+): \.\*/\1: ([^/]+)/", script)})
    assert shared == table.recipe["shared"]
    assert stage1 == table.recipe["warmup"]
    assert stage2 == table.recipe["s2lcm"]
    assert "--mpp 0.25" in script and table.recipe["image_mpp"] == 0.25
    ratio = table.recipe["scribble_ratio"]
    assert f"--ratio {ratio} --seed {table.recipe['scribble_seed']}" in script


def test_training_seed_changes_every_stage_and_nothing_else(table_module, table):
    seeded = table_module.with_training_seed(table, 3)
    for row in (r for r in table.rows if r.supervision != "evaluation"):
        for stage in ("warmup", "s2lcm"):
            diff = _diff(table_module.stage_values(table, row, stage),
                         table_module.stage_values(seeded, row, stage))
            assert diff == {"seed": (table.recipe["shared"]["seed"], 3)}, (row.name, stage)
    assert seeded.recipe["scribble_seed"] == table.recipe["scribble_seed"]
    assert table.recipe["shared"]["seed"] == 0  # the table read from the file is left alone


def test_second_stage_seed_changes_the_second_stages_only(table_module, table):
    seeded = table_module.with_training_seed(table, 3, second_stage_only=True)
    for row in (r for r in table.rows if r.supervision != "evaluation"):
        assert (table_module.stage_values(seeded, row, "warmup")
                == table_module.stage_values(table, row, "warmup")), row.name
        diff = _diff(table_module.stage_values(table, row, "s2lcm"),
                     table_module.stage_values(seeded, row, "s2lcm"))
        assert diff == {"seed": (table.recipe["shared"]["seed"], 3)}, row.name
    assert "seed" not in table.recipe["s2lcm"]  # the table read from the file is left alone


def test_bad_rows_are_refused(table_module, tmp_path):
    document = yaml.safe_load((ROOT / "pipelines" / "table_rows.yaml").read_text())
    document["rows"][0]["overrides"] = {"use_magic": True}
    path = tmp_path / "rows.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match="use_magic"):
        table_module.load_table(path)
    document["rows"][0]["overrides"] = {}
    document["rows"][-1]["model"] = "no-such-row"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match="needs 'model'"):
        table_module.load_table(path)


def test_dense_target_keeps_the_nucleus_area(table_module):
    labels = np.zeros((8, 8), np.uint16)
    labels[0:4, 0:4] = 3  # whole 2 x 2 blocks: nucleus
    labels[4:8, 4:6] = 7
    labels[4:8, 6] = 7  # half of the blocks of target column 3: ties
    target = table_module.dense_target(labels, (4, 4))
    assert target.dtype == np.uint8 and set(np.unique(target)) <= {0, 1}
    assert target[:2, :2].all() and not target[:2, 2:].any() and not target[2:, :2].any()
    assert target[2:, 2].all()
    assert target[2:, 3].sum() == 1  # two tie pixels: one nucleus, one background


def test_markdown_flags_a_component_that_makes_things_worse(table_module, table):
    def result(name, value, last=None):
        figures = {k: value for k in table_module.METRICS}
        return {"row": name, "train_s": 60.0, "segment_s": 1.0, "quick": False, **figures,
                "last": None if last is None else {**figures, "dice": last, "epoch": 30},
                "stages": {"s2lcm": {"config": {"mpp": 0.25}}}}

    results = [result("pce-only", 0.5, last=0.5), result("ema", 0.6, last=0.4),
               result("mcr", 0.55), result("s2lcm", 0.85)]
    text = table_module.format_markdown(table, results)
    assert "mcr vs ema: dice -0.0500" in text and "WORSE on dice, aji, pq" in text
    assert "s2lcm vs mcr: dice +0.3000" in text and "no worse" in text
    assert "target dice >= 0.80 (s2lcm): 0.8500, met" in text
    assert "target aji >= 0.60 (s2lcm): 0.8500, met" in text
    selected, last = text.split("The models of the second stage")
    assert selected.count("not yet measured") == 5  # 5 rows without results
    assert "ema vs pce-only: dice -0.1000, aji +0.1000" in last and "WORSE on dice" in last
    assert "| ema | 30 | 0.4000 | 0.6000 |" in last and "target" not in last
    assert "SMOKE RUN" not in text
    assert "Model resolution: 0.25 µm/px" in text
    widths = {line.count("|") for line in selected.splitlines() if line.startswith("|")}
    assert widths == {14}  # 13 columns in every line, the paper anchors included


def _small_split(folder: Path) -> Path:
    """2 training images and 1 validation image of the fixed split."""
    split = json.loads((ROOT / "pipelines" / "monuseg_split.json").read_text())
    split_path = folder / "split.json"
    split_path.write_text(json.dumps({"train": split["train"][:2],
                                      "validation": split["validation"][:1]}))
    return split_path


def _quick_args(split: Path, monuseg_dir: Path, rows: str = "pce-only") -> list[str]:
    """A --quick run of ``rows`` on the small split, on the CI machine's 2 cores."""
    return ["--quick", "--rows", rows, "--split", str(split), "--data", str(monuseg_dir),
            "--threads", "2"]


@pytest.fixture(scope="module")
def quick_table(table_module, monuseg_dir, tmp_path_factory):
    """One smoke run of two rows (pce-only; S2L-CM without separation, which needs the s2lcm
    model) on 2 training images and 1 validation image, one epoch of 64 px crops per stage.

    The tests below read it and copy from it, never change it: its warm-up is the finished
    table that --adopt-default and --warmups-from take in. Returns the table folder, its argv
    and its split file.
    """
    folder = tmp_path_factory.mktemp("quick-table")
    split = _small_split(folder)
    argv = _quick_args(split, monuseg_dir, "pce-only,postproc-no-separate")
    argv += ["--out", str(folder / "table")]
    assert table_module.main(argv) == 0
    return folder / "table", argv, split


def test_quick_run_writes_the_table(table_module, quick_table, capsys):
    out, argv, _ = quick_table
    with open(out / "results.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["row"] for r in rows] == ["pce-only", "postproc-no-separate"]
    for row in rows:
        for key in table_module.METRICS + ("train_s", "segment_s"):
            assert 0.0 <= float(row[key]) < (1e4 if key.endswith("_s") else 1.0 + 1e-9), key
        assert int(row["n_images"]) == 1 and row["quick"] == "True"
    assert [r["separate"] for r in rows] == ["True", "False"]
    assert 0.0 <= float(rows[0]["last_aji"]) <= 1.0 and rows[0]["last_epoch"] == "1"
    assert rows[1]["last_aji"] == ""  # an evaluation row has no training of its own
    assert float(rows[0]["train_s"]) > 0
    for folder in ("scribbles-r0.5-s0", "warmup-r0.5", "pce-only", "s2lcm"):
        assert (out / folder).is_dir(), folder
    assert (out / "scribbles-r0.5-s0" / "scribbles.json").is_file()
    result = out / "pce-only" / "result.json"
    stamp = result.stat().st_mtime_ns
    capsys.readouterr()
    assert table_module.main(argv) == 0  # done rows are skipped
    assert result.stat().st_mtime_ns == stamp
    printed = capsys.readouterr().out
    assert printed == (out / "results.md").read_text(encoding="utf-8")
    assert "| pce-only | pCE only | 0.50 | " in printed and "0.6408" in printed
    assert "0.7014" in printed and "SMOKE RUN" in printed
    assert "Model resolution: 0.25 µm/px" in printed
    assert "| pce-only | 1 | " in printed  # the last-epoch table


def test_default_model_stages_are_adopted_only_when_they_are_the_recipe(table_module, monuseg_dir,
                                                                        quick_table, tmp_path):
    """--adopt-default copies a finished warm-up in instead of training it, and refuses one
    trained with another config."""
    first, _, split = quick_table
    base = _quick_args(split, monuseg_dir)
    runs = tmp_path / "runs"
    shutil.copytree(first / "warmup-r0.5", runs / "default-model-warmup")
    card_path = runs / "default-model-warmup" / "last" / "card.json"
    card = json.loads(card_path.read_text())
    card["training"]["data"]["scribbles"] = str(first / "scribbles-r0.5-s0")
    card["training"]["config"]["seed"] = 7
    card_path.write_text(json.dumps(card))
    refused = tmp_path / "refused"
    assert table_module.main(base + ["--out", str(refused), "--adopt-default", str(runs)]) == 2
    assert not (refused / "warmup-r0.5").exists()
    card["training"]["config"]["seed"] = 0
    # A stage trained before a TrainConfig value existed counts as trained with its default.
    del card["training"]["config"]["separation_heights_um"]
    card_path.write_text(json.dumps(card))
    second = tmp_path / "second"
    assert table_module.main(base + ["--out", str(second), "--adopt-default", str(runs)]) == 0
    stage = json.loads((second / "warmup-r0.5" / "stage.json").read_text())
    assert stage["adopted_from"] == str(runs / "default-model-warmup")
    assert stage["train_seconds"] == card["training"]["training_seconds"] > 0
    assert (second / "pce-only" / "result.json").is_file()
    assert "adopted_from" not in json.loads((second / "pce-only" / "stage.json").read_text())
    for model in (second / "pce-only", second / "pce-only" / "last"):
        card = json.loads((model / "card.json").read_text())
        assert "separation_calibration" in card["metrics"], model


def test_second_stage_seed_reuses_the_warmup_of_another_table(table_module, monuseg_dir,
                                                              quick_table, tmp_path):
    """--second-stage-seed trains the second stage from its seed on a copy of the warm-up of
    --warmups-from, and refuses to start when that folder holds no finished warm-up."""
    first, _, split = quick_table
    base = _quick_args(split, monuseg_dir)
    missing = tmp_path / "missing"
    assert table_module.main(base + ["--second-stage-seed", "1", "--warmups-from",
                                     str(tmp_path / "none"), "--out", str(missing)]) == 2
    assert not (missing / "warmup-r0.5").exists() and not (missing / "pce-only").exists()
    repeat = tmp_path / "repeat"
    assert table_module.main(base + ["--second-stage-seed", "1", "--warmups-from", str(first),
                                     "--out", str(repeat)]) == 0
    warmup = json.loads((repeat / "warmup-r0.5" / "stage.json").read_text())
    assert warmup["adopted_from"] == str(first / "warmup-r0.5")
    assert warmup["config"]["seed"] == 0
    assert not (repeat / "warmup-r0.5" / "train_state").exists()
    second = json.loads((repeat / "pce-only" / "stage.json").read_text())
    assert second["config"]["seed"] == 1
    assert second["config"]["init_model"] == str(repeat / "warmup-r0.5")
    assert json.loads((first / "pce-only" / "stage.json").read_text())["config"]["seed"] == 0
    assert (repeat / "pce-only" / "result.json").is_file()
