"""The admin's own pages: previews, run-now, explain, holds, archive actions.

Views here are reached through ``ModelAdmin.get_urls`` (so every one sits behind
``admin_site.admin_view``: anonymous users go to the login page, CSRF applies),
check their own permission (403 otherwise) and accept only POST when they
change something. Helpers for schedules (described in words, next run) live
here too because only the admin shows them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from functools import wraps
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.schedules import crontab as celery_crontab
from cron_descriptor import ExpressionDescriptor, Options as CronOptions
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django_celery_beat.models import PeriodicTask

from . import archive
from .executor import CleanupError, CleanupFailed, Options, Selection, run_cleanup
from .explain import as_dict, explain
from .forms import ExplainForm
from .models import ArchiveBatch, CleanupRun, RetentionPolicy, RetentionTier
from .previews import preview_policy
from .report import human_bytes
from .restore import RestoreError, restore_batches

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

logger = logging.getLogger(__name__)

PREVIEW_RECORDS = 20
DOWNLOAD_CHUNK = 64 * 1024
WORKER_PING_SECONDS = 1.0


# -- schedules ------------------------------------------------------------------


def describe_cron(expression: str) -> str:
    """'0 2 * * *' -> 'At 02:00, every day' (cron-descriptor, 24-hour clock)."""
    options = CronOptions()
    options.use_24hour_time_format = True
    try:
        text = str(ExpressionDescriptor(expression, options).get_description())
    except Exception:  # noqa: BLE001 - cron-descriptor raises several kinds; the raw expression still informs
        return expression
    fields = expression.split()
    if len(fields) == 5 and fields[2:] == ["*", "*", "*"] and fields[1] != "*" and "," not in text:
        text += ", every day"
    return text


def describe_schedule(task: PeriodicTask | None) -> str:
    """The tier's schedule in words, as an operator reads it."""
    if task is None:
        return "no schedule"
    if task.crontab is not None:
        c = task.crontab
        expression = f"{c.minute} {c.hour} {c.day_of_month} {c.month_of_year} {c.day_of_week}"
        return f"{describe_cron(expression)} ({c.timezone})"
    if task.interval is not None:
        return f"every {task.interval.every} {task.interval.period}"
    return str(task.solar or task.clocked or "no schedule")


def next_run(task: PeriodicTask | None, now: datetime | None = None) -> datetime | None:
    """When beat runs the task next (None when disabled or one-off and spent)."""
    if task is None or not task.enabled:
        return None
    now = now or timezone.now()
    try:
        schedule = task.schedule
        if isinstance(schedule, celery_crontab):
            # A crontab's next run does not depend on the last one; Celery's estimate
            # is taken against its own clock, a hair off the minute it means.
            when = now + schedule.remaining_estimate(now) + timedelta(seconds=30)
            return when.replace(second=0, microsecond=0)
        last = task.last_run_at or now
        return now + schedule.remaining_estimate(last)
    except Exception:  # noqa: BLE001 - an odd schedule must not break the page
        logger.warning("cannot compute the next run of %s", task, exc_info=True)
        return None


# -- Celery -------------------------------------------------------------------


def worker_available(app: Celery | None = None) -> tuple[bool, str]:
    """Whether a queued task would run: (answer, why), never raising."""
    from .celery_config import get_app

    app = app or get_app()
    if app.conf.task_always_eager:
        return False, "tasks run eagerly (task_always_eager)"
    broker = str(app.conf.broker_url or "")
    if broker.startswith("memory://"):
        return False, "the broker is memory://, so no worker can receive tasks"
    try:
        replies = app.control.ping(timeout=WORKER_PING_SECONDS)
    except Exception as exc:  # noqa: BLE001 - a broker that is down means: run here
        return False, f"the broker did not answer ({exc})"
    if not replies:
        return False, "no Celery worker answered a ping"
    return True, f"{len(replies)} worker(s) answered"


# -- views ----------------------------------------------------------------------


def post_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """State changes answer POST only (with Django's CSRF check); GET is 405."""

    @wraps(view)
    def wrapper(model_admin: Any, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        return view(model_admin, request, *args, **kwargs)

    return wrapper


def _require(request: HttpRequest, perm: str) -> None:
    if not request.user.has_perm(perm):
        raise PermissionDenied(f"You need the {perm!r} permission.")


def _context(model_admin: ModelAdmin, request: HttpRequest, title: str, obj: Any = None, **extra: Any) -> dict[str, Any]:
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "app_label": model_admin.model._meta.app_label,
        "title": title,
        "original": obj,
        "has_view_permission": True,
    }
    context.update(extra)
    return context


