"""Fast checks of docker-compose.yml and the Dockerfile, without Docker: services, healthchecks, start order,
volumes, the databases the URLs name, the S3 store and the two workers of a sharded run, non-root app containers,
every local file they name. Secrets: test_compose_secrets.py; prefect.yaml: test_prefect_yaml.py."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from models.settings import Settings
from tests.compose_helpers import ROOT, env_of, interpolate, secret_names, secret_targets

DOCKERFILE = ROOT / "Dockerfile"
REQUIRED_SERVICES = {"postgres", "prefect-server", "worker", "api", "sftp", "redis", "minio", "minio-init"}
APP_SERVICES = {"prefect-server", "deploy", "migrate", "worker", "api"}  # built from our Dockerfile
ONE_SHOT = {"deploy", "migrate", "minio-init"}


def depends(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    assert isinstance(deps, dict), "depends_on must use the long form, with a condition for each service"
    return {name: spec.get("condition") for name, spec in deps.items()}


def healthcheck_argv(service: dict) -> list[str]:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return ["CMD-SHELL", test]
    return list(test)


def container_path_to_repo(path: str) -> Path | None:
    """/app/... in the app image is the repository (COPY . .)."""
    p = PurePosixPath(path)
    if p.parts[:2] == ("/", "app"):
        return ROOT.joinpath(*p.parts[2:])
    return None


def test_the_stack_has_every_service(services):
    assert REQUIRED_SERVICES <= set(services)
    assert services["api"]["command"] == ["python", "-m", "api"]
    assert env_of(services["api"])["API_HOST"] == "0.0.0.0" and env_of(services["api"])["API_PORT"] == "8000"
    assert services["sftp"]["image"].split(":")[0] == "atmoz/sftp"
    assert services["postgres"]["image"].split(":")[0] == "postgres"
    # MinIO's images are pinned to a release: `latest` would change the store under a running stack
    for name, image in (("minio", "minio/minio"), ("minio-init", "minio/mc")):
        repo, _, tag = services[name]["image"].partition(":")
        assert repo == image and re.fullmatch(r"RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", tag), (name, tag)


def test_every_long_running_service_has_a_healthcheck(services):
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", f"{name} runs once and must not restart"
            continue
        assert "healthcheck" in service, f"{name} has no healthcheck"
        argv = healthcheck_argv(service)
        assert argv[0] in ("CMD", "CMD-SHELL") and len(argv) > 1, (name, argv)
        for arg in argv[1:]:
            local = container_path_to_repo(arg) if arg.startswith("/app/") else None
            if local is not None:
                assert local.is_file(), f"{name}'s healthcheck runs {arg}, missing as {local}"


def test_start_order_waits_for_health(services):
    for name, service in services.items():
        for dep, condition in depends(service).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            expected = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert condition == expected, f"{name} -> {dep}: {condition!r}, expected {expected!r}"
    assert depends(services["prefect-server"]) == {"postgres": "service_healthy"}
    worker = depends(services["worker"])
    assert worker["prefect-server"] == worker["postgres"] == worker["sftp"] == "service_healthy"
    assert worker["deploy"] == "service_completed_successfully"
    assert depends(services["deploy"])["prefect-server"] == "service_healthy"
    assert depends(services["api"])["postgres"] == "service_healthy"
    # Sluice's database is migrated before anything reads or writes it
    assert worker["migrate"] == depends(services["api"])["migrate"] == "service_completed_successfully"
    assert depends(services["migrate"]) == {"postgres": "service_healthy"}
    # a shard's first write finds the bucket and the workers' key in place
    assert worker["minio"] == "service_healthy" and worker["minio-init"] == "service_completed_successfully"
    assert depends(services["minio-init"]) == {"minio": "service_healthy"}


def test_migrate_brings_the_workers_database_to_the_schema(services):
    """The one-shot `migrate` is `make migrate` on the database the worker and the API use, from the image,
    which has alembic.ini and the revisions."""
    migrate, worker = services["migrate"], services["worker"]
    assert migrate["command"] == ["alembic", "upgrade", "head"]
    assert env_of(migrate)["DATABASE_URL"] == env_of(worker)["DATABASE_URL"] == env_of(services["api"])["DATABASE_URL"]
    assert secret_names(migrate) == ["sluice_db_password"]
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert not {"alembic.ini", "migrations", "migrations/", "models"} & ignored
    ini = (ROOT / "alembic.ini").read_text()
    assert re.search(r"^script_location = %\(here\)s/migrations$", ini, re.M)
    assert (ROOT / "migrations" / "env.py").is_file() and list((ROOT / "migrations" / "versions").glob("0001_*.py"))


def test_named_volumes_are_declared_and_bind_mounts_exist(compose, services):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
                assert not source.startswith("/"), f"{name} mounts an absolute host path {source}"
            else:
                assert source in declared, f"{name} uses volume {source!r}, not declared under volumes:"
                used.add(source)
    assert used == declared, f"declared but unused volumes: {declared - used}"
    assert {"postgres", "worker", "sftp", "minio"} <= {n for n, s in services.items() if s.get("volumes")}


def test_postgres_creates_both_databases_the_urls_use(services):
    pg = services["postgres"]
    mounts = [v for v in pg["volumes"] if isinstance(v, str) and "docker-entrypoint-initdb.d" in v]
    assert mounts, "no init script mounted into /docker-entrypoint-initdb.d"
    script = (ROOT / mounts[0].split(":")[0]).read_text()
    pg_env = env_of(pg)
    assert "POSTGRES_PASSWORD_FILE" in pg_env
    prefect_url = env_of(services["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect_url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in prefect_url
    for service in ("worker", "api"):
        url = env_of(services[service])["DATABASE_URL"]
        assert url.startswith("postgresql+psycopg://") and "@postgres:5432/" in url, (service, url)
    for url, prefix in ((prefect_url, "PREFECT"), (env_of(services["worker"])["DATABASE_URL"], "SLUICE")):
        user, database = re.search(r"://([^:]+):.*@postgres:5432/(\w+)", url).groups()
        assert f"${{{prefix}_DB_NAME:-{database}}}" in script and f"${{{prefix}_DB_USER:-{user}}}" in script
        assert f"{prefix}_DB_PASSWORD_FILE" in pg_env
    assert 'CREATE DATABASE :"prefect_db"' in script and 'CREATE DATABASE :"sluice_db"' in script


def test_worker_runs_the_deployment_and_delivers_over_sftp(services):
    deploy = " ".join(map(str, services["deploy"]["command"]))
    assert "prefect --no-prompt deploy --all" in deploy and "work-pool create" in deploy
    worker, env = services["worker"], env_of(services["worker"])
    assert worker["command"][:3] == ["prefect", "worker", "start"] and "--with-healthcheck" in worker["command"]
    assert "${SLUICE_WORK_POOL:-sluice-process}" in worker["command"]
    assert env_of(services["deploy"])["SLUICE_WORK_POOL"] == "${SLUICE_WORK_POOL:-sluice-process}"
    assert env_of(services["deploy"])["EXTRACT_SCHEDULE_CRON"] == "${EXTRACT_SCHEDULE_CRON:-0 3 * * *}"
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api" and env["SFTP_HOST"] == "sftp"
    targets = secret_targets(worker)
    assert env["SFTP_KEY_PATH"] == targets["sftp_client_key"]
    assert env["SFTP_KNOWN_HOSTS"] == targets["sftp_known_hosts"]
    assert env["SFTP_KEY_PASSPHRASE_FILE"] == targets["sftp_client_key_passphrase"]
    sftp = services["sftp"]
    user = sftp["command"][0].split(":")[0]
    assert env["SFTP_USERNAME"] == user
    sftp_targets = secret_targets(sftp)
    assert sftp_targets["sftp_client_key_pub"].startswith(f"/home/{user}/.ssh/keys/")
    assert sftp_targets["sftp_host_key"] == "/etc/ssh/ssh_host_ed25519_key"
    assert "sftp_client_key" not in sftp_targets, "the private key belongs to the worker only"


def test_the_api_counts_its_rate_limits_in_the_stacks_redis(services):
    """Every API container shares the counts; the limits default to the settings' own and an empty value (as
    RATE_LIMIT_READ= on the command line) turns a group's limit off."""
    env = env_of(services["api"])
    assert env["RATE_LIMIT_STORAGE_URL"] == "redis://redis:6379/0"
    assert depends(services["api"])["redis"] == "service_healthy"
    redis = services["redis"]
    assert redis["image"].split(":")[0] == "redis" and "ports" not in redis and not redis.get("volumes")
    assert healthcheck_argv(redis)[1:] == ["redis-cli", "ping"]
    for name in ("RATE_LIMIT_READ", "RATE_LIMIT_WRITE"):
        assert interpolate(env[name]) == Settings.model_fields[name.lower()].default
        assert interpolate(env[name], {name: ""}) == ""


