"""End to end, with real processes: a Celery worker and beat (RetentionScheduler)
against RabbitMQ and the PostgreSQL test database.

Real tasks produce results; the daily tier's schedule is edited as the admin
would (every 2 seconds); beat dispatches ``run_tier``, the worker fans out
``run_policy``, and the test sees the ``CleanupRun`` and the deleted rows. Then
beat is restarted and ``celery.backend_cleanup`` still has the operator's crontab
(stock django-celery-beat resets it to 04:00 on every start).

The worker and beat use the test database (``DATABASE_URL`` built from the live
connection) and a queue of their own (``CELERY_TASK_DEFAULT_QUEUE``), deleted at
the end, so messages left over from an earlier run cannot interfere.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
from django.apps import apps
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult
from kombu import Connection

from retention_admin.models import CleanupRun
from testproject.tasks import add, fail

from .services import AMQP_URL

seed_migration = importlib.import_module(
    "retention_admin.migrations.0002_seed_schedules_and_policies"
)

ROOT = Path(__file__).resolve().parent.parent
DAILY_TIER_TASK = "retention: daily tier"
BACKEND_CLEANUP = "celery.backend_cleanup"
SCHEDULER = "retention_admin.schedulers.RetentionScheduler"
WAIT = 60.0  # seconds; the most any single wait may take
STOP_WAIT = 15.0

pytestmark = [
    pytest.mark.e2e,
    # Decided at collection, so a skipped run does not even create the test database.
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason=f"the end-to-end test runs on PostgreSQL only (this run uses {connection.vendor}); "
        "run it with DATABASE_URL=postgres://...",
    ),
    # Committed data, visible to the worker and beat.
    pytest.mark.django_db(transaction=True),
]

T = TypeVar("T")


class Process:
    """One Celery process started by the test, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path):
        self.name, self.args, self.env, self.log = name, args, env, log
        self.popen: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def start(self) -> Process:
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "testproject", *self.args],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        text = "\n".join(self.output().splitlines()[-lines:])
        state = "running" if self.running else f"exited with {self.popen and self.popen.returncode}"
        return f"---- {self.name} ({state}), last {lines} lines of {self.log} ----\n{text}"

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self) -> None:
        """SIGTERM (warm shutdown), then SIGKILL if it does not exit in time."""
        self.stopping = True
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=STOP_WAIT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=STOP_WAIT)


