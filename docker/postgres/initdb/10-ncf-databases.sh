#!/usr/bin/env bash
# One database and one login role per consumer, created on the first start of an empty
# data volume (the postgres image runs /docker-entrypoint-initdb.d/* as the postgres user):
#
#   airflow     Airflow metadata            owner AIRFLOW_DB_USER   (default airflow)
#   mlflow      MLflow tracking + registry  owner MLFLOW_DB_USER    (default mlflow)
#   ncf         the recommendations table   owner NCF_DB_USER       (default ncf, publishes)
#                                            read  NCF_DB_READER     (default reco_reader)
#
# Passwords come from the environment only (AIRFLOW_DB_PASSWORD, MLFLOW_DB_PASSWORD,
# NCF_DB_PASSWORD, NCF_DB_READER_PASSWORD); psql's \getenv reads them, so they appear on
# no command line. Each database is closed to PUBLIC: a role connects only to its own.
# Re-running it against a server that already has these roles fails (ON_ERROR_STOP).
set -euo pipefail

: "${AIRFLOW_DB_PASSWORD:?set AIRFLOW_DB_PASSWORD}"
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD}"
: "${NCF_DB_PASSWORD:?set NCF_DB_PASSWORD}"
: "${NCF_DB_READER_PASSWORD:?set NCF_DB_READER_PASSWORD}"
export AIRFLOW_DB_USER="${AIRFLOW_DB_USER:-airflow}" AIRFLOW_DB_NAME="${AIRFLOW_DB_NAME:-airflow}"
export MLFLOW_DB_USER="${MLFLOW_DB_USER:-mlflow}" MLFLOW_DB_NAME="${MLFLOW_DB_NAME:-mlflow}"
export NCF_DB_USER="${NCF_DB_USER:-ncf}" NCF_DB_NAME="${NCF_DB_NAME:-ncf}"
export NCF_DB_READER="${NCF_DB_READER:-reco_reader}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" \
     --dbname "${POSTGRES_DB:-${POSTGRES_USER:-postgres}}" <<'SQL'
\getenv airflow_user AIRFLOW_DB_USER
\getenv airflow_db AIRFLOW_DB_NAME
\getenv airflow_pw AIRFLOW_DB_PASSWORD
\getenv mlflow_user MLFLOW_DB_USER
\getenv mlflow_db MLFLOW_DB_NAME
\getenv mlflow_pw MLFLOW_DB_PASSWORD
\getenv ncf_user NCF_DB_USER
\getenv ncf_db NCF_DB_NAME
\getenv ncf_pw NCF_DB_PASSWORD
\getenv reader NCF_DB_READER
\getenv reader_pw NCF_DB_READER_PASSWORD

CREATE ROLE :"airflow_user" LOGIN PASSWORD :'airflow_pw';
CREATE DATABASE :"airflow_db" OWNER :"airflow_user";
REVOKE ALL ON DATABASE :"airflow_db" FROM PUBLIC;

CREATE ROLE :"mlflow_user" LOGIN PASSWORD :'mlflow_pw';
CREATE DATABASE :"mlflow_db" OWNER :"mlflow_user";
REVOKE ALL ON DATABASE :"mlflow_db" FROM PUBLIC;

CREATE ROLE :"ncf_user" LOGIN PASSWORD :'ncf_pw';
CREATE ROLE :"reader" LOGIN PASSWORD :'reader_pw';
CREATE DATABASE :"ncf_db" OWNER :"ncf_user";
REVOKE ALL ON DATABASE :"ncf_db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"ncf_db" TO :"reader";

-- Downstream teams read every table the publisher creates, now or later, and write none.
\connect :"ncf_db"
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT CREATE, USAGE ON SCHEMA public TO :"ncf_user";
GRANT USAGE ON SCHEMA public TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"ncf_user" IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";
SQL
