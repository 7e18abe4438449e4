"""ncf_model.tracking against a real local MLflow store (SQLite in tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ncf_model import tracking
from ncf_model.models import GMF, PairScorer


def test_logged_model_has_a_signature_an_input_example_and_loads_back(
        mlflow_store: str) -> None:
    import mlflow

    torch.manual_seed(0)
    scorer = PairScorer(GMF(5, 7, 4)).eval()
    example = torch.tensor([[0, 0], [4, 6]], dtype=torch.int64).numpy()
    with tracking.start_run("tiny", run_name="model") as run:
        uri = run.log_torch_model(scorer, example)
    info = mlflow.models.get_model_info(uri)
    assert info.signature is not None
    inputs = info.signature.inputs.to_dict()
    outputs = info.signature.outputs.to_dict()
    assert inputs == [{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": (-1, 2)}}]
    assert outputs == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1,)}}]
    assert info.saved_input_example_info["artifact_path"] == "input_example.json"
    loaded = mlflow.pyfunc.load_model(uri)
    expected = scorer(torch.from_numpy(example)).detach().numpy()
    assert loaded.predict(example).tolist() == pytest.approx(expected.tolist())
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    assert (folder / "requirements.txt").read_text().splitlines()[0].startswith("torch==")


def test_evaluation_and_training_curves_are_logged_as_artifacts(
        mlflow_store: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    history = [{"loss": 0.6, "val_hr_10": 0.3, "val_ndcg_10": 0.15},
               {"loss": 0.4, "val_hr_10": 0.5, "val_ndcg_10": 0.25}]
    curve = [0.1 * n for n in range(1, 11)]
    with tracking.start_run("tiny", run_name="eval",
                            tags={"ncf.baseline": "popularity"}) as run:
        run.log_evaluation({"test_hr_10": 1.0, "test_auc": 0.9}, curve, k=10, title="t")
        run.log_dict({"history": history}, tracking.TRAINING_HISTORY)
        run.log_training_curves(history, title="t")
    client = MlflowClient(tracking_uri=mlflow_store)
    assert client.get_run(run.run_id).data.metrics == {"test_hr_10": 1.0, "test_auc": 0.9}
    artifacts = {a.path for a in client.list_artifacts(run.run_id)}
    assert artifacts == {tracking.HR_AT_K_PLOT, tracking.HR_AT_K_DATA,
                         tracking.TRAINING_CURVES_PLOT, tracking.TRAINING_HISTORY}
    folder = Path(client.download_artifacts(run.run_id, "", str(tmp_path / "out")))
    for plot in (tracking.HR_AT_K_PLOT, tracking.TRAINING_CURVES_PLOT):
        assert (folder / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((folder / tracking.HR_AT_K_DATA).read_text())
    assert data["k"] == list(range(1, 11)) and data["hr"] == pytest.approx(curve)
    assert tracking.load_run_dict(run.run_id, tracking.TRAINING_HISTORY) == {"history": history}
    assert tracking.load_run_dict(run.run_id, "missing.json") is None
    assert tracking.find_runs("tiny", {"ncf.baseline": "popularity"}) == [run.run_id]
    assert tracking.find_runs("tiny", {"ncf.baseline": "als"}) == []