def test_minio_is_the_s3_store_with_its_root_credentials_from_secrets(services):
    """Started as the brief says, its data on a named volume, healthy once it answers, reachable from the host on
    loopback only, and its root user and password read by MinIO itself from mounted secret files."""
    minio = services["minio"]
    assert minio["command"] == ["server", "/data", "--console-address", ":9001"]
    assert [v.split(":") for v in minio["volumes"]] == [["minio-data", "/data"]]
    assert healthcheck_argv(minio)[1:] == ["mc", "ready", "local"]
    for port in minio.get("ports", []):
        assert interpolate(port).startswith("127.0.0.1:"), f"minio publishes {port} beyond loopback"
    env, targets = env_of(minio), secret_targets(minio)
    assert env["MINIO_ROOT_USER_FILE"] == targets["minio_root_user"]
    assert env["MINIO_ROOT_PASSWORD_FILE"] == targets["minio_root_password"]
    assert not {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"} & set(env)


def test_minio_init_makes_the_bucket_the_workers_stage_in(services):
    """The one-shot logs in as root, makes the bucket named in the workers' STAGING_URL (both follow
    SLUICE_STAGING_BUCKET) and gives the workers' key, the one they mount, that bucket alone."""
    init, worker = services["minio-init"], services["worker"]
    init_env, worker_env = env_of(init), env_of(worker)
    script_path = init["entrypoint"][-1]
    mounts = {target: source for source, target, *_ in (v.split(":") for v in init["volumes"])}
    script = (ROOT / mounts[script_path]).read_text()
    assert init["entrypoint"][0] == "sh" and script.startswith("#!/bin/sh\n")
    assert 'mc alias set store "$MINIO_URL"' in script and 'mc mb --ignore-existing "store/$STAGING_BUCKET"' in script
    assert 'mc admin policy attach store sluice-staging --user "$key_id"' in script
    assert init_env["MINIO_URL"] == worker_env["STAGING_ENDPOINT_URL"]
    for env in ({}, {"SLUICE_STAGING_BUCKET": "acme-shards"}):
        bucket = interpolate(init_env["STAGING_BUCKET"], env)
        assert interpolate(worker_env["STAGING_URL"], env) == f"s3://{bucket}"
    assert interpolate(init_env["STAGING_BUCKET"]) == "sluice-staging"
    init_targets, worker_targets = secret_targets(init), secret_targets(worker)
    assert init_env["MINIO_ROOT_USER_FILE"] == init_targets["minio_root_user"]
    assert init_env["MINIO_ROOT_PASSWORD_FILE"] == init_targets["minio_root_password"]
    assert init_env["STAGING_ACCESS_KEY_ID_FILE"] == init_targets["staging_access_key_id"]
    assert init_env["STAGING_SECRET_ACCESS_KEY_FILE"] == init_targets["staging_secret_access_key"]
    assert worker_env["AWS_ACCESS_KEY_ID_FILE"] == worker_targets["staging_access_key_id"]
    assert worker_env["AWS_SECRET_ACCESS_KEY_FILE"] == worker_targets["staging_secret_access_key"]
    assert not {"minio_root_user", "minio_root_password"} & set(worker_targets), "the root login is MinIO's only"


def test_two_workers_share_a_sharded_run_through_the_store(services):
    """`docker compose up` starts two workers on one pool, `--scale worker=N` makes it N (one service, so no
    fixed name or host port), and each is configured for a sharded run staged in MinIO."""
    worker, env = services["worker"], env_of(services["worker"])
    assert worker["deploy"]["replicas"] == 2 and "scale" not in worker
    assert "container_name" not in worker and "ports" not in worker
    runs_workers = [n for n, s in services.items() if s.get("command", [])[:3] == ["prefect", "worker", "start"]]
    assert runs_workers == ["worker"], "one worker service, or --scale worker=N no longer counts them all"
    assert interpolate(env["USERS_SHARDS"]) == "2" and interpolate(env["USERS_SHARDS"], {"USERS_SHARDS": "4"}) == "4"
    staging = urlsplit(interpolate(env["STAGING_URL"]))
    assert (staging.scheme, staging.netloc, staging.path) == ("s3", "sluice-staging", "")
    endpoint = urlsplit(env["STAGING_ENDPOINT_URL"])
    minio = services["minio"]
    api_port = int(next(p for p in minio["ports"] if p.endswith(":9000")).rsplit(":", 1)[1])
    assert (endpoint.scheme, endpoint.hostname, endpoint.port) == ("http", "minio", api_port)
    assert "--address" not in minio["command"], "MinIO's S3 API stays on its default :9000"
    # the names are the settings' own (models/settings.py), so the worker's runs read them
    for name in ("USERS_SHARDS", "STAGING_URL", "STAGING_ENDPOINT_URL"):
        assert name.lower() in Settings.model_fields, name
    assert worker["volumes"] == ["sluice-data:/app/var/data"]


def test_app_containers_run_as_non_root(services):
    users = [line.split()[1] for line in DOCKERFILE.read_text().splitlines() if line.startswith("USER ")]
    assert users, "the Dockerfile sets no USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    for name in APP_SERVICES:
        service = services[name]
        assert service["build"]["context"] == "." and service["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
        assert str(service.get("user", "10001")).split(":")[0] not in ("root", "0"), name


def test_dockerfile_installs_like_make_install():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "-c constraints.txt" in text and "pyproject.toml" in text
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert source == "." or (ROOT / source).exists(), f"COPY {source}: not in the repository"
    entrypoint = re.search(r'^ENTRYPOINT \["python", "(/app/[^"]+)"\]', text, re.M)
    assert entrypoint and container_path_to_repo(entrypoint.group(1)).is_file()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "var", ".git", ".env"} <= set(ignored)
