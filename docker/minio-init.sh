#!/bin/sh
# One-shot (compose service `minio-init`, in the minio/mc image, which has sh, cat and mc but no grep):
# the staging bucket, and the workers' own key with a policy for that bucket alone, so that no worker holds
# MinIO's root credentials. Safe to run again: the bucket and its files are kept, the policy and the key's
# secret are written again, an attachment already made is kept.
# Reads MINIO_URL, STAGING_BUCKET and the *_FILE secrets compose mounts; prints no secret.
set -eu

mc alias set store "$MINIO_URL" "$(cat "$MINIO_ROOT_USER_FILE")" "$(cat "$MINIO_ROOT_PASSWORD_FILE")" >/dev/null
mc mb --ignore-existing "store/$STAGING_BUCKET"

policy=/tmp/sluice-staging-policy.json
printf '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*"],
  "Resource": ["arn:aws:s3:::%s", "arn:aws:s3:::%s/*"]}]}\n' "$STAGING_BUCKET" "$STAGING_BUCKET" >"$policy"
mc admin policy create store sluice-staging "$policy" >/dev/null

key_id="$(cat "$STAGING_ACCESS_KEY_ID_FILE")"
# an upsert: an existing user gets the secret from the file again
mc admin user add store "$key_id" "$(cat "$STAGING_SECRET_ACCESS_KEY_FILE")" >/dev/null
# a second attach fails with "The specified policy change is already in effect."
if ! out="$(mc admin policy attach store sluice-staging --user "$key_id" 2>&1)"; then
  case "$out" in
    *"already in effect"*) ;;
    *) printf '%s\n' "$out" >&2; exit 1 ;;
  esac
fi
echo "minio-init: bucket $STAGING_BUCKET ready, the workers' key may use it"
