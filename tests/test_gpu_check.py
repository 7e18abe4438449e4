"""bench/gpu_check.sh and the scripts it runs (bench/dag_scale.py, bench/recommend.py,
bench/gpu_summary.py): their pieces on made-up figures, and the whole check on the CPU with
tiny shapes, so that the script a GPU day needs cannot rot."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from bench import dag_scale, gpu_summary, recommend, synthetic
from jobs.lake.config import load_data_config
from jobs.ops import stack
from ncf_model.config import load_ncf_config

REPO = Path(__file__).resolve().parents[1]
STEPS = ("train", "dag", "recommend")
NUMBER = r"\d[\d,]*(\.\d+)?"


def test_dag_scale_config_caps_training_and_keeps_the_rest_as_shipped(tmp_path: Path) -> None:
    sha = "0" * 64
    capped = dag_scale.write_config(tmp_path / "capped", sha, "capped")
    data, model = load_data_config(capped), load_ncf_config(capped)
    assert data.dataset == dag_scale.DATASET
    assert data.source.files["ratings"].sha256 == sha
    assert (model.train.epochs, model.train.batch_size, model.train.n_negatives) == (
        1, 65_536, 4)
    assert (model.mf.epochs, model.mf.batch_size, model.mf.n_negatives) == (1, 65_536, 4)
    assert (model.sasrec.epochs, model.sasrec.batch_size, model.sasrec.max_len) == (1, 1_024, 50)
    assert data.als.max_iter == 5
    shipped = load_data_config(REPO / "configs" / "ml-20m.yaml")
    assert data.prepare == shipped.prepare and data.ingest == shipped.ingest
    assert data.candidates == shipped.candidates
    assert model.ease == load_ncf_config(REPO / "configs" / "ml-20m.yaml").ease
    assert model.evaluate == load_ncf_config(REPO / "configs" / "ml-20m.yaml").evaluate
    assert model.evaluate.full_ranking_max_users == 10_000
    as_shipped = load_ncf_config(dag_scale.write_config(tmp_path / "shipped", sha, "shipped"))
    assert as_shipped.train == load_ncf_config(REPO / "configs" / "ml-20m.yaml").train
    fewer = load_data_config(dag_scale.write_config(tmp_path / "fewer", sha, "capped",
                                                    ["ncf", "popularity"]))
    assert fewer.candidates.families == ("ncf", "popularity")


def test_scaled_shape_follows_ml_20m() -> None:
    assert dag_scale.scaled_shape(synthetic.ML_20M_EVENTS, None, None) == (
        synthetic.ML_20M_USERS, synthetic.ML_20M_ITEMS)
    users, items = dag_scale.scaled_shape(synthetic.ML_20M_EVENTS // 4, None, None)
    assert users == pytest.approx(synthetic.ML_20M_USERS / 4, rel=1e-3)
    assert items == pytest.approx(synthetic.ML_20M_ITEMS / 4, rel=1e-3)
    assert dag_scale.scaled_shape(20_000, None, None) == (138, 1_000)  # the floors
    assert dag_scale.scaled_shape(20_000, 200, 1_500) == (200, 1_500)


def test_sampler_peaks_per_interval_and_the_table() -> None:
    sampler = dag_scale.Sampler(pid=0, interval=1.0)
    gib = dag_scale.GIB
    sampler.samples = [(10.0, 1 * gib, 0), (11.0, 3 * gib, 2 * gib), (12.0, 2 * gib, gib),
                       (20.0, 5 * gib, 0)]
    assert sampler.peak(10.0, 12.0) == (3 * gib, 2 * gib, gib)  # python: max(total - jvm)
    assert sampler.peak(13.0, 19.0) == (0, 0, 0)
    stage = {"state": "success", "seconds": 2.0, "peak_rss_gib": 3.0, "peak_jvm_gib": 2.0,
             "peak_python_gib": 1.0}
    result = {"shape": {"events": 1000, "users": 10, "items": 20}, "training": "capped",
              "families": "as shipped", "device": "cpu", "wall_seconds": 30.0,
              "success": True, "stage_seconds": 22.0, "peak_rss_gib": 5.0,
              "stages": {task: stage for task in dag_scale.TASKS}}
    table = dag_scale.markdown(result)
    for task in dag_scale.TASKS:
        assert f"| {task} | success | 2.0 | 3.00 | 2.00 | 1.00 |" in table
    assert "| **total** | success | 22.0 | 5.00 | | |" in table
    assert "per family" not in table  # no candidates entry in the manifest
    manifest = {"candidates": {"served_family": "mf", "families": {
        "mf": {"skipped": None, "seconds": {"select": 3.0, "refit_test": 2.5, "refit_serve": 2.0},
               "validation": {"val_ndcg_10": 0.41}},
        "ease": {"skipped": "EASE on n_items=26,744 needs ~30 min", "seconds": {},
                 "validation": {}}}}}
    result["per_family"] = dag_scale.family_seconds(manifest)
    result["served_family"] = "mf"
    table = dag_scale.markdown(result)
    assert "(served: mf)" in table and "| mf | 3.0 | 2.5 | 2.0 | 0.4100 |" in table
    assert "| ease | skipped: EASE on n_items=26,744 needs ~30 min | | | |" in table


def test_gpu_summary_has_a_row_per_step_and_fails_on_a_timeout(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "train.log").write_text(
        "ours (on-device epoch)       122,000,000 samples/s, epoch 0.81 s\n"
        "ratio ours / baseline                1016.7x\n"
        "full ranking of 26,744 items, top-10, all users: 6.70 s (chunks of 1024 users)\n")
    stage = {"state": "success", "seconds": 4.0, "peak_rss_gib": 1.5}
    (tmp_path / "dag.json").write_text(json.dumps({
        "shape": {"events": 20_000_263}, "stages": {"ingest": stage, "train": stage},
        "stage_seconds": 8.0, "peak_rss_gib": 2.5, "served_family": "mf"}))
    (tmp_path / "recommend.json").write_text(json.dumps({
        "users": 138_493, "items": 26_744, "split_seconds": 6.7, "naive_seconds": 19.8,
        "naive_users": 138_493, "same_items": 1.0}))
    (tmp_path / "steps.tsv").write_text("train\t0\t95.5\tbench/train.py\n"
                                        "dag\t0\t260.0\tbench/dag_scale.py\n"
                                        "recommend\t124\t60.0\tbench/recommend.py\n")
    assert gpu_summary.main([str(tmp_path)]) == 1  # recommend timed out
    out = capsys.readouterr().out
    assert "| train | ok | 95.5 | samples/s 122,000,000; epoch s 0.81; vs loader 1016.7; " \
           "full ranking s 6.70 |" in out
    assert "| dag | ok | 260.0 | 20,000,263 events; 2/2 tasks ok; stages 8 s" in out
    assert "| recommend | timeout | 60.0 | 138,493 users x 26,744 items: split layer 6.70 s, " \
           "pairs 19.80 s" in out
    assert "| total | failed | 415.5 |" in out


def test_recommend_bench_split_layer_chooses_what_the_pairs_choose(tmp_path: Path) -> None:
    out = tmp_path / "recommend.json"
    assert recommend.main(["--shape", "tiny", "--device", "cpu", "--factors", "8",
                           "--layers", "16,8", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert (result["users"], result["items"], result["naive_users"]) == (500, 300, 500)
    assert result["split_seconds"] > 0 and result["naive_seconds"] > 0
    assert result["same_items"] == 1.0


@pytest.mark.slow
@pytest.mark.spark
def test_gpu_check_runs_on_the_cpu_with_tiny_shapes(tmp_path: Path) -> None:
    work = tmp_path / "work"
    env = {**os.environ, "GPU_CHECK_SHAPE": "tiny", "GPU_CHECK_DEVICE": "cpu",
           "GPU_CHECK_WORK": str(work), "NCF_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh")], env=env, cwd=REPO,
                          check=False,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = done.stdout[done.stdout.index("| step | status | seconds | figures | command |"):]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert set(rows) == {*STEPS, "total"}
    for step in STEPS:
        cells = [cell.strip() for cell in rows[step].split("|")]
        assert cells[2] == "ok", rows[step]
        assert float(cells[3]) > 0, rows[step]
        assert len(re.findall(NUMBER, cells[4])) >= 3, rows[step]  # the step's figures
    assert "samples/s" in rows["train"] and "full ranking s" in rows["train"]
    assert "20,000 events; 11/11 tasks ok" in rows["dag"]
    assert "same items 1.0000" in rows["recommend"]
    # the DAG step's own per-stage table and JSON
    result = json.loads((work / "dag.json").read_text())
    assert result["success"] and list(result["stages"]) == list(dag_scale.TASKS)
    for name, stage in result["stages"].items():
        assert stage["state"] == "success" and stage["seconds"] > 0, name
        assert stage["peak_rss_gib"] > 0, name
    assert result["stages"]["ingest"]["peak_jvm_gib"] > 0  # Spark's JVM is seen
    assert result["counts"]["n_users"] == 200
    md = (work / "dag" / "dag_scale.md").read_text()
    assert all(f"| {task} | success |" in md for task in dag_scale.TASKS)


@pytest.mark.slow
@pytest.mark.spark
def test_dag_scale_through_the_scheduler_runs_als_beside_train(tmp_path: Path) -> None:
    """--mode scheduler: the production stack on free ports, one triggered run, the stack
    stopped after; als and train overlap, so the run is shorter than its stages' sum."""
    work = tmp_path / "work"
    code = dag_scale.main(["--events", "20000", "--users", "200", "--items", "1000",
                           "--families", "ncf,als,popularity", "--device", "cpu",
                           "--mode", "scheduler", "--work", str(work),
                           "--cache-dir", str(tmp_path / "cache"), "--timeout", "900"])
    result = json.loads((work / "dag_scale.json").read_text())
    assert code == 0, (work / "dag.log").read_text()[-3000:]
    assert result["mode"] == "scheduler" and result["success"]
    assert all(stage["state"] == "success" for stage in result["stages"].values())
    intervals = dag_scale.task_intervals(work / "airflow", f"ncf_{dag_scale.DATASET}")
    (train_start, train_end, _), (als_start, als_end, _) = intervals["train"], intervals["als"]
    assert max(train_start, als_start) < min(train_end, als_end)  # side by side
    assert 0 < result["run_seconds"] < result["stage_seconds"]
    assert result["stages"]["als"]["peak_jvm_gib"] > 0  # the scheduler's tree holds the JVM
    assert not stack_pids(work / "airflow")  # stopped
    assert "mode scheduler" in (work / "dag_scale.md").read_text()


def stack_pids(airflow_home: Path) -> dict[str, int]:
    return stack.running(stack.Settings(airflow_home, 0, 0, 2, "", Path()))
