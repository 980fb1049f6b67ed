"""The admin: policies, tiers, holds, runs, archive batches, and django-celery-results' TaskResult.

Pages read records and never scan the result table on load: previews and
dry runs are computed when asked for (see ``previews.py`` and ``admin_views.py``),
and the TaskResult changelist avoids full counts and DISTINCT filter scans.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django_celery_results.admin import TaskResultAdmin as BaseTaskResultAdmin  # registers it
from django_celery_results.models import TaskResult

from . import admin_views
from .forms import PlaceHoldForm, PolicyListEditForm, RetentionPolicyForm, RetentionPolicyInlineForm
from .largetables import EstimatedCountPaginator, input_filter, status_filter
from .models import (
    ArchiveBatch,
    CleanupRun,
    RetentionHold,
    RetentionPolicy,
    RetentionTier,
    StorageSnapshot,
)
from .previews import humanize_duration
from .report import human_bytes


def _view(model_admin: admin.ModelAdmin, view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:  # type: ignore[type-arg]
    """An admin page of ``model_admin``: login required, CSRF, never cached."""
    return model_admin.admin_site.admin_view(partial(view, model_admin))


class RetentionPolicyInline(admin.TabularInline):  # type: ignore[type-arg]
    model = RetentionPolicy
    form = RetentionPolicyInlineForm
    fields = ["name", "enabled", "priority", "task_name_pattern", "keep_for", "archive"]
    extra = 0
    show_change_link = True


@admin.register(RetentionTier)
class RetentionTierAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "slug", "schedule", "next_run", "periodic_task_link", "policy_count"]
    list_select_related = ["periodic_task__crontab", "periodic_task__interval"]
    prepopulated_fields = {"slug": ["name"]}
    fields = ["name", "slug", "periodic_task", "schedule", "next_run", "periodic_task_link", "description"]
    readonly_fields = ["schedule", "next_run", "periodic_task_link"]
    inlines = [RetentionPolicyInline]
    change_form_template = "admin/retention_admin/retentiontier/change_form.html"

    @admin.display(description="schedule")
    def schedule(self, tier: RetentionTier) -> str:
        return admin_views.describe_schedule(tier.periodic_task)

    @admin.display(description="next run")
    def next_run(self, tier: RetentionTier) -> str:
        when = admin_views.next_run(tier.periodic_task)
        if when is None:
            return "not scheduled (disabled or no periodic task)"
        return f"{timezone.localtime(when):%Y-%m-%d %H:%M %Z}"

    @admin.display(description="edit the schedule")
    def periodic_task_link(self, tier: RetentionTier) -> str:
        task = tier.periodic_task
        if task is None:
            return "none: this tier never runs on its own"
        url = reverse("admin:django_celery_beat_periodictask_change", args=[task.pk])
        return format_html('<a href="{}">{}</a>{}', url, task.name, "" if task.enabled else " (disabled)")

    @admin.display(description="policies")
    def policy_count(self, tier: RetentionTier) -> int:
        return tier.policies.count()

    def get_urls(self) -> list[URLPattern]:
        return [
            path("<path:object_id>/dry-run/", _view(self, admin_views.tier_dry_run_view),
                 name="retention_admin_retentiontier_dry_run"),
            path("<path:object_id>/run-now/", _view(self, admin_views.tier_run_now_view),
                 name="retention_admin_retentiontier_run_now"),
            *super().get_urls(),
        ]

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra = {"can_run_cleanup": request.user.has_perm("retention_admin.run_cleanup"), **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra)


@admin.register(RetentionPolicy)
class RetentionPolicyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    form = RetentionPolicyForm
    list_display = [
        "name", "priority", "enabled", "tier_schedule", "matchers", "keep_for_display", "archive",
    ]
    # Priorities and switches edit in place: reordering is one form, not one per row.
    list_editable = ["priority", "enabled"]
    list_filter = ["enabled", "tier", "archive"]
    list_select_related = ["tier__periodic_task__crontab", "tier__periodic_task__interval"]
    search_fields = ["name", "task_name_pattern", "description"]
    ordering = ["priority", "name"]
    change_form_template = "admin/retention_admin/retentionpolicy/change_form.html"
    change_list_template = "admin/retention_admin/retentionpolicy/change_list.html"

    @admin.display(description="tier and schedule", ordering="tier__slug")
    def tier_schedule(self, policy: RetentionPolicy) -> str:
        return format_html(
            "{}<br><small>{}</small>", policy.tier, admin_views.describe_schedule(policy.tier.periodic_task)
        )

    @admin.display(description="matches")
    def matchers(self, policy: RetentionPolicy) -> str:
        parts = [f"task {policy.task_name_pattern}" if policy.task_name_pattern else "any task"]
        parts.append(f"status {', '.join(policy.statuses)}" if policy.statuses else "any status")
        if policy.min_result_bytes is not None:
            parts.append(f"result ≥ {human_bytes(policy.min_result_bytes)}")
        return "; ".join(parts)

    @admin.display(description="keeps", ordering="keep_for")
    def keep_for_display(self, policy: RetentionPolicy) -> str:
        return humanize_duration(policy.keep_for)

    def get_changelist_form(self, request: HttpRequest, **kwargs: Any) -> Any:
        return PolicyListEditForm

    def get_urls(self) -> list[URLPattern]:
        return [
            path("explain/", _view(self, admin_views.explain_view), name="retention_admin_explain"),
            path("<path:object_id>/preview/", _view(self, admin_views.policy_preview_view),
                 name="retention_admin_retentionpolicy_preview"),
            *super().get_urls(),
        ]


class HoldStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "active"), ("ended", "ended or lifted")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "active":
            return queryset.filter(pk__in=RetentionHold.objects.active().values("pk"))
        if self.value() == "ended":
            return queryset.exclude(pk__in=RetentionHold.objects.active().values("pk"))
        return queryset


@admin.register(RetentionHold)
class RetentionHoldAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["task_id", "reason", "until", "created_by", "created_at", "active", "explain_link"]
    list_filter = [HoldStateFilter]
    search_fields = ["task_id", "reason"]
    readonly_fields = ["created_by", "created_at"]
    actions = ["lift_holds"]

    @admin.display(boolean=True, description="active")
    def active(self, hold: RetentionHold) -> bool:
        return hold.is_active()

    @admin.display(description="explain")
    def explain_link(self, hold: RetentionHold) -> str:
        return explain_link(hold.task_id)

    # Placing, editing and lifting holds needs place_hold on top of the model permission.
    def has_place_hold_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("retention_admin.place_hold"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return super().has_add_permission(request) and self.has_place_hold_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and self.has_place_hold_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and self.has_place_hold_permission(request)

    @admin.action(description="Lift selected holds (end them now)", permissions=["place_hold"])
    def lift_holds(self, request: HttpRequest, queryset: QuerySet[RetentionHold]) -> None:
        now = timezone.now()
        lifted = queryset.filter(pk__in=RetentionHold.objects.active(now).values("pk")).update(until=now)
        self.message_user(request, f"Lifted {lifted} hold(s); the results are governed by their policies again.")

    def save_model(self, request: HttpRequest, obj: RetentionHold, form: Any, change: bool) -> None:
        if not change and obj.created_by_id is None:
            obj.created_by = request.user  # type: ignore[assignment]
        super().save_model(request, obj, form, change)


def explain_link(task_id: str) -> str:
    url = reverse("admin:retention_admin_explain")
    return format_html('<a href="{}?task_id={}">explain</a>', url, task_id)


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Records of what happened: viewable, never edited by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(CleanupRun)
class CleanupRunAdmin(ReadOnlyAdmin):
    list_display = [
        "id", "started_at", "trigger", "tier", "policy", "dry_run", "status_badge",
        "matched", "deleted", "archived", "size", "duration_s", "started_by",
    ]
    list_filter = ["status", "trigger", "dry_run", "tier"]
    list_select_related = ["tier", "policy", "started_by"]
    date_hierarchy = "started_at"
    fieldsets = [
        (None, {"fields": ["status_badge", "trigger", "started_by", "holder", "tier", "policy", "parent",
                           "dry_run", "database", "started_at", "finished_at", "duration_s"]}),
        ("What it did", {"fields": ["report_table", "matched", "deleted", "archived", "size", "notes_list"]}),
        ("Errors", {"fields": ["error_text"]}),
        ("Options", {"fields": ["options"], "classes": ["collapse"]}),
    ]
    readonly_fields = ["status_badge", "report_table", "size", "notes_list", "error_text"]

    @admin.display(description="status", ordering="status")
    def status_badge(self, run: CleanupRun) -> str:
        colour = {"failed": "#ba2121", "skipped": "#b26b00", "partial": "#b26b00"}.get(run.status)
        if colour:
            return format_html('<strong style="color:{}">{}</strong>', colour, run.status)
        return run.status

    @admin.display(description="size", ordering="bytes")
    def size(self, run: CleanupRun) -> str:
        return human_bytes(run.bytes)

    @admin.display(description="per policy")
    def report_table(self, run: CleanupRun) -> str:
        rows = admin_views.report_rows(run.report or {})
        if not rows:
            return "no report (the run did not get that far)"
        body = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((r["name"], r.get("tier", ""), r["matched"], r["deleted"], r.get("archived", 0), r["bytes_human"])
             for r in rows),
        )
        head = "would go" if run.dry_run else "matched"
        return format_html(
            '<table class="retention-report numbers"><thead><tr><th>policy</th><th>tier</th><th>{}</th>'
            "<th>deleted</th><th>archived</th><th>size</th></tr></thead><tbody>{}</tbody></table>",
            head, body,
        )

    @admin.display(description="notes")
    def notes_list(self, run: CleanupRun) -> str:
        if not run.notes:
            return "-"
        return format_html("<ul>{}</ul>", format_html_join("", "<li>{}</li>", ((n,) for n in run.notes)))

    @admin.display(description="error")
    def error_text(self, run: CleanupRun) -> str:
        if not run.error:
            return "none"
        return format_html('<pre style="white-space:pre-wrap">{}</pre>', run.error)


@admin.register(StorageSnapshot)
class StorageSnapshotAdmin(ReadOnlyAdmin):
    """Snapshots, and the storage dashboard drawn from them (``dashboard.py``)."""

    list_display = [
        "taken_at", "kind", "rows_display", "group_rows", "chord_rows", "bytes_display", "alerts_display",
    ]
    list_filter = ["kind"]
    date_hierarchy = "taken_at"

    def get_urls(self) -> list[Any]:
        from django.urls import path as url_path

        dashboard = self.admin_site.admin_view(self.dashboard_view)
        return [
            url_path("dashboard/", dashboard, name="retention_admin_storagesnapshot_dashboard"),
            *super().get_urls(),
        ]

    def dashboard_view(self, request: HttpRequest) -> Any:
        from .dashboard import dashboard_view

        return dashboard_view(self, request)

    @admin.display(description="task results", ordering="task_rows")
    def rows_display(self, snapshot: StorageSnapshot) -> str:
        return f"{'≈' if snapshot.rows_estimated or snapshot.kind != 'measured' else ''}{snapshot.task_rows:,}"

    @admin.display(description="table + index bytes", ordering="table_bytes")
    def bytes_display(self, snapshot: StorageSnapshot) -> str:
        from .report import human_bytes as readable

        if snapshot.table_bytes is None:
            return "unknown"
        return f"{'≈' if snapshot.bytes_estimated else ''}{readable(snapshot.table_bytes)}"

    @admin.display(description="thresholds crossed")
    def alerts_display(self, snapshot: StorageSnapshot) -> str:
        return "; ".join(alert["message"] for alert in snapshot.alerts or []) or "-"


# -- django-celery-results' TaskResult: its admin, plus holds and explain ---------------

admin.site.unregister(TaskResult)


@admin.register(TaskResult)
class TaskResultAdmin(BaseTaskResultAdmin):
    """django-celery-results' admin, kept whole, safe on large tables, with holds and explain.

    Changes, all for a table of millions of rows: counts come from
    ``EstimatedCountPaginator``; the task name, periodic task and worker filters
    take typed input and the status filter has Celery's states as fixed choices
    (its filters listed every distinct value, a scan per page); the date
    hierarchy (a DISTINCT over dates) gives way to the date filter it duplicates.
    """

    paginator = EstimatedCountPaginator
    show_full_result_count = False
    date_hierarchy = None
    list_filter = (
        status_filter(),
        "date_done",
        input_filter("task_name", "task name"),
        input_filter("periodic_task_name", "periodic task name"),
        input_filter("worker", "worker"),
    )
    list_display = (*BaseTaskResultAdmin.list_display, "explain_link")
    actions = ["place_hold"]
    change_form_template = "admin/retention_admin/taskresult/change_form.html"

    @admin.display(description="retention")
    def explain_link(self, result: TaskResult) -> str:
        return explain_link(result.task_id)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Any], search_term: str) -> tuple[QuerySet[Any], bool]:
        # A search that is exactly a task id finds it by the unique index; any other
        # search is django-celery-results' substring search (which reads the table).
        term = search_term.strip()
        if term and not any(c.isspace() for c in term):
            exact = queryset.filter(task_id=term)
            if exact.exists():
                return exact, False
        return super().get_search_results(request, queryset, search_term)

    def has_place_hold_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("retention_admin.place_hold"))

    @admin.action(description="Place a hold on selected results", permissions=["place_hold"])
    def place_hold(self, request: HttpRequest, queryset: QuerySet[TaskResult]) -> HttpResponse | None:
        form = PlaceHoldForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            task_ids = list(queryset.values_list("task_id", flat=True))
            RetentionHold.objects.bulk_create(
                RetentionHold(task_id=task_id, reason=form.cleaned_data["reason"],
                              until=form.cleaned_data["until"], created_by=request.user)
                for task_id in task_ids
            )
            until = form.cleaned_data["until"]
            self.message_user(
                request,
                f"Placed {len(task_ids)} hold(s) "
                + (f"until {timezone.localtime(until):%Y-%m-%d %H:%M}" if until else "until lifted")
                + ": no cleanup deletes these results meanwhile.",
                messages.SUCCESS,
            )
            return None
        return TemplateResponse(
            request,
            "admin/retention_admin/taskresult/place_hold.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "title": "Place a hold",
                "form": form,
                "results": queryset[:100],
                "count": queryset.count(),
                "selected": request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME),
                "select_across": request.POST.get("select_across", "0"),
                "action": "place_hold",
                "media": self.media + form.media,
            },
        )


# -- archive batches ------------------------------------------------------------------


@admin.register(ArchiveBatch)
class ArchiveBatchAdmin(ReadOnlyAdmin):
    list_display = [
        "id", "policy_name", "run_link", "records", "size_human", "short_sha", "first_done", "last_done",
        "status", "verified_at", "created_at",
    ]
    list_filter = ["status", "source", "policy_name"]
    list_select_related = ["run"]
    search_fields = ["name", "policy_name", "sha256"]
    date_hierarchy = "created_at"
    actions = ["verify_batches"]
    change_form_template = "admin/retention_admin/archivebatch/change_form.html"

    @admin.display(description="run", ordering="run")
    def run_link(self, batch: ArchiveBatch) -> str:
        if batch.run_id is None:
            return "-"
        url = reverse("admin:retention_admin_cleanuprun_change", args=[batch.run_id])
        return format_html('<a href="{}">#{}</a>', url, batch.run_id)

    @admin.display(description="size", ordering="size")
    def size_human(self, batch: ArchiveBatch) -> str:
        return human_bytes(batch.size)

    @admin.display(description="SHA-256")
    def short_sha(self, batch: ArchiveBatch) -> str:
        return format_html('<code title="{}">{}…</code>', batch.sha256, batch.sha256[:12]) if batch.sha256 else "-"

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting a batch row would orphan its object and lose the task id look-up.
        return False

    def has_verify_archive_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("retention_admin.verify_archive"))

    @admin.action(description="Verify selected batches (re-read, checksum and count)", permissions=["verify_archive"])
    def verify_batches(self, request: HttpRequest, queryset: QuerySet[ArchiveBatch]) -> None:
        for batch in queryset[:50]:
            admin_views.verify_and_report(request, batch)

    def get_urls(self) -> list[URLPattern]:
        return [
            path("<path:object_id>/verify/", _view(self, admin_views.archive_verify_view),
                 name="retention_admin_archivebatch_verify"),
            path("<path:object_id>/download/", _view(self, admin_views.archive_download_view),
                 name="retention_admin_archivebatch_download"),
            path("<path:object_id>/records/", _view(self, admin_views.archive_preview_view),
                 name="retention_admin_archivebatch_preview"),
            path("<path:object_id>/restore/", _view(self, admin_views.archive_restore_view),
                 name="retention_admin_archivebatch_restore"),
            *super().get_urls(),
        ]

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None) -> HttpResponse:
        user = request.user
        extra = {
            "can_verify": user.has_perm("retention_admin.verify_archive"),
            "can_download": user.has_perm("retention_admin.download_archive"),
            "can_preview": user.has_perm("retention_admin.preview_archive"),
            "can_restore": user.has_perm("retention_admin.restore_archive"),
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, extra)
