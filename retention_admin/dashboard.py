"""The storage dashboard: charts and tables built from records only.

Everything here reads ``StorageSnapshot``s, ``CleanupRun``s and the cached
backend health; nothing reads the result table, so the page costs the same on a
table of a thousand rows or a billion. Charts are SVG rendered on the server by
pygal (no JavaScript, no CDN: ``js=[]``); each has a table with the same numbers
under it. A period's snapshots are thinned to at most one point per bucket (one
hour up to 7 days, 4 hours for 30 days, 12 hours for 90 days) so a chart has a
few hundred points at most, whatever the snapshot frequency.

Times are shown in local time. With ``USE_TZ = False`` the records hold naive
``TIME_ZONE`` local times: they are shown as they are (``_local``) and compared
only with ``timezone.now()``, naive too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pygal
from django.conf import settings
from django.db.models import Count, Sum
from django.db.models.functions import TruncDay
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from pygal.style import Style

from . import conf
from .alerts import current_alerts
from .health import latest_health
from .models import CleanupRun, StorageSnapshot
from .report import human_bytes

PERIODS: dict[str, tuple[timedelta, timedelta, str]] = {
    # name: (span, bucket, label)
    "24h": (timedelta(hours=24), timedelta(hours=1), "24 hours"),
    "7d": (timedelta(days=7), timedelta(hours=1), "7 days"),
    "30d": (timedelta(days=30), timedelta(hours=4), "30 days"),
    "90d": (timedelta(days=90), timedelta(hours=12), "90 days"),
}
DEFAULT_PERIOD = "7d"
STATUS_ORDER = ("SUCCESS", "FAILURE", "PENDING", "STARTED", "RETRY", "REVOKED", "RECEIVED", "REJECTED", "IGNORED")
# Beyond this many runs in the period, the runs chart shows one bar per day.
RUN_BARS = 60
FORECAST_SPAN = timedelta(days=7)
ESTIMATE_MARK = "≈"

STYLE = Style(
    background="white",
    plot_background="white",
    foreground="#333",
    foreground_strong="#222",
    foreground_subtle="#ccc",
    font_family="-apple-system, 'Segoe UI', system-ui, Roboto, 'Helvetica Neue', Arial, sans-serif",
    label_font_size=11,
    major_label_font_size=11,
    legend_font_size=12,
    title_font_size=14,
    # Colour-blind friendly (Okabe-Ito), in the order of STATUS_ORDER.
    colors=("#009E73", "#D55E00", "#E69F00", "#56B4E9", "#CC79A7", "#999999", "#0072B2", "#F0E442", "#000000"),
)


@dataclass
class Chart:
    key: str
    title: str
    svg: SafeString | None
    caption: str
    headers: list[str]
    rows: list[list[str]]
    empty: str = ""

    @property
    def table_html(self) -> SafeString:
        """The table's head and body, built here: the template engine takes ~10x longer for thousands of cells."""
        head = "".join(f'<th scope="col">{escape(h)}</th>' for h in self.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in self.rows
        )
        return mark_safe(f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody>")  # noqa: S308 - escaped above


@dataclass
class Point:
    taken_at: datetime
    estimated: bool
    backfill: bool
    task_rows: int
    rows_by_status: dict[str, int]
    bytes_by_status: dict[str, int]
    table_bytes: int | None
    redis_memory: int | None


@dataclass
class Forecast:
    lines: list[str] = field(default_factory=list)


def parse_period(value: str | None) -> tuple[str, str | None]:
    """(period, problem): an unknown period falls back to the default with a message."""
    if not value:
        return DEFAULT_PERIOD, None
    if value in PERIODS:
        return value, None
    return DEFAULT_PERIOD, (
        f"Unknown period {value!r}; choose one of {', '.join(PERIODS)}. Showing {PERIODS[DEFAULT_PERIOD][2]}."
    )


def _config(**options: Any) -> dict[str, Any]:
    base = {
        "js": [],  # no tooltips script from a CDN: the charts are plain SVG
        "disable_xml_declaration": True,
        "style": STYLE,
        "width": 960,
        "height": 360,
        "legend_at_bottom": True,
        "legend_at_bottom_columns": 5,
        "truncate_legend": -1,
        "truncate_label": -1,
        "show_minor_x_labels": False,
        "x_labels_major_count": 8,
        "x_label_rotation": 20,
        "dots_size": 1.5,
        "margin": 12,
    }
    base.update(options)
    return base


_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.S)


