"""ncf_model.features: side features joined to the indices and encoded as codes."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs.lake import layout
from ncf_model.data import load_side_features
from ncf_model.features import (
    FeatureVocabulary,
    SideFeatureError,
    build_vocabulary,
    encode,
    pad_bags,
)

USER_IDS = ["u0", "u1", "u2", "u3"]
ITEM_IDS = ["i0", "i1", "i2", "i3"]


def _user_table(rows: list[tuple]) -> pa.Table:
    names = layout.columns(layout.USER_FEATURES_SCHEMA)
    return pa.Table.from_pylist([dict(zip(names, row, strict=True)) for row in rows],
                                schema=layout.arrow_schema(layout.USER_FEATURES_SCHEMA))


def _item_table(rows: list[tuple]) -> pa.Table:
    names = layout.columns(layout.ITEM_FEATURES_SCHEMA)
    return pa.Table.from_pylist([dict(zip(names, row, strict=True)) for row in rows],
                                schema=layout.arrow_schema(layout.ITEM_FEATURES_SCHEMA))


# u3 has no row; "zz" is a user not in users/; u1's gender is missing.
USERS = _user_table([("u0", "25-34", "F", "artist", None), ("u1", "<18", None, "writer", None),
                     ("u2", "25-34", "M", "artist", None), ("zz", "56+", "X", "chef", "NO")])
# i2 has no genres, i3 no row; "i9" is not in items/.
ITEMS = _item_table([("i0", "A", ["Drama", "Comedy"]), ("i1", "B", ["Comedy"]),
                     ("i2", "C", []), ("i9", "D", ["Horror"])])


def test_vocabulary_holds_the_listed_ids_values_sorted_ages_in_band_order() -> None:
    vocabulary = build_vocabulary(USER_IDS, ITEM_IDS, USERS, ITEMS)
    assert vocabulary.user_values == (("<18", "25-34"), ("F", "M"), ("artist", "writer"), ())
    assert vocabulary.tags == ("Comedy", "Drama")  # Horror: only on an item not in items/
    assert vocabulary.n_user_codes == 1 + 6
    assert FeatureVocabulary.from_json(vocabulary.to_json()) == vocabulary


def test_encode_gives_codes_per_field_and_bags_with_offsets() -> None:
    vocabulary = build_vocabulary(USER_IDS, ITEM_IDS, USERS, ITEMS)
    features = encode(vocabulary, USER_IDS, ITEM_IDS, USERS, ITEMS)
    # codes: 0 missing; age <18=1, 25-34=2; gender F=3, M=4; occupation artist=5, writer=6
    assert features.user_codes.tolist() == [[2, 3, 5, 0], [1, 0, 6, 0], [2, 4, 5, 0],
                                            [0, 0, 0, 0]]
    # bags: i0 = [Drama, Comedy] = [1, 0], i1 = [0], i2 and i3 empty
    assert features.item_tags.tolist() == [1, 0, 0]
    assert features.item_offsets.tolist() == [0, 2, 3, 3]
    assert (features.n_users, features.n_items) == (4, 4)


def test_encode_with_another_days_vocabulary_treats_unknown_values_as_missing() -> None:
    vocabulary = FeatureVocabulary((("25-34",), ("M",), ("chef",), ()), ("Horror",))
    features = encode(vocabulary, ["zz", "u2"], ["i9", "i0"], USERS, ITEMS)
    # zz: 56+ and X unknown here, chef = code 3; u2: 25-34 = 1, M = 2, artist unknown
    assert features.user_codes.tolist() == [[0, 0, 3, 0], [1, 2, 0, 0]]
    assert features.item_tags.tolist() == [0]  # i9's Horror; i0's tags are all unknown
    assert features.item_offsets.tolist() == [0, 1]


def _lake(root: Path, *, user_features: pa.Table | None,
          item_features: pa.Table | None) -> layout.LakePaths:
    paths = layout.LakePaths(root, "tiny", "2026-11-23")
    for name, schema, ids in ((layout.USERS, layout.USERS_SCHEMA, USER_IDS),
                              (layout.ITEMS, layout.ITEMS_SCHEMA, ITEM_IDS)):
        paths.path(name).mkdir(parents=True)
        pq.write_table(pa.Table.from_arrays([pa.array(ids), pa.array(range(4), pa.int32())],
                                            schema=layout.arrow_schema(schema)),
                       paths.path(name) / "part-00000.parquet")
    for name, table in ((layout.USER_FEATURES, user_features),
                        (layout.ITEM_FEATURES, item_features)):
        if table is not None:
            paths.path(name).mkdir(parents=True)
            pq.write_table(table, paths.path(name) / "part-00000.parquet")
    return paths


def test_load_side_features_reads_the_lake(tmp_path: Path) -> None:
    paths = _lake(tmp_path, user_features=USERS, item_features=None)  # users only (last.fm)
    features = load_side_features(paths, USER_IDS, ITEM_IDS)
    assert features.vocabulary.tags == ()
    assert features.user_codes.tolist()[0] == [2, 3, 5, 0]
    assert features.item_offsets.tolist() == [0, 0, 0, 0]


def test_a_lake_without_side_features_is_a_clear_error_for_training(tmp_path: Path) -> None:
    empty_users = _user_table([("u0", None, None, None, None)])
    paths = _lake(tmp_path, user_features=empty_users, item_features=None)
    with pytest.raises(SideFeatureError, match=r"'hybrid' needs side features.*user_features"
                                               r".*use model.kind neumf"):
        load_side_features(paths, USER_IDS, ITEM_IDS)


def test_serving_without_feature_folders_leaves_every_code_missing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    vocabulary = build_vocabulary(USER_IDS, ITEM_IDS, USERS, ITEMS)
    paths = _lake(tmp_path, user_features=None, item_features=None)
    with caplog.at_level(logging.WARNING, logger="ncf_model.features"):
        features = load_side_features(paths, USER_IDS, ITEM_IDS, vocabulary)
    assert features.user_codes.abs().sum() == 0 and features.item_tags.numel() == 0
    assert "has no side features" in caplog.text


def test_pad_bags_gives_one_padded_row_per_item() -> None:
    # Items: (1, 0), (0,), none, (2, 2, 1), none.
    tags, offsets = torch.tensor([1, 0, 0, 2, 2, 1]), torch.tensor([0, 2, 3, 3, 6])
    assert pad_bags(tags, offsets, pad=3).tolist() == [[1, 0, 3], [0, 3, 3], [3, 3, 3],
                                                       [2, 2, 1], [3, 3, 3]]
    assert pad_bags(tags, offsets, pad=3).dtype == torch.int64
    # No tag at all (a last.fm run without item features): one column of padding.
    none = torch.zeros(0, dtype=torch.int64)
    assert pad_bags(none, torch.zeros(3, dtype=torch.int64), pad=0).tolist() == [[0]] * 3
    assert pad_bags(none, none, pad=0).shape == (0, 1)
    # The bags encode() writes.
    vocabulary = build_vocabulary(USER_IDS, ITEM_IDS, USERS, ITEMS)
    features = encode(vocabulary, USER_IDS, ITEM_IDS, USERS, ITEMS)
    assert pad_bags(features.item_tags, features.item_offsets, pad=2).tolist() == [
        [1, 0], [0, 2], [2, 2], [2, 2]]


@pytest.mark.parametrize("offsets", [[1, 2], [0, 3, 2], [0, 7]])
def test_pad_bags_rejects_offsets_that_are_not_bag_starts(offsets: list[int]) -> None:
    with pytest.raises(ValueError, match="must start at 0 and never decrease"):
        pad_bags(torch.tensor([0, 1, 2, 3]), torch.tensor(offsets), pad=4)
