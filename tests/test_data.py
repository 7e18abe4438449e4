"""ncf_model.data: Parquet pairs onto the device, exact negative resampling, batches."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs.lake.layout import ITEM_IDX, LABEL, PAIRS_SCHEMA, USER_IDX, arrow_schema
from ncf_model.data import Pairs, TrainingData, load_pairs

N_USERS, N_ITEMS = 6, 10


def _positives() -> Pairs:
    """User u likes items u..u+3 (user 5: 5..8), plus user 0 likes 9 too."""
    user = torch.tensor([u for u in range(N_USERS) for _ in range(4)] + [0])
    item = torch.tensor([u + j for u in range(N_USERS) for j in range(4)] + [9])
    return Pairs(user, item, torch.ones(len(user)))


def _key_set(user: torch.Tensor, item: torch.Tensor) -> set[tuple[int, int]]:
    return set(zip(user.tolist(), item.tolist(), strict=True))


def _collect(batches):
    user, item, label = (torch.cat(parts) for parts in zip(*batches, strict=True))
    return user, item, label


def test_load_pairs_reads_a_spark_style_folder(tmp_path: Path) -> None:
    folder = tmp_path / "train"
    folder.mkdir()
    schema = arrow_schema(PAIRS_SCHEMA)
    pq.write_table(pa.table({USER_IDX: [0, 1], ITEM_IDX: [3, 4], LABEL: [1, 0]}, schema=schema),
                   folder / "part-00000.parquet")
    pq.write_table(pa.table({USER_IDX: [2], ITEM_IDX: [5], LABEL: [1]}, schema=schema),
                   folder / "part-00001.parquet")
    (folder / "_SUCCESS").touch()

    pairs = load_pairs(folder, "cpu")
    order = torch.argsort(pairs.user)
    assert pairs.user[order].tolist() == [0, 1, 2]
    assert pairs.item[order].tolist() == [3, 4, 5]
    assert pairs.label[order].tolist() == [1.0, 0.0, 1.0]
    assert (pairs.user.dtype, pairs.item.dtype, pairs.label.dtype) == (
        torch.int64, torch.int64, torch.float32)


def test_load_pairs_names_the_missing_column_and_folder(tmp_path: Path) -> None:
    pq.write_table(pa.table({USER_IDX: [0], "item": [3], LABEL: [1]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match=rf"x.parquet: missing column\(s\) \['{ITEM_IDX}'\]"):
        load_pairs(tmp_path / "x.parquet", "cpu")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_pairs(tmp_path / "nowhere", "cpu")


def test_resampled_negatives_never_hit_a_positive_and_counts_are_exact() -> None:
    positives = _positives()
    data = TrainingData(positives, n_users=N_USERS, n_items=N_ITEMS)
    user, item, label = _collect(data.epoch(5, 7, torch.Generator().manual_seed(0), "resample"))

    assert len(label) == len(positives) * 6
    assert int(label.sum()) == len(positives)
    liked = _key_set(positives.user, positives.item)
    negatives = label == 0
    assert _key_set(user[negatives], item[negatives]).isdisjoint(liked)
    assert _key_set(user[~negatives], item[~negatives]) == liked
    # 5 negatives for each of a user's positives: user 0 has 5 positives, the others 4.
    assert torch.bincount(user[negatives], minlength=N_USERS).tolist() == [25] + [20] * 5
    assert ((item >= 0) & (item < N_ITEMS)).all()


def test_a_nearly_full_user_still_gets_only_unseen_items() -> None:
    # User 0 likes 9 of 10 items: every negative must be item 9 (many redraw rounds).
    user = torch.zeros(9, dtype=torch.long)
    data = TrainingData(Pairs(user, torch.arange(9), torch.ones(9)), n_users=1, n_items=10)
    neg_user, neg_item = data.sample_negatives(4, torch.Generator().manual_seed(1))
    assert neg_item.tolist() == [9] * 36
    assert neg_user.tolist() == [0] * 36


def test_same_seed_same_batches_other_seed_other_batches() -> None:
    data = TrainingData(_positives(), n_users=N_USERS, n_items=N_ITEMS)
    first = list(data.epoch(4, 16, torch.Generator().manual_seed(7), "resample"))
    again = list(data.epoch(4, 16, torch.Generator().manual_seed(7), "resample"))
    other = list(data.epoch(4, 16, torch.Generator().manual_seed(8), "resample"))
    assert [b.shape[0] for b, _, _ in first] == [16] * 7 + [13]  # 125 samples
    assert all(torch.equal(x, y) for a, b in zip(first, again, strict=True)
               for x, y in zip(a, b, strict=True))
    assert not torch.equal(_collect(first)[1], _collect(other)[1])


def test_a_user_with_every_item_positive_is_an_error() -> None:
    user = torch.tensor([0] * N_ITEMS + [1])
    item = torch.tensor(list(range(N_ITEMS)) + [0])
    data = TrainingData(Pairs(user, item, torch.ones(len(user))), n_users=2, n_items=N_ITEMS)
    with pytest.raises(ValueError, match=r"user_idx \[0\] .* every one of the 10 items"):
        data.epoch(1, 8, torch.Generator().manual_seed(0), "resample")


def test_lake_mode_uses_the_stored_negatives_as_they_are() -> None:
    pairs = Pairs(torch.tensor([0, 0, 0, 1, 1]), torch.tensor([1, 2, 3, 4, 1]),
                  torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0]))
    data = TrainingData(pairs, n_users=2, n_items=5)
    user, item, label = _collect(data.epoch(4, 2, torch.Generator().manual_seed(0), "lake"))
    rows = sorted(zip(user.tolist(), item.tolist(), label.tolist(), strict=True))
    assert rows == [(0, 1, 1.0), (0, 2, 0.0), (0, 3, 0.0), (1, 1, 0.0), (1, 4, 1.0)]

    only_positives = TrainingData(Pairs(pairs.user[:1], pairs.item[:1], pairs.label[:1]),
                                  n_users=2, n_items=5)
    with pytest.raises(ValueError, match="no label-0 rows"):
        only_positives.epoch(4, 2, torch.Generator().manual_seed(0), "lake")


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="outside 6 users x 3 items"):
        TrainingData(_positives(), n_users=N_USERS, n_items=3)
    data = TrainingData(_positives(), n_users=N_USERS, n_items=N_ITEMS)
    with pytest.raises(ValueError, match="'sometimes' is not one of"):
        data.epoch(4, 2, torch.Generator(), "sometimes")


def test_pair_epoch_pairs_each_positive_with_its_own_unseen_negatives() -> None:
    positives = _positives()
    data = TrainingData(positives, n_users=N_USERS, n_items=N_ITEMS)
    batches = data.pair_epoch(3, 10, torch.Generator().manual_seed(0))
    user, positive, negative = _collect(batches)

    assert [b[0].shape[0] for b in batches] == [10] * 7 + [5]  # 25 positives x 3
    liked = _key_set(positives.user, positives.item)
    assert _key_set(user, positive) == liked  # every (user, positive) is a real positive
    assert _key_set(user, negative).isdisjoint(liked)
    pairs = sorted(zip(user.tolist(), positive.tolist(), strict=True))
    assert pairs == sorted([p for p in zip(positives.user.tolist(), positives.item.tolist(),
                                           strict=True) for _ in range(3)])
    again = _collect(data.pair_epoch(3, 10, torch.Generator().manual_seed(0)))
    assert all(torch.equal(x, y) for x, y in zip((user, positive, negative), again, strict=True))
