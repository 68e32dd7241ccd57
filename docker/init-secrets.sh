#!/usr/bin/env bash
# Creates the secret files docker-compose.yml mounts, once (existing files are kept):
#   postgres_password, prefect_db_password, sluice_db_password, api_key  random, 32 bytes, base64url
#   sftp_client_key (+ .pub)     Ed25519 key the worker logs in with, encrypted with
#   sftp_client_key_passphrase   this random passphrase
#   sftp_host_key                the SFTP server's Ed25519 host key, and
#   sftp_known_hosts             the line that pins it for the worker (host `sftp`, port 22)
#   minio_root_user, minio_root_password              MinIO's root credentials (minio, minio-init only)
#   staging_access_key_id, staging_secret_access_key  the workers' key to the staging bucket (minio-init
#                                                      creates it in MinIO, limited to that bucket)
# MinIO's key ids are 20 letters and digits and its secrets 40 characters: within what every mc accepts.
# Usage: docker/init-secrets.sh [DIR]   (default: docker/secrets next to this script)
#
# Permissions: compose (without swarm) bind-mounts secret files with their host owner and mode, and
# the containers read them as other users (postgres uid 999, the app's uid 10001). So the directory
# is private (0700) and the files the containers read are 0644 inside it; only the SFTP host key,
# which sshd reads as root and refuses when group/world readable, stays 0600.
set -euo pipefail

dir="${1:-$(cd "$(dirname "$0")" && pwd)/secrets}"
command -v ssh-keygen >/dev/null || { echo "init-secrets: ssh-keygen (OpenSSH client) is required" >&2; exit 1; }
umask 077
mkdir -p "$dir"
chmod 700 "$dir"

random_secret() {  # ${1:-32} random bytes, URL-safe base64 without padding
  head -c "${1:-32}" /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'
}

random_key_id() {  # 20 random letters and digits (an S3 access key id)
  local s
  s="$(head -c 48 /dev/urandom | base64 | tr -d '+/=\n')"
  printf '%s' "${s:0:20}"
}

new() { [[ ! -s "$dir/$1" ]]; }

for name in postgres_password prefect_db_password sluice_db_password api_key sftp_client_key_passphrase; do
  if new "$name"; then
    random_secret >"$dir/$name"
    echo "init-secrets: created $name"
  fi
done

for name in minio_root_user staging_access_key_id; do
  if new "$name"; then
    random_key_id >"$dir/$name"
    echo "init-secrets: created $name"
  fi
done
for name in minio_root_password staging_secret_access_key; do
  if new "$name"; then
    random_secret 30 >"$dir/$name"
    echo "init-secrets: created $name"
  fi
done

if new sftp_client_key; then
  rm -f "$dir/sftp_client_key.pub"
  ssh-keygen -q -t ed25519 -C sluice-worker -N "$(<"$dir/sftp_client_key_passphrase")" -f "$dir/sftp_client_key"
  echo "init-secrets: created sftp_client_key (encrypted) and sftp_client_key.pub"
fi

if new sftp_host_key; then
  rm -f "$dir/sftp_host_key.pub"
  ssh-keygen -q -t ed25519 -C sluice-sftp -N '' -f "$dir/sftp_host_key"
  echo "init-secrets: created sftp_host_key"
fi
# always in step with the host key
printf 'sftp %s\n' "$(cut -d' ' -f1,2 "$dir/sftp_host_key.pub")" >"$dir/sftp_known_hosts"

chmod 644 "$dir"/postgres_password "$dir"/prefect_db_password "$dir"/sluice_db_password "$dir"/api_key \
  "$dir"/sftp_client_key "$dir"/sftp_client_key_passphrase "$dir"/sftp_client_key.pub "$dir"/sftp_known_hosts \
  "$dir"/minio_root_user "$dir"/minio_root_password "$dir"/staging_access_key_id "$dir"/staging_secret_access_key
chmod 600 "$dir"/sftp_host_key
echo "init-secrets: secrets are in $dir"
