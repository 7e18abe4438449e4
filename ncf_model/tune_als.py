"""ALS in the tuning study: each trial fits with jobs/als.py, the Spark job the DAG runs.

ncf_model never imports Spark (tests/test_layering.py), and ALS must be fitted exactly as
the nightly run fits it, so a trial runs `python -m jobs.als` in a subprocess (a local
Spark session, or the master of $NCF_SPARK_MASTER / spark-submit's settings as jobs/spark.py
resolves them) on a scratch lake: train/ and validation/ of the tuned run linked in,
test/ an empty folder (a trial can not read a test event), the trial's `als` section in a
copy of the dataset config, `candidates.refit: false` (only train is fitted). Its factors
are scored by the same evaluation as every other family (`load_als_scorer`, then
`validation_score` in ncf_model.tune). A JVM starts per trial: a few seconds each, small
beside the fit on any dataset worth tuning.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from jobs.lake import layout
from jobs.lake.config import AlsConfig
from jobs.lake.loader import read_yaml
from ncf_model.data import load_als_scorer
from ncf_model.families import SELECT_ON, ProtocolData, Selected

REPO = Path(__file__).resolve().parents[1]
LOG_TAIL = 2000  # characters of a failed trial's output in its error


class AlsTrialError(RuntimeError):
    """jobs/als.py failed inside a trial; the message holds the end of its output."""


def suggest_als(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    """The `als` fields a trial samples (max_iter and seed stay as configured)."""
    return {"rank": trial.suggest_categorical("rank", (16, 32, 64, 128)),
            "reg_param": trial.suggest_float("reg_param", 1e-3, 1.0, log=True),
            "alpha": trial.suggest_float("alpha", 0.5, 100.0, log=True)}


@dataclass(frozen=True)
class AlsTrials:
    """Builds each trial's ALS family from the dataset config (read once) and the tuned
    lake run; the same interface as ncf_model.tune.ConfigFamilies."""

    config: Path  # configs/<dataset>.yaml: its name is kept for the trial's copy
    raw: Mapping[str, Any]  # its contents
    paths: layout.LakePaths  # the lake run tuned on

    @classmethod
    def load(cls, config: Path, paths: layout.LakePaths) -> AlsTrials:
        return cls(Path(config), read_yaml(config), paths)

    def section(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """The `als` section with the trial's fields, validated (AlsConfig)."""
        merged = {**(self.raw.get("als") or {}), **fields}
        AlsConfig(**merged)  # raises with the field's name when a value is out of range
        return merged

    def space(self, name: str) -> Callable[[optuna.trial.BaseTrial], dict[str, Any]]:
        return lambda trial: {name: suggest_als(trial)}

    def family(self, name: str, overrides: Mapping[str, Mapping[str, Any]],
               on_epoch: object = None) -> TrialAls:
        """`on_epoch` is unused: ALS has no epochs to report, so no trial is pruned."""
        return TrialAls(self, self.section(overrides[name]))

    def sections(self, overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        return {"als": self.section(overrides["als"])}


@dataclass
class TrialAls:
    """One trial's ALS: `select` fits on train through jobs/als.py and loads the factors.
    Only step (a): tuning never refits (the DAG's als task fits (b) and (c))."""

    trials: AlsTrials
    params: dict[str, Any]
    name: str = "als"

    def recipe(self) -> dict[str, Any]:
        return {"family": self.name, "params": dict(self.params)}

    def select(self, data: ProtocolData) -> Selected:
        source = self.trials.paths
        with tempfile.TemporaryDirectory(prefix="ncf-tune-als-") as tmp:
            scratch = layout.LakePaths(Path(tmp) / "lake", source.dataset, source.logical_date)
            scratch.base.mkdir(parents=True)
            for name in layout.SPLITS:
                if name in (*SELECT_ON, layout.VALIDATION):
                    scratch.path(name).symlink_to(source.path(name).resolve(),
                                                  target_is_directory=True)
                else:
                    scratch.path(name).mkdir()  # test: nothing a trial could read
            config = {**self.trials.raw, "als": self.params}
            config["candidates"] = {**(config.get("candidates") or {}), "refit": False,
                                    "families": ["als"]}
            trial_config = Path(tmp) / self.trials.config.name
            trial_config.write_text(yaml.safe_dump(config, sort_keys=False))
            done = subprocess.run(
                [sys.executable, "-m", "jobs.als", "--config", str(trial_config),
                 "--logical-date", source.logical_date, "--lake-root", str(Path(tmp) / "lake")],
                cwd=REPO, capture_output=True, text=True, check=False,
                env={"PYSPARK_PYTHON": sys.executable, **os.environ})
            if done.returncode != 0:
                output = (done.stdout + done.stderr)[-LOG_TAIL:]
                raise AlsTrialError(f"jobs/als.py failed (exit {done.returncode}) with als "
                                    f"{self.params}: {output}")
            scorer = load_als_scorer(scratch, data.n_users, data.n_items, SELECT_ON)
        return Selected(scorer.to(data.device).eval(), {})
