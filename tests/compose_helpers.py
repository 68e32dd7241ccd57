"""What the deployment-file tests share: the repository's root, the words that name a secret, and reading
docker-compose.yml as Compose does (variable substitution, environment, secrets)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SECRET_WORDS = re.compile(r"PASSWORD|PASSPHRASE|SECRET|TOKEN|API_KEY|PRIVATE", re.I)
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


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


def secret_names(service: dict) -> list[str]:
    return [s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])]


def secret_targets(service: dict) -> dict[str, str]:
    out = {}
    for s in service.get("secrets", []):
        name, target = (s, None) if isinstance(s, str) else (s["source"], s.get("target"))
        out[name] = target if target and target.startswith("/") else f"/run/secrets/{target or name}"
    return out