def _render(chart: Any) -> SafeString:
    # pygal always embeds its tooltip configuration as an inline script; the
    # charts need no JavaScript, so drop it (smaller page, and nothing for a
    # strict Content-Security-Policy to refuse). pygal escapes labels and values.
    return mark_safe(_SCRIPT.sub("", chart.render(is_unicode=True)))  # noqa: S308


def _fmt_rows(value: float | None) -> str:
    return "" if value is None else f"{int(value):,}"


def _fmt_bytes(value: float | None) -> str:
    return "" if value is None else human_bytes(int(value))


def _local(value: datetime) -> datetime:
    """``value`` in local time: a naive one (``USE_TZ = False``) is local time already.

    ``timezone.localtime`` refuses naive datetimes.
    """
    return value if timezone.is_naive(value) else timezone.localtime(value)


def _zone_name() -> str:
    """The zone the charts' times are in: the current one, or TIME_ZONE without USE_TZ."""
    # Naive times are never converted to an activated zone, so they are in TIME_ZONE.
    return timezone.get_current_timezone_name() if settings.USE_TZ else timezone.get_default_timezone_name()


def _instant(value: datetime) -> datetime:
    """An aware datetime (naive: TIME_ZONE local time), for arithmetic on real instants."""
    return timezone.make_aware(value, timezone.get_default_timezone()) if timezone.is_naive(value) else value


def _like(value: datetime, reference: datetime) -> datetime:
    """``value`` naive or aware as ``reference`` is, so the two can be subtracted.

    The backend health keeps ``checked_at`` as text, written naive or aware by
    whatever ``USE_TZ`` said then; the cache and old snapshots may hold either.
    """
    if timezone.is_naive(reference) and timezone.is_aware(value):
        return timezone.make_naive(value, timezone.get_default_timezone())
    if timezone.is_aware(reference) and timezone.is_naive(value):
        return timezone.make_aware(value, timezone.get_default_timezone())
    return value


def _label(point: Point, span: timedelta) -> str:
    local = _local(point.taken_at)
    text = local.strftime("%m-%d %H:%M" if span <= timedelta(days=7) else "%Y-%m-%d %H:%M")
    return f"{ESTIMATE_MARK}{text}" if point.backfill else text


