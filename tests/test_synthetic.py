"""bench/synthetic.py: a seeded ML-20M-shaped ratings.csv, checked at small sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import synthetic

USERS, ITEMS, EVENTS = 300, 400, 30_000


@pytest.fixture(scope="module")
def ratings_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "ml-20m" / "ratings.csv"
    assert synthetic.main(["--users", str(USERS), "--items", str(ITEMS), "--events",
                           str(EVENTS), "--seed", "3", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def ratings(ratings_csv: Path) -> pd.DataFrame:
    return pd.read_csv(ratings_csv)


def test_header_and_line_format_are_ml_20m(ratings_csv: Path) -> None:
    lines = ratings_csv.read_text().splitlines()
    assert lines[0] == "userId,movieId,rating,timestamp"
    assert len(lines) == EVENTS + 1
    user, movie, rating, ts = lines[1].split(",")
    assert user == "1" and movie.isdigit() and ts.isdigit()
    assert rating in synthetic.RATINGS  # "4.0", never "4"
    assert {line.split(",")[2] for line in lines[1:]} == set(synthetic.RATINGS)


def test_counts_and_each_pair_once(ratings: pd.DataFrame) -> None:
    assert len(ratings) == EVENTS
    assert sorted(ratings["userId"].unique()) == list(range(1, USERS + 1))
    assert ratings["movieId"].nunique() == ITEMS
    assert not ratings.duplicated(["userId", "movieId"]).any()
    per_user = ratings.groupby("userId").size()
    assert per_user.min() >= synthetic.MIN_PER_USER
    assert per_user.max() <= max(np.ceil(synthetic.MAX_SHARE_PER_USER * ITEMS), 2 * EVENTS // USERS)
    assert per_user.quantile(0.9) > 3 * per_user.quantile(0.1)  # heavy-tailed, not uniform
    assert ratings["movieId"].min() >= 1 and ratings["movieId"].max() <= 5 * ITEMS
    assert set(ratings["rating"].unique()) <= {0.5 * k for k in range(1, 11)}


def test_rows_grouped_by_user_in_strict_time_order(ratings: pd.DataFrame) -> None:
    assert ratings["userId"].is_monotonic_increasing
    steps = ratings.groupby("userId")["timestamp"].diff().dropna()
    assert (steps > 0).all()
    assert ratings["timestamp"].min() >= synthetic.FIRST_TS
    assert ratings["timestamp"].max() <= synthetic.LAST_TS
    spans = ratings.groupby("userId")["timestamp"].agg(lambda t: t.max() - t.min())
    assert spans.min() < 86_400 < 30 * 86_400 < spans.max()  # one sitting .. many months


def test_item_popularity_is_skewed(ratings: pd.DataFrame) -> None:
    popularity = ratings["movieId"].value_counts()  # most rated first
    top_share = popularity.iloc[: ITEMS // 10].sum() / EVENTS
    assert top_share > 0.25  # uniform would give 0.10
    assert popularity.iloc[0] > 5 * popularity.median()
    assert popularity.iloc[0] <= USERS  # nobody rates a film twice


def test_same_seed_same_bytes_other_seed_other_file(ratings_csv: Path,
                                                    tmp_path: Path) -> None:
    again = synthetic.write_ratings_csv(tmp_path / "again.csv", n_users=USERS, n_items=ITEMS,
                                        n_events=EVENTS, seed=3)
    assert again.read_bytes() == ratings_csv.read_bytes()
    other = synthetic.write_ratings_csv(tmp_path / "other.csv", n_users=USERS, n_items=ITEMS,
                                        n_events=EVENTS, seed=4)
    assert other.read_bytes() != ratings_csv.read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))  # written under a temporary name, then renamed


def test_impossible_shapes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="do not fit"):
        synthetic.write_ratings_csv(tmp_path / "x.csv", n_users=10, n_items=5, n_events=60)
    with pytest.raises(ValueError, match="events >= users"):
        synthetic.write_ratings_csv(tmp_path / "y.csv", n_users=10, n_items=5, n_events=5)
    assert not list(tmp_path.iterdir())


def test_sasrec_training_bench_runs_on_a_tiny_slice() -> None:
    """bench/train_sasrec.py on the CPU, two batches: it prints its table (it must not rot)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "bench" / "train_sasrec.py"),
                           "--max-batches", "1", "--batch-size", "8", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines()
            if line.startswith(("| bce", "| sampled_softmax", "| softmax"))]
    assert len(rows) == 3 and all(float(r.split("|")[4].replace(",", "")) > 0 for r in rows)
