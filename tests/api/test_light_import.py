"""The API process stays light: importing the app loads neither Prefect nor Polars (the pipeline's weight), and
the rule names it lists without Polars are the pipeline's rules."""

from __future__ import annotations

import subprocess
import sys

from api.routes.dlq import DlqReason
from models.rules import CSV_MALFORMED, dlq_reasons, user_rule_names
from models.schema import user_rules
from models.settings import PROJECT_ROOT

PIPELINE_PACKAGES = ("prefect", "polars")


def test_importing_the_api_loads_no_prefect_nor_polars():
    code = "import sys, api, api.main, api.__main__; print('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.split()
    assert "api.main" in loaded
    assert [name for name in loaded if name.split(".")[0].startswith(PIPELINE_PACKAGES)] == []


def test_the_dlq_reasons_are_the_rules_names():
    assert user_rule_names() == [rule.name for rule in user_rules()]
    assert [reason.value for reason in DlqReason] == dlq_reasons() == [*user_rule_names(), CSV_MALFORMED]
