from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html

from .forms import RetentionPolicyForm
from .models import CleanupRun, RetentionHold, RetentionPolicy, RetentionTier, StorageSnapshot


class RetentionPolicyInline(admin.TabularInline):  # type: ignore[type-arg]
    model = RetentionPolicy
    form = RetentionPolicyForm
    fields = ["name", "enabled", "priority", "task_name_pattern", "keep_for", "archive"]
    extra = 0
    show_change_link = True


@admin.register(RetentionTier)
class RetentionTierAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "slug", "schedule"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [RetentionPolicyInline]

    @admin.display(description="schedule")
    def schedule(self, tier: RetentionTier) -> str:
        task = tier.periodic_task
        if task is None:
            return "no schedule"
        return str(task.crontab or task.interval or task.solar or task.clocked or "no schedule")


@admin.register(RetentionPolicy)
class RetentionPolicyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    form = RetentionPolicyForm
    list_display = [
        "name", "priority", "enabled", "tier", "task_name_pattern", "status_list",
        "min_result_bytes", "keep_for_display", "archive",
    ]
    # Priorities and switches edit in place: reordering is one form, not one per row.
    list_editable = ["priority", "enabled"]
    list_filter = ["enabled", "tier", "archive"]
    search_fields = ["name", "task_name_pattern", "description"]
    ordering = ["priority", "name"]

    @admin.display(description="statuses")
    def status_list(self, policy: RetentionPolicy) -> str:
        return ", ".join(policy.statuses) or "any"

    @admin.display(description="keeps", ordering="keep_for")
    def keep_for_display(self, policy: RetentionPolicy) -> str:
        return "forever" if policy.keep_for is None else str(policy.keep_for)


@admin.register(RetentionHold)
class RetentionHoldAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["task_id", "reason", "until", "created_by", "created_at", "active"]
    search_fields = ["task_id", "reason"]
    readonly_fields = ["created_by", "created_at"]

    @admin.display(boolean=True, description="active")
    def active(self, hold: RetentionHold) -> bool:
        return hold.is_active()

    def save_model(self, request: HttpRequest, obj: RetentionHold, form: Any, change: bool) -> None:
        if not change and obj.created_by_id is None:
            obj.created_by = request.user  # type: ignore[assignment]
        super().save_model(request, obj, form, change)


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
        "matched", "deleted", "archived", "duration_s",
    ]
    list_filter = ["status", "trigger", "dry_run", "tier"]
    date_hierarchy = "started_at"

    @admin.display(description="status", ordering="status")
    def status_badge(self, run: CleanupRun) -> str:
        colour = {"failed": "#ba2121", "skipped": "#b26b00", "partial": "#b26b00"}.get(run.status)
        if colour:
            return format_html('<strong style="color:{}">{}</strong>', colour, run.status)
        return run.status


@admin.register(StorageSnapshot)
class StorageSnapshotAdmin(ReadOnlyAdmin):
    list_display = ["taken_at", "task_rows", "group_rows", "chord_rows", "table_bytes", "bytes_estimated"]
    date_hierarchy = "taken_at"
