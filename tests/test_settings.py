import os
import platform
import subprocess
import sys

import pytest

from models.settings import ConfigError, get_settings


def test_defaults_need_no_environment(settings_env):
    s = get_settings()
    assert s.database_url_value == "sqlite:///var/app.db"
    assert s.extract_schedule_cron == "0 3 * * *"
    assert s.users_api_base is None and s.users_page_size == 100


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("USERS_PAGE_SIZE", "0"),
        ("USERS_PAGE_SIZE", "many"),
        ("USERS_API_BASE", "ftp://example.test/users"),
        ("EXTRACT_SCHEDULE_CRON", "every day at three"),
        ("SFTP_PORT", "70000"),
    ],
)
def test_bad_value_names_the_variable(settings_env, name, value):
    settings_env(**{name: value})
    with pytest.raises(ConfigError) as err:
        get_settings()
    assert name in str(err.value)


def test_secrets_are_not_echoed_in_errors(settings_env):
    settings_env(database_url="postgresql://u:hunter2@db/x", users_page_size="-1")
    with pytest.raises(ConfigError) as err:
        get_settings()
    assert "hunter2" not in str(err.value)


def test_make_run_stops_at_start_on_bad_config(settings_env, capsys):
    from dev.run import main

    settings_env(users_page_size="zero")
    assert main() == 2
    assert "USERS_PAGE_SIZE" in capsys.readouterr().err


def _environment_with(name: str, value: str | None) -> dict[str, str]:
    """This process's environment with `name` set to `value`, or without it when None."""
    env = {k: v for k, v in os.environ.items() if k != name}
    return env | {name: value} if value is not None else env


HALF = max(1, (os.cpu_count() or 2) // 2)


@pytest.mark.parametrize(
    ("own", "last"), [(None, ["muzzy_decay_ms:0", f"narenas:{HALF}"]), ("muzzy_decay_ms:5000", ["muzzy_decay_ms:5000"])]
)
def test_polars_allocator_returns_freed_pages_unless_the_operator_says_otherwise(own, last):
    """A fresh flow process, tuned at its entry point (`make run`'s, the bench's), hands Polars' allocator our settings (the last option given wins): freed pages
    back with no lazy step, arenas as many as half the cores; an operator's own `_RJEM_MALLOC_CONF` is kept
    instead."""
    env = _environment_with("_RJEM_MALLOC_CONF", own)
    # what Polars handed its allocator when it loaded: its own defaults, then the override
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from flows.process import tune; tune(); import os, flows.users_etl; print(os.environ['_RJEM_MALLOC_CONF'])",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    conf = out.stdout.strip().split(",")
    assert conf[-len(last) :] == last and len(conf) > len(last), conf


@pytest.mark.parametrize("own", [None, "2"])
def test_polars_pool_is_half_the_cores_unless_the_operator_says_otherwise(own):
    """The stages work side by side in threads of their own: Polars' pool takes half the cores (at least one),
    or the operator's own POLARS_MAX_THREADS."""
    env = _environment_with("POLARS_MAX_THREADS", own)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from flows.process import tune; tune(); import flows.users_etl, polars; print(polars.thread_pool_size())",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(out.stdout) == (int(own) if own else HALF)


MAPPED_BLOCKS = """
import ctypes
from flows.process import tune

tune()  # a flow process's entry point

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
first = bytes(1 << 20)
del first  # a mapped block freed: glibc's own rule raises its threshold to that size here
before = libc.mallinfo2().hblks
second = bytes(1 << 20)
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator setting only")
@pytest.mark.parametrize(("own", "mapped"), [(None, "1"), ("4194304", "0")])
def test_large_blocks_keep_their_own_mapping_after_one_is_freed_unless_the_operator_says_otherwise(own, mapped):
    """A flow process's 1 MB buffers are mapped (and go back to the system when freed) even after one was
    freed, where glibc would start taking them from its heap; an operator's MALLOC_MMAP_THRESHOLD_ wins."""
    env = _environment_with("MALLOC_MMAP_THRESHOLD_", own)
    out = subprocess.run([sys.executable, "-c", MAPPED_BLOCKS], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == mapped
