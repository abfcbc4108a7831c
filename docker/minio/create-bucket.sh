#!/bin/sh
# One-shot MinIO setup for medpipe, run by the minio-init service of docker/compose.yaml (image minio/mc).
# Idempotent: re-running it (every `docker compose up`) changes nothing that exists.
#   - bucket $MINIO_BUCKET with versioning (an overwritten champion.json stays recoverable)
#   - policy medpipe-rw: read/write objects of that bucket only
#   - user $MEDPIPE_S3_ACCESS_KEY with that policy: the credentials the Airflow services use (never the root user)
set -eu
: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${MINIO_BUCKET:?}" "${MEDPIPE_S3_ACCESS_KEY:?}" "${MEDPIPE_S3_SECRET_KEY:?}"
# compose's :? guards let a copied .env.example through: refuse its change-me placeholders by name.
for name in MINIO_ROOT_PASSWORD MEDPIPE_S3_SECRET_KEY; do
  eval "value=\$$name"
  case "$(printf '%s' "$value" | tr '[:upper:]' '[:lower:]')" in
    ""|change-me*|changeme|change_me)
      echo "minio-init: refusing to start: $name in docker/.env is empty or a placeholder: set a real secret" >&2
      exit 1 ;;
  esac
done

mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" > /dev/null
mc mb --ignore-existing "local/$MINIO_BUCKET"
mc version enable "local/$MINIO_BUCKET"

cat > /tmp/medpipe-rw.json <<POLICY
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"],
     "Resource": ["arn:aws:s3:::$MINIO_BUCKET"]},
    {"Effect": "Allow",
     "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts"],
     "Resource": ["arn:aws:s3:::$MINIO_BUCKET/*"]}
  ]
}
POLICY
mc admin policy create local medpipe-rw /tmp/medpipe-rw.json > /dev/null
mc admin user add local "$MEDPIPE_S3_ACCESS_KEY" "$MEDPIPE_S3_SECRET_KEY" > /dev/null
# attach reports an error when the policy is already attached: that is the state we want.
mc admin policy attach local medpipe-rw --user "$MEDPIPE_S3_ACCESS_KEY" > /dev/null 2>&1 || \
  mc admin user info local "$MEDPIPE_S3_ACCESS_KEY" | grep -q medpipe-rw
echo "bucket $MINIO_BUCKET ready; user $MEDPIPE_S3_ACCESS_KEY has policy medpipe-rw"
