"""Container entrypoint: compose secrets -> environment, then exec the command.

* ``NAME_FILE=/run/secrets/x`` sets ``NAME`` to the file's content (one trailing newline dropped),
  unless ``NAME`` is already set; ``NAME_FILE`` is then removed from the environment.
* A ``${NAME}`` placeholder inside a variable ending in ``_URL`` is replaced by ``NAME``'s value,
  percent-encoded, when ``NAME`` was read from a file. So
  ``DATABASE_URL=postgresql+psycopg://sluice:${SLUICE_DB_PASSWORD}@postgres:5432/sluice`` with
  ``SLUICE_DB_PASSWORD_FILE=/run/secrets/sluice_db_password`` carries the password without compose
  (or `docker inspect`) ever seeing it. Compose files write the placeholder as ``$${NAME}``.
  A secret used this way is then dropped from the environment (it lives on only inside the URL), so
  child processes such as flow runs do not inherit it twice.

Nothing is printed about the values."""

from __future__ import annotations

import os
import re
import sys
from urllib.parse import quote

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def load_secret_files(env: dict[str, str]) -> set[str]:
    """Fill NAME from NAME_FILE; returns the names that came from files."""
    loaded = set()
    for key in [k for k in env if k.endswith("_FILE") and len(k) > len("_FILE")]:
        name = key[: -len("_FILE")]
        path = env.pop(key)
        if env.get(name):
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                value = fh.read()
        except OSError as exc:
            sys.exit(f"entrypoint: cannot read {key}={path}: {exc.strerror}")
        env[name] = value[:-1] if value.endswith("\n") else value
        loaded.add(name)
    return loaded


def expand_url_placeholders(env: dict[str, str], secrets: set[str]) -> None:
    used: set[str] = set()
    for key, value in list(env.items()):
        if not key.endswith("_URL") or "${" not in value:
            continue

        def fill(match: re.Match[str], key: str = key) -> str:
            name = match.group(1)
            if name not in secrets:
                sys.exit(f"entrypoint: {key} refers to ${{{name}}} but {name}_FILE is not set")
            used.add(name)
            return quote(env[name], safe="")

        env[key] = PLACEHOLDER.sub(fill, value)
    for name in used:
        env.pop(name, None)


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("entrypoint: no command given")
    env = dict(os.environ)
    expand_url_placeholders(env, load_secret_files(env))
    os.execvpe(argv[0], argv, env)


if __name__ == "__main__":
    main(sys.argv[1:])