def load_points(since: datetime, bucket: timedelta) -> list[Point]:
    """The snapshots since ``since``, the last one in each bucket, oldest first.

    Two queries on the ``taken_at`` index: the times alone pick one snapshot per
    bucket, then only those are read whole (their JSON is most of the cost).
    """
    seconds = bucket.total_seconds()
    chosen: dict[int, tuple[int, bool]] = {}
    for pk, taken_at, kind in (
        StorageSnapshot.objects.filter(taken_at__gte=since).order_by("taken_at", "pk").values_list("pk", "taken_at", "kind")
    ):
        # On the instant: a naive datetime's timestamp() would read it in the
        # process's zone, which need not be TIME_ZONE.
        key = int(_instant(taken_at).timestamp() // seconds)
        backfill = kind == StorageSnapshot.Kind.BACKFILL
        previous = chosen.get(key)
        if previous is not None and backfill and not previous[1]:
            continue  # a measured snapshot beats a reconstruction in the same bucket
        chosen[key] = (pk, backfill)
    rows = (
        StorageSnapshot.objects.filter(pk__in=[pk for pk, _ in chosen.values()])
        .order_by("taken_at", "pk")
        .values_list(
            "taken_at", "kind", "task_rows", "rows_estimated", "rows_by_status",
            "bytes_by_status", "table_bytes", "bytes_estimated", "redis",
        )
    )
    points = []
    for taken_at, kind, task_rows, rows_est, by_status, bytes_status, size, bytes_est, redis in rows:
        backfill = kind == StorageSnapshot.Kind.BACKFILL
        memory = redis.get("used_memory") if isinstance(redis, dict) else None
        points.append(
            Point(
                taken_at=taken_at,
                estimated=bool(rows_est or bytes_est or backfill),
                backfill=backfill,
                task_rows=task_rows,
                rows_by_status=by_status or {},
                bytes_by_status=bytes_status or {},
                table_bytes=size,
                redis_memory=memory if isinstance(memory, int) else None,
            )
        )
    return points


def _statuses(points: Iterable[Point]) -> list[str]:
    seen: set[str] = set()
    for point in points:
        seen.update(point.rows_by_status)
    known = [s for s in STATUS_ORDER if s in seen]
    return known + sorted(seen - set(STATUS_ORDER))


def _bytes_split(point: Point) -> dict[str, float]:
    """Table bytes split by status in proportion to the stored results' sizes."""
    logical = sum(point.bytes_by_status.values())
    if point.table_bytes is None:
        return dict(point.bytes_by_status)
    if not logical:
        return {"(all)": float(point.table_bytes)} if point.table_bytes else {}
    return {s: point.table_bytes * b / logical for s, b in point.bytes_by_status.items()}


def _estimate_caption(points: list[Point]) -> str:
    backfilled = [p for p in points if p.backfill]
    parts = []
    if backfilled:
        last = _local(backfilled[-1].taken_at).strftime("%Y-%m-%d %H:%M")
        parts.append(
            f"Points marked {ESTIMATE_MARK} (up to {last}) are reconstructed estimates "
            "(snapshot_results --backfill), not measurements."
        )
    if any(p.estimated and not p.backfill for p in points):
        parts.append("Some measured figures are estimates from database statistics or a sample (marked ≈ in the table).")
    return " ".join(parts)


def _stacked_chart(
    key: str, title: str, y_title: str, points: list[Point], span: timedelta,
    values: Callable[[Point], dict[str, float]], fmt: Callable[[float | None], str], caption: str,
) -> Chart:
    series_values = [values(p) for p in points]
    names = _statuses(points)
    extra = sorted({k for v in series_values for k in v} - set(names))
    names += extra
    labels = [_label(p, span) for p in points]
    headers = ["time", "kind", "total", *names]
    table = []
    for point, label, vals in zip(points, labels, series_values):
        mark = ESTIMATE_MARK if point.estimated else ""
        table.append(
            [label, "estimate (reconstructed)" if point.backfill else ("measured, estimated" if point.estimated else "measured"),
             mark + fmt(sum(vals.values())), *[mark + fmt(vals.get(n, 0)) for n in names]]
        )
    if not points:
        return Chart(key, title, None, caption, headers, [], empty="No snapshots in this period yet.")
    chart = pygal.StackedLine(
        **_config(
            title=title, fill=True, x_title=f"time ({_zone_name()})", y_title=y_title,
            value_formatter=fmt, show_dots=len(points) <= 48,
        )
    )
    chart.x_labels = labels
    for name in names:
        chart.add(name, [vals.get(name, 0) for vals in series_values])
    note = _estimate_caption(points)
    return Chart(key, title, _render(chart), f"{caption} {note}".strip(), headers, table)


def rows_chart(points: list[Point], span: timedelta) -> Chart:
    return _stacked_chart(
        "rows", "Task results stored, by status", "rows", points, span,
        lambda p: {k: float(v) for k, v in p.rows_by_status.items()}, _fmt_rows,
        "Rows of the TaskResult table at each snapshot, stacked by status.",
    )


def bytes_chart(points: list[Point], span: timedelta) -> Chart:
    return _stacked_chart(
        "bytes", "Table + index size, by status", "bytes", points, span, _bytes_split, _fmt_bytes,
        "Bytes of the TaskResult table and its indexes as the database reports them, split by status "
        "in proportion to the size of the stored results.",
    )


def redis_chart(points: list[Point], span: timedelta) -> Chart:
    with_redis = [p for p in points if p.redis_memory is not None]
    headers = ["time", "Redis used memory"]
    title = "Redis memory"
    if not with_redis:
        return Chart(
            "redis", title, None, "", headers, [],
            empty="No Redis figures in this period: Redis does not hold results here, or was unreachable.",
        )
    labels = [_label(p, span) for p in with_redis]
    chart = pygal.Line(
        **_config(
            title=title, fill=True, x_title=f"time ({_zone_name()})", y_title="bytes",
            value_formatter=_fmt_bytes, show_legend=False, show_dots=len(with_redis) <= 48,
        )
    )
    chart.x_labels = labels
    chart.add("used_memory", [p.redis_memory for p in with_redis])
    rows = [[label, _fmt_bytes(p.redis_memory)] for label, p in zip(labels, with_redis)]
    return Chart("redis", title, _render(chart), "Redis INFO used_memory at each snapshot.", headers, rows)


def runs_chart(since: datetime) -> Chart:
    runs = (
        CleanupRun.objects.filter(dry_run=False, started_at__gte=since)
        .exclude(status__in=[CleanupRun.Status.DISPATCHED, CleanupRun.Status.SKIPPED])
    )
    count = runs.count()
    title = "Deleted and archived per run"
    if count > RUN_BARS:
        title = "Deleted and archived per day"
        data = [
            (_local(day).strftime("%Y-%m-%d"), deleted or 0, archived or 0, str(n))
            for day, deleted, archived, n in runs.annotate(day=TruncDay("started_at"))
            .order_by("day")
            .values("day")
            .annotate(d=Sum("deleted"), a=Sum("archived"), n=Count("pk"))
            .values_list("day", "d", "a", "n")
            # NULL when MySQL lacks the time zone tables for a non-UTC TIME_ZONE.
            if day is not None
        ]
        headers = ["day", "deleted", "archived", "runs"]
    else:
        data = [
            (f"#{pk} {_local(started).strftime('%m-%d %H:%M')}", deleted, archived, status)
            for pk, started, deleted, archived, status in runs.order_by("started_at").values_list(
                "pk", "started_at", "deleted", "archived", "status"
            )
        ]
        headers = ["run", "deleted", "archived", "status"]
    rows = [[label, _fmt_rows(d), _fmt_rows(a), extra] for label, d, a, extra in data]
    if not data:
        return Chart("runs", title, None, "", headers, [], empty="No cleanup ran (for real) in this period.")
    chart = pygal.Bar(
        **_config(title=title, x_title="run" if count <= RUN_BARS else "day", y_title="results", value_formatter=_fmt_rows)
    )
    chart.x_labels = [label for label, *_ in data]
    chart.add("deleted", [d for _, d, _, _ in data])
    chart.add("archived", [a for _, _, a, _ in data])
    return Chart(
        "runs", title, _render(chart),
        "Results deleted and archived by real (not dry) cleanup runs, from the run records.", headers, rows,
    )


def top_tasks_chart(latest: StorageSnapshot | None) -> Chart:
    headers = ["task name", "rows", "bytes (estimate)"]
    title = "Top task names by bytes"
    if latest is None or not latest.rows_by_task:
        return Chart("tasks", title, None, "", headers, [], empty="No snapshot with task names yet.")
    top = [t for t in latest.rows_by_task if t.get("bytes")][:15]
    mark = ESTIMATE_MARK if latest.rows_estimated else ""
    rows = [[t.get("task_name") or "(no task name)", mark + _fmt_rows(t["rows"]), mark + _fmt_bytes(t["bytes"])] for t in top]
    chart = pygal.HorizontalBar(
        **_config(title=title, value_formatter=_fmt_bytes, show_legend=False, height=max(240, 28 * len(top) + 80))
    )
    chart.x_labels = [row[0] for row in rows]
    chart.add("bytes", [t["bytes"] for t in top])
    when = _local(latest.taken_at).strftime("%Y-%m-%d %H:%M")
    how = "estimated from a sample" if latest.rows_estimated else "counted"
    return Chart(
        "tasks", title, _render(chart),
        f"From the snapshot of {when} ({how}); bytes are the stored text of each result plus a per-row overhead.",
        headers, rows,
    )


def _slope_per_day(samples: list[tuple[datetime, float]]) -> float | None:
    """Net change per day between the first and last of (time, value) samples an hour or more apart.

    The net change, not a fitted line: cleanup makes the size a saw-tooth, and a
    line fitted through a week that ends just after a big cleanup would forecast
    the growth before it as if the cleanup had not happened.
    """
    if len(samples) < 2:
        return None
    (first_time, first), (last_time, last) = samples[0], samples[-1]
    days = (last_time - first_time).total_seconds() / 86400
    if days < 1 / 24:
        return None
    return (last - first) / days


def forecast(now: datetime) -> Forecast:
    config = conf.get_config()
    rows = list(
        StorageSnapshot.objects.filter(taken_at__gte=now - FORECAST_SPAN)
        .order_by("taken_at")
        .values_list("taken_at", "table_bytes", "task_rows", "kind")
    )
    out = Forecast()
    if not rows:
        out.lines.append("No snapshots in the last 7 days: no forecast yet.")
        return out
    first_time = rows[0][0]
    last_time, last_bytes, last_rows, _kind = rows[-1]
    span_days = (last_time - first_time).total_seconds() / 86400
    notes = [f"over {span_days:.1f} days of snapshots"] if span_days < 6.5 else []
    if any(kind == StorageSnapshot.Kind.BACKFILL for *_x, kind in rows):
        notes.append("partly reconstructed estimates")
    for what, index, current, threshold, fmt in (
        ("table", 1, last_bytes, config.alert_bytes, _fmt_bytes),
        ("row count", 2, last_rows, config.alert_rows, _fmt_rows),
    ):
        samples = [(r[0], float(r[index])) for r in rows if r[index] is not None]
        slope = _slope_per_day(samples)
        if slope is None or current is None:
            out.lines.append(f"Not enough snapshots in the last 7 days to forecast the {what}.")
            continue
        target = threshold if threshold and threshold > current else (current * 2 if current else None)
        target_name = "the alert threshold of " if threshold and threshold > current else "twice its size, "
        if slope <= 0:
            change = f"shrank by {fmt(abs(slope))} a day" if slope < 0 else "did not grow"
            extra = f" ({'; '.join(notes)})" if notes else ""
            out.lines.append(f"Over the last 7 days{extra} the {what} {change}; it is {fmt(current)} now.")
        elif target and (target - current) / slope > 3650:
            out.lines.append(
                f"At the last 7 days' rate ({'; '.join([f'+{fmt(slope)} a day', *notes])}) the {what} "
                f"would take more than ten years to reach {target_name}{fmt(target)}."
            )
        elif target:
            days = (target - current) / slope
            out.lines.append(
                f"At the last 7 days' rate ({'; '.join([f'+{fmt(slope)} a day', *notes])}) the {what} reaches "
                f"{target_name}{fmt(target)}, in {days:,.0f} days ({_local(now + timedelta(days=days)):%Y-%m-%d})."
            )
    return out


def health_view(now: datetime) -> dict[str, Any] | None:
    found, when = latest_health()
    if found is None:
        return None
    when = _like(when, now) if when else None
    age = (now - when) if when else None
    return {**found, "age": age, "when": when}


def build(period: str, now: datetime | None = None) -> dict[str, Any]:
    """Context for the dashboard template."""
    from .recommendations import recommend

    now = now or timezone.now()
    span, bucket, label = PERIODS[period]
    since = now - span
    points = load_points(since, bucket)
    latest = (
        StorageSnapshot.objects.filter(kind=StorageSnapshot.Kind.MEASURED)
        .defer("task_profile")
        .order_by("-taken_at", "-pk")
        .first()
    )
    alert_snapshot, alerts = current_alerts()
    return {
        "period": period,
        "period_label": label,
        "periods": [(key, value[2]) for key, value in PERIODS.items()],
        "charts": [
            rows_chart(points, span),
            bytes_chart(points, span),
            redis_chart(points, span),
            runs_chart(since),
            top_tasks_chart(latest),
        ],
        "latest": latest,
        "alerts": alerts,
        "alert_snapshot": alert_snapshot,
        "forecast": forecast(now),
        "health": health_view(now),
        "recommendations": recommend(),
        "now": now,
    }


def dashboard_view(model_admin: Any, request: Any) -> Any:
    """The admin page (reached through ``StorageSnapshotAdmin.get_urls``, view permission)."""
    from django.contrib import messages
    from django.core.exceptions import PermissionDenied
    from django.http import HttpResponseRedirect
    from django.template.response import TemplateResponse

    from .health import check_backend, remember

    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    if request.method == "POST":
        health = check_backend()
        remember(health.as_dict())
        if health.ok:
            messages.success(request, f"Result backend round trip ok in {health.total_ms:.0f} ms.")
        else:
            messages.error(request, health.problem)
        return HttpResponseRedirect(request.get_full_path())
    period, problem = parse_period(request.GET.get("period"))
    if problem:
        messages.warning(request, problem)
    opts = model_admin.model._meta
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": opts,
        "title": "Storage growth",
        **build(period),
    }
    return TemplateResponse(request, "admin/retention_admin/dashboard.html", context)
