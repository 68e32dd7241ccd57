"""Demo and test machinery stays off the production path: the product (flows/ tasks/ models/ api/) imports
neither dev/ nor tests/, dev/ and bench/ import no tests, and neither the runtime dependencies nor the Docker
image carry what only development uses."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("flows", "tasks", "models", "api")
DEV_ONLY = ("dev", "tests", "bench")


def imported_packages(path: Path) -> set[str]:
    """The top-level packages a module imports: import statements anywhere in it (in functions too) and
    importlib.import_module / __import__ calls with a literal name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value.split(".")[0])
    return found


def offenders(folders: tuple[str, ...], forbidden: set[str]) -> dict[str, set[str]]:
    out = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            bad = imported_packages(path) & forbidden
            if bad:
                out[str(path.relative_to(ROOT))] = bad
    return out


def requirement_name(spec: str) -> str:
    return re.split(r"[\s<>=!~;\[]", spec.strip(), maxsplit=1)[0].lower()


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_check_sees_imports_wherever_they_are(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "import os\nfrom dev.sample_api import x\n\n"
        "def f():\n    import tests.servers\n    from . import sibling\n\n"
        "importlib.import_module('bench.pipeline')\n"
    )
    assert imported_packages(module) == {"os", "dev", "tests", "bench"}


def test_the_product_imports_neither_dev_nor_tests():
    assert offenders(PRODUCT, {"dev", "tests"}) == {}


def test_dev_and_bench_import_no_tests():
    assert offenders(("dev", "bench"), {"tests"}) == {}


def test_asyncssh_is_a_dev_dependency_not_a_runtime_one(project):
    runtime = {requirement_name(spec) for spec in project["project"]["dependencies"]}
    dev = {requirement_name(spec) for spec in project["project"]["optional-dependencies"]["dev"]}
    assert "asyncssh" not in runtime
    assert "asyncssh" in dev  # `make run`'s demo SFTP server (dev/demo_sftp.py)


def test_neither_the_installed_packages_nor_the_image_carry_the_dev_only_folders(project):
    included = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not [pattern for pattern in included if pattern.split("*")[0].rstrip(".") in DEV_ONLY]
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert set(DEV_ONLY) <= ignored
    assert not ignored & {*PRODUCT, "migrations", "alembic.ini", "prefect.yaml", "pyproject.toml", "docker"}
