"""The stack's secrets, without Docker: each declared in docker-compose.yml and made by docker/init-secrets.sh
(into a temporary directory, never the checkout), handed to services as files, never as literals, and read
from those files by docker/entrypoint.py."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from models.settings import get_settings
from tests.compose_helpers import (
    INTERPOLATION,
    ROOT,
    SECRET_WORDS,
    env_of,
    interpolate,
    secret_names,
    secret_targets,
    walk_strings,
)
from tests.conftest import skip_or_fail

STORE_SECRETS = ("minio_root_user", "minio_root_password", "staging_access_key_id", "staging_secret_access_key")
# S3 credentials are secret in both halves: neither the key id nor the root user is set directly
STORE_CREDENTIALS = re.compile(r"ACCESS_KEY|ROOT_USER|ROOT_PASSWORD", re.I)


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
    # MinIO's: key ids of 20 letters and digits, secrets of 40 characters (what every mc accepts), all different
    minio = {name: files[name].read_text() for name in STORE_SECRETS}
    for name in ("minio_root_user", "staging_access_key_id"):
        assert re.fullmatch(r"[A-Za-z0-9]{20}", minio[name]), name
    for name in ("minio_root_password", "staging_secret_access_key"):
        assert re.fullmatch(r"[A-Za-z0-9_-]{40}", minio[name]), name
    assert len(set(minio.values())) == len(minio)
    assert all(files[name].stat().st_mode & 0o777 == 0o644 for name in STORE_SECRETS), "containers read them"
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


def test_store_credentials_are_files_and_the_workers_key_is_not_root(
    compose, services, generated_secrets, settings_env
):
    """Every S3 credential is a mounted file; inside a worker, docker/entrypoint.py turns them into the
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY its runs' S3 client reads, holding the workers' own key (the one
    minio-init gives the bucket), never MinIO's root login; the settings then name the S3 staging store."""
    for name, service in services.items():
        for key in env_of(service):
            assert not STORE_CREDENTIALS.search(key) or key.endswith("_FILE"), f"{name}: {key} is set directly"
    worker = services["worker"]
    files = {name: Path(interpolate(spec["file"])).name for name, spec in compose["secrets"].items()}
    mounted = {target: generated_secrets / files[name] for name, target in secret_targets(worker).items()}
    env = {key: interpolate(value) for key, value in env_of(worker).items()}
    env = {key: str(mounted.get(value, value)) if key.endswith("_FILE") else value for key, value in env.items()}
    ep = _entrypoint_module()
    ep.expand_url_placeholders(env, ep.load_secret_files(env))
    read = {name: (generated_secrets / name).read_text() for name in STORE_SECRETS}
    assert env["AWS_ACCESS_KEY_ID"] == read["staging_access_key_id"]
    assert env["AWS_SECRET_ACCESS_KEY"] == read["staging_secret_access_key"]
    assert not {read["minio_root_user"], read["minio_root_password"]} & set(env.values())
    assert not [key for key in env if key.endswith("_FILE")]
    settings_env(**{key: env[key] for key in ("STAGING_URL", "STAGING_ENDPOINT_URL", "USERS_SHARDS")})
    settings = get_settings()
    assert settings.staging_url == "s3://sluice-staging" and settings.staging_endpoint_url == "http://minio:9000"
    assert settings.users_shards == 2


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
