"""Great Expectations suites as code, and the frames derived for cross-row checks.

The suites say what the lake must hold after ingest (``interactions``), after prepare
(``users``, ``items``, the splits, the held-out positives per evaluated user, no negative
that is a positive, no held-out positive left in train, ``sequences`` of train positives
only) and after recommend (``topk``: types, ranges, k ranked rows for every user, scores
falling with rank, no item the user already has). `jobs.quality.validate` runs them and
reports. Importing this module imports Great Expectations (~10 s).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
from great_expectations.core import ExpectationSuite

from jobs.lake import layout
from jobs.lake.layout import (
    EVAL_SPLITS,
    INTERACTIONS,
    INTERACTIONS_SCHEMA,
    ITEM_ID,
    ITEM_IDX,
    ITEMS,
    ITEMS_SCHEMA,
    LABEL,
    PAIRS_SCHEMA,
    RANK,
    SCORE,
    SEQUENCE,
    SEQUENCES,
    SOURCE,
    TOPK,
    TOPK_SCHEMA,
    TRAIN,
    TS,
    USER_ID,
    USER_IDX,
    USERS,
    USERS_SCHEMA,
    VALUE,
    Schema,
)

# Columns of the frames derived for the cross-row checks (not lake columns).
SPLIT = "split"
N_POSITIVES = "n_positives"
N_NEGATIVES = "n_negatives"
NEGATIVE_IS_POSITIVE = "negative_is_positive"
IN_TRAIN_POSITIVES = "in_train_positives"
N_ROWS = "n_rows"
SCORES_NON_INCREASING = "scores_non_increasing"
RECOMMENDED_SEEN = "recommended_seen"
SEQUENCE_LENGTH = "sequence_length"
HELD_OUT = "held_out"

RERUN_PREPARE = "re-run prepare for this date"


# --- suites -------------------------------------------------------------------------


def _suite(name: str, expectations: Sequence[gxe.Expectation]) -> ExpectationSuite:
    # Passed to the constructor: `suite.add_expectation` needs a current GX context
    # (DataContextRequiredError), and building a suite should not.
    return ExpectationSuite(name=name, expectations=list(expectations))


def _table_expectations(schema: Schema, dataset: str) -> list[gxe.Expectation]:
    rerun = f"re-run the stage that writes {dataset}/"
    return [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=layout.columns(schema), exact_match=True,
            meta={"hint": f"{dataset}/ must hold exactly the columns of the lake contract "
                          f"(jobs/lake/layout.py); {rerun}"}),
        gxe.ExpectTableRowCountToBeBetween(
            min_value=1, meta={"hint": f"{dataset}/ is empty; {rerun}, and check its input "
                                       "and its rejects"}),
    ]


def interactions_suite(*, timestamps: bool = True) -> ExpectationSuite:
    """Clean interactions: the columns of the contract, some rows, no nulls, no blank ids.

    timestamps=False, for a source without them (jobs.lake.config.FORMATS_WITHOUT_TIMESTAMPS:
    last.fm 360K, HetRec 2K): ts must then be null throughout, since ingest rejects
    every timestamp it cannot parse and a null ts never hides a bad one.
    """
    no_ts = {"hint": "this source has no timestamps (ts is null: prepare's hold-out is a "
                     "seeded random one); a ts here means ingest read another format"}
    return _suite(INTERACTIONS, [
        *_table_expectations(INTERACTIONS_SCHEMA, INTERACTIONS),
        *(gxe.ExpectColumnValuesToNotBeNull(
            column=column, meta={"hint": f"ingest must send rows without a {column} to "
                                         "rejects/ with a reason; fix ingest and re-run it"})
          for column in ((USER_ID, ITEM_ID, TS, VALUE) if timestamps
                         else (USER_ID, ITEM_ID, VALUE))),
        *([] if timestamps else [gxe.ExpectColumnValuesToBeNull(column=TS, meta=no_ts)]),
        *(gxe.ExpectColumnValuesToNotMatchRegex(
            column=column, regex=r"^\s*$",
            meta={"hint": f"blank {column}s must go to rejects/ as "
                          f"{layout.REASON_EMPTY_ID!r}; fix ingest and re-run it"})
          for column in (USER_ID, ITEM_ID)),
    ])


def index_suite(dataset: str, *, n: int) -> ExpectationSuite:
    """users/ or items/: one row per raw id, indices unique and dense in [0, n)."""
    schema = USERS_SCHEMA if dataset == USERS else ITEMS_SCHEMA
    id_column, idx_column = layout.columns(schema)
    hint = {"hint": f"prepare must index every {id_column} exactly once, densely from 0; "
                    f"{RERUN_PREPARE}"}
    return _suite(dataset, [
        *_table_expectations(schema, dataset),
        *(expectation(column=column, meta=hint)
          for column in (id_column, idx_column)
          for expectation in (gxe.ExpectColumnValuesToNotBeNull,
                              gxe.ExpectColumnValuesToBeUnique)),
        gxe.ExpectColumnValuesToBeBetween(column=idx_column, min_value=0,
                                          max_value=max(n - 1, 0), meta=hint),
    ])


def pairs_suite(split: str, *, n_users: int, n_items: int) -> ExpectationSuite:
    """train/, validation/ or test/: indices within users/ and items/, labels 0 or 1."""
    return _suite(split, [
        *_table_expectations(PAIRS_SCHEMA, split),
        *(gxe.ExpectColumnValuesToNotBeNull(
            column=column, meta={"hint": f"every {split}/ row needs a {column}; {RERUN_PREPARE}"})
          for column in (USER_IDX, ITEM_IDX, LABEL)),
        *(gxe.ExpectColumnValuesToBeBetween(
            column=column, min_value=0, max_value=max(n - 1, 0),
            meta={"hint": f"{column} must index a row of {mapping}/ ({n} rows): {split}/ and "
                          f"{mapping}/ come from different runs or the index is broken; "
                          f"{RERUN_PREPARE}"})
          for column, n, mapping in ((USER_IDX, n_users, USERS), (ITEM_IDX, n_items, ITEMS))),
        gxe.ExpectColumnValuesToBeInSet(
            column=LABEL, value_set=[0, 1],
            meta={"hint": f"labels are 1 (positive) or 0 (sampled negative); {RERUN_PREPARE}"}),
    ])


def per_user_suite(split: str, *, one_positive: bool = True) -> ExpectationSuite:
    """On `per_user_labels(<split>)`: the held-out positive(s) and some negatives per user.

    one_positive: exactly one (leave-one-out's test, every validation split); otherwise
    at least one (time_cutoff and stratified test several positives per user).
    """
    positives = (gxe.ExpectColumnValuesToBeInSet(
        column=N_POSITIVES, value_set=[1],
        meta={"hint": f"leave-one-out holds out exactly one positive per user in {split}/ "
                      f"(each ranking is scored on one positive); {RERUN_PREPARE}"})
        if one_positive else gxe.ExpectColumnValuesToBeBetween(
        column=N_POSITIVES, min_value=1,
        meta={"hint": f"each user of {split}/ needs a held-out positive to rank; "
                      f"{RERUN_PREPARE}"}))
    return _suite(f"{split}_per_user", [
        positives,
        gxe.ExpectColumnValuesToBeBetween(
            column=N_NEGATIVES, min_value=1,
            meta={"hint": f"each evaluated user needs sampled negatives in {split}/ to rank the "
                          f"positive against (prepare.n_eval_negatives); {RERUN_PREPARE}"}),
    ])


def negatives_suite() -> ExpectationSuite:
    """On `negative_collisions(...)`: no sampled negative is a positive of that user."""
    return _suite("negatives", [gxe.ExpectColumnValuesToBeInSet(
        column=NEGATIVE_IS_POSITIVE, value_set=[False],
        meta={"hint": "negative sampling must exclude every item the user interacted with, "
                      "in any split (a positive labelled 0 teaches the model the opposite "
                      f"and deflates the metrics); {RERUN_PREPARE}"})])


def leakage_suite() -> ExpectationSuite:
    """On `eval_positives_in_train(...)`: held-out positives are not training positives."""
    return _suite("leakage", [gxe.ExpectColumnValuesToBeInSet(
        column=IN_TRAIN_POSITIVES, value_set=[False],
        meta={"hint": "a validation/test positive must be removed from train/, or the "
                      f"evaluation measures memorisation; {RERUN_PREPARE}"})])


def sequences_suite(*, max_length: int | None = None) -> ExpectationSuite:
    """On `per_user_sequences(sequences/)`: one per user, 1..max_length items (None: any)."""
    hint = {"hint": "prepare writes one sequence per user with training positives, at most "
                    f"prepare.sequence_length ({max_length or 'not given'}) items; {RERUN_PREPARE}"}
    return _suite(SEQUENCES, [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=hint),
        *(expectation(column=USER_IDX, meta=hint) for expectation in (
            gxe.ExpectColumnValuesToNotBeNull, gxe.ExpectColumnValuesToBeUnique)),
        gxe.ExpectColumnValuesToBeBetween(column=SEQUENCE_LENGTH, min_value=1,
                                          max_value=max_length, meta=hint)])


def sequence_items_suite() -> ExpectationSuite:
    """On `sequence_items(...)`: a sequence holds its user's training positives only."""
    return _suite(f"{SEQUENCES}_items", [
        gxe.ExpectColumnValuesToBeInSet(
            column=HELD_OUT, value_set=[False],
            meta={"hint": "a validation/test positive inside the user's training sequence "
                          f"lets a sequence model see the answer; {RERUN_PREPARE}"}),
        gxe.ExpectColumnValuesToBeInSet(
            column=IN_TRAIN_POSITIVES, value_set=[True],
            meta={"hint": "every item of a sequence must be a train/ positive of the user: "
                          f"sequences/ and train/ come from different runs; {RERUN_PREPARE}"})])


RERUN_RECOMMEND = "re-run recommend for this date (after prepare, if prepare was re-run)"
# Pandas dtypes of the lake's Spark types, as written (before any widening for GX).
_PANDAS_TYPES = {"int": "int32", "float": "float32", "string": "str"}


def topk_schema_suite() -> ExpectationSuite:
    """topk/ as written: exactly the columns of layout.TOPK_SCHEMA, with their dtypes."""
    hint = {"hint": f"{TOPK}/ must follow the lake contract (jobs/lake/layout.py TOPK_SCHEMA); "
                    f"fix ncf_model's recommend and {RERUN_RECOMMEND}"}
    return _suite(f"{TOPK}_schema", [
        gxe.ExpectTableColumnsToMatchSet(column_set=layout.columns(TOPK_SCHEMA),
                                         exact_match=True, meta=hint),
        *(gxe.ExpectColumnValuesToBeOfType(column=column, type_=_PANDAS_TYPES[dtype], meta=hint)
          for column, dtype in TOPK_SCHEMA),
    ])


def topk_suite(*, n_users: int, n_items: int, k: int) -> ExpectationSuite:
    """topk/ rows: k per user of users/, indices in range, ranks 1..k, no repeats, scores."""
    fix = f"; {RERUN_RECOMMEND}"
    return _suite(TOPK, [
        gxe.ExpectTableRowCountToEqual(
            value=n_users * k,
            meta={"hint": f"k={k} rows for each of the {n_users} users of users/{fix}"}),
        *(gxe.ExpectColumnValuesToNotBeNull(
            column=column, meta={"hint": f"every {TOPK}/ row needs a {column}{fix}"})
          for column in layout.columns(TOPK_SCHEMA)),
        *(gxe.ExpectColumnValuesToBeBetween(
            column=column, min_value=0, max_value=max(n - 1, 0),
            meta={"hint": f"{column} must index a row of {mapping}/ ({n} rows, from the "
                          f"prepare manifest): {TOPK}/ comes from another run's data{fix}"})
          for column, n, mapping in ((USER_IDX, n_users, USERS), (ITEM_IDX, n_items, ITEMS))),
        gxe.ExpectColumnValuesToBeBetween(
            column=RANK, min_value=1, max_value=k,
            meta={"hint": f"ranks run 1 (best) to k={k}{fix}"}),
        gxe.ExpectColumnValuesToBeBetween(
            column=SCORE, min_value=0.0, max_value=1.0,
            meta={"hint": "scores are probabilities (the model's sigmoid) or popularity "
                          f"shares, both in [0, 1]{fix}"}),
        gxe.ExpectColumnValuesToBeInSet(
            column=SOURCE, value_set=[layout.SOURCE_MODEL, layout.SOURCE_POPULARITY],
            meta={"hint": f"source is {layout.SOURCE_MODEL!r} or "
                          f"{layout.SOURCE_POPULARITY!r} (cold-start fallback){fix}"}),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=[USER_IDX, RANK],
            meta={"hint": f"one row per (user, rank){fix}"}),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=[USER_IDX, ITEM_IDX],
            meta={"hint": f"an item appears at most once in a user's list{fix}"}),
    ])


