"""Run the test suite once per database: SQLite, PostgreSQL, MariaDB.

A database whose server does not answer is skipped with a visible reason, unless
CI is set, where a missing server fails the run (CI must test every database).
Extra arguments are passed to pytest, e.g. `make test ARGS="-k executor"`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import DATABASES, service_problem  # noqa: E402


def main(argv: list[str]) -> int:
    ci = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
    only = os.environ.get("TEST_DATABASES", "").split(",") if os.environ.get("TEST_DATABASES") else None
    failed: list[str] = []
    skipped: list[str] = []
    for name, url in DATABASES.items():
        if only and name not in only:
            continue
        problem = service_problem(name)
        if problem:
            message = f"{name}: {problem}"
            if ci:
                print(f"FAILED (CI needs every database) {message}", flush=True)
                failed.append(name)
            else:
                print(f"SKIPPED {message}", flush=True)
                skipped.append(name)
            continue
        print(f"==== test suite on {name} ({url}) ====", flush=True)
        env = {**os.environ, "DATABASE_URL": url}
        code = subprocess.call([sys.executable, "-m", "pytest", *argv], cwd=ROOT, env=env)
        if code != 0:
            failed.append(name)
    print("==== summary ====")
    if skipped:
        print(f"skipped databases (server not reachable): {', '.join(skipped)}")
    if failed:
        print(f"failed on: {', '.join(failed)}")
        return 1
    print("all databases passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
