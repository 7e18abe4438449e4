"""The house in code: which package may import which (read from the source, nothing run).

    dags/           -> jobs.lake at parse time; anything else only inside a task body
    jobs/lake/      the contract: standard library, PyYAML, pydantic, pyarrow (lazily) only
    jobs/quality/   Great Expectations gates: jobs.lake, pandas, GX; no Spark, no torch
    jobs/serving/   the SQL table: jobs.lake, pandas, SQLAlchemy; no Spark, no torch, no GX
    jobs/ops/       the local production stack and its REST client: standard library, jobs.lake
                    (jobs/ops/preload: what Airflow's processes import at start-up: Airflow)
    jobs/*.py       Spark stages and helpers: jobs.lake and each other; no torch, GX, SQL
    ncf_model/      torch: jobs.lake only from jobs; no Spark, GX or SQLAlchemy
    ncf_model/models/  models only: no I/O (no lake, pyarrow, pandas, MLflow)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path, *, top_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every import in `path`. With `top_level_only`, only those that run
    when the module is imported: not inside a function body, nor under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
        if top_level_only:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                return
            if isinstance(node, ast.If) and ast.unparse(node.test) in (
                    "TYPE_CHECKING", "typing.TYPE_CHECKING"):
                return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _files(folder: str, *, recursive: bool = True) -> list[Path]:
    base = REPO / folder
    return sorted(base.rglob("*.py") if recursive else base.glob("*.py"))


def _violations(files: list[Path], forbidden: tuple[str, ...], *,
                top_level_only: bool = False) -> list[str]:
    bad = []
    for path in files:
        for line, module in _imports(path, top_level_only=top_level_only):
            if any(module == name or module.startswith(f"{name}.") for name in forbidden):
                shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
                bad.append(f"{shown}:{line} imports {module}")
    return bad


HEAVY = ("pyspark", "py4j", "pandas", "great_expectations", "sqlalchemy", "torch", "mlflow",
         "airflow", "numpy")
SPARK = ("pyspark", "py4j")
SQL_GX = ("great_expectations", "sqlalchemy")
JOBS_OUTSIDE_LAKE = ("jobs.quality", "jobs.serving", "jobs.ingest", "jobs.prepare",
                     "jobs.prepare_fast", "jobs.als", "jobs.spark", "jobs.readers",
                     "jobs.formats", "jobs.sources", "jobs.filters", "jobs.split",
                     "jobs.negatives", "jobs.negatives_fast", "jobs.index", "jobs.xxhash",
                     "jobs.events", "jobs.event_files", "jobs.ingest_events", "jobs.replay")

RULES = [
    ("jobs/lake is the contract: no heavy dependency, no other part of jobs or ncf_model",
     _files("jobs/lake"), (*HEAVY, *JOBS_OUTSIDE_LAKE, "ncf_model"), False),
    ("jobs/ops runs the local stack: standard library and jobs.lake",
     [path for path in _files("jobs/ops") if "preload" not in path.parts],
     (*HEAVY, *JOBS_OUTSIDE_LAKE, "ncf_model"), False),
    ("jobs/ops/preload is imported by Airflow's processes: Airflow and PyYAML only",
     _files("jobs/ops/preload"),
     tuple(name for name in (*HEAVY, *JOBS_OUTSIDE_LAKE, "ncf_model") if name != "airflow"),
     False),
    ("jobs/quality: no Spark, torch or SQL", _files("jobs/quality"),
     (*SPARK, "torch", "mlflow", "sqlalchemy", "ncf_model", "jobs.serving"), False),
    ("jobs/serving: no Spark, torch or GX", _files("jobs/serving"),
     (*SPARK, "torch", "mlflow", "great_expectations", "ncf_model", "jobs.quality"), False),
    ("Spark stages: no torch, GX or SQL", _files("jobs", recursive=False),
     ("torch", "mlflow", *SQL_GX, "ncf_model", "jobs.quality", "jobs.serving"), False),
    ("ncf_model reads only jobs.lake of jobs; no Spark, GX or SQL", _files("ncf_model"),
     (*SPARK, *SQL_GX, *JOBS_OUTSIDE_LAKE), False),
    ("ncf_model/models holds models only: no I/O", _files("ncf_model/models"),
     ("jobs", "pyarrow", "pandas", "mlflow", "ncf_model.data", "ncf_model.tracking",
      "ncf_model.checkpoint", "ncf_model.stages"), True),
    ("dags import only jobs.lake (and Airflow) at parse time", _files("dags"),
     (*JOBS_OUTSIDE_LAKE, "ncf_model", "pyspark", "pandas", "torch", "great_expectations",
      "sqlalchemy", "mlflow"), True),
]


@pytest.mark.parametrize(("rule", "files", "forbidden", "top_level_only"), RULES,
                         ids=[rule[0].split(":")[0] for rule in RULES])
def test_imports_follow_the_layers(rule: str, files: list[Path], forbidden: tuple[str, ...],
                                   top_level_only: bool) -> None:
    assert files, f"no files for the rule {rule!r}"
    assert _violations(files, forbidden, top_level_only=top_level_only) == [], rule


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    """A module that breaks a rule is reported with its line (the checker is not blind)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\n\ndef f():\n    from pyspark.sql import DataFrame\n")
    assert _violations([bad], SPARK) == [f"{bad}:5 imports pyspark.sql"]
    assert _violations([bad], SPARK, top_level_only=True) == []
    found = [module for _, module in _imports(bad)]
    assert found == ["os", "pyspark.sql"]
    assert [module for _, module in _imports(bad, top_level_only=True)] == ["os"]


def test_no_module_is_over_400_lines() -> None:
    long = {str(path.relative_to(REPO)): n for folder in ("jobs", "ncf_model", "dags")
            for path in _files(folder) if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}
