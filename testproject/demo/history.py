"""A realistic, reproducible result-store history for the demo (and a test of it).

``generate_history()`` writes django-celery-results rows (``TaskResult``,
``GroupResult``, ``ChordCounter``) as a busy shop's Celery deployment would have
left them after ``days`` days without cleanup:

- ~35 task names in families that the seeded example policies match once enabled
  (``api.*``, ``dashboard.*``, ``audit.*``, ``compliance.*``, ``critical.*``) plus the
  ordinary background jobs that fall to ``result_expires``;
- traffic with a daily and weekly rhythm and growth over the window, beat tasks at
  their scheduled times, fan-outs as groups;
- mostly SUCCESS, FAILURE with Celery-style tracebacks and exception results (and
  a few incidents where one family fails a lot), some RETRY/REVOKED, a few
  PENDING/STARTED (in flight, or stale after a lost worker);
- JSON results as the database backend stores them, some of them tens of KB;
- group results (some whose members are gone) and chord counters (some orphaned:
  with their finished header results, or with none left, seen by an earlier cleanup
  run or not; some still in progress).

``compliance.*`` results reach back further (``days`` x 4/3): compliance data is
kept 90 days, so a store holding it has older rows, and the 90-day compliance
policy has something to show.

The same ``seed`` and ``now`` give the same rows. ``date_created`` and
``date_done`` are ``auto_now_add``/``auto_now`` fields, which ``bulk_create``
would overwrite with the time of the insert: rows are written with plain
INSERTs (``insert_rows``), and the stored dates are checked afterwards.
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import states
from django.db import connections, models, router, transaction
from django.utils import timezone
from django_celery_results.models import ChordCounter, GroupResult, TaskResult

DEFAULT_RESULTS = 120_000
DEFAULT_DAYS = 90
DEFAULT_SEED = 20_240_901
BATCH_SIZE = 1000
LARGE_RESULT_BYTES = 10 * 1024

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
EMPTY_META = json.dumps({"children": []})
SITE_PACKAGES = "/srv/app/.venv/lib/python3.12/site-packages"

# The seeded example policies, with the demo task names their patterns match.
DEMO_POLICIES: dict[str, str] = {
    "critical-forever": "critical.*",
    "compliance-90d": "compliance.*",
    "audit-30d": "audit.*",
    "api-6h": "api.*",
    "dashboards-30m": "dashboard.*",
}


# ---------------------------------------------------------------------------
# Failures: Celery-style tracebacks and the exception results the backend stores
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorKind:
    module: str  # "builtins" for built-in exceptions
    name: str
    message: str  # str.format(**details)
    call: str  # the line of the task that raised
    frames: tuple[tuple[str, int, str, str], ...] = ()  # library frames: file, line, function, code

    def qualified(self) -> str:
        return self.name if self.module == "builtins" else f"{self.module}.{self.name}"


def _lib(path: str, line: int, func: str, code: str) -> tuple[str, int, str, str]:
    return (f"{SITE_PACKAGES}/{path}", line, func, code)


REQUESTS_SEND = (
    _lib(
        "requests/api.py",
        115,
        "post",
        'return request("post", url, data=data, json=json, **kwargs)',
    ),
    _lib("requests/sessions.py", 589, "request", "resp = self.send(prep, **send_kwargs)"),
    _lib("requests/sessions.py", 703, "send", "r = adapter.send(request, **kwargs)"),
)
DJANGO_QUERY = (
    _lib("django/db/models/query.py", 400, "__iter__", "self._fetch_all()"),
    _lib("django/db/backends/utils.py", 105, "_execute", "return self.cursor.execute(sql, params)"),
)

ERRORS: dict[str, ErrorKind] = {
    "connection": ErrorKind(
        "requests.exceptions",
        "ConnectionError",
        "HTTPSConnectionPool(host='{host}', port=443): Max retries exceeded with url: {path} "
        "(Caused by NewConnectionError('<urllib3.connection.HTTPSConnection object at 0x7f{hex}>: "
        "Failed to establish a new connection: [Errno 111] Connection refused'))",
        "response = session.post(url, json=payload, timeout=10)",
        (
            *REQUESTS_SEND,
            _lib("requests/adapters.py", 700, "send", "raise ConnectionError(e, request=request)"),
        ),
    ),
    "timeout": ErrorKind(
        "requests.exceptions",
        "ReadTimeout",
        "HTTPSConnectionPool(host='{host}', port=443): Read timed out. (read timeout=10)",
        "response = session.post(url, json=payload, timeout=10)",
        (
            *REQUESTS_SEND,
            _lib("requests/adapters.py", 746, "send", "raise ReadTimeout(e, request=request)"),
        ),
    ),
    "bad_gateway": ErrorKind(
        "requests.exceptions",
        "HTTPError",
        "502 Server Error: Bad Gateway for url: https://{host}{path}",
        "response.raise_for_status()",
        (
            _lib(
                "requests/models.py",
                1024,
                "raise_for_status",
                "raise HTTPError(http_error_msg, response=self)",
            ),
        ),
    ),
    "unavailable": ErrorKind(
        "requests.exceptions",
        "HTTPError",
        "503 Server Error: Service Unavailable for url: https://{host}{path}",
        "response.raise_for_status()",
        (
            _lib(
                "requests/models.py",
                1024,
                "raise_for_status",
                "raise HTTPError(http_error_msg, response=self)",
            ),
        ),
    ),
    "smtp_disconnected": ErrorKind(
        "smtplib",
        "SMTPServerDisconnected",
        "Connection unexpectedly closed",
        "message.send()",
        (
            _lib(
                "django/core/mail/message.py",
                301,
                "send",
                "return self.get_connection(fail_silently).send_messages([self])",
            ),
            _lib(
                "django/core/mail/backends/smtp.py",
                128,
                "send_messages",
                "new_conn_created = self.open()",
            ),
            (
                "/usr/lib/python3.12/smtplib.py",
                405,
                "getreply",
                'raise SMTPServerDisconnected("Connection unexpectedly closed")',
            ),
        ),
    ),
    "smtp_refused": ErrorKind(
        "smtplib",
        "SMTPRecipientsRefused",
        "{{'{email}': (550, b'5.1.1 <{email}>: Recipient address rejected: "
        "User unknown in virtual mailbox table')}}",
        "message.send()",
        (
            _lib(
                "django/core/mail/backends/smtp.py",
                155,
                "_send",
                "self.connection.sendmail(from_email, recipients, message.as_bytes())",
            ),
            (
                "/usr/lib/python3.12/smtplib.py",
                887,
                "sendmail",
                "raise SMTPRecipientsRefused(senderrs)",
            ),
        ),
    ),
    "user_missing": ErrorKind(
        "accounts.models.User",
        "DoesNotExist",
        "User matching query does not exist.",
        "user = User.objects.get(pk=user_id)",
        (
            _lib(
                "django/db/models/manager.py",
                87,
                "manager_method",
                "return getattr(self.get_queryset(), name)(*args, **kwargs)",
            ),
            _lib("django/db/models/query.py", 649, "get", "raise self.model.DoesNotExist("),
        ),
    ),
    "card_declined": ErrorKind(
        "billing.gateway",
        "CardDeclined",
        "card_declined: insufficient_funds (charge ch_{hex})",
        "charge = gateway.charge(order.payment_method, order.total_cents)",
        (
            (
                "/srv/app/billing/gateway.py",
                142,
                "charge",
                "raise CardDeclined(error.code, charge_id)",
            ),
        ),
    ),
    "unidentified_image": ErrorKind(
        "PIL",
        "UnidentifiedImageError",
        "cannot identify image file <_io.BytesIO object at 0x7f{hex}>",
        "image = Image.open(io.BytesIO(blob))",
        (_lib("PIL/Image.py", 3498, "open", "raise UnidentifiedImageError(msg)"),),
    ),
    "truncated_image": ErrorKind(
        "builtins",
        "OSError",
        "image file is truncated ({n} bytes not processed)",
        "image.thumbnail((size, size))",
        (
            _lib(
                "PIL/Image.py",
                2747,
                "thumbnail",
                "im = self.resize(size, resample, box=box, reducing_gap=reducing_gap)",
            ),
            _lib("PIL/ImageFile.py", 288, "load", "raise OSError(msg)"),
        ),
    ),
    "statement_timeout": ErrorKind(
        "django.db.utils",
        "OperationalError",
        "canceling statement due to statement timeout",
        "rows = list(queryset.iterator(chunk_size=2000))",
        (*DJANGO_QUERY, _lib("psycopg/cursor.py", 97, "execute", "raise ex.with_traceback(None)")),
    ),
    "deadlock": ErrorKind(
        "django.db.utils",
        "OperationalError",
        "deadlock detected\nDETAIL:  Process {n} waits for ShareLock on transaction {m}; "
        "blocked by process {k}.\nHINT:  See server log for query details.",
        'entry.save(update_fields=["balance_cents", "settled_at"])',
        (
            _lib("django/db/models/base.py", 891, "save_base", "updated = self._save_table("),
            _lib(
                "django/db/backends/utils.py",
                105,
                "_execute",
                "return self.cursor.execute(sql, params)",
            ),
        ),
    ),
    "soft_time_limit": ErrorKind(
        "celery.exceptions",
        "SoftTimeLimitExceeded",
        "SoftTimeLimitExceeded()",
        "for chunk in source.chunks():",
        (
            _lib(
                "billiard/pool.py", 229, "soft_timeout_sighandler", "raise SoftTimeLimitExceeded()"
            ),
        ),
    ),
    "memory": ErrorKind(
        "builtins", "MemoryError", "", "frame = pandas.DataFrame.from_records(rows)"
    ),
    "key_error": ErrorKind("builtins", "KeyError", "'{key}'", 'value = payload["{key}"]'),
    "bad_csv": ErrorKind(
        "builtins",
        "ValueError",
        "Invalid CSV header: expected 'email' in column {n}, got 'e-mail'",
        "rows = parse_upload(upload.file, schema=CUSTOMER_SCHEMA)",
        (("/srv/app/imports/parsing.py", 61, "parse_upload", "raise ValueError("),),
    ),
    "invalid_phone": ErrorKind(
        "twilio.base.exceptions",
        "TwilioRestException",
        "HTTP 400 error: Unable to create record: "
        "The 'To' number +1555010{n} is not a valid phone number.",
        "client.messages.create(to=phone, from_=settings.SMS_FROM, body=text)",
        (
            _lib(
                "twilio/base/version.py",
                205,
                "create",
                'raise self.exception(method, uri, response, "Unable to create record")',
            ),
        ),
    ),
}

WORKER_LOST = ErrorKind(
    "billiard.exceptions",
    "WorkerLostError",
    "Worker exited prematurely: signal 9 (SIGKILL) Job: {n}.",
    "",
)


# ---------------------------------------------------------------------------
# The task catalogue
# ---------------------------------------------------------------------------

ResultFn = Callable[[random.Random, datetime], Any]
ArgsFn = Callable[[random.Random], tuple[str, str]]


def _args(*items: Any) -> str:
    return repr(tuple(items))


def _id_args(low: int = 1000, high: int = 99_999, **kwargs: Any) -> ArgsFn:
    return lambda rng: (_args(rng.randint(low, high)), repr(kwargs))


NO_ARGS: ArgsFn = lambda rng: ("()", "{}")  # noqa: E731


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


@dataclass(frozen=True)
class TaskSpec:
    name: str
    weight: float  # share of the unscheduled results (ignored when scheduled)
    queue: str
    duration: tuple[float, float]  # seconds, drawn log-uniformly
    failure_rate: float
    errors: tuple[str, ...]
    result: ResultFn
    args: ArgsFn = NO_ARGS
    profile: str = "business"  # "business": office hours and weekdays; "flat": round the clock
    periodic: str | None = None  # django-celery-beat PeriodicTask name
    schedule: tuple[str, int, int] | None = None  # ("daily" | "monthly", hour, minute)
    batch: tuple[int, int] | None = None  # runs as groups of this many
    large: float = 0.0  # chance of a large result
    retry_rate: float = 0.003
    host: str = "api.example.com"
    path: str = "/"

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def function(self) -> str:
        return self.name.rsplit(".", 1)[-1]


def _money(rng: random.Random, low: float, high: float) -> float:
    return round(rng.uniform(low, high), 2)


CATALOGUE: tuple[TaskSpec, ...] = (
    # -- real-time dashboards: dashboards-30m --------------------------------
    TaskSpec(
        "dashboard.refresh_kpis",
        weight=7,
        queue="default",
        duration=(0.3, 3),
        failure_rate=0.008,
        errors=("statement_timeout", "key_error"),
        result=lambda r, t: {
            "revenue_today": _money(r, 2_000, 60_000),
            "orders_today": r.randint(40, 900),
            "active_users": r.randint(200, 4_000),
            "generated_at": t.isoformat(),
        },
        profile="flat",
        periodic="dashboard: refresh KPIs",
    ),
    TaskSpec(
        "dashboard.update_live_orders",
        weight=7,
        queue="default",
        duration=(0.2, 2),
        failure_rate=0.006,
        errors=("statement_timeout",),
        result=lambda r, t: {
            "open_orders": r.randint(0, 180),
            "late": r.randint(0, 12),
            "generated_at": t.isoformat(),
        },
        profile="flat",
        periodic="dashboard: live orders",
    ),
    TaskSpec(
        "dashboard.compute_widget",
        weight=4,
        queue="default",
        duration=(0.5, 6),
        failure_rate=0.012,
        errors=("statement_timeout", "key_error"),
        result=lambda r, t: {
            "widget": r.choice(["conversion_funnel", "top_products", "refund_rate"]),
            "points": [[i, r.randint(0, 500)] for i in range(24)],
        },
        args=lambda r: (
            _args(r.choice(["conversion_funnel", "top_products", "refund_rate"])),
            repr({"range": r.choice(["24h", "7d", "30d"])}),
        ),
    ),
    # -- API calls to third parties: api-6h -----------------------------------
    TaskSpec(
        "api.fetch_exchange_rates",
        weight=2,
        queue="io",
        duration=(0.2, 3),
        failure_rate=0.03,
        errors=("timeout", "bad_gateway"),
        result=lambda r, t: {
            "base": "EUR",
            "rates": {
                "USD": round(r.uniform(1.02, 1.12), 4),
                "GBP": round(r.uniform(0.83, 0.88), 4),
                "CHF": round(r.uniform(0.93, 0.98), 4),
            },
            "fetched_at": t.isoformat(),
        },
        profile="flat",
        periodic="api: exchange rates",
        host="api.exchangerate.host",
        path="/latest?base=EUR",
    ),
    TaskSpec(
        "api.sync_crm_contact",
        weight=7,
        queue="io",
        duration=(0.2, 5),
        failure_rate=0.05,
        errors=("connection", "timeout", "bad_gateway"),
        result=lambda r, t: {
            "crm_id": f"hs-{r.randint(10**7, 10**8)}",
            "changed": r.sample(
                ["email", "phone", "lifecycle_stage", "owner", "company"], r.randint(0, 3)
            ),
        },
        args=_id_args(force=False),
        retry_rate=0.012,
        host="api.hubapi.com",
        path="/crm/v3/objects/contacts/batch/upsert",
    ),
    TaskSpec(
        "api.geocode_address",
        weight=5,
        queue="io",
        duration=(0.1, 2),
        failure_rate=0.03,
        errors=("timeout", "bad_gateway"),
        result=lambda r, t: {
            "lat": round(r.uniform(-40, 60), 6),
            "lng": round(r.uniform(-120, 30), 6),
            "precision": r.choice(["ROOFTOP", "RANGE_INTERPOLATED", "APPROXIMATE"]),
        },
        args=_id_args(),
        host="maps.googleapis.com",
        path="/maps/api/geocode/json",
    ),
    TaskSpec(
        "api.fetch_shipping_quote",
        weight=6,
        queue="io",
        duration=(0.3, 4),
        failure_rate=0.04,
        errors=("timeout", "connection", "bad_gateway"),
        result=lambda r, t: {
            "carrier": r.choice(["UPS", "DHL", "FedEx"]),
            "service": "Ground",
            "amount": f"{r.uniform(4, 40):.2f}",
            "currency": "USD",
            "eta_days": r.randint(1, 6),
        },
        args=_id_args(),
        retry_rate=0.01,
        host="api.easypost.com",
        path="/v2/shipments",
    ),
    TaskSpec(
        "api.deliver_webhook",
        weight=6,
        queue="io",
        duration=(0.1, 10),
        failure_rate=0.07,
        errors=("connection", "timeout", "bad_gateway"),
        result=lambda r, t: {
            "endpoint_id": r.randint(1, 400),
            "status": 200,
            "elapsed_ms": r.randint(40, 2_500),
        },
        args=lambda r: (
            _args(r.randint(1, 400), f"order.{r.choice(['paid', 'shipped', 'refunded'])}"),
            "{}",
        ),
        retry_rate=0.02,
        host="hooks.acme-retail.example",
        path="/webhooks/shop",
    ),
    # -- e-mail and notifications: result_expires -------------------------------
    TaskSpec(
        "emails.send_welcome",
        weight=2,
        queue="io",
        duration=(0.3, 3),
        failure_rate=0.02,
        errors=("smtp_disconnected", "smtp_refused", "user_missing"),
        result=lambda r, t: {
            "message_id": f"<{r.getrandbits(64):x}@mail.shop.example>",
            "recipients": 1,
        },
        args=_id_args(locale="en"),
    ),
    TaskSpec(
        "emails.send_password_reset",
        weight=1.5,
        queue="io",
        duration=(0.3, 3),
        failure_rate=0.02,
        errors=("smtp_disconnected", "smtp_refused"),
        result=lambda r, t: {
            "message_id": f"<{r.getrandbits(64):x}@mail.shop.example>",
            "recipients": 1,
        },
        args=_id_args(),
    ),
    TaskSpec(
        "emails.send_receipt",
        weight=5,
        queue="io",
        duration=(0.3, 4),
        failure_rate=0.015,
        errors=("smtp_disconnected", "user_missing"),
        result=lambda r, t: {
            "message_id": f"<{r.getrandbits(64):x}@mail.shop.example>",
            "recipients": 1,
            "attachments": ["receipt.pdf"],
        },
        args=_id_args(100_000, 999_999),
    ),
    TaskSpec(
        "emails.send_digest",
        weight=4,
        queue="io",
        duration=(0.3, 3),
        failure_rate=0.02,
        errors=("smtp_disconnected", "smtp_refused"),
        result=lambda r, t: {
            "message_id": f"<{r.getrandbits(64):x}@mail.shop.example>",
            "items": r.randint(3, 25),
        },
        args=_id_args(kind="weekly"),
        batch=(10, 40),
    ),
    TaskSpec(
        "notifications.push_mobile",
        weight=5,
        queue="io",
        duration=(0.1, 2),
        failure_rate=0.03,
        errors=("unavailable",),
        result=lambda r, t: {"delivered": r.randint(1, 4), "failed": r.choice([0, 0, 0, 1])},
        args=_id_args(),
        host="fcm.googleapis.com",
        path="/v1/projects/shop-prod/messages:send",
    ),
    TaskSpec(
        "notifications.send_sms",
        weight=1.5,
        queue="io",
        duration=(0.2, 2),
        failure_rate=0.05,
        errors=("invalid_phone", "unavailable"),
        result=lambda r, t: {"sid": f"SM{_hex(r, 32)}", "segments": r.randint(1, 2)},
        args=_id_args(),
        host="api.twilio.com",
        path="/2010-04-01/Accounts/AC/Messages.json",
    ),
    # -- media, search, billing, imports: result_expires ---------------------------
    TaskSpec(
        "thumbnails.resize",
        weight=6,
        queue="cpu",
        duration=(0.4, 8),
        failure_rate=0.025,
        errors=("unidentified_image", "truncated_image", "memory"),
        result=lambda r, t: {
            "key": f"media/products/{r.randint(1, 40_000)}/photo.jpg",
            "sizes": {s: f"thumbs/{s}/{_hex(r, 12)}.webp" for s in ("160", "480", "1200")},
        },
        args=lambda r: (
            _args(f"media/products/{r.randint(1, 40_000)}/photo-{r.randint(1, 6)}.jpg"),
            repr({"sizes": [160, 480, 1200]}),
        ),
    ),
    TaskSpec(
        "thumbnails.generate_previews",
        weight=3,
        queue="cpu",
        duration=(1, 20),
        failure_rate=0.03,
        errors=("unidentified_image", "soft_time_limit"),
        result=lambda r, t: {
            "pages": r.randint(1, 30),
            "previews": [f"previews/{_hex(r, 16)}.png" for _ in range(3)],
        },
        args=lambda r: (_args(f"documents/{r.randint(1, 9_000)}.pdf"), "{}"),
        batch=(3, 12),
    ),
    TaskSpec(
        "search.reindex_product",
        weight=4,
        queue="default",
        duration=(0.1, 2),
        failure_rate=0.015,
        errors=("connection", "statement_timeout"),
        result=lambda r, t: {"product_id": r.randint(1, 40_000), "indexed": True},
        args=_id_args(1, 40_000),
        batch=(5, 25),
        host="es-prod-1.internal",
        path="/products/_bulk",
    ),
    TaskSpec(
        "search.rebuild_index",
        weight=0,
        queue="cpu",
        duration=(300, 1_500),
        failure_rate=0.03,
        errors=("soft_time_limit", "connection"),
        result=lambda r, t: {
            "documents": r.randint(150_000, 220_000),
            "took_s": round(r.uniform(300, 1500), 1),
        },
        periodic="search: nightly rebuild",
        schedule=("daily", 3, 0),
        host="es-prod-1.internal",
        path="/products_v2/_bulk",
    ),
    TaskSpec(
        "billing.charge_card",
        weight=4,
        queue="default",
        duration=(0.5, 4),
        failure_rate=0.05,
        errors=("card_declined", "timeout"),
        result=lambda r, t: {
            "charge_id": f"ch_{_hex(r, 24)}",
            "amount": r.randint(500, 40_000),
            "currency": "usd",
            "status": "succeeded",
        },
        args=_id_args(100_000, 999_999),
        host="api.stripe.com",
        path="/v1/charges",
    ),
    TaskSpec(
        "billing.refund_payment",
        weight=0.5,
        queue="default",
        duration=(0.5, 4),
        failure_rate=0.03,
        errors=("timeout",),
        result=lambda r, t: {
            "refund_id": f"re_{_hex(r, 24)}",
            "amount": r.randint(500, 20_000),
            "status": "succeeded",
        },
        args=_id_args(100_000, 999_999),
        host="api.stripe.com",
        path="/v1/refunds",
    ),
    TaskSpec(
        "billing.generate_invoice",
        weight=2,
        queue="cpu",
        duration=(1, 12),
        failure_rate=0.02,
        errors=("statement_timeout", "key_error"),
        result=lambda r, t: {
            "invoice": f"INV-{t:%Y}-{r.randint(1, 99_999):05d}",
            "pdf": f"invoices/{_hex(r, 16)}.pdf",
        },
        args=_id_args(100_000, 999_999),
    ),
    TaskSpec(
        "imports.process_csv_upload",
        weight=0.5,
        queue="cpu",
        duration=(5, 600),
        failure_rate=0.12,
        errors=("bad_csv", "key_error", "soft_time_limit"),
        result=lambda r, t: {
            "imported": r.randint(10, 20_000),
            "skipped": r.randint(0, 40),
            "errors": [],
        },
        args=_id_args(1, 30_000),
        large=0.3,
    ),
    TaskSpec(
        "ml.score_leads",
        weight=0.4,
        queue="cpu",
        duration=(20, 400),
        failure_rate=0.05,
        errors=("memory", "soft_time_limit"),
        result=lambda r, t: {"model": "lead-scorer-v7", "scored": r.randint(100, 5_000)},
        large=0.8,
    ),
    # -- reports: result_expires ------------------------------------------------------
    TaskSpec(
        "reports.build_daily_sales",
        weight=0,
        queue="cpu",
        duration=(30, 400),
        failure_rate=0.03,
        errors=("statement_timeout", "soft_time_limit"),
        result=lambda r, t: {
            "date": f"{t - timedelta(days=1):%Y-%m-%d}",
            "orders": r.randint(800, 3_000),
            "revenue": _money(r, 40_000, 180_000),
            "by_channel": {c: r.randint(50, 1_500) for c in ("web", "ios", "android", "pos")},
        },
        periodic="reports: daily sales",
        schedule=("daily", 1, 30),
    ),
    TaskSpec(
        "reports.build_monthly",
        weight=0,
        queue="cpu",
        duration=(200, 1_800),
        failure_rate=0.0,
        errors=("statement_timeout",),
        result=lambda r, t: {},
        periodic="reports: monthly",
        schedule=("monthly", 2, 0),
        large=1.0,
    ),
    TaskSpec(
        "reports.export_csv",
        weight=0.6,
        queue="cpu",
        duration=(5, 300),
        failure_rate=0.04,
        errors=("statement_timeout", "memory"),
        result=lambda r, t: {
            "url": f"s3://shop-exports/{_hex(r, 20)}.csv",
            "rows": r.randint(10, 90_000),
        },
        args=lambda r: (
            _args(r.choice(["orders", "customers", "refunds", "inventory"])),
            repr({"since": "2024-01-01", "user_id": r.randint(1, 80)}),
        ),
        large=0.6,
    ),
    # -- audit logs: audit-30d (archived) ---------------------------------------------
    TaskSpec(
        "audit.record_login",
        weight=5,
        queue="default",
        duration=(0.05, 0.6),
        failure_rate=0.004,
        errors=("deadlock",),
        result=lambda r, t: {
            "event_id": r.randint(10**6, 10**7),
            "ip": f"203.0.113.{r.randint(1, 254)}",
        },
        args=_id_args(1, 80_000),
    ),
    TaskSpec(
        "audit.record_permission_change",
        weight=0.6,
        queue="default",
        duration=(0.05, 0.6),
        failure_rate=0.004,
        errors=("deadlock",),
        result=lambda r, t: {
            "event_id": r.randint(10**6, 10**7),
            "granted": r.choice(["staff", "refunds", "exports"]),
        },
        args=lambda r: (_args(r.randint(1, 80), r.randint(1, 80_000)), "{}"),
    ),
    TaskSpec(
        "audit.export_trail",
        weight=0,
        queue="default",
        duration=(20, 200),
        failure_rate=0.02,
        errors=("statement_timeout",),
        result=lambda r, t: {
            "events": r.randint(5_000, 40_000),
            "object": f"s3://shop-audit/{t:%Y/%m/%d}.jsonl.gz",
        },
        periodic="audit: nightly export",
        schedule=("daily", 5, 0),
    ),
    # -- compliance: compliance-90d (archived) ------------------------------------------
    TaskSpec(
        "compliance.gdpr_export",
        weight=0.3,
        queue="cpu",
        duration=(10, 300),
        failure_rate=0.03,
        errors=("soft_time_limit", "statement_timeout"),
        result=lambda r, t: {
            "subject_id": r.randint(1, 80_000),
            "url": f"s3://shop-gdpr/{_hex(r, 20)}.zip",
        },
        args=_id_args(1, 80_000),
        large=0.5,
    ),
    TaskSpec(
        "compliance.kyc_check",
        weight=1.2,
        queue="io",
        duration=(0.5, 8),
        failure_rate=0.03,
        errors=("timeout", "bad_gateway"),
        result=lambda r, t: {
            "customer_id": r.randint(1, 80_000),
            "result": r.choice(["clear"] * 9 + ["review"]),
            "provider_ref": f"kyc_{_hex(r, 16)}",
        },
        args=_id_args(1, 80_000),
        host="api.kyc-provider.example",
        path="/v2/checks",
    ),
    TaskSpec(
        "compliance.retention_report",
        weight=0,
        queue="default",
        duration=(5, 90),
        failure_rate=0.0,
        errors=("statement_timeout",),
        result=lambda r, t: {"checked_tables": 41, "violations": r.choice([0, 0, 0, 0, 1])},
        periodic="compliance: nightly retention report",
        schedule=("daily", 0, 15),
    ),
    # -- critical records: critical-forever ----------------------------------------------
    TaskSpec(
        "critical.settle_ledger",
        weight=0.8,
        queue="default",
        duration=(1, 30),
        failure_rate=0.01,
        errors=("deadlock", "key_error"),
        result=lambda r, t: {
            "batch": f"LB-{t:%Y%m%d}-{r.randint(1, 999):03d}",
            "entries": r.randint(10, 3_000),
            "balance_cents": r.randint(-10_000, 10_000_000),
        },
        args=_id_args(1, 99_999),
    ),
    TaskSpec(
        "critical.reconcile_payouts",
        weight=0,
        queue="default",
        duration=(30, 400),
        failure_rate=0.02,
        errors=("deadlock", "timeout"),
        result=lambda r, t: {
            "payouts": r.randint(20, 400),
            "mismatches": r.choice([0, 0, 0, 1, 2]),
        },
        periodic="critical: nightly payout reconciliation",
        schedule=("daily", 23, 50),
        host="api.stripe.com",
        path="/v1/payouts",
    ),
    # -- Celery's own ------------------------------------------------------------------------
    TaskSpec(
        "celery.backend_cleanup",
        weight=0,
        queue="default",
        duration=(0.5, 30),
        failure_rate=0.0,
        errors=("statement_timeout",),
        result=lambda r, t: None,
        periodic="celery.backend_cleanup",
        schedule=("daily", 4, 0),
    ),
)

QUEUE_PODS = {"default": 4, "io": 6, "cpu": 2}

# Office hours in UTC (the shop is in Europe and the Americas): relative traffic per hour.
HOURLY = (
    0.25,
    0.2,
    0.15,
    0.15,
    0.2,
    0.3,
    0.5,
    0.8,
    1.0,
    1.1,
    1.15,
    1.2,
    1.2,
    1.2,
    1.25,
    1.3,
    1.3,
    1.2,
    1.0,
    0.9,
    0.8,
    0.65,
    0.5,
    0.35,
)


@dataclass(frozen=True)
class Incident:
    """A stretch of time where one family (or everything) fails far more often."""

    prefix: str  # task name prefix; "" for every task
    ago: float  # start, as a fraction of the window back from now
    hours: float
    failure_rate: float
    error: str


INCIDENTS = (
    Incident("api.sync_crm_contact", 0.26, 5, 0.6, "connection"),  # CRM outage
    Incident("emails.", 0.57, 3, 0.35, "smtp_disconnected"),  # mail provider incident
    Incident("thumbnails.", 0.12, 2, 0.3, "memory"),  # a bad image library release
    Incident("", 0.41, 1, 0.08, "worker_lost"),  # a deploy with an OOM-killed pool
)


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------


@dataclass
class Row:
    spec: TaskSpec | None  # None: a legacy row stored before result_extended was on
    start: datetime
    group: int | None = None


@dataclass
class HistorySummary:
    results: int = 0
    seconds: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    task_names: int = 0
    legacy_rows: int = 0
    oldest: datetime | None = None
    newest: datetime | None = None
    window_start: datetime | None = None
    bytes: int = 0
    large_results: int = 0
    largest_result: int = 0
    groups: int = 0
    orphaned_groups: int = 0
    chord_counters: int = 0
    stuck_chords: int = 0  # header results finished and still there
    headless_chords: int = 0  # header results gone
    sighted_chords: int = 0  # of the headless ones, seen by an "earlier" cleanup run
    running_chords: int = 0  # header tasks still queued


class _Generator:
    def __init__(self, *, results: int, days: int, seed: int, now: datetime):
        if results < 1:
            raise ValueError(f"results must be 1 or more, not {results}")
        if days < 1:
            raise ValueError(f"days must be 1 or more, not {days}")
        self.total = results
        self.days = days
        self.now = now
        self.rng = random.Random(seed)
        self.workers: dict[tuple[str, int], list[str]] = {}
        self.large_pool: dict[str, list[str]] = {}
        self.incidents = [
            (
                i,
                now - timedelta(days=days * i.ago),
                now - timedelta(days=days * i.ago) + timedelta(hours=i.hours),
            )
            for i in INCIDENTS
        ]

    # -- ids and names --------------------------------------------------------
    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def worker(self, queue: str, when: datetime) -> str:
        week = int((self.now - when).total_seconds() // (7 * 86400))  # one deploy a week
        key = (queue, week)
        if key not in self.workers:
            deploy = f"{zlib.crc32(f'{queue}{week}'.encode()) & 0xFFFFFFFF:08x}"[:9]
            self.workers[key] = [
                f"celery@{queue}-worker-{deploy}-{_hex(self.rng, 5)}"
                for _ in range(QUEUE_PODS[queue])
            ]
        return self.rng.choice(self.workers[key])

    def span(self, spec: TaskSpec | None) -> float:
        return (
            self.days * 4 / 3
            if spec is not None and spec.family == "compliance"
            else float(self.days)
        )

    # -- when -----------------------------------------------------------------
    def _hour_weights(self, span_days: float, profile: str) -> list[float]:
        hours = max(1, int(span_days * 24))
        cum: list[float] = []
        total = 0.0
        for i in range(hours):
            start = self.now - timedelta(hours=hours - i)
            trend = 0.75 + 0.5 * (i / hours)  # the shop grows over the window
            weight = trend
            if profile == "business":
                weight *= HOURLY[start.hour] * (0.5 if start.weekday() >= 5 else 1.0)
            total += weight
            cum.append(total)
        return cum

    def times(self, spec: TaskSpec | None, count: int, profile: str) -> list[datetime]:
        span_days = self.span(spec)
        cum = self._hour_weights(span_days, profile)
        hours = len(cum)
        buckets = self.rng.choices(range(hours), cum_weights=cum, k=count)
        return [self.now - timedelta(hours=hours - b - self.rng.random()) for b in buckets]

    def scheduled(self, spec: TaskSpec) -> list[datetime]:
        assert spec.schedule is not None
        kind, hour, minute = spec.schedule
        start = self.now - timedelta(days=self.span(spec))
        first = start.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if first < start:
            first += timedelta(days=1)
        out = []
        day = first
        while day < self.now:
            if kind == "daily" or day.day == 1:
                out.append(day + timedelta(seconds=self.rng.uniform(0.01, 2)))  # beat latency
            day += timedelta(days=1)
        return out

    # -- what -------------------------------------------------------------------
    def plan(self) -> list[Row]:
        """Every result to write: task, start time and group membership."""
        rows: list[Row] = []
        scheduled = [
            Row(spec, start)
            for spec in CATALOGUE
            if spec.schedule
            for start in self.scheduled(spec)
        ]
        if len(scheduled) > self.total // 5:  # a small history: keep beat tasks a minority
            scheduled = self.rng.sample(scheduled, self.total // 5)
        rows += scheduled
        # Legacy rows, stored before result_extended was turned on: no task name, no args.
        window_start = self.now - timedelta(days=self.days)
        rows += [
            Row(None, window_start + (t - window_start) * 0.15)
            for t in self.times(None, self.total // 300, "business")
        ]
        remaining = self.total - len(rows)
        weighted = [s for s in CATALOGUE if not s.schedule and s.weight > 0]
        total_weight = sum(s.weight for s in weighted)
        counts = [math.floor(remaining * s.weight / total_weight) for s in weighted]
        counts[0] += remaining - sum(counts)
        group = 0
        for spec, count in zip(weighted, counts, strict=True):
            if spec.batch is None:
                rows += [Row(spec, t) for t in self.times(spec, count, spec.profile)]
                continue
            low, high = spec.batch
            sizes = []
            while sum(sizes) < count:
                sizes.append(min(self.rng.randint(low, high), count - sum(sizes)))
            for size, start in zip(sizes, self.times(spec, len(sizes), spec.profile), strict=True):
                group += 1
                offset = 0.0
                for _ in range(size):
                    offset += self.rng.uniform(0.02, 1.5)
                    rows.append(Row(spec, min(start + timedelta(seconds=offset), self.now), group))
        return rows

    def details(self, spec: TaskSpec | None) -> dict[str, Any]:
        """The values an error message is filled with."""
        rng = self.rng
        return {
            "host": spec.host if spec else "api.example.com",
            "path": spec.path if spec else "/",
            "hex": _hex(rng, 9),
            "email": f"customer{rng.randint(1, 90_000)}@"
            f"{rng.choice(['gmail.com', 'example.org', 'yahoo.com'])}",
            "n": rng.randint(2, 9_999),
            "m": rng.randint(10_000, 99_999),
            "k": rng.randint(2, 9_999),
            "key": rng.choice(["customer_id", "sku", "shipping_address", "currency"]),
        }

    def failure(
        self, spec: TaskSpec | None, when: datetime
    ) -> tuple[ErrorKind, dict[str, Any]] | None:
        rate = spec.failure_rate if spec else 0.03
        forced = None
        for incident, start, end in self.incidents:
            if start <= when < end and (spec.name if spec else "").startswith(incident.prefix):
                if self.rng.random() < incident.failure_rate:
                    forced = incident.error
                    break
        if forced is None and self.rng.random() >= rate:
            return None
        if forced == "worker_lost" or (forced is None and self.rng.random() < 0.02):
            kind = WORKER_LOST
        else:
            kind = ERRORS[forced or self.rng.choice(spec.errors if spec else ("key_error",))]
        return kind, self.details(spec)

    def traceback(self, spec: TaskSpec | None, kind: ErrorKind, details: dict[str, Any]) -> str:
        message = kind.message.format(**details)
        last = f"{kind.qualified()}: {message}" if message else kind.qualified()
        if kind is WORKER_LOST:
            return (
                "Traceback (most recent call last):\n"
                f'  File "{SITE_PACKAGES}/billiard/pool.py", line 1265, in mark_as_worker_lost\n'
                "    raise WorkerLostError(\n"
                f"{last}\n"
            )
        family = spec.family if spec else "legacy"
        function = spec.function if spec else "run"
        line = 20 + zlib.crc32(f"{family}.{function}.{kind.name}".encode()) % 180
        lines = [
            "Traceback (most recent call last):",
            f'  File "{SITE_PACKAGES}/celery/app/trace.py", line 453, in trace_task',
            "    R = retval = fun(*args, **kwargs)",
            "                 ^^^^^^^^^^^^^^^^^^^^",
            f'  File "{SITE_PACKAGES}/celery/app/trace.py", line 736, in __protected_call__',
            "    return self.run(*args, **kwargs)",
            "           ^^^^^^^^^^^^^^^^^^^^^^^^^",
            f'  File "/srv/app/{family}/tasks.py", line {line}, in {function}',
            f"    {kind.call.format(**details)}",
        ]
        for path, number, func, code in kind.frames:
            lines += [f'  File "{path}", line {number}, in {func}', f"    {code}"]
        lines.append(last)
        return "\n".join(lines) + "\n"

    @staticmethod
    def exception_result(kind: ErrorKind, message: str) -> str:
        return json.dumps(
            {
                "exc_type": kind.name,
                "exc_message": [message] if message else [],
                "exc_module": kind.module,
            }
        )

    def large_result(self, spec: TaskSpec) -> str:
        """A result of tens of KB; a few variants per task, each row gets its own id."""
        pool = self.large_pool.get(spec.name)
        if pool is None:
            pool = []
            for _ in range(6):
                n = self.rng.randint(120, 900)
                if spec.name == "ml.score_leads":
                    body: Any = {
                        "model": "lead-scorer-v7",
                        "scores": [
                            {
                                "lead_id": self.rng.randint(1, 10**6),
                                "score": round(self.rng.random(), 4),
                                "reasons": self.rng.sample(
                                    [
                                        "visited_pricing",
                                        "opened_email",
                                        "trial",
                                        "demo_call",
                                        "company_size",
                                        "returning",
                                    ],
                                    3,
                                ),
                            }
                            for _ in range(n)
                        ],
                    }
                elif spec.name == "imports.process_csv_upload":
                    body = {
                        "imported": self.rng.randint(1_000, 50_000),
                        "skipped": n,
                        "errors": [
                            {
                                "line": self.rng.randint(2, 60_000),
                                "column": "email",
                                "error": "Enter a valid email address.",
                                "value": f"user{i}@@example",
                            }
                            for i in range(n)
                        ],
                    }
                elif spec.name == "compliance.gdpr_export":
                    body = {
                        "orders": [
                            {
                                "order": f"SO-{self.rng.randint(10**5, 10**6)}",
                                "total": _money(self.rng, 5, 400),
                                "items": self.rng.randint(1, 8),
                                "address": "redacted",
                            }
                            for _ in range(n)
                        ],
                        "consents": ["newsletter", "analytics"],
                    }
                else:  # reports
                    body = {
                        "columns": ["date", "sku", "units", "revenue", "refunds"],
                        "rows": [
                            [
                                f"2024-{self.rng.randint(1, 12):02d}-{self.rng.randint(1, 28):02d}",
                                f"SKU-{self.rng.randint(1000, 9999)}",
                                self.rng.randint(1, 400),
                                _money(self.rng, 10, 9_000),
                                self.rng.randint(0, 9),
                            ]
                            for _ in range(n)
                        ],
                    }
                pool.append(json.dumps(body, separators=(",", ":")))
            self.large_pool[spec.name] = pool
        return f'{{"id":"{_hex(self.rng, 12)}",' + self.rng.choice(pool)[1:]

    def task_result(self, row: Row) -> TaskResult:
        rng = self.rng
        spec = row.spec
        low, high = spec.duration if spec else (0.2, 5)
        duration = timedelta(seconds=math.exp(rng.uniform(math.log(low), math.log(high))))
        started = row.start
        done = started + duration
        failure = None
        status: str | None = None
        if done > self.now:
            # Still running, or queued: in flight when the history ends.
            status = states.STARTED if rng.random() < 0.8 else states.PENDING
        traceback = None
        result: str | None
        if status is None:
            roll = rng.random()
            if roll < 0.001:
                status = states.PENDING  # published, never picked up
            elif roll < 0.0018:
                status = states.STARTED  # its worker was lost
            elif roll < 0.009:
                status = states.REVOKED
            elif roll < 0.009 + (spec.retry_rate if spec else 0.003):
                status = states.RETRY
            else:
                failure = self.failure(spec, started)
                status = states.SUCCESS if failure is None else states.FAILURE
        worker = self.worker(spec.queue if spec else "default", started)
        if status == states.SUCCESS:
            if spec is not None and spec.large and rng.random() < spec.large:
                result = self.large_result(spec)
            else:
                result = json.dumps(spec.result(rng, done) if spec else {"ok": True})
        elif status == states.FAILURE:
            assert failure is not None
            kind, details = failure
            message = kind.message.format(**details)
            traceback = self.traceback(spec, kind, details)
            result = self.exception_result(kind, message)
        elif status == states.RETRY:
            kind = ERRORS[rng.choice(spec.errors if spec else ("key_error",))]
            details = self.details(spec)
            message = kind.message.format(**details)
            countdown = rng.choice([10, 30, 60, 180, 600])
            traceback = self.traceback(spec, kind, details)
            result = json.dumps(
                {
                    "exc_type": "Retry",
                    "exc_message": [f"Retry in {countdown}s: {kind.name}({message!r})"],
                    "exc_module": "celery.exceptions",
                }
            )
        elif status == states.REVOKED:
            result = json.dumps(
                {
                    "exc_type": "TaskRevokedError",
                    "exc_message": [rng.choice(["revoked", "terminated", "expired"])],
                    "exc_module": "celery.exceptions",
                }
            )
            started = done  # revoked before it started
        elif status == states.STARTED:
            result = json.dumps({"pid": rng.randint(7, 4_000_000), "hostname": worker})
            done = started
        else:  # PENDING
            result = None
            started = done = min(started, self.now)
            worker = None
        if spec is None:
            name = periodic = args = kwargs = None
            worker = None
        else:
            name, periodic = spec.name, spec.periodic
            argsrepr, kwargsrepr = spec.args(rng)
            args, kwargs = json.dumps(argsrepr), json.dumps(kwargsrepr)
        created = started - timedelta(milliseconds=rng.uniform(0, 40))
        row = TaskResult(
            task_id=self.uuid(),
            periodic_task_name=periodic,
            task_name=name,
            task_args=args,
            task_kwargs=kwargs,
            status=status,
            worker=worker,
            content_type=CONTENT_TYPE,
            content_encoding=CONTENT_ENCODING,
            result=result,
            date_created=created,
            date_done=done,
            traceback=traceback,
            meta=EMPTY_META,
        )
        if has_date_started():  # django-celery-results 2.6+; 2.5 has no such column
            row.date_started = None if status in (states.PENDING, states.REVOKED) else started
        return row


@functools.cache
def has_date_started() -> bool:
    """Whether TaskResult has ``date_started`` (added in django-celery-results 2.6)."""
    return any(f.name == "date_started" for f in TaskResult._meta.concrete_fields)


def _tuple(task_id: str) -> list[Any]:
    """A result as ``AsyncResult.as_tuple()`` serialises it: ((id, parent), None)."""
    return [[task_id, None], None]


INSERTABLE = (models.CharField, models.TextField, models.IntegerField, models.DateTimeField)


def insert_rows(model: type[models.Model], objs: list[Any], using: str) -> None:
    """INSERT unsaved instances exactly as they are, in batches.

    Not ``bulk_create``: that calls ``pre_save()``, so ``auto_now``/``auto_now_add``
    (``date_done``, ``date_created``) would replace the generated dates with the time
    of the insert, and its per-value preparation costs more than the insert itself
    at this size. Only the field types these models use are supported.
    """
    connection = connections[using]
    ops = connection.ops
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    for f in fields:
        if not isinstance(f, INSERTABLE):
            raise TypeError(
                f"insert_rows cannot prepare {model.__name__}.{f.name} ({type(f).__name__})"
            )
    adapters = [
        ops.adapt_datetimefield_value if isinstance(f, models.DateTimeField) else None
        for f in fields
    ]
    attnames = [f.attname for f in fields]
    sql = "INSERT INTO {} ({}) VALUES ({})".format(
        ops.quote_name(model._meta.db_table),
        ", ".join(ops.quote_name(f.column) for f in fields),
        ", ".join(["%s"] * len(fields)),
    )
    with connection.cursor() as cursor:
        for i in range(0, len(objs), BATCH_SIZE):
            cursor.executemany(
                sql,
                [
                    tuple(
                        adapt(getattr(o, name)) if adapt else getattr(o, name)
                        for name, adapt in zip(attnames, adapters, strict=True)
                    )
                    for o in objs[i : i + BATCH_SIZE]
                ],
            )


def _size(obj: TaskResult) -> int:
    return sum(
        len(v.encode())
        for v in (obj.result, obj.traceback, obj.meta, obj.task_args, obj.task_kwargs)
        if v
    )


def generate_history(
    *,
    results: int = DEFAULT_RESULTS,
    days: int = DEFAULT_DAYS,
    seed: int = DEFAULT_SEED,
    now: datetime | None = None,
    using: str | None = None,
) -> HistorySummary:
    """Write the demo history; returns what was written. Expects an empty result store."""
    from retention_admin.models import ChordCounterSighting

    started = time.monotonic()
    now = now or timezone.now()
    using = using or router.db_for_write(TaskResult)
    gen = _Generator(results=results, days=days, seed=seed, now=now)
    plan = gen.plan()
    objs = [gen.task_result(row) for row in plan]
    summary = HistorySummary(results=len(objs), window_start=now - timedelta(days=days))

    # Groups: one GroupResult per fan-out, saved when it was launched.
    members: dict[int, list[TaskResult]] = {}
    for row, obj in zip(plan, objs, strict=True):
        if row.group is not None:
            members.setdefault(row.group, []).append(obj)
    groups: list[GroupResult] = []
    rng = gen.rng

    def group_result(group_id: str, task_ids: list[str], when: datetime) -> GroupResult:
        return GroupResult(
            group_id=group_id,
            content_type=CONTENT_TYPE,
            content_encoding=CONTENT_ENCODING,
            result=json.dumps([[group_id, None], [_tuple(t) for t in task_ids]]),
            date_created=when,
            date_done=when,
        )

    group_ids: dict[int, str] = {}
    for number, tasks in members.items():
        group_ids[number] = gen.uuid()
        groups.append(
            group_result(
                group_ids[number], [t.task_id for t in tasks], min(t.date_created for t in tasks)
            )
        )
    # Groups whose member results are long gone (deleted by hand, or by an earlier cleanup).
    orphaned_groups = max(1, results // 4000)
    for when in gen.times(None, orphaned_groups, "business"):
        groups.append(
            group_result(gen.uuid(), [gen.uuid() for _ in range(rng.randint(3, 12))], when)
        )
    summary.groups, summary.orphaned_groups = len(groups), orphaned_groups

    # Chord counters whose count is stuck above zero (a header task's return was lost, so the
    # callback never ran): most still have their finished header results; for some the
    # header results are gone too, and then only the counter's first sighting by a cleanup
    # run dates it: half of those were seen by an earlier run (long ago), half never were.
    # Plus chords still in progress: header tasks queued, no result rows yet.
    old = [
        n
        for n, tasks in members.items()
        if max(t.date_done for t in tasks) < now - timedelta(days=2)
        and all(t.status in states.READY_STATES for t in tasks)
    ]
    stuck = rng.sample(old, min(len(old), max(2, results // 4000)))
    counters = [
        ChordCounter(
            group_id=group_ids[n],
            count=rng.randint(1, 2),
            sub_tasks=json.dumps([_tuple(t.task_id) for t in members[n]]),
        )
        for n in stuck
    ]
    headless = max(2, results // 12000)
    sightings = []
    for i, when in enumerate(gen.times(None, headless, "business")):
        when = min(when, now - timedelta(days=2))
        group_id = gen.uuid()
        header = [gen.uuid() for _ in range(rng.randint(3, 10))]
        counters.append(
            ChordCounter(
                group_id=group_id,
                count=rng.randint(1, 2),
                sub_tasks=json.dumps([_tuple(t) for t in header]),
            )
        )
        if i % 2 == 0:
            sightings.append(ChordCounterSighting(group_id=group_id, first_seen=when))
    in_progress = max(1, results // 12000)
    for _ in range(in_progress):
        header = [gen.uuid() for _ in range(rng.randint(3, 10))]
        counters.append(
            ChordCounter(
                group_id=gen.uuid(),
                count=len(header),
                sub_tasks=json.dumps([_tuple(t) for t in header]),
            )
        )
    summary.chord_counters = len(counters)
    summary.stuck_chords, summary.headless_chords = len(stuck), headless
    summary.sighted_chords, summary.running_chords = len(sightings), in_progress

    objs.sort(key=lambda o: (o.date_created, o.task_id))  # ids grow with time, as in production
    with transaction.atomic(using=using):
        insert_rows(TaskResult, objs, using)
        insert_rows(GroupResult, groups, using)
        insert_rows(ChordCounter, counters, using)
        insert_rows(ChordCounterSighting, sightings, using)
    # The stored dates are the generated ones, not the time of the insert.
    stored = TaskResult.objects.using(using).aggregate(
        oldest=models.Min("date_done"), newest=models.Max("date_done"), n=models.Count("id")
    )
    if (
        stored["n"] < len(objs)
        or stored["newest"] > now
        or stored["oldest"] != min(o.date_done for o in objs)
    ):
        raise RuntimeError(f"the stored results are not the generated ones: {stored}")

    for obj in objs:
        summary.statuses[obj.status] += 1
        size = _size(obj)
        summary.bytes += size
        result_size = len(obj.result.encode()) if obj.result else 0
        if result_size >= LARGE_RESULT_BYTES:
            summary.large_results += 1
            summary.largest_result = max(summary.largest_result, result_size)
    names = {o.task_name for o in objs}
    summary.legacy_rows = sum(1 for o in objs if o.task_name is None)
    summary.task_names = len(names - {None})
    summary.oldest = min(o.date_done for o in objs)
    summary.newest = max(o.date_done for o in objs)
    summary.seconds = time.monotonic() - started
    return summary


def enable_demo_policies(using: str | None = None) -> tuple[list[Any], list[str]]:
    """Point the seeded example policies at the demo task names and enable them.

    Returns every policy (in precedence order) and the names of demo policies
    that were not found (an operator removed them).
    """
    from retention_admin.models import RetentionPolicy

    manager = RetentionPolicy.objects.using(using)
    missing = []
    for name, pattern in DEMO_POLICIES.items():
        policy = manager.filter(name=name).first()
        if policy is None:
            missing.append(name)
            continue
        policy.task_name_pattern = pattern
        policy.enabled = True
        policy.full_clean()
        policy.save(using=using)
    return list(manager.select_related("tier").order_by("priority", "name")), missing