class Processes:
    """Starts Celery processes for one test and always stops them."""

    def __init__(self, env: dict[str, str], logs: Path, queue: str):
        self.env, self.logs, self.queue = env, logs, queue
        self.started: list[Process] = []

    def start(self, name: str, *args: str) -> Process:
        process = Process(name, list(args), self.env, self.logs / f"{name}.log")
        self.started.append(process.start())
        return process

    def tails(self) -> str:
        return "\n".join(p.tail() for p in self.started)

    def wait_for(self, what: str, check: Callable[[], T | None], timeout: float = WAIT) -> T:
        """Poll ``check`` until it returns something; fail with the logs on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            dead = [p for p in self.started if not p.stopping and not p.running]
            if dead or time.monotonic() > deadline:
                reason = f"{dead[0].name} died" if dead else f"gave up after {timeout:.0f} s"
                pytest.fail(f"waiting for {what}: {reason}\n{self.tails()}", pytrace=False)
            time.sleep(0.25)

    def wait_for_log(self, process: Process, text: str, timeout: float = WAIT) -> None:
        def seen() -> bool:
            if not process.running:
                pytest.fail(
                    f"{process.name} exited while waiting for {text!r}\n{self.tails()}",
                    pytrace=False,
                )
            return text in process.output()

        self.wait_for(f"{text!r} in the {process.name} log", seen, timeout)

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()


def database_url() -> str:
    """The test database (NAME is already test_...), as DATABASE_URL for the subprocesses."""
    s = connection.settings_dict
    user = quote(s.get("USER") or "", safe="")
    password = quote(s.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = s.get("HOST") or "127.0.0.1"
    port = f":{s['PORT']}" if s.get("PORT") else ""
    return f"postgres://{auth}{host}{port}/{quote(s['NAME'], safe='')}"


def delete_queue(name: str) -> None:
    with Connection(AMQP_URL, connect_timeout=5) as conn:
        channel = conn.default_channel
        channel.queue_delete(name)
        channel.exchange_delete(name)


@pytest.fixture
def celery_processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Processes]:
    request.getfixturevalue("rabbitmq_server")  # skips, or fails in CI, without RabbitMQ
    # An earlier transactional test flushed the tables (and serialized_rollback clashes
    # with the content types its flush re-creates): seed again what migrate seeded.
    seed_migration.seed(apps)
    queue = f"retention-e2e-{uuid.uuid4().hex[:12]}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": AMQP_URL,
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "DJANGO_DEBUG": "0",  # no SQL in the debug logs, no query log kept in memory
        "PYTHONUNBUFFERED": "1",
    }
    processes = Processes(env, tmp_path, queue)
    try:
        yield processes
    finally:
        processes.stop_all()  # before pytest-django flushes the tables they use
        # Captured output: pytest shows it only when the test failed, whatever assertion it was.
        print(processes.tails())
        try:
            delete_queue(queue)
        except Exception:  # noqa: BLE001 - a leftover empty queue must not fail the test
            pass


def start_worker(processes: Processes) -> Process:
    worker = processes.start(
        "worker",
        "worker", "--pool=solo", "-l", "info",
        "-n", f"{processes.queue}@%h",
        # No mingle/gossip: nothing to sync with other workers; starts faster. (Not
        # --without-heartbeat: then the event loop has no timer and SIGTERM takes 10 s.)
        "--without-gossip", "--without-mingle",
    )
    processes.wait_for_log(worker, " ready.")
    return worker


def start_beat(processes: Processes, name: str) -> Process:
    beat = processes.start(
        name, "beat", "-S", SCHEDULER, "-l", "debug", "--max-interval", "1",
    )
    # Logged after the scheduler was set up (install_default_entries ran) and ticked once.
    processes.wait_for_log(beat, "beat: Waking up")
    return beat


def stop(processes: Processes, process: Process) -> None:
    process.stop()
    if process.popen is not None and process.popen.returncode not in (0, -signal.SIGTERM):
        pytest.fail(f"{process.name} exited with {process.popen.returncode}\n{process.tail()}")


def backend_cleanup_cron() -> tuple[str, ...]:
    task = PeriodicTask.objects.select_related("crontab").get(name=BACKEND_CLEANUP)
    assert task.crontab is not None, f"{BACKEND_CLEANUP} lost its crontab: {task.schedule}"
    c = task.crontab
    return (c.minute, c.hour, c.day_of_month, c.month_of_year, c.day_of_week)


def edit_like_the_admin(task: PeriodicTask, **fields: Any) -> None:
    """What the admin's change form does: validate, then PeriodicTask.save() (bumps the marker)."""
    for name, value in fields.items():
        setattr(task, name, value)
    task.full_clean()
    task.save()


