"""The cohort: finding slides, one task per slide, a report, resuming, bad slides, batch jobs."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from fakes import DarknessPredictor
from wsi_s2lcm import dispatch
from wsi_s2lcm.cli import main
from wsi_s2lcm.cohort import (
    REPORT_COLUMNS,
    REPORT_NAME,
    CohortSlide,
    find_slides,
    run_cohort,
)
from wsi_s2lcm.config import ExportConfig, PostprocessConfig
from wsi_s2lcm.dispatch import open_dispatcher
from wsi_s2lcm.errors import ConfigError
from wsi_s2lcm.segment import SegmentOptions

IMAGES = ("TCGA-18-5592-01Z-00-DX1", "TCGA-21-5784-01Z-00-DX1")
FAKE = SegmentOptions(predictor_spec=DarknessPredictor(), export=ExportConfig(overlay=False))


@pytest.fixture()
def cohort_dir(tmp_path, monuseg_dir, slides_dir) -> Path:
    """Two real MoNuSeg images, a truncated real slide and a text file named like a slide."""
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in IMAGES:
        shutil.copy(monuseg_dir / "images" / f"{name}.tif", folder)
    real = (slides_dir / "CMU-1-Small-Region.svs").read_bytes()
    (folder / "truncated.svs").write_bytes(real[: len(real) // 3])
    (folder / "notes.svs").write_text("not a slide\n")
    return folder


def manifest(folder: Path, mpp: float = 0.25) -> list[CohortSlide]:
    return [CohortSlide(s.path, mpp if s.path.suffix == ".tif" else None)
            for s in find_slides(folder)]


def read_report(out: Path) -> list[dict[str, str]]:
    with open(out / REPORT_NAME, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_folder_gives_its_slide_files_in_order(tmp_path):
    for name in ("b.tif", "a.svs", "c.txt", ".hidden.svs", "d.NDPI"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.svs").write_bytes(b"")
    assert [s.path.name for s in find_slides(tmp_path)] == ["a.svs", "b.tif", "d.NDPI"]
    assert all(s.mpp is None for s in find_slides(tmp_path))


def test_missing_empty_and_other_sources_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        find_slides(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="no slide files"):
        find_slides(tmp_path)
    with pytest.raises(ConfigError, match="not a folder or a .csv manifest"):
        find_slides(tmp_path / "notes.txt")


def test_a_manifest_gives_paths_beside_it_and_per_slide_mpp(tmp_path):
    (tmp_path / "m.csv").write_text("slide,mpp\nimages/a.tif,0.25\n/abs/b.svs,\n")
    slides = find_slides(tmp_path / "m.csv")
    assert slides == [CohortSlide(tmp_path / "images" / "a.tif", 0.25),
                      CohortSlide(Path("/abs/b.svs"), None)]
    (tmp_path / "cols.csv").write_text("path\na.svs\n")
    with pytest.raises(ConfigError, match="'slide' column"):
        find_slides(tmp_path / "cols.csv")
    (tmp_path / "mpp.csv").write_text("slide,mpp\na.svs,0.5\nb.svs,-1\n")
    with pytest.raises(ConfigError, match="line 3: mpp '-1'"):
        find_slides(tmp_path / "mpp.csv")
    (tmp_path / "blank.csv").write_text("slide\n\n , \n")
    with pytest.raises(ConfigError, match="line 3: the slide column is empty"):
        find_slides(tmp_path / "blank.csv")
    (tmp_path / "header.csv").write_text("slide, mpp\n")
    with pytest.raises(ConfigError, match="lists no slides"):
        find_slides(tmp_path / "header.csv")
    (tmp_path / "spaced.csv").write_text("slide , mpp\na.svs, 0.5\n")
    assert find_slides(tmp_path / "spaced.csv") == [CohortSlide(tmp_path / "a.svs", 0.5)]
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ConfigError, match="found columns: none"):
        find_slides(tmp_path / "empty.csv")


def test_bad_slides_are_reported_and_the_others_segmented(tmp_path, cohort_dir):
    out = tmp_path / "out"
    with open_dispatcher(workers=0) as dispatcher:
        records = run_cohort(manifest(cohort_dir), out, FAKE, dispatcher)
    by_name = {Path(r["slide"]).name: r for r in records}
    assert [r["status"] for r in records] == ["done", "done", "failed", "failed"]
    assert "notes.svs: OpenSlide does not recognise it" in by_name["notes.svs"]["error"]
    assert "truncated.svs" in by_name["truncated.svs"]["error"]
    for name in IMAGES:
        record = by_name[f"{name}.tif"]
        features = json.loads((out / f"{name}.geojson").read_text())["features"]
        assert record["nuclei"] == len(features) > 100
        assert record["geojson"] == str(out / f"{name}.geojson")
        assert record["tiles"] >= 1 and record["seconds"] > 0
    assert not list(out.glob("notes*")) and not list(out.glob("truncated*"))
    report = read_report(out)
    assert list(report[0]) == list(REPORT_COLUMNS)
    assert [row["status"] for row in report] == [r["status"] for r in records]
    assert [int(row["nuclei"]) for row in report if row["status"] == "done"] == [
        by_name[f"{name}.tif"]["nuclei"] for name in IMAGES]


def test_a_second_run_skips_done_slides_and_never_replaces_other_outputs(tmp_path, cohort_dir):
    out = tmp_path / "out"
    slides = [s for s in manifest(cohort_dir) if s.path.suffix == ".tif"]
    first, second = (out / f"{name}.geojson" for name in IMAGES)
    with open_dispatcher(workers=0) as dispatcher:
        run_cohort(slides, out, FAKE, dispatcher)
        stamps = {p: p.stat().st_mtime_ns for p in out.iterdir()}

        again = run_cohort(slides, out, FAKE, dispatcher)
        assert [r["status"] for r in again] == ["skipped", "skipped"]
        assert {p: p.stat().st_mtime_ns for p in out.iterdir() if p.name != REPORT_NAME} == {
            p: t for p, t in stamps.items() if p.name != REPORT_NAME}

        other = SegmentOptions(predictor_spec=FAKE.predictor_spec, export=FAKE.export,
                               postprocess=PostprocessConfig(h_um=1.5))
        changed = run_cohort(slides, out, other, dispatcher)
        assert [r["status"] for r in changed] == ["failed", "failed"]
        assert "other settings (postprocess)" in changed[0]["error"]
        assert first.stat().st_mtime_ns == stamps[first]
        other_mpp = [CohortSlide(s.path, 0.3) for s in slides]
        assert "other settings (mpp)" in run_cohort(other_mpp, out, FAKE, dispatcher)[0]["error"]

        (out / f"{IMAGES[0]}.zarr").rename(tmp_path / "moved.zarr")
        (out / f"{IMAGES[1]}.json").unlink()
        second.write_text("my own annotations\n")
        resumed = run_cohort(slides, out, FAKE, dispatcher)
        assert [r["status"] for r in resumed] == ["done", "failed"]
        assert first.stat().st_mtime_ns != stamps[first] and (out / f"{IMAGES[0]}.zarr").is_dir()
        assert "no run summary of this tool" in resumed[1]["error"]
        assert second.read_text() == "my own annotations\n"

        replaced = run_cohort(slides, out, SegmentOptions(
            predictor_spec=FAKE.predictor_spec, export=ExportConfig(overlay=False, overwrite=True)
        ), dispatcher)
        assert [r["status"] for r in replaced] == ["done", "done"]
        assert json.loads(second.read_text())["type"] == "FeatureCollection"


def test_two_slides_of_one_stem_are_refused_before_any_work(tmp_path, cohort_dir):
    slides = [CohortSlide(cohort_dir / "notes.svs"), CohortSlide(tmp_path / "notes.svs")]
    with open_dispatcher(workers=0) as dispatcher, pytest.raises(ConfigError, match="both write"):
        run_cohort(slides, tmp_path / "out", FAKE, dispatcher)
    assert not (tmp_path / "out").exists()


def test_slides_run_at_once_on_local_workers(tmp_path, cohort_dir):
    with open_dispatcher(workers=2, in_flight=4) as dispatcher:
        records = run_cohort(manifest(cohort_dir), tmp_path / "out", FAKE, dispatcher)
    assert [r["status"] for r in records] == ["done", "done", "failed", "failed"]


def test_a_batch_job_cluster_writes_the_job_script_it_is_given():
    cluster = dispatch.jobqueue_cluster(
        "slurm", {"cores": 8, "processes": 1, "memory": "32GB", "walltime": "04:00:00",
                  "queue": "gpu"}
    )
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH --cpus-per-task=8", "#SBATCH -t 04:00:00", "#SBATCH -p gpu"):
        assert line in script
    assert "--nthreads 8" in script


def test_batch_cluster_errors_say_what_to_do():
    with pytest.raises(ConfigError, match="unknown; choose local or one of slurm"):
        dispatch.jobqueue_cluster("condor", {})
    with pytest.raises(ConfigError, match="--cluster-option KEY=VALUE"):
        dispatch.jobqueue_cluster("pbs", {"cores": 2, "memory": "4GB", "bogus": 1})
    with pytest.raises(ConfigError, match="leave out --scheduler"):
        with open_dispatcher(cluster="slurm", scheduler="tcp://127.0.0.1:8786"):
            pass


def test_a_cohort_runs_on_batch_jobs(tmp_path, cohort_dir, monkeypatch):
    # dask-jobqueue's own local "batch system" runs each job script as a subprocess: the whole
    # path of --cluster (job script, submission, workers joining) without a real scheduler.
    monkeypatch.setitem(
        dispatch.JOBQUEUE_CLUSTERS, "local-jobs", "dask_jobqueue.local:LocalCluster"
    )
    # Its jobs inherit this environment: the job's worker must import the fake predictor.
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent))
    options = {"cores": 1, "memory": "2GB", "processes": 1}
    with open_dispatcher(cluster="local-jobs", jobs=1, cluster_options=options) as dispatcher:
        assert dispatcher.workers is None, "batch jobs run on other machines"
        records = run_cohort(manifest(cohort_dir), tmp_path / "out", FAKE, dispatcher)
        # the job's one process runs one slide at a time with its one core, not this machine's
        threads = [result for _, result, _ in dispatcher.as_completed(task_threads_of, [0])]
        job_pids = set(dispatcher.client.run(os.getpid).values())
    assert [r["status"] for r in records] == ["done", "done", "failed", "failed"]
    assert threads == [1] and os.getpid() not in job_pids


def task_threads_of(_: int) -> int | None:
    return dispatch.task_threads()


def run_cli(*args) -> object:
    return CliRunner().invoke(main, ["cohort", *[str(a) for a in args]], catch_exceptions=False)


def test_cohort_command_exits_3_when_a_slide_fails_and_resumes(
    tmp_path, cohort_dir, untrained_model
):
    (tmp_path / "m.csv").write_text(f"slide,mpp\n{cohort_dir / (IMAGES[0] + '.tif')},0.25\n"
                                    f"{cohort_dir / 'notes.svs'},\n")
    args = [tmp_path / "m.csv", "--out", tmp_path / "out", "--model", untrained_model,
            "--workers", 0]
    result = run_cli(*args)
    assert result.exit_code == 3, result.output
    assert "2 slides: 1 segmented, 0 complete from an earlier run, 1 failed" in result.output
    assert (tmp_path / "out" / f"{IMAGES[0]}.geojson").exists()
    again = run_cli(*args)
    assert again.exit_code == 3
    assert "0 segmented, 1 complete from an earlier run, 1 failed" in again.output
    assert [row["status"] for row in read_report(tmp_path / "out")] == ["skipped", "failed"]


def test_cohort_command_refuses_bad_usage_with_exit_2(tmp_path, cohort_dir, untrained_model):
    result = run_cli(tmp_path / "nope", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "no such folder or manifest" in result.output
    result = run_cli(cohort_dir, "--out", cohort_dir, "--model", untrained_model)
    assert result.exit_code == 2 and "is the slide folder itself" in result.output
    result = run_cli(cohort_dir, "--out", tmp_path / "out", "--cluster-option", "cores=2")
    assert result.exit_code == 2 and "add --cluster slurm" in result.output
    assert not (tmp_path / "out").exists()


def test_the_example_manifest_lists_readable_real_slides():
    from wsi_s2lcm.slide import check_readable, open_slide

    slides = find_slides(Path(__file__).resolve().parents[1] / "examples" / "cohort.csv")
    assert len(slides) == 3
    for slide in slides:
        with open_slide(slide.path, mpp=slide.mpp) as opened:
            check_readable(opened)
