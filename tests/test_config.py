"""jobs.lake.config / ncf_model.config: the strict YAML loader."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from jobs.lake.config import SHA256_TODO, SOURCE_FORMATS, SourceFile, load_data_config
from jobs.lake.eventlog import EVENTS_FORMAT
from jobs.lake.loader import ConfigError
from ncf_model.config import load_ncf_config

REPO = Path(__file__).resolve().parents[1]
GOOD_SHA = "a" * 64
_EVENTS = {"location": "clicks", "columns": {"user": "u", "item": "i", "timestamp": "t"}}


def _write(tmp_path: Path, payload: object) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(payload))
    return path


def _base(**sections: object) -> dict[str, object]:
    return {"dataset": "tiny",
            "source": {"format": "movielens-100k", "path": "u.data", "sha256": GOOD_SHA},
            **sections}


def test_every_shipped_config_loads_for_both_sides() -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        data, model = load_data_config(path), load_ncf_config(path)
        assert data.dataset == model.dataset == path.stem
        assert data.model_name == f"ncf-{path.stem}" == model.model_name
        # Every shipped config lets NeuMF, MF, ALS, EASE^R and popularity compete, chosen
        # on validation and refitted on everything known.
        assert set(model.candidates.families) >= {"ncf", "mf", "als", "ease", "popularity"}
        assert model.candidates == data.candidates and model.candidates.refit
        assert model.candidates.select_metric.startswith(("ndcg_", "hr_", "full_"))


def test_defaults_fill_missing_sections_and_asdict_is_plain(tmp_path: Path) -> None:
    data = load_data_config(_write(tmp_path, _base()))
    model = load_ncf_config(_write(tmp_path, _base(model={"mlp_layers": [32, 16]})))
    assert data.prepare.n_negatives == 0 and data.prepare.n_eval_negatives == 99
    assert model.model.mlp_layers == (32, 16)
    assert dataclasses.asdict(model.train)["lr"] == pytest.approx(0.001)


@pytest.mark.parametrize(("payload", "message"), [
    (["not", "a", "mapping"], "expected a mapping"),
    ({**_base(), "surprise": {}}, r"unknown section\(s\) \['surprise'\]"),
    (_base(prepare={"n_negatives": 4, "typo_key": 1}), r"prepare: unknown key\(s\) \['typo_key'\]"),
    (_base(prepare={"n_negatives": "four"}), "prepare.n_negatives: expected a whole number"),
    (_base(prepare={"n_negatives": -1}), "prepare.n_negatives: must be >= 0"),
    (_base(source={"format": "csv", "path": "u.data", "sha256": GOOD_SHA}), "source.format"),
    (_base(source={"format": "movielens-100k", "path": "u.data", "sha256": "xyz"}),
     "source.sha256: must be 64"),
    (_base(source={"format": "movielens-100k", "path": "../u.data", "sha256": GOOD_SHA}),
     "source.path"),
    ({**_base(), "dataset": "no spaces please"}, "'dataset'"),
    (_base(source={"format": "movielens-100k"}), "source.path: missing"),
    (_base(source={"format": "ncf-presplit", "path": "u.data", "sha256": GOOD_SHA}),
     "source.path: format ncf-presplit has several files"),
    (_base(source={"format": "movielens-100k", "path": "u.data", "sha256": GOOD_SHA,
                   "files": {"ratings": {"path": "u.data", "sha256": GOOD_SHA}}}),
     "source.files: give either"),
    (_base(source={"format": "ncf-presplit",
                   "files": {"train": {"path": "a", "sha256": GOOD_SHA}}}),
     r"source.files: format ncf-presplit needs the roles \['train', 'test', 'test_negatives'\]"),
    (_base(source={"format": "movielens-csv", "files": {
        "ratings": {"path": "a", "sha256": GOOD_SHA}, "users": {"path": "b", "sha256": GOOD_SHA}}}),
     r"source.files: unknown role\(s\) \['users'\]"),
    (_base(source={"format": "movielens-csv", "files": {
        "ratings": {"path": "a", "sha256": GOOD_SHA, "encoding": "cp1252"}}}),
     "source.files.ratings.encoding"),
    (_base(source={"format": "movielens-csv", "files": {
        "ratings": {"path": "/abs", "sha256": GOOD_SHA}}}), "source.files.ratings.path"),
    (_base(source={"format": "movielens-csv", "files": {"ratings": {"path": "a"}}}),
     r"source.files.ratings: missing required key\(s\) \['sha256'\]"),
    (_base(source={"format": "movielens-csv", "files": {}}), "source.files: expected a non-empty"),
    (_base(source={"format": "events"}), "source.events: format events needs an events"),
    (_base(source={"format": "events", "path": "u.data", "sha256": GOOD_SHA,
                   "events": _EVENTS}), "source.events: format events reads events.location"),
    (_base(source={"format": "movielens-100k", "path": "u.data", "sha256": GOOD_SHA,
                   "events": _EVENTS}), "source.events: only for format events"),
    (_base(source={"format": "events", "events": {**_EVENTS, "file_type": "xml"}}),
     "source.events.file_type: 'xml' is not one of"),
    (_base(source={"format": "events", "events": {**_EVENTS, "ts_unit": "hours"}}),
     "source.events.ts_unit"),
    (_base(source={"format": "events", "events": {**_EVENTS, "event_types": ["buy"]}}),
     "source.events.event_types: a filter on event types needs columns.event_type"),
    (_base(source={"format": "events", "events": {**_EVENTS, "partitioning": "flat",
                                                  "allow_missing_days": True}}),
     "source.events.allow_missing_days"),
    (_base(source={"format": "events", "events": {**_EVENTS, "columns": {
        "user": "a", "item": "a", "timestamp": "t"}}}), "each role needs its own column"),
    (_base(source={"format": "events", "events": {**_EVENTS, "columns": {"user": "a"}}}),
     r"source.events.columns: missing required key\(s\) \['item', 'timestamp'\]"),
    (_base(ingest={"output_partitions": 0}), "ingest.output_partitions"),
])
def test_bad_data_config_names_file_and_field(tmp_path: Path, payload: object,
                                              message: str) -> None:
    path = _write(tmp_path, payload)
    with pytest.raises(ConfigError, match=message) as error:
        load_data_config(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(("prepare", "message"), [
    ({"binarise_threshold": 4}, r"prepare: unknown key\(s\) \['binarise_threshold'\]"),
    ({"binarise": {"rule": "likes"}}, "prepare.binarise.rule: 'likes' is not one of"),
    ({"binarise": {"rule": "rating"}}, "prepare.binarise.threshold: rule 'rating' needs"),
    ({"binarise": {"rule": "any", "threshold": 3}}, "prepare.binarise.threshold: must be null"),
    ({"binarise": {"rule": "plays", "threshold": "ten"}},
     "prepare.binarise.threshold: expected a number"),
    ({"binarise": {"rule": "plays", "threshold": 5, "min": 1}},
     r"prepare.binarise: unknown key\(s\) \['min'\]"),
    ({"user_fraction": 0}, r"prepare.user_fraction: must be in \(0, 1\]"),
    ({"user_fraction": 1.5}, "prepare.user_fraction"),
    ({"min_user_positives": 0}, "prepare.min_user_positives: must be >= 1"),
    ({"min_item_positives": 2.5}, "prepare.min_item_positives: expected a whole number"),
    ({"k_core_max_iterations": 0}, "prepare.k_core_max_iterations: must be >= 1"),
    ({"as_of_cutoff": "yes"}, "prepare.as_of_cutoff: expected true or false"),
    ({"split": {"method": "random"}}, "prepare.split.method: 'random' is not one of"),
    ({"split": {"method": "time_cutoff"}}, "prepare.split.test_from: method 'time_cutoff' "
                                           "needs exactly one of test_from"),
    ({"split": {"method": "time_cutoff", "test_from": "2026-01-01", "test_fraction": 0.2}},
     "prepare.split.test_from: method 'time_cutoff' needs exactly one"),
    ({"split": {"method": "time_cutoff", "test_from": "last tuesday"}},
     "prepare.split.test_from: 'last tuesday' is not an ISO 8601 timestamp"),
    ({"split": {"method": "time_cutoff", "test_fraction": 1.0}},
     r"prepare.split.test_fraction: must be in \(0, 1\)"),
    ({"split": {"method": "leave_one_out", "train_ratio": 0.8}},
     "prepare.split.train_ratio: does not apply to method 'leave_one_out'"),
    ({"split": {"method": "stratified", "test_fraction": 0.2}},
     "prepare.split.test_fraction: does not apply to method 'stratified'"),
    ({"split": {"method": "stratified", "train_ratio": 0}}, "prepare.split.train_ratio"),
])
def test_bad_prepare_config_names_the_field(tmp_path: Path, prepare: dict[str, object],
                                            message: str) -> None:
    path = _write(tmp_path, _base(prepare=prepare))
    with pytest.raises(ConfigError, match=message) as error:
        load_data_config(path)
    assert str(path) in str(error.value)


def test_prepare_sections_defaults_and_asdict(tmp_path: Path) -> None:
    default = load_data_config(_write(tmp_path, _base())).prepare
    assert (default.binarise.rule, default.binarise.threshold) == ("any", None)
    assert (default.split.method, default.as_of_cutoff, default.user_fraction) == (
        "leave_one_out", True, 1.0)
    assert not default.k_core
    prepare = load_data_config(_write(tmp_path, _base(prepare={
        "binarise": {"rule": "plays", "threshold": 5}, "min_user_positives": 5,
        "split": {"method": "stratified"}}))).prepare
    assert prepare.k_core and prepare.binarise.threshold == 5.0
    assert dataclasses.asdict(prepare)["split"] == {
        "method": "stratified", "test_from": None, "test_fraction": None, "train_ratio": 0.75}
    cutoff = load_data_config(_write(tmp_path, _base(prepare={"split": {
        "method": "time_cutoff", "test_from": "2026-01-01T06:00:00+02:00"}}))).prepare.split
    assert cutoff.test_from_utc == datetime(2026, 1, 1, 4, tzinfo=UTC)


@pytest.mark.parametrize(("section", "message"), [
    ({"model": {"kind": "transformer"}}, "model.kind"),
    ({"model": {"mlp_layers": [63, 8]}}, "model.mlp_layers: the first size must be even"),
    ({"model": {"dropout": 1.5}}, "model.dropout"),
    ({"train": {"negatives": "sometimes"}}, "train.negatives"),
    ({"train": {"lr": 0}}, "train.lr: must be > 0"),
    ({"evaluate": {"min_score": 2}}, "evaluate.min_score"),
    ({"candidates": {"families": ["ncf", "svd"]}}, r"candidates.families: \['svd'\] not in"),
    ({"candidates": {"families": []}}, "candidates.families: must name at least one"),
    ({"candidates": {"select_metric": "test_hr_10"}}, "candidates.select_metric"),
    ({"ease": {"l2_grid": [0.0]}}, "ease.l2_grid"),
    ({"ease": {"max_memory_gb": 0}}, "ease.max_memory_gb"),
    ({"mf": {"factors": 0}}, "mf"),
    ({"recommend": {"k": 0}}, "recommend.k"),
    ({"train": {"epochs": True}}, "train.epochs: expected a whole number"),
])
def test_bad_model_config_names_the_field(tmp_path: Path, section: dict[str, object],
                                          message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_ncf_config(_write(tmp_path, _base(**section)))


def test_a_float_written_with_an_exponent_reads_as_the_number(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) reads 1e-5 as the string "1e-5"; a float field takes the number.
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_base())
                    + "train: {weight_decay: 1e-5, lr: 2E-3}\nmf: {lr: +5e-4}\n")
    cfg = load_ncf_config(path)
    assert (cfg.train.weight_decay, cfg.train.lr, cfg.mf.lr) == (1e-5, 2e-3, 5e-4)
    # Only numbers: other strings in a float field are still refused, naming the field.
    path.write_text(yaml.safe_dump(_base()) + "train: {lr: 1e-5x}\n")
    with pytest.raises(ConfigError, match="train.lr: expected a number"):
        load_ncf_config(path)
    # Whole-number fields stay whole: 1e3 is not silently an int.
    path.write_text(yaml.safe_dump(_base()) + "train: {epochs: 1e3}\n")
    with pytest.raises(ConfigError, match="train.epochs: expected a whole number"):
        load_ncf_config(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_data_config(tmp_path / "absent.yaml")


def test_multi_file_source_and_the_one_file_shorthand(tmp_path: Path) -> None:
    files = {"ratings": {"path": "ml-1m/ratings.dat", "sha256": GOOD_SHA},
             "items": {"path": "ml-1m/movies.dat", "sha256": SHA256_TODO,
                       "archive_member": "ml-1m/movies.dat", "encoding": "latin-1"}}
    source = load_data_config(_write(tmp_path, _base(source={
        "format": "movielens-dat", "url": "https://x/ml-1m.zip", "files": files}))).source
    assert source.files["items"] == SourceFile(path="ml-1m/movies.dat", sha256=SHA256_TODO,
                                               archive_member="ml-1m/movies.dat",
                                               encoding="latin-1")
    assert not source.files["items"].sha256_known and source.files["ratings"].sha256_known
    assert dataclasses.asdict(source)["files"]["ratings"]["encoding"] == "utf-8"
    shorthand = load_data_config(_write(tmp_path, _base())).source
    assert shorthand.files == {"ratings": SourceFile(path="u.data", sha256=GOOD_SHA)}


def test_shipped_configs_name_their_files_by_role() -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        source = load_data_config(path).source
        if source.events is not None:  # an event log: a location, no files
            assert source.format == EVENTS_FORMAT and not source.files, path.name
            continue
        required, _ = SOURCE_FORMATS[source.format]
        assert set(required) <= set(source.files), path.name
        for file in source.files.values():
            assert file.url or source.url, f"{path.name}: {file.path} has no URL"
