from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django_celery_beat.models import PeriodicTask

from .validators import (
    KNOWN_STATES,
    validate_keep_for,
    validate_statuses,
    validate_task_name_pattern,
)


class RetentionTier(models.Model):
    """A named schedule: its django-celery-beat PeriodicTask runs the tier's policies."""

    slug = models.SlugField(_("slug"), max_length=50, unique=True)
    name = models.CharField(_("name"), max_length=100)
    periodic_task = models.OneToOneField(
        PeriodicTask,
        verbose_name=_("periodic task"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="retention_tier",
        help_text=_("The django-celery-beat schedule that runs this tier."),
    )
    description = models.TextField(_("description"), blank=True)

    class Meta:
        ordering = ["slug"]
        verbose_name = _("retention tier")
        verbose_name_plural = _("retention tiers")

    def __str__(self) -> str:
        return self.name or self.slug


class RetentionPolicyQuerySet(models.QuerySet["RetentionPolicy"]):
    def in_precedence_order(self) -> RetentionPolicyQuerySet:
        """Enabled policies, the one that wins a result first (lowest priority, then name)."""
        return self.filter(enabled=True).order_by("priority", "name")


class RetentionPolicy(models.Model):
    """How long the results that a set of matchers selects are kept."""

    name = models.CharField(_("name"), max_length=100, unique=True)
    enabled = models.BooleanField(_("enabled"), default=True)
    priority = models.PositiveIntegerField(
        _("priority"),
        default=100,
        help_text=_("Lower wins: a result is governed by the matching policy of lowest priority."),
    )
    tier = models.ForeignKey(
        RetentionTier,
        verbose_name=_("tier"),
        on_delete=models.PROTECT,
        related_name="policies",
    )
    task_name_pattern = models.CharField(
        _("task name pattern"),
        max_length=255,
        blank=True,
        validators=[validate_task_name_pattern],
        help_text=_("A glob such as reports.* or *.send_email; blank matches any task."),
    )
    statuses = models.JSONField(
        _("statuses"),
        default=list,
        blank=True,
        validators=[validate_statuses],
        help_text=_("Celery states this policy applies to; empty matches any state."),
    )
    min_result_bytes = models.PositiveBigIntegerField(
        _("minimum result size (bytes)"),
        null=True,
        blank=True,
        help_text=_("Only results whose stored result is at least this many bytes."),
    )
    keep_for = models.DurationField(
        _("keep for"),
        null=True,
        blank=True,
        validators=[validate_keep_for],
        help_text=_("How long after completion a result is kept; empty keeps it forever."),
    )
    archive = models.BooleanField(
        _("archive before deleting"),
        default=False,
        help_text=_("Write due results to the archive before they are deleted."),
    )
    description = models.TextField(_("description"), blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    objects = RetentionPolicyQuerySet.as_manager()

    class Meta:
        ordering = ["priority", "name"]
        verbose_name = _("retention policy")
        verbose_name_plural = _("retention policies")

    def __str__(self) -> str:
        return self.name

    @property
    def keeps_forever(self) -> bool:
        return self.keep_for is None

    def clean(self) -> None:
        super().clean()
        if isinstance(self.statuses, list) and set(self.statuses) <= set(KNOWN_STATES):
            # One canonical order, so that equal policies compare equal.
            self.statuses = sorted(set(self.statuses))


class RetentionHoldQuerySet(models.QuerySet["RetentionHold"]):
    """Holds; every change of them also reaches the Redis result keys (``redis_holds``).

    ``save``/``create``/``delete`` of one hold do so through signals; the bulk paths
    below send none (or one per row), so they hand their task ids over themselves.
    """

    def active(self, now: datetime | None = None) -> RetentionHoldQuerySet:
        now = now or timezone.now()
        return self.filter(Q(until__isnull=True) | Q(until__gt=now))

    def bulk_create(
        self, objs: Iterable[RetentionHold], *args: Any, **kwargs: Any
    ) -> list[RetentionHold]:
        from .redis_holds import sync_on_commit

        created = super().bulk_create(objs, *args, **kwargs)
        sync_on_commit((hold.task_id for hold in created), using=self.db)
        return created

    def update(self, **kwargs: Any) -> int:
        # Only a new end or a new task id changes what is held (bulk_update comes here too).
        if "until" not in kwargs and "task_id" not in kwargs:
            return super().update(**kwargs)
        from .redis_holds import sync_on_commit

        rows = list(self.values_list("pk", "task_id"))
        updated = super().update(**kwargs)
        task_ids = [task_id for _pk, task_id in rows]
        if "task_id" in kwargs:
            # The ids the holds were moved to (the value may be an expression).
            pks = [pk for pk, _task_id in rows]
            moved = self.model._base_manager.using(self.db)
            for start in range(0, len(pks), 1000):
                chunk = moved.filter(pk__in=pks[start : start + 1000])
                task_ids += chunk.values_list("task_id", flat=True)
        sync_on_commit(task_ids, using=self.db)
        return updated

    def delete(self) -> tuple[int, dict[str, int]]:
        from .redis_holds import collecting

        # One post_delete per row: their task ids are synced together.
        with collecting(using=self.db):
            return super().delete()

    # As on Django's own: templates never call them, and managers get no delete().
    bulk_create.alters_data = True  # type: ignore[attr-defined]
    update.alters_data = True  # type: ignore[attr-defined]
    delete.alters_data = True  # type: ignore[attr-defined]
    delete.queryset_only = True  # type: ignore[attr-defined]


class RetentionHold(models.Model):
    """Keeps one result: a held result is never deleted or expired while the hold lasts."""

    task_id = models.CharField(_("task id"), max_length=255, db_index=True)
    reason = models.TextField(_("reason"))
    until = models.DateTimeField(
        _("until"), null=True, blank=True, help_text=_("Empty holds until lifted.")
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("placed by"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(_("placed at"), auto_now_add=True)

    objects = RetentionHoldQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("retention hold")
        verbose_name_plural = _("retention holds")
        permissions = [("place_hold", "Can place and lift holds on results")]

    def __str__(self) -> str:
        return f"hold on {self.task_id}"

    def is_active(self, now: datetime | None = None) -> bool:
        return self.until is None or self.until > (now or timezone.now())


class CleanupRun(models.Model):
    """One execution of the cleanup, dry or real, whatever started it."""

    class Trigger(models.TextChoices):
        COMMAND = "command", _("management command")
        TASK = "task", _("Celery task")
        BACKEND_CLEANUP = "backend_cleanup", _("celery.backend_cleanup")
        ADMIN = "admin", _("admin")

    class Status(models.TextChoices):
        RUNNING = "running", _("running")
        SUCCEEDED = "succeeded", _("succeeded")
        PARTIAL = "partial", _("partial (stopped at max runtime)")
        SKIPPED = "skipped", _("skipped (another run holds the lease)")
        FAILED = "failed", _("failed")
        DISPATCHED = "dispatched", _("dispatched to workers")
        ABANDONED = "abandoned", _("abandoned (its process stopped without finishing)")

    trigger = models.CharField(_("trigger"), max_length=20, choices=Trigger.choices)
    tier = models.ForeignKey(
        RetentionTier, verbose_name=_("tier"), null=True, blank=True, on_delete=models.SET_NULL
    )
    policy = models.ForeignKey(
        RetentionPolicy, verbose_name=_("policy"), null=True, blank=True, on_delete=models.SET_NULL
    )
    parent = models.ForeignKey(
        "self",
        verbose_name=_("dispatched by"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="children",
    )
    dry_run = models.BooleanField(_("dry run"), default=False)
    status = models.CharField(
        _("status"), max_length=20, choices=Status.choices, default=Status.RUNNING
    )
    database = models.CharField(_("database alias"), max_length=100, blank=True)
    options = models.JSONField(_("options"), default=dict, blank=True)
    report = models.JSONField(_("report"), default=dict, blank=True)
    notes = models.JSONField(_("notes"), default=list, blank=True)
    matched = models.BigIntegerField(_("matched"), default=0)
    deleted = models.BigIntegerField(_("deleted"), default=0)
    archived = models.BigIntegerField(_("archived"), default=0)
    bytes = models.BigIntegerField(_("bytes (estimate)"), default=0)
    error = models.TextField(_("error"), blank=True)
    holder = models.CharField(_("process"), max_length=255, blank=True)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("started by"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    started_at = models.DateTimeField(_("started at"), default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    duration_s = models.FloatField(_("duration (s)"), null=True, blank=True)
    heartbeat_at = models.DateTimeField(
        _("last sign of life"), null=True, blank=True,
        help_text=_("Set by the database's clock whenever a running run saves its progress."),
    )

    class Meta:
        ordering = ["-started_at", "-id"]
        verbose_name = _("cleanup run")
        verbose_name_plural = _("cleanup runs")
        permissions = [("run_cleanup", "Can start cleanup runs")]

    def __str__(self) -> str:
        kind = "dry run" if self.dry_run else "run"
        return f"{kind} #{self.pk} ({self.status})"


class CleanupLease(models.Model):
    """Who may clean one scope right now; see ``leases.py``."""

    scope = models.CharField(_("scope"), max_length=150, unique=True)
    holder = models.CharField(_("holder"), max_length=255, blank=True)
    acquired_at = models.DateTimeField(_("acquired at"), null=True, blank=True)
    expires_at = models.DateTimeField(_("expires at"), null=True, blank=True)

    class Meta:
        verbose_name = _("cleanup lease")
        verbose_name_plural = _("cleanup leases")

    def __str__(self) -> str:
        return f"{self.scope}: {self.holder or 'free'}"


class ChordCounterSighting(models.Model):
    """When a django-celery-results ChordCounter was first seen by a cleanup run.

    ChordCounter has no timestamp; without this a chord whose header tasks are
    still queued (no result rows yet) would look the same as one whose results
    are long gone.
    """

    group_id = models.CharField(_("group id"), max_length=255, unique=True)
    first_seen = models.DateTimeField(_("first seen"), default=timezone.now)

    class Meta:
        verbose_name = _("chord counter sighting")
        verbose_name_plural = _("chord counter sightings")

    def __str__(self) -> str:
        return self.group_id


class StorageSnapshot(models.Model):
    """The size of the result store at one time."""

    taken_at = models.DateTimeField(_("taken at"), default=timezone.now, db_index=True)
    task_rows = models.BigIntegerField(_("task results"), default=0)
    group_rows = models.BigIntegerField(_("group results"), default=0)
    chord_rows = models.BigIntegerField(_("chord counters"), default=0)
    rows_by_status = models.JSONField(_("rows by status"), default=dict, blank=True)
    rows_by_task = models.JSONField(
        _("top task names"), default=list, blank=True,
        help_text=_("[{task_name, rows, bytes}] for the task names with most bytes."),
    )
    table_bytes = models.BigIntegerField(_("table and index bytes"), null=True, blank=True)
    bytes_estimated = models.BooleanField(_("bytes are an estimate"), default=False)
    redis = models.JSONField(_("Redis"), null=True, blank=True)
    database = models.CharField(_("database alias"), max_length=100, blank=True)

    class Kind(models.TextChoices):
        MEASURED = "measured", _("measured")
        BACKFILL = "backfill", _("reconstructed (estimate)")

    kind = models.CharField(
        _("kind"), max_length=20, choices=Kind.choices, default=Kind.MEASURED,
        help_text=_("Reconstructed snapshots (snapshot_results --backfill) are estimates of the past."),
    )
    rows_estimated = models.BooleanField(_("row counts are estimates"), default=False)
    bytes_by_status = models.JSONField(
        _("bytes by status"), default=dict, blank=True,
        help_text=_("Estimated bytes of the stored results, by status."),
    )
    task_profile = models.JSONField(
        _("task names"), default=dict, blank=True,
        help_text=_("{task_name: {rows, bytes, empty}} for every task name seen (empty: null or empty result)."),
    )
    details = models.JSONField(
        _("details"), default=dict, blank=True,
        help_text=_("How the figures were obtained (methods, sample size) and results stuck in PENDING/STARTED."),
    )
    alerts = models.JSONField(_("thresholds crossed"), default=list, blank=True)
    health = models.JSONField(_("result backend health"), null=True, blank=True)
    duration_s = models.FloatField(_("duration (s)"), null=True, blank=True)

    class Meta:
        ordering = ["-taken_at"]
        get_latest_by = "taken_at"
        verbose_name = _("storage snapshot")
        verbose_name_plural = _("storage snapshots")

    def __str__(self) -> str:
        return f"snapshot at {self.taken_at:%Y-%m-%d %H:%M}"



class ArchiveBatch(models.Model):
    """One archive object: gzip JSON Lines of results, written before they are deleted.

    The life of a batch (see ``archive.py``): ``writing`` while the object is being
    written; ``written`` once it is durably stored and its checksum and count are
    recorded (only then may its rows be deleted); ``complete`` once its rows are
    deleted; ``restored`` after ``restore_results`` put its records back;
    ``corrupt`` when the object is missing, truncated or fails its checksum (its
    rows were never deleted on its account).
    """

    class Status(models.TextChoices):
        WRITING = "writing", _("writing")
        WRITTEN = "written", _("written (deleting its rows)")
        COMPLETE = "complete", _("complete")
        RESTORED = "restored", _("restored")
        CORRUPT = "corrupt", _("corrupt")

    class Source(models.TextChoices):
        DATABASE = "database", _("database")
        REDIS = "redis", _("Redis")

    policy = models.ForeignKey(
        RetentionPolicy, verbose_name=_("policy"), null=True, blank=True,
        on_delete=models.SET_NULL, related_name="archive_batches",
    )
    policy_name = models.CharField(
        _("policy name"), max_length=100, blank=True,
        help_text=_("Kept when the policy is renamed or deleted."),
    )
    run = models.ForeignKey(
        CleanupRun, verbose_name=_("run"), null=True, blank=True,
        on_delete=models.SET_NULL, related_name="archive_batches",
    )
    source = models.CharField(_("source"), max_length=20, choices=Source.choices, default=Source.DATABASE)
    location = models.CharField(
        _("location"), max_length=500, blank=True,
        help_text=_("The storage: 'storage:retention_archive' or the local archive directory."),
    )
    name = models.CharField(_("object name"), max_length=500, blank=True)
    status = models.CharField(_("status"), max_length=20, choices=Status.choices, default=Status.WRITING, db_index=True)
    records = models.BigIntegerField(_("records"), default=0)
    size = models.BigIntegerField(_("size (bytes)"), default=0)
    sha256 = models.CharField(_("SHA-256"), max_length=64, blank=True)
    first_done = models.DateTimeField(_("first date_done"), null=True, blank=True)
    last_done = models.DateTimeField(_("last date_done"), null=True, blank=True)
    deleted = models.BigIntegerField(
        _("rows deleted"), default=0,
        help_text=_("Rows deleted on account of this batch; fewer than its records when rows changed or were held."),
    )
    holder = models.CharField(_("process"), max_length=255, blank=True)
    created_at = models.DateTimeField(_("created at"), default=timezone.now, db_index=True)
    written_at = models.DateTimeField(_("written at"), null=True, blank=True)
    completed_at = models.DateTimeField(_("completed at"), null=True, blank=True)
    verified_at = models.DateTimeField(_("verified at"), null=True, blank=True)
    restored_at = models.DateTimeField(_("restored at"), null=True, blank=True)
    grace_until = models.DateTimeField(
        _("restored results protected until"), null=True, blank=True,
        help_text=_("Results restored from this batch are not deleted again before this time."),
    )
    error = models.TextField(_("problem"), blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("archive batch")
        verbose_name_plural = _("archive batches")
        permissions = [
            ("verify_archive", "Can verify archive batches"),
            ("preview_archive", "Can preview archived records"),
            ("download_archive", "Can download archive objects"),
            ("restore_archive", "Can restore archived results"),
        ]

    def __str__(self) -> str:
        return f"archive batch #{self.pk} ({self.policy_name}, {self.records} records, {self.status})"


class ArchivedResult(models.Model):
    """Where an archived task id went: the look-up that spares reading archives.

    One small row per archived record (task id, its ``date_done``, the batch).
    ``explain_result`` finds a deleted result's batch by the task id index, and
    deletion after archiving matches rows on (task_id, date_done) from here.
    """

    # No database-level constraint: checking it cost more per row than the rest of
    # inserting the look-up rows (the batch row always exists first; deleting a
    # batch still deletes its rows, through the ORM).
    batch = models.ForeignKey(ArchiveBatch, on_delete=models.CASCADE, related_name="results", db_constraint=False)
    task_id = models.CharField(_("task id"), max_length=255)
    date_done = models.DateTimeField(_("date done"), null=True)

    class Meta:
        verbose_name = _("archived result")
        verbose_name_plural = _("archived results")
        # A plain index: db_index=True would add a second, LIKE-only index on
        # PostgreSQL that nothing uses and every archived row pays for.
        indexes = [models.Index(fields=["task_id"], name="retention_archived_task_idx")]

    def __str__(self) -> str:
        return f"{self.task_id} in batch {self.batch_id}"