def topk_per_user_suite(*, k: int) -> ExpectationSuite:
    """On `per_user_topk(...)`: every user of users/ has k rows, scores falling with rank."""
    return _suite(f"{TOPK}_per_user", [
        gxe.ExpectColumnValuesToBeInSet(
            column=N_ROWS, value_set=[k],
            meta={"hint": f"every user of users/ gets exactly k={k} recommendations (0: the "
                          f"user is missing from {TOPK}/); {RERUN_RECOMMEND}"}),
        gxe.ExpectColumnValuesToBeInSet(
            column=SCORES_NON_INCREASING, value_set=[True],
            meta={"hint": "a better rank must not have a lower score: the list is not sorted "
                          f"by score; fix the top-k order and {RERUN_RECOMMEND}"}),
    ])


def topk_seen_suite() -> ExpectationSuite:
    """On `seen_recommendations(...)`: no recommended item is a positive of that user."""
    return _suite(f"{TOPK}_seen", [gxe.ExpectColumnValuesToBeInSet(
        column=RECOMMENDED_SEEN, value_set=[False],
        meta={"hint": "recommend must exclude every item the user has a positive on in "
                      f"train/, validation/ or test/; {RERUN_RECOMMEND}"})])


# --- derived frames (pure) ----------------------------------------------------------


