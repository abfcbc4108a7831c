"""Refuse to start Airflow with placeholder secrets or an invalid Fernet key (run by docker/entrypoint.sh).

compose's `${VAR:?}` guards only refuse unset or empty variables: a copied .env.example with its `change-me`
values passes them, and Airflow then runs with known secrets (or, for a bad Fernet key, fails later on the
first encrypted connection). This script checks the environment the container actually got, before
`airflow ...` starts, and exits 1 naming each bad variable (and the docker/.env line it comes from).
Standard library only: it runs before anything else in the image and in the tests on the host.

    python docker/check_env.py        # exit 0: fine; exit 1: one line per problem on stderr
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import sys
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

# Values that mean "not set yet": the .env.example placeholder and its usual spellings.
PLACEHOLDERS = {"", "change-me", "changeme", "change_me", "change-it", "changeit", "xxx", "todo", "secret", "password"}

# container variable -> the docker/.env variable it is built from (compose.yaml's x-airflow-common environment)
SECRETS = {
    "AIRFLOW__CORE__FERNET_KEY": "AIRFLOW_FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET": "AIRFLOW_JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY": "AIRFLOW_API_SECRET_KEY",
    "AWS_SECRET_ACCESS_KEY": "MEDPIPE_S3_SECRET_KEY",
}
# container variables holding a URL whose password comes from docker/.env
URL_PASSWORDS = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "POSTGRES_PASSWORD",
    "AIRFLOW__CELERY__RESULT_BACKEND": "POSTGRES_PASSWORD",
    "AIRFLOW__CELERY__BROKER_URL": "REDIS_PASSWORD",
}
_FERNET_KEY = re.compile(r"[A-Za-z0-9_-]{43}=")


def is_placeholder(value: str | None) -> bool:
    text = (value or "").strip().lower()
    return text in PLACEHOLDERS or text.startswith("change-me")


def fernet_key_problem(value: str) -> str | None:
    """Why `value` is not a valid AIRFLOW__CORE__FERNET_KEY (comma-separated keys for rotation), else None.

    A Fernet key is 32 bytes, url-safe base64-encoded: 44 characters ending with '='. Checked strictly
    (urlsafe_b64decode alone silently drops characters outside the alphabet).
    """
    keys = [k.strip() for k in value.split(",")]
    for position, key in enumerate(keys, 1):
        where = f"key {position} of {len(keys)}" if len(keys) > 1 else "the key"
        if not _FERNET_KEY.fullmatch(key):
            return f"{where} is not 44 url-safe base64 characters ending with '='"
        try:
            raw = base64.urlsafe_b64decode(key)
        except (binascii.Error, ValueError) as exc:  # pragma: no cover - the pattern already excludes these
            return f"{where} does not decode: {exc}"
        if len(raw) != 32:
            return f"{where} decodes to {len(raw)} bytes, not 32"
    return None


def problems(env: Mapping[str, str]) -> list[str]:
    found = []
    for name, source in SECRETS.items():
        value = env.get(name)
        if is_placeholder(value):
            found.append(f"{name} (from {source} in docker/.env) is empty or a placeholder ({value!r}): set a real secret")
        elif name == "AIRFLOW__CORE__FERNET_KEY" and (why := fernet_key_problem(value)):
            found.append(f"{name} (from {source} in docker/.env) is not a valid Fernet key: {why}. Generate one with "
                         "python -c \"from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())\"")
    for name, source in URL_PASSWORDS.items():
        url = env.get(name)
        if url is None:
            found.append(f"{name} is not set")
            continue
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if is_placeholder(unquote(password) if password is not None else None):
            found.append(f"{name}: its password (from {source} in docker/.env) is empty or a placeholder")
    return found


def main(env: Mapping[str, str] | None = None) -> int:
    found = problems(os.environ if env is None else env)
    for line in found:
        print(f"medpipe: refusing to start: {line}", file=sys.stderr)
    if found:
        print("medpipe: fix docker/.env (see docker/.env.example), then `docker compose up -d` again", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