def policy_preview_view(model_admin: ModelAdmin, request: HttpRequest, object_id: str) -> HttpResponse:
    policy = get_object_or_404(RetentionPolicy.objects.select_related("tier"), pk=object_id)
    if not model_admin.has_view_permission(request, policy):
        raise PermissionDenied
    preview = preview_policy(policy)
    return TemplateResponse(
        request,
        "admin/retention_admin/retentionpolicy/preview.html",
        _context(model_admin, request, f"Preview: {policy.name}", policy, preview=preview,
                 bytes_human=human_bytes(preview.bytes)),
    )


def _run_tier(request: HttpRequest, tier: RetentionTier, *, dry_run: bool) -> tuple[CleanupRun | None, str]:
    """Run a tier here, synchronously; returns the run and a message (errors included)."""
    try:
        run = run_cleanup(
            Selection(tiers=[tier.slug]),
            Options(dry_run=dry_run, trigger=CleanupRun.Trigger.ADMIN, started_by=request.user),
        )
    except CleanupError as exc:
        return None, str(exc)
    except CleanupFailed as exc:
        return exc.run, f"Run #{exc.run.pk} failed: {exc}"
    return run, ""


@post_only
def tier_dry_run_view(model_admin: ModelAdmin, request: HttpRequest, object_id: str) -> HttpResponse:
    _require(request, "retention_admin.run_cleanup")
    tier = get_object_or_404(RetentionTier, pk=object_id)
    run, problem = _run_tier(request, tier, dry_run=True)
    return TemplateResponse(
        request,
        "admin/retention_admin/retentiontier/run_report.html",
        _context(model_admin, request, f"Dry run of tier {tier}", tier, run=run, problem=problem,
                 report_rows=report_rows(run.report) if run and run.report else []),
    )


@post_only
def tier_run_now_view(model_admin: ModelAdmin, request: HttpRequest, object_id: str) -> HttpResponse:
    _require(request, "retention_admin.run_cleanup")
    tier = get_object_or_404(RetentionTier, pk=object_id)
    change_url = reverse("admin:retention_admin_retentiontier_change", args=[tier.pk])
    available, why = worker_available()
    if available:
        from .tasks import run_tier

        try:
            result = run_tier.delay(tier.slug)
        except Exception as exc:  # noqa: BLE001 - the broker failed between ping and send
            messages.error(request, f"Could not queue run_tier({tier.slug!r}): {exc}. Nothing ran.")
            return HttpResponseRedirect(change_url)
        messages.success(
            request,
            f"Queued retention_admin.tasks.run_tier(tier={tier.slug!r}) as Celery task {result.id} "
            f"({why}); its run appears under Cleanup runs when a worker picks it up.",
        )
        return HttpResponseRedirect(change_url)
    run, problem = _run_tier(request, tier, dry_run=False)
    if run is None:
        messages.error(request, problem)
        return HttpResponseRedirect(change_url)
    level = messages.ERROR if problem else messages.SUCCESS
    messages.add_message(
        request,
        level,
        f"Ran tier {tier.slug!r} synchronously in this request because {why}: run #{run.pk} "
        f"{run.status}, {run.deleted:,} deleted, {run.archived:,} archived." + (f" {problem}" if problem else ""),
    )
    return HttpResponseRedirect(reverse("admin:retention_admin_cleanuprun_change", args=[run.pk]))


def explain_view(model_admin: ModelAdmin, request: HttpRequest) -> HttpResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    form = ExplainForm(request.GET or None)
    explanation = None
    if form.is_bound and form.is_valid():
        explanation = _with_datetimes(as_dict(explain(form.cleaned_data["task_id"])))
    return TemplateResponse(
        request,
        "admin/retention_admin/explain.html",
        _context(model_admin, request, "Explain a result", None, form=form, explanation=explanation,
                 has_place_hold=request.user.has_perm("retention_admin.place_hold")),
    )


def _with_datetimes(data: dict[str, Any]) -> dict[str, Any]:
    """``as_dict`` gives ISO strings (for JSON); the template formats datetimes."""
    def parse(value: Any) -> Any:
        return parse_datetime(value) if isinstance(value, str) else value

    for key in ("date_done", "due_at", "restore_grace_until"):
        data[key] = parse(data.get(key))
    for hold in data.get("holds", []):
        hold["until"] = parse(hold.get("until"))
    for ref in data.get("archives", []):
        ref["archived_at"] = parse(ref.get("archived_at"))
        ref["date_done"] = parse(ref.get("date_done"))
    return data