def _valid_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows with all of user_idx, item_idx, label, as int64 (nulls are the pairs suite's job)."""
    needed = [USER_IDX, ITEM_IDX, LABEL]
    if any(column not in frame.columns for column in needed):
        return pd.DataFrame({column: pd.Series(dtype="int64") for column in needed})
    return frame[needed].dropna().astype("int64")


def _pair_keys(frame: pd.DataFrame) -> np.ndarray:
    """(user_idx, item_idx) packed into one int64, exact for any pair of int32 values."""
    users = frame[USER_IDX].to_numpy(dtype=np.int64)
    items = frame[ITEM_IDX].to_numpy(dtype=np.int64)
    keys: np.ndarray = (users << 32) | (items & 0xFFFFFFFF)
    return keys


def _isin(keys: np.ndarray, among: np.ndarray) -> np.ndarray:
    # pandas' hash table: several times faster than np.isin's sort/unique on millions of keys
    flags: np.ndarray = pd.Series(keys, dtype="int64").isin(among).to_numpy()
    return flags


def _positive_keys(pairs: Mapping[str, pd.DataFrame], names: Sequence[str]) -> np.ndarray:
    """The pair keys of the label-1 rows of the frames `names` (those present) of `pairs`."""
    return np.concatenate([_pair_keys(pairs[name][pairs[name][LABEL] == 1])
                           for name in names if name in pairs] or [np.empty(0, dtype=np.int64)])


def per_user_labels(split: pd.DataFrame) -> pd.DataFrame:
    """One row per user of an evaluation split: user_idx, n_positives, n_negatives."""
    pairs = _valid_pairs(split)
    positive = pairs[LABEL] == 1
    counts = pd.DataFrame({USER_IDX: pairs[USER_IDX], N_POSITIVES: positive.astype("int64"),
                           N_NEGATIVES: (~positive).astype("int64")})
    return counts.groupby(USER_IDX, as_index=False, sort=True).sum()


def _flag_rows(frames: Mapping[str, pd.DataFrame], *, label: int, among: np.ndarray,
               flag: str) -> pd.DataFrame:
    """The `label` rows of each frame as (split, user_idx, item_idx, flag): flag is True
    where the (user, item) pair is in `among` (pair keys)."""
    parts = []
    for name, frame in frames.items():
        rows = frame.loc[frame[LABEL] == label, [USER_IDX, ITEM_IDX]]
        parts.append(rows.assign(**{SPLIT: name, flag: _isin(_pair_keys(rows), among)}))
    columns = [SPLIT, USER_IDX, ITEM_IDX, flag]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]


