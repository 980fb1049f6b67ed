"""The benchmark's own databases: create, migrate, clone, drop and inspect them.

PostgreSQL databases are named ``retention_bench_<name>`` on the loopback server
from tests/services.py; SQLite ones are files ``var/bench/retention_bench_<name>.sqlite3``.
A clone is ``CREATE DATABASE ... TEMPLATE ... STRATEGY FILE_COPY`` or a file copy,
so every method starts from byte-identical data.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from common import TABLE, VAR_DIR, WRITER_PREFIX, postgres_url, sqlite_url

PREFIX = "retention_bench_"

# What each method leaves behind, by the same query on both databases: the generated
# rows (their count and the sum of their ids, a fingerprint of which ones stayed),
# the writer's rows, and generated rows that are still older than result_expires.
_WRITER = f"substr(task_id, 1, {len(WRITER_PREFIX)}) = '{WRITER_PREFIX}'"
VERIFY_SQL = f"""
SELECT
  SUM(CASE WHEN {_WRITER} THEN 0 ELSE 1 END),
  SUM(CASE WHEN {_WRITER} THEN 0 ELSE id END),
  SUM(CASE WHEN {_WRITER} THEN 1 ELSE 0 END),
  SUM(CASE WHEN NOT {_WRITER} AND date_done < {{cutoff}} THEN 1 ELSE 0 END)
FROM {TABLE}
"""


def _verify_row(row: tuple[Any, ...]) -> dict[str, int]:
    kept, id_sum, writer, still_due = (int(v or 0) for v in row)
    return {"remaining": kept, "remaining_id_sum": id_sum, "writer_rows": writer, "still_due": still_due}


class Postgres:
    kind = "postgresql"

    def __init__(self) -> None:
        import psycopg

        self._psycopg = psycopg

    def _connect(self, database: str = "postgres"):  # type: ignore[no-untyped-def]
        return self._psycopg.connect(postgres_url(database), autocommit=True)

    def url(self, name: str) -> str:
        return postgres_url(PREFIX + name)

    def version(self) -> str:
        with self._connect() as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0])

    def settings(self) -> dict[str, str]:
        names = ("shared_buffers", "work_mem", "max_wal_size", "synchronous_commit", "autovacuum")
        with self._connect() as conn:
            return {n: str(conn.execute(f"SHOW {n}").fetchone()[0]) for n in names}

    def exists(self, name: str) -> bool:
        with self._connect() as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [PREFIX + name]).fetchone()
            return row is not None

    def drop(self, name: str) -> None:
        with self._connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{PREFIX + name}" WITH (FORCE)')

    def create_empty(self, name: str) -> None:
        self.drop(name)
        with self._connect() as conn:
            conn.execute(f'CREATE DATABASE "{PREFIX + name}"')

    def clone(self, source: str, target: str) -> None:
        self.drop(target)
        with self._connect() as conn:
            conn.execute(
                f'CREATE DATABASE "{PREFIX + target}" TEMPLATE "{PREFIX + source}" STRATEGY FILE_COPY'
            )

    def finalize(self, name: str) -> None:
        """After loading: what autovacuum would have done by now (it is off on this server)."""
        with self._connect(PREFIX + name) as conn:
            conn.execute(f"VACUUM (FREEZE, ANALYZE) {TABLE}")
            conn.execute("CHECKPOINT")

    def settle(self, name: str) -> None:
        """Before a measurement: nothing dirty left to write from the clone."""
        with self._connect() as conn:
            conn.execute("CHECKPOINT")
        os.sync()

    def size_bytes(self, name: str) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT pg_database_size(%s)", [PREFIX + name]).fetchone()[0])

    def table_size_bytes(self, name: str) -> int:
        with self._connect(PREFIX + name) as conn:
            return int(conn.execute("SELECT pg_total_relation_size(%s)", [TABLE]).fetchone()[0])

    def verify(self, name: str) -> dict[str, int]:
        cutoff = datetime.now(timezone.utc) - timedelta(days=1)
        with self._connect(PREFIX + name) as conn:
            return _verify_row(conn.execute(VERIFY_SQL.format(cutoff="%s"), [cutoff]).fetchone())

    def explain(self, name: str, sql: str, params: list[Any]) -> str:
        with self._connect(PREFIX + name) as conn:
            rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params).fetchall()
            return "\n".join(r[0] for r in rows)


class Sqlite:
    kind = "sqlite"

    def path(self, name: str) -> Path:
        return VAR_DIR / f"{PREFIX}{name}.sqlite3"

    def url(self, name: str) -> str:
        return sqlite_url(self.path(name))

    def version(self) -> str:
        return sqlite3.sqlite_version

    def settings(self) -> dict[str, str]:
        return {"journal_mode": "delete (Django's default)", "timeout": "30 s (testproject settings)"}

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def drop(self, name: str) -> None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(str(self.path(name)) + suffix).unlink(missing_ok=True)

    def create_empty(self, name: str) -> None:
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        self.drop(name)  # migrate creates the file

    def clone(self, source: str, target: str) -> None:
        self.drop(target)
        shutil.copyfile(self.path(source), self.path(target))

    def finalize(self, name: str) -> None:
        # No ANALYZE: Django never runs it, so a real SQLite result store has no
        # planner statistics either.
        os.sync()

    def settle(self, name: str) -> None:
        os.sync()

    def size_bytes(self, name: str) -> int:
        return self.path(name).stat().st_size

    table_size_bytes = size_bytes

    def verify(self, name: str) -> dict[str, int]:
        # Django stores datetimes in SQLite as naive UTC text, 'YYYY-MM-DD HH:MM:SS.ffffff'.
        cutoff = (datetime.now(timezone.utc) - timedelta(days=1)).replace(tzinfo=None)
        with sqlite3.connect(self.path(name)) as conn:
            row = conn.execute(VERIFY_SQL.format(cutoff="?"), [cutoff.isoformat(sep=" ")]).fetchone()
        conn.close()
        return _verify_row(row)

    def explain(self, name: str, sql: str, params: list[Any]) -> str:
        with sqlite3.connect(self.path(name)) as conn:
            rows = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
        conn.close()
        return "\n".join(str(r) for r in rows)


def get(kind: str) -> Postgres | Sqlite:
    return Postgres() if kind == "postgresql" else Sqlite()