def archive_preview_view(model_admin: ModelAdmin, request: HttpRequest, object_id: str) -> HttpResponse:
    _require(request, "retention_admin.preview_archive")
    batch = get_object_or_404(ArchiveBatch, pk=object_id)
    records: list[dict[str, Any]] = []
    problem = ""
    try:
        records = list(archive.read_records(batch, limit=PREVIEW_RECORDS))
    except Exception as exc:  # noqa: BLE001 - a missing or damaged object is reported, not a 500
        problem = f"The archive object {batch.name!r} cannot be read: {exc}"
    return TemplateResponse(
        request,
        "admin/retention_admin/archivebatch/preview.html",
        _context(model_admin, request, f"First records of {batch}", batch, records=records, problem=problem,
                 limit=PREVIEW_RECORDS),
    )


def archive_download_view(model_admin: ModelAdmin, request: HttpRequest, object_id: str) -> HttpResponse:
    _require(request, "retention_admin.download_archive")
    batch = get_object_or_404(ArchiveBatch, pk=object_id)
    change_url = reverse("admin:retention_admin_archivebatch_change", args=[batch.pk])
    try:
        handle = archive.location_of(batch).open(batch.name)
    except Exception as exc:  # noqa: BLE001 - missing object or storage: say so on the page
        messages.error(request, f"Cannot download archive batch {batch.pk}: {exc}")
        return HttpResponseRedirect(change_url)

    def chunks() -> Iterator[bytes]:
        with handle:
            while chunk := handle.read(DOWNLOAD_CHUNK):
                yield chunk

    filename = batch.name.rsplit("/", 1)[-1] or f"batch-{batch.pk}.jsonl.gz"
    response = StreamingHttpResponse(chunks(), content_type="application/gzip")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    if batch.size:
        response["Content-Length"] = str(batch.size)
    return response


def archive_restore_view(model_admin: ModelAdmin, request: HttpRequest, object_id: str) -> HttpResponse:
    """GET: a confirmation page. POST ``dry_run``: what restoring would do. POST ``confirm``: restore."""
    _require(request, "retention_admin.restore_archive")
    batch = get_object_or_404(ArchiveBatch, pk=object_id)
    report: dict[str, Any] | None = None
    problem = ""
    mode = ""
    if request.method == "POST":
        mode = "confirm" if "confirm" in request.POST else "dry_run"
        try:
            report = restore_batches([batch.pk], dry_run=mode == "dry_run").as_dict()
        except RestoreError as exc:
            problem = str(exc)
        if mode == "confirm" and report is not None:
            totals = report["totals"]
            messages.success(
                request,
                f"Restored {totals['restored']:,} results from archive batch {batch.pk} "
                f"({totals['already_present']:,} already present, {totals['duplicates']:,} duplicates).",
            )
        batch.refresh_from_db()
    return TemplateResponse(
        request,
        "admin/retention_admin/archivebatch/restore.html",
        _context(model_admin, request, f"Restore archive batch {batch.pk}", batch, report=report,
                 problem=problem, mode=mode),
    )


@post_only
def archive_verify_view(model_admin: ModelAdmin, request: HttpRequest, object_id: str) -> HttpResponse:
    _require(request, "retention_admin.verify_archive")
    batch = get_object_or_404(ArchiveBatch, pk=object_id)
    verify_and_report(request, batch)
    return HttpResponseRedirect(reverse("admin:retention_admin_archivebatch_change", args=[batch.pk]))


def verify_and_report(request: HttpRequest, batch: ArchiveBatch) -> bool:
    result = archive.verify_batch(batch)
    if result.ok:
        messages.success(
            request, f"Archive batch {batch.pk} verifies: {result.records:,} records, {human_bytes(result.size)}, SHA-256 {result.sha256}."
        )
    else:
        messages.error(request, f"Archive batch {batch.pk} does not verify: {result.problem}")
    return result.ok


def report_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-policy table of a run report, plus the remainder, ready for a template."""
    rows = [dict(p, bytes_human=human_bytes(p.get("bytes", 0))) for p in report.get("policies", [])]
    unmatched = report.get("unmatched") or {}
    totals = report.get("totals") or {}
    if unmatched:
        rest = totals.get("bytes", 0) - sum(p.get("bytes", 0) for p in report.get("policies", []))
        rows.append({
            "name": "(no policy: result_expires)", "tier": "backend_cleanup",
            "matched": unmatched.get("matched", 0), "deleted": unmatched.get("deleted", 0),
            "archived": 0, "bytes_human": human_bytes(max(rest, 0)),
        })
    return rows
