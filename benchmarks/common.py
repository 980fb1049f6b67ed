"""Shared by the benchmark's processes: paths, URLs, Django setup, small statistics."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
VAR_DIR = ROOT / "var" / "bench"

TABLE = "django_celery_results_taskresult"
# Rows the concurrent writer stores carry this task_id prefix, so that the check of
# what each method left behind can tell them from the generated data set.
WRITER_PREFIX = "bench-writer-"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def postgres_server_url() -> str:
    """The loopback PostgreSQL server the suite uses (tests/services.py), without a database."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.services import POSTGRES_URL

    url = os.environ.get("BENCH_POSTGRES_URL", POSTGRES_URL)
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK:
        raise SystemExit(f"refusing to benchmark against a non-loopback server: {parts.hostname}")
    return urlunsplit((parts.scheme, parts.netloc, "/", "", ""))


def postgres_url(database: str) -> str:
    return postgres_server_url().rstrip("/") + "/" + database


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def django_env(database_url: str) -> dict[str, str]:
    """Environment for a child process that sets Django up on ``database_url``."""
    env = dict(os.environ)
    env["DATABASE_URL"] = database_url
    env["DJANGO_SETTINGS_MODULE"] = "testproject.settings"
    # Production settings: with DEBUG on, Django keeps the SQL of the last 9000
    # queries in memory, which is not what a deployed cleanup pays.
    env["DJANGO_DEBUG"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.pop("CELERY_TASK_ALWAYS_EAGER", None)
    return env


def setup_django() -> None:
    """Called first thing by the child processes (they get DATABASE_URL from django_env)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    os.environ.setdefault("DJANGO_DEBUG", "0")
    import django

    django.setup()


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    """Current resident set size of this process (VmRSS, MiB)."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident set size of this process: VmHWM, or ru_maxrss if larger (MiB)."""
    import resource

    return max(_status_mb("VmHWM"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def round_floats(value: Any, digits: int = 4) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: round_floats(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [round_floats(v, digits) for v in value]
    return value
