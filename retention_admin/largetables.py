"""Changelist pieces that stay fast on a result table of millions of rows.

Django's admin counts every row of a changelist (``COUNT(*)``, twice when
filtered) and builds the choices of a field filter with ``SELECT DISTINCT``
over the whole table. On a result table of millions of rows each of those is a
scan per page view. Here the count of an unfiltered list comes from the
database's own statistics, a filtered count stops at a cap, and filters either
have fixed choices (Celery's states) or take typed input.
"""

from __future__ import annotations

from typing import Any

from celery import states
from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.functional import cached_property

# A filtered changelist counts at most this many rows; past it the pages stop here.
COUNT_CAP = 10_000


def table_row_estimate(model: Any, using: str) -> int | None:
    """The database's estimate of a table's rows (no scan), or None when it has none."""
    connection = connections[using]
    table = model._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)", [table])
        elif connection.vendor == "mysql":
            cursor.execute(
                "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
                [table],
            )
        else:
            return None
        row = cursor.fetchone()
    if not row or row[0] is None or row[0] < 0:  # PostgreSQL: -1 until first ANALYZE
        return None
    return int(row[0])


class EstimatedCountPaginator(Paginator):
    """Counts without scanning: a statistics estimate when unfiltered, capped otherwise.

    The exact count is used whenever it is small (under ``COUNT_CAP``), so
    small tables and narrow filters show exact figures.
    """

    estimated = False

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count
        capped = queryset.order_by()[: COUNT_CAP + 1].count()
        if capped <= COUNT_CAP:
            return int(capped)
        self.estimated = True
        if not queryset.query.where:
            estimate = table_row_estimate(queryset.model, queryset.db)
            if estimate is not None and estimate > COUNT_CAP:
                return estimate
        return COUNT_CAP


class TextInputFilter(admin.SimpleListFilter):
    """A filter the operator types into (exact match): no DISTINCT scan for choices."""

    template = "admin/retention_admin/input_filter.html"
    field_name = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return []

    def has_output(self) -> bool:
        return True

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value:
            return queryset.filter(**{self.field_name: value.strip()})
        return queryset

    def choices(self, changelist: Any) -> Any:
        # One "choice": what the template needs to rebuild the query string.
        yield {
            "value": self.value() or "",
            "parameter_name": self.parameter_name,
            "other_params": [
                (k, item)
                for k, v in changelist.get_filters_params().items()
                if k != self.parameter_name
                for item in (v if isinstance(v, list) else [v])
            ],
            "clear_url": changelist.get_query_string(remove=[self.parameter_name]),
        }


def input_filter(field: str, title: str) -> type[TextInputFilter]:
    return type(
        f"{field.title().replace('_', '')}InputFilter",
        (TextInputFilter,),
        {"title": title, "parameter_name": field, "field_name": field},
    )


def status_filter() -> type[admin.SimpleListFilter]:
    """Celery's states as fixed choices, instead of a DISTINCT over the status column."""

    class StatusFilter(admin.SimpleListFilter):
        title = "status"
        parameter_name = "status__exact"

        def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
            return [(state, state) for state in sorted(states.ALL_STATES)]

        def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
            if self.value():
                return queryset.filter(status=self.value())
            return queryset

    return StatusFilter