def test_beat_dispatches_edited_tier_and_keeps_operator_crontab(
    celery_processes: Processes,
) -> None:
    processes = celery_processes

    # The operator moves celery.backend_cleanup to 05:30 before beat ever starts.
    operator_cron = ("30", "5", "*", "*", "*")
    cleanup_task = PeriodicTask.objects.get(name=BACKEND_CLEANUP)
    crontab, _ = CrontabSchedule.objects.get_or_create(
        minute="30", hour="5", day_of_month="*", month_of_year="*", day_of_week="*",
        timezone=cleanup_task.crontab.timezone,
    )
    edit_like_the_admin(cleanup_task, crontab=crontab)
    assert backend_cleanup_cron() == operator_cron

    # Real tasks produce real results through RetentionDatabaseBackend.
    start_worker(processes)
    with Connection(AMQP_URL, connect_timeout=5) as conn:
        adds = [add.apply_async((i, i), connection=conn, queue=processes.queue).id
                for i in range(3)]
        fails = [fail.apply_async((f"boom {i}",), connection=conn, queue=processes.queue).id
                 for i in range(4)]

    def all_done() -> bool:
        rows = TaskResult.objects.filter(task_id__in=adds + fails)
        return rows.filter(status__in=["SUCCESS", "FAILURE"]).count() == len(adds + fails)

    processes.wait_for("the worker to store the 7 task results", all_done)
    statuses = dict(
        TaskResult.objects.filter(task_id__in=adds + fails).values_list("task_id", "status")
    )
    assert {statuses[t] for t in adds} == {"SUCCESS"}
    assert {statuses[t] for t in fails} == {"FAILURE"}
    assert set(
        TaskResult.objects.filter(task_id__in=adds + fails).values_list("task_name", flat=True)
    ) == {"testproject.tasks.add", "testproject.tasks.fail"}

    # Age them: failures-7d (daily tier) keeps failures 7 days; successes are the
    # remainder, which only celery.backend_cleanup cleans, never a tier.
    now = timezone.now()
    old_failures, failure_3d, fresh_failures = fails[:2], fails[2], fails[3:]
    old_success, fresh_successes = adds[0], adds[1:]
    TaskResult.objects.filter(task_id__in=old_failures + [old_success]).update(
        date_done=now - timedelta(days=10)
    )
    TaskResult.objects.filter(task_id=failure_3d).update(date_done=now - timedelta(days=3))

    # Beat runs with the seeded crontab (02:00); the operator switches the tier to
    # every 2 seconds while it runs, and beat picks up the change.
    beat = start_beat(processes, "beat-1")
    log = beat.output()
    assert f"scheduler -> {SCHEDULER}" in log, beat.tail()
    interval, _ = IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.SECONDS)
    tier_task = PeriodicTask.objects.get(name=DAILY_TIER_TASK)
    edit_like_the_admin(tier_task, crontab=None, interval=interval)

    def policy_run() -> CleanupRun | None:
        runs = CleanupRun.objects.filter(
            trigger=CleanupRun.Trigger.TASK, policy__name="failures-7d"
        )
        failed = runs.exclude(status__in=[CleanupRun.Status.SUCCEEDED, CleanupRun.Status.RUNNING])
        if failed.exists():
            bad = failed.first()
            pytest.fail(
                f"run_policy recorded {bad.status}: {bad.error or bad.notes}\n{processes.tails()}",
                pytrace=False,
            )
        return runs.filter(status=CleanupRun.Status.SUCCEEDED).order_by("started_at", "id").first()

    run = processes.wait_for("a succeeded CleanupRun of failures-7d started by beat", policy_run)
    stop(processes, beat)

    beat_log = beat.output()
    assert "DatabaseScheduler: Schedule changed." in beat_log, beat.tail()
    sent = f"Sending due task {DAILY_TIER_TASK} (retention_admin.tasks.run_tier)"
    assert sent in beat_log, beat.tail()

    # run_tier (fan-out) recorded a dispatched parent; run_policy did the work under it.
    assert run.parent is not None, run.report
    assert run.parent.trigger == CleanupRun.Trigger.TASK
    assert run.parent.status == CleanupRun.Status.DISPATCHED
    assert run.parent.tier is not None and run.parent.tier.slug == "daily"
    assert run.parent.options["policies"] == ["failures-7d"]
    assert run.tier is not None and run.tier.slug == "daily"
    assert (run.matched, run.deleted) == (2, 2), run.report
    assert run.dry_run is False and run.error == ""

    left = set(TaskResult.objects.values_list("task_id", flat=True))
    assert not left & set(old_failures), "failures older than 7 days must be deleted"
    assert {failure_3d, *fresh_failures} <= left, "failures younger than 7 days must stay"
    assert {old_success, *fresh_successes} <= left, "results no tier policy governs must stay"
    assert TaskResult.objects.filter(
        task_name="retention_admin.tasks.run_tier", status="SUCCESS"
    ).exists(), "run_tier's own result should be stored"

    # Beat stopped, started again, stopped: the operator's crontab is still there.
    assert backend_cleanup_cron() == operator_cron, (
        f"beat reset {BACKEND_CLEANUP} on its first start; the operator set "
        f"{' '.join(operator_cron)}"
    )
    beat = start_beat(processes, "beat-2")
    stop(processes, beat)
    assert f"scheduler -> {SCHEDULER}" in beat.output(), beat.tail()
    assert backend_cleanup_cron() == operator_cron, (
        f"beat reset {BACKEND_CLEANUP}; the operator set {' '.join(operator_cron)}\n{beat.tail()}"
    )
    assert PeriodicTask.objects.filter(name=BACKEND_CLEANUP).count() == 1
