"""A concurrent writer: stores results through the real Celery result backend.

``testproject.celery.app.backend`` is ``retention_admin.backends.RetentionDatabaseBackend``
(django-celery-results' DatabaseBackend underneath): each call is
``backend.store_result(task_id, result, "SUCCESS")`` with a ~1 KB result, paced at
``--rate`` calls a second. Each call's start time (wall clock), latency and error
(if any) is written to ``--out`` when the writer stops: when the ``--stop`` file
appears, after ``--max-seconds`` or after ``--max-count`` calls. After a short
warm-up (not recorded) it creates the ``--ready`` file.

Usage (with DATABASE_URL set, see common.django_env):
    python benchmarks/writer.py --label L --out F --ready R --stop S
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WRITER_PREFIX, setup_django  # noqa: E402

WARMUP_CALLS = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ready", required=True)
    parser.add_argument("--stop", required=True)
    parser.add_argument("--rate", type=float, default=50.0, help="calls per second")
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--max-count", type=int, default=200_000)
    args = parser.parse_args()

    setup_django()
    from django.db import connection

    from testproject.celery import app

    backend = app.backend
    backend_class = f"{type(backend).__module__}.{type(backend).__qualname__}"
    payload = {"order": 0, "status": "ok", "lines": os.urandom(480).hex()}  # ~1 KB of JSON

    interval = 1.0 / args.rate
    samples: list[tuple[float, float, str | None]] = []
    count = 0
    stored = 0
    started = time.monotonic()
    next_call = time.perf_counter()
    stop = Path(args.stop)
    while count < args.max_count + WARMUP_CALLS and time.monotonic() - started < args.max_seconds:
        if count % 10 == 0 and stop.exists():
            break
        payload["order"] = count
        task_id = f"{WRITER_PREFIX}{args.label}-{count:07d}-{uuid.uuid4().hex[:12]}"
        wall = time.time()
        t0 = time.perf_counter()
        error = None
        try:
            backend.store_result(task_id, payload, "SUCCESS")
        except Exception as exc:  # noqa: BLE001 - every failure counts
            error = f"{type(exc).__name__}: {exc}"[:300]
            connection.close_if_unusable_or_obsolete()
        latency = time.perf_counter() - t0
        count += 1
        stored += error is None
        if count == WARMUP_CALLS:
            Path(args.ready).write_text("ready")
        elif count > WARMUP_CALLS:
            samples.append((wall, latency, error))
        next_call = max(next_call + interval, time.perf_counter())  # late: no catch-up burst
        pause = next_call - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    Path(args.out).write_text(json.dumps({
        "backend": backend_class,
        "rate": args.rate,
        "samples": samples,
        "stored": stored,  # rows this writer stored, warm-up included
    }))


if __name__ == "__main__":
    main()
