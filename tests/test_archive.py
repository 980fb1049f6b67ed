"""Archive-then-delete, verification, restore and explain, on whichever database the suite runs."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.core.files.storage import FileSystemStorage
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import Q
from django.test import override_settings
from django.utils import timezone
from django_celery_results.models import TaskResult

from retention_admin import archive
from retention_admin.executor import CleanupFailed, Options, Selection, run_cleanup
from retention_admin.models import ArchiveBatch, ArchivedResult, RetentionHold, RetentionPolicy, RetentionTier
from retention_admin.restore import RestoreError, restore_batches

from .conftest import ids_left

DAY = timedelta(days=1)
pytestmark = pytest.mark.django_db


def audit_policy(**fields: object) -> RetentionPolicy:
    fields.setdefault("task_name_pattern", "audit.*")
    fields.setdefault("keep_for", DAY)
    return RetentionPolicy.objects.create(
        name="audit", tier=RetentionTier.objects.get(slug="daily"), priority=1, archive=True, **fields
    )


def run(**options: object):
    return run_cleanup(Selection(policies=["audit"]), Options(**options))  # type: ignore[arg-type]


def records_of(batch: ArchiveBatch, directory: Path) -> list[dict]:
    with gzip.open(directory / batch.name, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_due_results_are_archived_with_every_column_then_deleted(make_result, archive_dir):
    audit_policy()
    old = make_result(task_id="a-old", task_name="audit.login", age=5 * DAY, result='{"user": "zoë"}')
    TaskResult.objects.filter(pk=old.pk).update(
        traceback="Traceback ...", meta='{"children": []}', task_args="[1]", task_kwargs='{"x": 1}',
        worker="w1@host", periodic_task_name="nightly",
    )
    make_result(task_id="a-new", task_name="audit.login", age=timedelta(hours=1))
    make_result(task_id="other", task_name="web.page", age=5 * DAY)
    before = TaskResult.objects.get(task_id="a-old")

    report = run().report

    assert ids_left() == {"a-new", "other"}
    audit = report["policies"][0]
    assert (audit["matched"], audit["archived"], audit["deleted"]) == (1, 1, 1)
    batch = ArchiveBatch.objects.get()
    assert batch.status == ArchiveBatch.Status.COMPLETE
    assert (batch.records, batch.deleted, batch.policy_name) == (1, 1, "audit")
    path = archive_dir / batch.name
    assert batch.name.startswith("database/audit/") and batch.name.endswith(".jsonl.gz")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == batch.sha256
    assert path.stat().st_size == batch.size
    (record,) = records_of(batch, archive_dir)
    for field in TaskResult._meta.concrete_fields:
        value = getattr(before, field.attname)
        if isinstance(value, datetime):
            # ISO 8601 in UTC; PostgreSQL drops trailing zeros of the fraction.
            assert record[field.attname].endswith("+00:00"), record[field.attname]
            assert datetime.fromisoformat(record[field.attname]) == value, field.attname
        else:
            assert record[field.attname] == value, field.attname
    assert record["source"] == "database" and record["policy"] == "audit"
    assert ArchivedResult.objects.filter(batch=batch, task_id="a-old").exists()


def test_many_batches_and_each_verifies(make_result, archive_dir):
    audit_policy()
    for i in range(23):
        make_result(task_id=f"a{i:02d}", task_name="audit.x", age=(5 + i) * DAY)
    with override_settings(RETENTION_ADMIN={"ARCHIVE_DIR": str(archive_dir), "ARCHIVE_BATCH_RECORDS": 5}):
        report = run(batch_size=3).report

    assert ids_left() == set()
    batches = list(ArchiveBatch.objects.order_by("id"))
    assert [b.records for b in batches] == [5, 5, 5, 5, 3]
    assert all(archive.verify_batch(b).ok for b in batches)
    archived = [r["task_id"] for b in batches for r in records_of(b, archive_dir)]
    assert sorted(archived) == [f"a{i:02d}" for i in range(23)]
    # Oldest first, so an object's name tells its date range.
    assert batches[0].first_done < batches[-1].first_done
    assert report["totals"]["archived"] == 23


def test_dry_run_archives_nothing(make_result, archive_dir):
    audit_policy()
    make_result(task_id="a", task_name="audit.x", age=5 * DAY)
    report = run(dry_run=True).report
    assert report["policies"][0]["matched"] == 1
    assert ids_left() == {"a"} and not ArchiveBatch.objects.exists()
    assert list(archive_dir.iterdir()) == []


def test_no_archive_location_fails_the_policy_and_keeps_its_results(make_result):
    audit_policy()
    RetentionPolicy.objects.create(
        name="web", tier=RetentionTier.objects.get(slug="daily"), priority=2, task_name_pattern="web.*", keep_for=DAY
    )
    make_result(task_id="a", task_name="audit.x", age=5 * DAY)
    make_result(task_id="w", task_name="web.x", age=5 * DAY)

    with pytest.raises(CleanupFailed) as failed:
        run_cleanup(Selection(policies=["audit", "web"]), Options())

    assert "No archive location" in str(failed.value) and "ARCHIVE_DIR" in str(failed.value)
    assert ids_left() == {"a"}  # the other policy still ran
    assert failed.value.run.status == "failed"


def test_missing_archive_directory_is_named(make_result, tmp_path):
    audit_policy()
    make_result(task_id="a", task_name="audit.x", age=5 * DAY)
    with override_settings(RETENTION_ADMIN={"ARCHIVE_DIR": str(tmp_path / "nope")}):
        with pytest.raises(CleanupFailed, match="does not exist"):
            run()
    assert ids_left() == {"a"}


def test_a_result_that_reran_after_archiving_is_not_deleted(make_result, archive_dir):
    audit_policy()
    make_result(task_id="a1", task_name="audit.x", age=5 * DAY)
    make_result(task_id="a2", task_name="audit.x", age=5 * DAY)
    writer = archive.ArchiveWriter(archive.configured_location(), policy=None, policy_name="audit", run=None)
    columns = [f.attname for f in archive.TASK_RESULT_FIELDS]
    for row in TaskResult.objects.order_by("id").values_list(*columns):
        writer.add(archive.record_from_row(row, policy="audit"))
    batch = writer.finish()
    # a1 re-runs: a new date_done; the archived copy is stale.
    TaskResult.objects.filter(task_id="a1").update(date_done=timezone.now())

    held = Q(task_id__in=RetentionHold.objects.values("task_id"))
    deleted = sum(archive.delete_archived_rows(batch, held, "default"))

    assert deleted == 1 and ids_left() == {"a1"}


def test_holds_keep_results_out_of_the_archive(make_result, archive_dir):
    audit_policy()
    make_result(task_id="held", task_name="audit.x", age=5 * DAY)
    make_result(task_id="free", task_name="audit.x", age=5 * DAY)
    RetentionHold.objects.create(task_id="held", reason="legal")
    run()
    assert ids_left() == {"held"}
    assert [r.task_id for r in ArchivedResult.objects.all()] == ["free"]


class FailingStorage(FileSystemStorage):
    """A storage whose disk fills up mid-write."""

    def _save(self, name, content):
        content.read(100)
        raise OSError(28, "No space left on device")


def test_storage_failing_mid_write_keeps_every_row(make_result, tmp_path):
    audit_policy()
    for i in range(4):
        make_result(task_id=f"a{i}", task_name="audit.x", age=5 * DAY)
    storages = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        "retention_archive": {"BACKEND": "tests.test_archive.FailingStorage", "OPTIONS": {"location": str(tmp_path)}},
    }
    with override_settings(STORAGES=storages):
        with pytest.raises(CleanupFailed, match="No space left on device"):
            run()
    assert ids_left() == {"a0", "a1", "a2", "a3"}
    batch = ArchiveBatch.objects.get()
    assert batch.status == ArchiveBatch.Status.CORRUPT and "No space left" in batch.error


def test_django_storage_named_retention_archive_is_used(make_result, tmp_path):
    audit_policy()
    make_result(task_id="a", task_name="audit.x", age=5 * DAY)
    storages = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        "retention_archive": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "s3-stand-in")},
        },
    }
    with override_settings(STORAGES=storages):
        run()
        batch = ArchiveBatch.objects.get()
        assert batch.location == "storage:retention_archive"
        assert (tmp_path / "s3-stand-in" / batch.name).is_file()
        assert archive.verify_batch(batch).ok
    assert ids_left() == set()


def test_interrupted_batches_are_settled_by_the_next_run(make_result, archive_dir):
    audit_policy()
    for i in range(3):
        make_result(task_id=f"a{i}", task_name="audit.x", age=5 * DAY)
    columns = [f.attname for f in archive.TASK_RESULT_FIELDS]
    # A run died after writing a batch for a0, a1 (written, rows not yet deleted) ...
    writer = archive.ArchiveWriter(archive.configured_location(), policy=None, policy_name="audit", run=None)
    for row in TaskResult.objects.filter(task_id__in=["a0", "a1"]).order_by("id").values_list(*columns):
        writer.add(archive.record_from_row(row, policy="audit"))
    written = writer.finish()
    # ... and another died while uploading (no checksum recorded).
    writing = ArchiveBatch.objects.create(policy_name="audit", location=str(archive_dir), name="x.jsonl.gz")

    report = run().report

    written.refresh_from_db()
    writing.refresh_from_db()
    assert written.status == ArchiveBatch.Status.COMPLETE and written.deleted == 2
    assert writing.status == ArchiveBatch.Status.CORRUPT
    assert ids_left() == set()
    assert report["policies"][0]["deleted"] == 3


def test_a_written_batch_whose_object_vanished_is_not_completed(make_result, archive_dir):
    audit_policy()
    make_result(task_id="a0", task_name="audit.x", age=5 * DAY)
    columns = [f.attname for f in archive.TASK_RESULT_FIELDS]
    writer = archive.ArchiveWriter(archive.configured_location(), policy=None, policy_name="audit", run=None)
    for row in TaskResult.objects.values_list(*columns):
        writer.add(archive.record_from_row(row, policy="audit"))
    written = writer.finish()
    (archive_dir / written.name).unlink()

    with pytest.raises(CleanupFailed, match="missing"):
        run()

    written.refresh_from_db()
    assert written.status == ArchiveBatch.Status.CORRUPT
    # The row was then archived into a new, complete batch.
    assert ids_left() == set()
    assert ArchiveBatch.objects.filter(status="complete").count() == 1


# -- verification ----------------------------------------------------------


def archived_batch(make_result, archive_dir, n: int = 3, prefix: str = "a") -> ArchiveBatch:
    for i in range(n):
        make_result(task_id=f"{prefix}{i}", task_name="audit.x", age=(5 + i) * DAY, result=f'"r{i}"')
    run()
    return ArchiveBatch.objects.order_by("-id").first()


def test_verify_detects_truncation_and_tampering(make_result, archive_dir):
    audit_policy()
    batch = archived_batch(make_result, archive_dir)
    path = archive_dir / batch.name
    good = path.read_bytes()

    path.write_bytes(good[: len(good) // 2])
    result = archive.verify_batch(batch)
    assert not result.ok and "cannot be read" in result.problem
    batch.refresh_from_db()
    assert batch.status == ArchiveBatch.Status.CORRUPT

    # Same length, other bytes: a recompressed object with one record changed.
    records = records_of_bytes(good)
    records[0]["result"] = '"forged"'
    path.write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in records)))
    result = archive.check_object(batch)
    assert not result.ok and "SHA-256" in result.problem


def records_of_bytes(data: bytes) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(data).splitlines()]


# -- restore ---------------------------------------------------------------


def test_restore_puts_every_column_back_and_protects_it(make_result, archive_dir):
    audit_policy()
    make_result(task_id="a0", task_name="audit.x", age=5 * DAY, result='{"v": "ü"}')
    TaskResult.objects.filter(task_id="a0").update(traceback="tb", worker="w@h", task_args="[2]")
    before = TaskResult.objects.values().get(task_id="a0")
    batch = archived_batch(make_result, archive_dir, n=0)
    assert ids_left() == set()

    out = io.StringIO()
    call_command("restore_results", str(batch.pk), stdout=out)

    after = TaskResult.objects.values().get(task_id="a0")
    for key, value in before.items():
        if key != "id":
            assert after[key] == value, key
    assert "restored 1" in out.getvalue()
    batch.refresh_from_db()
    assert batch.status == ArchiveBatch.Status.RESTORED and batch.grace_until > timezone.now() + 6 * DAY
    # The next run does not delete what was just restored.
    run()
    assert ids_left() == {"a0"}


def test_restoring_an_already_restored_batch_changes_nothing_and_says_so(make_result, archive_dir):
    audit_policy()
    batch = archived_batch(make_result, archive_dir, n=2)
    call_command("restore_results", str(batch.pk), "--grace-days", "1", stdout=io.StringIO())
    batch.refresh_from_db()
    first = (batch.status, batch.restored_at, batch.grace_until)

    out = io.StringIO()
    call_command("restore_results", str(batch.pk), "--grace-days", "30", stdout=out)

    batch.refresh_from_db()
    assert (batch.status, batch.restored_at, batch.grace_until) == first  # grace not extended
    assert "restored 0, skipped 2 already present" in out.getvalue()
    assert "nothing to restore, so the batch and its grace period are unchanged" in out.getvalue()
    assert "protected from cleanup until" not in out.getvalue()
    assert restore_batches([batch.pk]).as_dict()["batches"][0]["unchanged"] is True


def test_restore_skips_present_ids_and_never_overwrites(make_result, archive_dir):
    audit_policy()
    batch = archived_batch(make_result, archive_dir, n=3)
    make_result(task_id="a1", task_name="audit.x", result='"newer"')

    report = restore_batches([batch.pk], grace_days=0).as_dict()

    assert report["batches"][0]["restored"] == 2
    assert report["batches"][0]["already_present_ids"] == ["a1"]
    assert TaskResult.objects.get(task_id="a1").result == '"newer"'
    assert ids_left() == {"a0", "a1", "a2"}


def test_restore_dry_run_and_task_id_filter(make_result, archive_dir):
    audit_policy()
    batch = archived_batch(make_result, archive_dir, n=3)

    out = io.StringIO()
    call_command("restore_results", str(batch.pk), "--dry-run", "--json", stdout=out)
    assert json.loads(out.getvalue())["totals"]["restored"] == 3
    assert ids_left() == set()

    report = restore_batches([batch.pk], task_ids=["a2", "zzz"]).as_dict()
    assert ids_left() == {"a2"}
    assert report["batches"][0]["not_in_batch"] == ["zzz"]


def test_restore_deduplicates_a_result_archived_twice(make_result, archive_dir):
    audit_policy()
    first = archived_batch(make_result, archive_dir, n=1)
    restore_batches([first.pk], grace_days=0)
    TaskResult.objects.filter(task_id="a0").update(result='"second"', date_done=timezone.now() - 3 * DAY)
    run()
    second = ArchiveBatch.objects.order_by("-id").first()
    assert second.pk != first.pk and ids_left() == set()

    report = restore_batches([first.pk, second.pk]).as_dict()

    assert TaskResult.objects.get(task_id="a0").result == '"second"'  # the newest copy
    assert report["totals"]["restored"] == 1 and report["totals"]["already_present"] == 1


def test_restore_refuses_a_corrupt_batch_and_writes_nothing(make_result, archive_dir):
    audit_policy()
    good = archived_batch(make_result, archive_dir, n=2, prefix="g")
    bad = archived_batch(make_result, archive_dir, n=2, prefix="b")
    path = archive_dir / bad.name
    path.write_bytes(path.read_bytes()[:-10])

    with pytest.raises(CommandError, match=f"Archive batch {bad.pk} was not restored"):
        call_command("restore_results", str(good.pk), str(bad.pk))

    assert ids_left() == set()
    good.refresh_from_db()
    assert good.status == ArchiveBatch.Status.COMPLETE


@pytest.mark.parametrize("args, message", [(["999999"], "No archive batch with id 999999"), (["1", "--grace-days", "-1"], "0 or more")])
def test_restore_bad_arguments(args, message, archive_dir, make_result):
    audit_policy()
    archived_batch(make_result, archive_dir, n=1)
    if args[0] == "1":
        args[0] = str(ArchiveBatch.objects.get().pk)
    with pytest.raises(CommandError, match=message):
        call_command("restore_results", *args)


# -- explain ---------------------------------------------------------------


def test_explain_names_the_governing_policy_and_due_time(make_result, archive_dir):
    audit_policy()
    row = make_result(task_id="a0", task_name="audit.login", age=timedelta(hours=2))
    out = io.StringIO()
    call_command("explain_result", "a0", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert data["governing_policy"] == "audit"
    assert data["due_at"] == (row.date_done + DAY).isoformat()
    audit = next(p for p in data["policies"] if p["name"] == "audit")
    assert audit["matches"] and "matches 'audit.*'" in audit["reasons"][0]


def test_explain_finds_the_batch_of_a_deleted_result(make_result, archive_dir):
    audit_policy()
    batch = archived_batch(make_result, archive_dir, n=1)
    out = io.StringIO()
    call_command("explain_result", "a0", stdout=out)
    assert f"archive batch {batch.pk}" in out.getvalue()
    assert f"restore_results {batch.pk} --task-id a0" in out.getvalue()

    out = io.StringIO()
    call_command("explain_result", "never-existed", stdout=out)
    assert "no archive batch holds it" in out.getvalue()


def test_task_ids_with_odd_characters_archive_and_restore(make_result, archive_dir):
    audit_policy()
    odd = "we\\ird\tid\nwith ünïcode"
    make_result(task_id=odd, task_name="audit.x", age=5 * DAY)
    run()
    assert ids_left() == set()
    assert ArchivedResult.objects.get().task_id == odd
    restore_batches([ArchiveBatch.objects.get().pk])
    assert ids_left() == {odd}


def test_verify_archives_command(make_result, archive_dir):
    audit_policy()
    good = archived_batch(make_result, archive_dir, n=2, prefix="g")
    bad = archived_batch(make_result, archive_dir, n=2, prefix="b")
    out = io.StringIO()
    call_command("verify_archives", str(good.pk), stdout=out)
    assert "1 archive batches verified" in out.getvalue()

    (archive_dir / bad.name).write_bytes(b"not gzip")
    out = io.StringIO()
    with pytest.raises(CommandError, match=f"1 of 2 archive batches failed verification: {bad.pk}"):
        call_command("verify_archives", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert data["failed"] == [bad.pk] and data["verified"] == 2
    bad.refresh_from_db()
    assert bad.status == ArchiveBatch.Status.CORRUPT
    with pytest.raises(CommandError, match="No archive batch with id 424242"):
        call_command("verify_archives", "424242")


def test_due_rows_are_read_in_date_done_then_id_order_across_chunks(make_result):
    # Rows stored newest first (so neither the physical order nor the ids follow
    # date_done), with ties on date_done straddling chunk boundaries and dates
    # with and without fractions of a second.
    from retention_admin.matching import row_bytes_expression

    base = timezone.now().replace(microsecond=0) - 10 * DAY
    dates = [base + timedelta(seconds=s) for s in (3, 3, 3, 2.5, 2.5, 2, 2, 2, 2, 1)]
    for n, done in enumerate(dates):
        row = make_result(task_id=f"o{n}", task_name="audit.x")
        TaskResult.objects.filter(pk=row.pk).update(date_done=done)
    expected = list(TaskResult.objects.order_by("date_done", "id").values_list("task_id", flat=True))
    due = Q(task_name="audit.x", date_done__lt=timezone.now() - DAY)

    reader = archive.DueReader(due, "default", "audit", row_bytes_expression(), 3, prefetch=False)
    chunks = list(reader.chunks())

    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert [r.task_id for c in chunks for r in c] == expected
    lines = [json.loads(r.line) for c in chunks for r in c]
    assert [line["task_id"] for line in lines] == expected
    assert [datetime.fromisoformat(line["date_done"]) for line in lines] == sorted(dates)


@pytest.mark.django_db(transaction=True)
def test_batches_deleted_while_the_next_is_written_all_complete(seeded_transactional_db, make_result, archive_dir):
    # Outside a transaction (as in production) a batch's rows are deleted by a
    # thread of their own while the next batch is written (not on SQLite).
    import threading

    audit_policy()
    for i in range(23):
        make_result(task_id=f"a{i:02d}", task_name="audit.x", age=(5 + i) * DAY)
    with override_settings(RETENTION_ADMIN={"ARCHIVE_DIR": str(archive_dir), "ARCHIVE_BATCH_RECORDS": 5}):
        report = run(batch_size=2).report

    assert ids_left() == set()
    batches = list(ArchiveBatch.objects.order_by("id"))
    assert [(b.records, b.deleted, b.status) for b in batches] == [(5, 5, "complete")] * 4 + [(3, 3, "complete")]
    assert sorted(ArchivedResult.objects.values_list("task_id", flat=True)) == [f"a{i:02d}" for i in range(23)]
    totals = report["totals"]
    assert (totals["matched"], totals["archived"], totals["deleted"]) == (23, 23, 23)
    assert not [t for t in threading.enumerate() if t.name.startswith("archive-delete")]


@pytest.mark.django_db(transaction=True)
def test_a_deletion_that_fails_leaves_written_batches_the_next_run_finishes(
    seeded_transactional_db, make_result, archive_dir, monkeypatch
):
    audit_policy()
    for i in range(12):
        make_result(task_id=f"a{i:02d}", task_name="audit.x", age=(5 + i) * DAY)
    real = archive.delete_archived_rows
    calls = []

    def failing(batch, *args, **kwargs):
        calls.append(batch.pk)
        if len(calls) == 2:
            raise RuntimeError("connection lost mid-delete")
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(archive, "delete_archived_rows", failing)
    with override_settings(RETENTION_ADMIN={"ARCHIVE_DIR": str(archive_dir), "ARCHIVE_BATCH_RECORDS": 4}):
        with pytest.raises(CleanupFailed, match="connection lost mid-delete"):
            run()
        statuses = dict(ArchiveBatch.objects.values_list("id", "status"))
        # The first batch completed; the one whose deletion failed stays written
        # (and so may the next, written meanwhile); nothing was lost.
        assert statuses[calls[0]] == "complete" and statuses[calls[1]] == "written"
        archived = {r["task_id"] for b in ArchiveBatch.objects.all() for r in archive.read_records(b)}
        assert archived | ids_left() == {f"a{i:02d}" for i in range(12)}

        monkeypatch.setattr(archive, "delete_archived_rows", real)
        run()

    assert ids_left() == set()
    assert set(ArchiveBatch.objects.values_list("status", flat=True)) == {"complete"}