def negative_collisions(splits: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Every label-0 row of every split, flagged when it is a positive it must not be: an
    evaluation negative (validation/, test/) must be no positive of the user in any split;
    a training negative only no training positive (the model may not know the held-out
    items, so they may be its negatives: docs/DESIGN.md, the negative policy)."""
    pairs = {name: _valid_pairs(frame) for name, frame in splits.items()}
    parts = [_flag_rows({name: frame}, label=0,
                        among=_positive_keys(pairs, [TRAIN] if name == TRAIN else list(pairs)),
                        flag=NEGATIVE_IS_POSITIVE)
             for name, frame in pairs.items()]
    return pd.concat(parts, ignore_index=True) if parts else _flag_rows(
        {}, label=0, among=_positive_keys(pairs, []), flag=NEGATIVE_IS_POSITIVE)


def eval_positives_in_train(train: pd.DataFrame,
                            evaluation: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Every positive of the evaluation splits, flagged when it is also a train positive."""
    pairs = {name: _valid_pairs(frame) for name, frame in evaluation.items()}
    train_keys = _positive_keys({TRAIN: _valid_pairs(train)}, [TRAIN])
    return _flag_rows(pairs, label=1, among=train_keys, flag=IN_TRAIN_POSITIVES)


def per_user_sequences(sequences: pd.DataFrame) -> pd.DataFrame:
    """One row per sequences/ row: user_idx, sequence_length (0 for a null sequence)."""
    return sequences[[USER_IDX]].assign(**{SEQUENCE_LENGTH: sequences[SEQUENCE].map(
        lambda items: 0 if items is None else len(items)).astype("int64")})


def sequence_items(sequences: pd.DataFrame, splits: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Every item of every sequence as (user_idx, item_idx, held_out, in_train_positives),
    flagged where the pair is a validation/ or test/ positive, and a train/ positive."""
    items = (sequences[[USER_IDX, SEQUENCE]].explode(SEQUENCE).dropna()
             .rename(columns={SEQUENCE: ITEM_IDX}).astype("int64").reset_index(drop=True))
    pairs = {name: _valid_pairs(frame) for name, frame in splits.items()}
    keys = _pair_keys(items)
    return items.assign(**{HELD_OUT: _isin(keys, _positive_keys(pairs, EVAL_SPLITS)),
                           IN_TRAIN_POSITIVES: _isin(keys, _positive_keys(pairs, [TRAIN]))})


def per_user_topk(topk: pd.DataFrame, users: np.ndarray) -> pd.DataFrame:
    """One row per user of `users` (user_idx values) or of topk/: user_idx, n_rows,
    scores_non_increasing (False where a rank scores higher than the rank before it)."""
    rows = topk.dropna(subset=[USER_IDX]).astype({USER_IDX: "int64"})
    ordered = rows.dropna(subset=[RANK, SCORE]).sort_values([USER_IDX, RANK], kind="stable")
    rises = (ordered.groupby(USER_IDX)[SCORE].diff() > 0).groupby(ordered[USER_IDX]).sum()
    n_rows = rows.groupby(USER_IDX).size()
    index = pd.Index(np.union1d(np.asarray(users, dtype=np.int64),
                                n_rows.index.to_numpy(dtype=np.int64)), name=USER_IDX)
    return pd.DataFrame({
        N_ROWS: n_rows.reindex(index, fill_value=0).astype("int64"),
        SCORES_NON_INCREASING: rises.reindex(index, fill_value=0).to_numpy() == 0,
    }, index=index).reset_index()


def seen_recommendations(topk: pd.DataFrame,
                         positives: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Every topk/ row as (user_idx, rank, item_idx, recommended_seen): seen when the user
    has the item as a positive in one of `positives` (frames of user_idx, item_idx)."""
    rows = topk[[USER_IDX, RANK, ITEM_IDX]].dropna().astype("int64")
    seen = np.concatenate([_pair_keys(frame) for frame in positives]
                          or [np.empty(0, dtype=np.int64)])
    return rows.assign(**{RECOMMENDED_SEEN: _isin(_pair_keys(rows), seen)})
