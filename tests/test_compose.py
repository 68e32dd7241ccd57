"""Fast checks of the deployment files, without Docker or a Prefect server: docker-compose.yml (services,
healthchecks, start order, volumes, secrets, non-root app containers, every local file it names), the
Dockerfile and docker/ helpers, and prefect.yaml (deployment `daily` of `users-etl`, cron, work pool,
no absolute paths)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
PREFECT_YAML = ROOT / "prefect.yaml"
DOCKERFILE = ROOT / "Dockerfile"

REQUIRED_SERVICES = {"postgres", "prefect-server", "worker", "api", "sftp"}
APP_SERVICES = {"prefect-server", "deploy", "migrate", "worker", "api"}  # built from our Dockerfile
ONE_SHOT = {"deploy", "migrate"}
SECRET_WORDS = re.compile(r"PASSWORD|PASSPHRASE|SECRET|TOKEN|API_KEY|PRIVATE", re.I)
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


# -- helpers ----------------------------------------------------------------------------------


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR:?error}; `$$` is a literal `$`."""
    env = {} if env is None else env

    def sub(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        value = env.get(name)
        if op in (":-", "-"):
            return value if value or (op == "-" and value is not None) else arg
        if op in (":?", "?"):
            if not value:
                raise LookupError(f"${{{name}}} is required: {arg}")
            return value
        return value or ""

    parts = value.split("$$")
    return "$".join(INTERPOLATION.sub(sub, part) for part in parts)


def walk_strings(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk_strings(value, (*path, str(key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk_strings(value, (*path, str(i)))
    elif isinstance(node, str):
        yield path, node


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def depends(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    assert isinstance(deps, dict), "depends_on must use the long form, with a condition for each service"
    return {name: spec.get("condition") for name, spec in deps.items()}


def secret_names(service: dict) -> list[str]:
    return [s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])]


def secret_targets(service: dict) -> dict[str, str]:
    out = {}
    for s in service.get("secrets", []):
        name, target = (s, None) if isinstance(s, str) else (s["source"], s.get("target"))
        out[name] = target if target and target.startswith("/") else f"/run/secrets/{target or name}"
    return out


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


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


@pytest.fixture(scope="module")
def generated_secrets(tmp_path_factory) -> Path:
    """What docker/init-secrets.sh makes (into a temporary directory, never into the checkout)."""
    if shutil.which("ssh-keygen") is None:
        skip_or_fail("ssh-keygen (OpenSSH client) is needed by docker/init-secrets.sh")
    out = tmp_path_factory.mktemp("secrets") / "secrets"
    subprocess.run(
        ["bash", str(ROOT / "docker" / "init-secrets.sh"), str(out)], check=True, capture_output=True, timeout=60
    )
    return out


# -- docker-compose.yml ---------------------------------------------------------------------------


def test_the_stack_has_every_service(services):
    assert REQUIRED_SERVICES <= set(services)
    assert services["api"]["command"] == ["python", "-m", "api"]
    assert env_of(services["api"])["API_HOST"] == "0.0.0.0" and env_of(services["api"])["API_PORT"] == "8000"
    assert services["sftp"]["image"].split(":")[0] == "atmoz/sftp"
    assert services["postgres"]["image"].split(":")[0] == "postgres"


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
    assert {"postgres", "worker", "sftp"} <= {n for n, s in services.items() if s.get("volumes")}


def test_secrets_are_declared_and_their_files_are_generated(compose, services, generated_secrets):
    declared = compose.get("secrets") or {}
    used = set()
    for name, service in services.items():
        for secret in secret_names(service):
            assert secret in declared, f"{name} uses secret {secret!r}, not declared under secrets:"
            used.add(secret)
    assert used == set(declared), f"declared but unused secrets: {set(declared) - used}"
    for secret, spec in declared.items():
        assert set(spec) == {"file"}, f"secret {secret} must come from a file"
        default = Path(interpolate(spec["file"]))
        assert not default.is_absolute() and default.parent == Path("docker/secrets"), default
        assert (generated_secrets / default.name).is_file(), f"docker/init-secrets.sh does not make {default.name}"
        moved = interpolate(spec["file"], {"SLUICE_SECRETS_DIR": "/srv/sluice-secrets"})
        assert moved == f"/srv/sluice-secrets/{default.name}", "SLUICE_SECRETS_DIR should move every secret"
    # generated secrets never enter git or the image
    ignored = (ROOT / "docker" / "secrets" / ".gitignore").read_text().split()
    assert ignored[:2] == ["*", "!.gitignore"] or ("*" in ignored and "!.gitignore" in ignored)
    assert "docker/secrets" in (ROOT / ".dockerignore").read_text().split()


def test_generated_secrets_fit_the_containers(generated_secrets):
    files = {p.name: p for p in generated_secrets.iterdir()}
    assert (generated_secrets.stat().st_mode & 0o777) == 0o700
    assert files["sftp_host_key"].stat().st_mode & 0o077 == 0, "sshd refuses a group/world readable host key"
    for name in (
        "postgres_password",
        "prefect_db_password",
        "sluice_db_password",
        "api_key",
        "sftp_client_key_passphrase",
    ):
        value = files[name].read_text()
        assert len(value) >= 32 and "\n" not in value, name
    host_pub = files["sftp_host_key.pub"].read_text().split()
    assert files["sftp_known_hosts"].read_text().split() == ["sftp", host_pub[0], host_pub[1]]
    # the worker's own loader: encrypted, opened by the generated passphrase, matching the .pub the server gets
    from pydantic import SecretStr

    from tasks.deliver import KeyPassphraseError, load_private_key

    with pytest.raises(KeyPassphraseError):
        load_private_key(files["sftp_client_key"], None)
    key = load_private_key(files["sftp_client_key"], SecretStr(files["sftp_client_key_passphrase"].read_text()))
    assert files["sftp_client_key.pub"].read_text().split()[:2] == [key.get_name(), key.get_base64()]
    again = subprocess.run(
        ["bash", str(ROOT / "docker" / "init-secrets.sh"), str(generated_secrets)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "created" not in again.stdout, "a second run must keep existing secrets"


def test_services_get_secrets_from_files_not_literals(compose, services):
    for path, value in walk_strings(compose):
        for match in INTERPOLATION.finditer(value.replace("$$", "")):
            name = match.group(1)
            if name.endswith(("_DIR", "_FILE")):  # where secrets are, not what they are
                continue
            assert not SECRET_WORDS.search(name), f"{'.'.join(path)} takes a secret from ${{{name}}}"
    for name, service in services.items():
        targets = secret_targets(service)
        for key, value in env_of(service).items():
            if key.endswith("_FILE"):
                assert value in targets.values(), f"{name}: {key}={value} is not one of its mounted secrets"
            elif SECRET_WORDS.search(key):
                pytest.fail(f"{name}: {key} is set directly; use {key}_FILE and a compose secret")
            for creds in re.findall(r"://[^/@\s]*:([^/@\s]*)@", value):
                placeholder = re.fullmatch(r"\$\$\{([A-Za-z_][A-Za-z0-9_]*)\}", creds)
                assert placeholder, f"{name}: {key} has a literal password"
                assert f"{placeholder.group(1)}_FILE" in env_of(service), f"{name}: nothing fills {creds} in {key}"


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


def _entrypoint_module():
    spec = importlib.util.spec_from_file_location("sluice_docker_entrypoint", ROOT / "docker" / "entrypoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_entrypoint_reads_secret_files_and_fills_url_passwords(tmp_path):
    ep = _entrypoint_module()
    (tmp_path / "db").write_text("p@ss/w:rd %\n")
    (tmp_path / "phrase").write_text("keep me")
    env = {
        "DATABASE_URL": "postgresql+psycopg://sluice:${DB_PASSWORD}@postgres:5432/sluice",
        "DB_PASSWORD_FILE": str(tmp_path / "db"),
        "SFTP_KEY_PASSPHRASE_FILE": str(tmp_path / "phrase"),
        "ALREADY": "set",
        "ALREADY_FILE": str(tmp_path / "missing"),
    }
    ep.expand_url_placeholders(env, ep.load_secret_files(env))
    assert env == {
        "DATABASE_URL": "postgresql+psycopg://sluice:p%40ss%2Fw%3Ard%20%25@postgres:5432/sluice",
        "SFTP_KEY_PASSPHRASE": "keep me",
        "ALREADY": "set",
    }
    with pytest.raises(SystemExit, match="NOPE_FILE is not set"):
        ep.expand_url_placeholders({"X_URL": "x://u:${NOPE}@h"}, set())
    with pytest.raises(SystemExit, match="cannot read"):
        ep.load_secret_files({"Y_FILE": str(tmp_path / "absent")})


# -- prefect.yaml -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_config() -> dict:
    return yaml.safe_load(PREFECT_YAML.read_text())


def test_prefect_yaml_declares_the_daily_users_etl_deployment(prefect_config):
    from flows.feeds_etl import feeds_etl
    from flows.users_etl import users_etl

    deployments = {d["name"]: d for d in prefect_config["deployments"]}
    assert sorted(deployments) == ["daily", "every-6h"]
    daily, feeds = deployments["daily"], deployments["every-6h"]
    assert feeds["entrypoint"] == "flows/feeds_etl.py:feeds_etl" and feeds_etl.name == "feeds-etl"
    assert set(feeds["parameters"]) <= set(feeds_etl.parameters.properties)
    assert [s["cron"] for s in feeds["schedules"]] == ["0 */6 * * *"]
    assert daily["entrypoint"] == "flows/users_etl.py:users_etl"
    module, function = daily["entrypoint"].split(":")
    assert (ROOT / module).is_file() and function == "users_etl" and users_etl.name == "users-etl"
    assert set(daily["parameters"]) <= set(users_etl.parameters.properties)
    assert daily["parameters"]["deliver_files"] is True


def test_prefect_yaml_schedule_and_work_pool_come_from_shared_definitions(prefect_config):
    from models.settings import Settings

    daily = next(d for d in prefect_config["deployments"] if d["name"] == "daily")
    pools, schedules = prefect_config["definitions"]["work_pools"], prefect_config["definitions"]["schedules"]
    assert daily["work_pool"] in pools.values(), "the work pool should be a `definitions:` alias"
    assert all(s in schedules.values() for s in daily["schedules"]), "schedules should be `definitions:` aliases"
    assert daily["work_pool"]["name"] == "{{ $SLUICE_WORK_POOL }}"
    [schedule] = daily["schedules"]
    assert schedule["cron"] == "{{ $EXTRACT_SCHEDULE_CRON }}" and schedule["timezone"] == "UTC"
    assert Settings.model_fields["extract_schedule_cron"].default == "0 3 * * *"
    makefile = (ROOT / "Makefile").read_text()
    assert "sluice-process" in makefile and "export SLUICE_WORK_POOL" in makefile


def test_prefect_yaml_has_no_absolute_paths_or_secrets(prefect_config):
    [pull] = prefect_config["pull"]
    assert pull == {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $PWD }}"}}
    for path, value in walk_strings(prefect_config):
        assert not value.startswith(("/", "~")) and not re.match(r"^[A-Za-z]:\\", value), (path, value)
        assert "://" not in value, (path, value)
        assert not SECRET_WORDS.search(value), (path, value)
    placeholders = {m for _, v in walk_strings(prefect_config) for m in re.findall(r"\{\{\s*\$(\w+)\s*\}\}", v)}
    assert placeholders == {"PWD", "SLUICE_WORK_POOL", "EXTRACT_SCHEDULE_CRON"}


# -- the Makefile's deployment targets (a stand-in `prefect` records what they run) --------------------

FAKE_PREFECT = """#!/usr/bin/env bash
{ printf 'ARGS %s\\n' "$*"; printf 'ENV PREFECT_API_URL=%s SLUICE_WORK_POOL=%s EXTRACT_SCHEDULE_CRON=%s PWD=%s\\n' \
  "${PREFECT_API_URL-<unset>}" "${SLUICE_WORK_POOL-<unset>}" "${EXTRACT_SCHEDULE_CRON-<unset>}" "$PWD"; } >>"$FAKE_LOG"
[[ "$*" == "work-pool inspect"* ]] && exit 1  # as if the pool were missing
exit 0
"""


@pytest.fixture
def make_target(tmp_path):
    if shutil.which("make") is None:
        skip_or_fail("GNU make is not installed")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "prefect").write_text(FAKE_PREFECT)
    (fake / "python").write_text(f'#!/usr/bin/env bash\nexec "{ROOT / ".venv" / "bin" / "python"}" "$@"\n')
    for f in fake.iterdir():
        f.chmod(0o755)
    log = tmp_path / "calls.log"
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_API_URL", "SLUICE_", "WORK_POOL", "EXTRACT_", "PREFECT_PORT"))
    }

    def run(target: str, *make_args: str, check: bool = True, **env: str):
        log.write_text("")
        # -o: never rebuild the virtualenv here; BIN: the stand-in prefect
        done = subprocess.run(
            [
                "make",
                "--no-print-directory",
                "-C",
                str(ROOT),
                "-o",
                ".venv/.installed-stamp",
                f"BIN={fake}",
                target,
                *make_args,
            ],
            env={**base, "FAKE_LOG": str(log), **env},
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        calls = log.read_text().splitlines()
        if not check:
            return done, calls
        assert done.returncode == 0, f"make {target} failed\n{done.stdout}\n{done.stderr}"
        return calls

    return run


def test_make_deploy_creates_the_pool_and_deploys_everything(make_target):
    calls = make_target("deploy")
    local = "PREFECT_API_URL=http://127.0.0.1:4200/api"
    assert calls[0::2] == [
        "ARGS work-pool inspect sluice-process",
        "ARGS work-pool create sluice-process --type process",
        "ARGS --no-prompt deploy --all",
    ]
    assert all(line.startswith(f"ENV {local} SLUICE_WORK_POOL=sluice-process ") for line in calls[1::2])
    assert calls[-1].endswith(f"EXTRACT_SCHEDULE_CRON=0 3 * * * PWD={ROOT}")


def test_make_deploy_honours_the_environment(make_target):
    calls = make_target(
        "deploy",
        "WORK_POOL=team-pool",
        PREFECT_API_URL="http://prefect.internal:4200/api",
        EXTRACT_SCHEDULE_CRON="15 4 * * 1-5",
    )
    assert calls[-2] == "ARGS --no-prompt deploy --all"
    assert calls[-1] == (
        f"ENV PREFECT_API_URL=http://prefect.internal:4200/api SLUICE_WORK_POOL=team-pool "
        f"EXTRACT_SCHEDULE_CRON=15 4 * * 1-5 PWD={ROOT}"
    )


def test_make_deploy_refuses_a_bad_cron(make_target):
    done, calls = make_target("deploy", check=False, EXTRACT_SCHEDULE_CRON="every day at 3")
    assert done.returncode != 0
    assert re.search(r"EXTRACT_SCHEDULE_CRON: .*not a valid cron expression", done.stderr), done.stderr
    assert not any("deploy --all" in line for line in calls), "deployed with a bad schedule"


def test_make_server_worker_trigger(make_target):
    assert make_target("server", "PREFECT_PORT=4999")[0] == "ARGS server start --host 127.0.0.1 --port 4999"
    worker = make_target("worker", "PREFECT_PORT=4999", SLUICE_WORK_POOL="from-env")
    assert worker == [
        "ARGS worker start --pool from-env --type process",
        f"ENV PREFECT_API_URL=http://127.0.0.1:4999/api SLUICE_WORK_POOL=from-env "
        f"EXTRACT_SCHEDULE_CRON=<unset> PWD={ROOT}",
    ]
    trigger = make_target("trigger", PREFECT_API_URL="http://elsewhere:4200/api")
    assert trigger[0] == "ARGS deployment run users-etl/daily --watch"
    assert trigger[1].startswith("ENV PREFECT_API_URL=http://elsewhere:4200/api ")
