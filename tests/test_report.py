"""jobs.serving.report: the run summary `make run` prints and the per-user lookup."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from jobs.lake import layout
from jobs.serving import report

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "ml-100k.yaml")


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, str]:
    url = f"sqlite:///{tmp_path / 'reco.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE recommendations (dataset TEXT, user_id TEXT, "
                             "rank INT, item_id TEXT, score FLOAT, source TEXT, model_name TEXT, "
                             "model_version TEXT, run_id TEXT, generated_at TIMESTAMP)"))
        for user in ("1", "2"):
            for rank in (1, 2):
                conn.execute(sa.text(
                    "INSERT INTO recommendations VALUES ('ml-100k', :u, :r, :i, :s, "
                    "'model', 'ncf-ml-100k', '3', 'abc', '2026-11-23 01:00:00')"),
                    {"u": user, "r": rank, "i": f"item{rank}", "s": 1.0 / rank})
        conn.execute(sa.text("INSERT INTO recommendations VALUES ('other', '9', 1, 'x', 0.5, "
                             "'model', 'm', '1', 'r', '2026-11-23 01:00:00')"))
    engine.dispose()
    paths = layout.LakePaths(tmp_path / "lake", "ml-100k", "2026-11-23")
    layout.update_manifest(paths, "prepare", {"n_users": 2, "n_items": 5})
    layout.update_manifest(paths, "evaluate", {
        "metrics": {"test_hr_10": 0.61, "test_ndcg_10": 0.33, "test_auc": 0.87},
        "model_name": "ncf-ml-100k", "model_version": "3", "run_id": "abc"})
    return tmp_path / "lake", url


def test_summary_names_metrics_table_rows_and_ui(published: tuple[Path, str]) -> None:
    lake, url = published
    text = report.summarise_run(CONFIG, "2026-11-23", str(lake), url)
    assert "test HR@10           0.6100" in text
    assert "test NDCG@10         0.3300" in text
    assert "rows for ml-100k     4 (2 users)" in text  # the other dataset's row not counted
    assert "version 3" in text and "make ui" in text and str(lake) in text


def test_user_lookup_lists_ranks_in_order(published: tuple[Path, str]) -> None:
    _lake, url = published
    text = report.user_recommendations(CONFIG, "2", url)
    lines = text.splitlines()
    assert "model version 3" in lines[0]
    assert lines[1].strip().startswith("1. item item1")
    assert lines[2].strip().startswith("2. item item2")
    assert "no recommendations" in report.user_recommendations(CONFIG, "404", url)


def test_main_requires_a_date_or_a_user(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        report.main(["--config", CONFIG])
    assert "--logical-date" in capsys.readouterr().err


def test_candidate_lines_list_every_family_best_validation_first_served_marked() -> None:
    candidates = {"select_metric": "ndcg_10", "served_family": "ease", "families": {
        "ncf": {"validation": {"val_ndcg_10": 0.41}, "test": {"test_hr_10": 0.64,
                                                             "test_ndcg_10": 0.36}},
        "ease": {"validation": {"val_ndcg_10": 0.45},
                 "test": {"test_hr_10": 0.67, "test_ndcg_10": 0.40,
                          "test_full_ndcg_10": 0.08}},
        "big": {"skipped": "over the memory limit", "validation": {}, "test": {}}}}
    lines = report.candidate_lines(candidates)
    assert "val ndcg_10" in lines[0]
    assert lines[1].split()[:3] == ["*", "ease", "0.4500"]
    assert lines[2].split()[:4] == ["ncf", "0.4100", "0.6400", "0.3600"]
    assert lines[2].split()[-1] == "—"  # no full-ranking figure
    assert "skipped: over the memory limit" in lines[3]
    assert len(lines) == 4  # no share of unseen test items recorded: no line for it
    candidates["test_unseen_item_share"] = 0.112
    assert report.candidate_lines(candidates)[-1].strip() == (
        "test items the fit never saw: 11.2% (no id-only family's test HR@10 can pass 0.888)")
    assert report.candidate_lines({}) == []
