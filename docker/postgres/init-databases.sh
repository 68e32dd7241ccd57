#!/usr/bin/env bash
# Runs once, when the postgres data volume is empty (/docker-entrypoint-initdb.d): a role and a
# database for Prefect's own tables, a role and a database for Sluice's data. Each role owns only its
# database. Passwords are read from the compose secrets named by *_PASSWORD_FILE, never from here.
set -euo pipefail

read_secret() {
  local file="${1:?}"
  [[ -r "$file" ]] || { echo "init-databases: cannot read $file" >&2; exit 1; }
  local value
  value="$(<"$file")"
  [[ -n "$value" ]] || { echo "init-databases: $file is empty" >&2; exit 1; }
  printf '%s' "$value"
}

prefect_password="$(read_secret "${PREFECT_DB_PASSWORD_FILE:?set PREFECT_DB_PASSWORD_FILE}")"
sluice_password="$(read_secret "${SLUICE_DB_PASSWORD_FILE:?set SLUICE_DB_PASSWORD_FILE}")"

# psql variables (:'name') quote the values, so any password is safe here
psql --no-psqlrc -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" \
  -v prefect_db="${PREFECT_DB_NAME:-prefect}" -v prefect_user="${PREFECT_DB_USER:-prefect}" \
  -v prefect_password="$prefect_password" \
  -v sluice_db="${SLUICE_DB_NAME:-sluice}" -v sluice_user="${SLUICE_DB_USER:-sluice}" \
  -v sluice_password="$sluice_password" <<'SQL'
CREATE ROLE :"prefect_user" LOGIN PASSWORD :'prefect_password';
CREATE DATABASE :"prefect_db" OWNER :"prefect_user";
REVOKE ALL ON DATABASE :"prefect_db" FROM PUBLIC;

CREATE ROLE :"sluice_user" LOGIN PASSWORD :'sluice_password';
CREATE DATABASE :"sluice_db" OWNER :"sluice_user";
REVOKE ALL ON DATABASE :"sluice_db" FROM PUBLIC;
SQL
echo "init-databases: created databases ${PREFECT_DB_NAME:-prefect} and ${SLUICE_DB_NAME:-sluice}"
