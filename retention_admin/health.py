"""Result backend health: a round trip (store, read, forget) through Celery's result backend.

``check_backend`` stores a small probe result, reads it back, forgets it and
checks it is gone, timing each step; a failure is turned into a sentence naming
the likely cause (unreachable host, authentication, wrong database, serializer
refusing, tables not migrated). ``manage.py check_result_backend`` prints it;
the hourly snapshot and the dashboard's "check now" record it in Django's cache
(and with the snapshot), and the dashboard shows the latest with its age.
"""

from __future__ import annotations

import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from celery import states
from celery.app.backends import by_url
from django.core.cache import cache
from django.utils import timezone

from .celery_config import get_app

CACHE_KEY = "retention_admin:backend_health"
CACHE_SECONDS = 7 * 86400
PROBE_PREFIX = "retention-admin-health-"
VENDORS = {"postgresql": "PostgreSQL", "mysql": "MySQL/MariaDB", "sqlite": "SQLite", "oracle": "Oracle"}


@dataclass
class Health:
    ok: bool
    backend: str
    checked_at: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    problem: str = ""
    kind: str = ""  # unreachable, auth, database, serializer, schema, config, other
    total_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def masked(url: str) -> str:
    """A backend URL fit to print: the password replaced by ***."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.password:
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return urlunsplit((parts.scheme, f"{user}:***@{host}{port}", parts.path, parts.query, ""))
    return url


def describe(exc: BaseException, backend: str) -> tuple[str, str]:
    """(kind, sentence) for a failure of the round trip."""
    text = str(exc).strip() or type(exc).__name__
    lower = text.lower()
    name = type(exc).__name__
    chain = [type(e).__name__ for e in _chain(exc)]
    if any(n in {"ContentDisallowed", "EncodeError", "DecodeError", "SerializerNotInstalled"} for n in chain):
        app_conf = get_app().conf
        return "serializer", (
            f"The result serializer refused the probe on {backend}: {text} "
            f"(result_serializer={app_conf.result_serializer!r}, "
            f"result_accept_content={app_conf.result_accept_content or app_conf.accept_content!r})."
        )
    if (
        "authentication" in lower or "password" in lower or "access denied" in lower
        or "noauth" in lower or "wrongpass" in lower or "(1045" in lower or "(1044" in lower
        or "no pg_hba.conf entry" in lower or "role" in lower and "does not exist" in lower
    ):
        return "auth", f"{backend} refused the credentials: {text}"
    if (
        ("database" in lower and ("does not exist" in lower or "unknown database" in lower))
        or "(1049" in lower or "db index is out of range" in lower
        or "unable to open database file" in lower
    ):
        return "database", f"{backend}: the database does not exist or cannot be opened: {text}"
    if "no such table" in lower or "doesn't exist" in lower or ("relation" in lower and "does not exist" in lower):
        return "schema", (
            f"{backend}: the result tables are missing; run `manage.py migrate`: {text}"
        )
    if (
        "connection refused" in lower or "could not connect" in lower or "can't connect" in lower
        or "(2003" in lower or "timed out" in lower or "timeout" in lower
        or "name or service not known" in lower or "error 111" in lower
        or "connectionerror" in name.lower() or "connection" in name.lower()
    ):
        return "unreachable", f"{backend} is not reachable: {text}"
    return "other", f"The round trip through {backend} failed: {name}: {text}"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _backend(url: str | None, timeout: float) -> tuple[Any, str]:
    app = get_app()
    configured = url or app.conf.result_backend
    if not configured or configured == "disabled":
        raise LookupError("no result backend is configured (CELERY_RESULT_BACKEND is not set)")
    cls, backend_url = by_url(configured, app.loader)
    backend = cls(app=app, url=backend_url)
    label = masked(str(configured))
    if hasattr(backend, "TaskModel"):
        label = f"{label} ({_database_label(backend.TaskModel)})"
    connparams = getattr(backend, "connparams", None)
    if isinstance(connparams, dict) and "socket_connect_timeout" in connparams:
        # Redis: fail within the timeout instead of Celery's 20 connection retries.
        connparams["socket_connect_timeout"] = timeout
        connparams["socket_timeout"] = timeout
        options = dict(getattr(backend, "_transport_options", {}) or {})
        options["retry_policy"] = {"max_retries": 0}
        backend._transport_options = options
    return backend, label


def _database_label(model: Any) -> str:
    """Which Django database the database backend writes to, without credentials."""
    from django.db import connections, router

    alias = router.db_for_write(model)
    settings = connections[alias].settings_dict
    # The vendor, not display_name: telling MariaDB from MySQL would connect, and this
    # label must be ready before the connection fails.
    vendor = VENDORS.get(connections[alias].vendor, connections[alias].vendor)
    where = f" at {settings.get('HOST')}:{settings.get('PORT') or 'default port'}" if settings.get("HOST") else ""
    return f"{vendor} database {settings.get('NAME')!s}{where}, alias {alias!r}"


def check_backend(url: str | None = None, timeout: float = 5.0) -> Health:
    """Store, read and forget a probe result through the result backend; never raises."""
    started = time.monotonic()
    checked_at = timezone.now().isoformat()
    display = masked(str(url or get_app().conf.result_backend or "(none)"))
    health = Health(ok=False, backend=display, checked_at=checked_at)
    try:
        backend, health.backend = _backend(url, timeout)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        health.kind = "config"
        health.problem = f"Cannot use the result backend {display}: {exc}"
        return health
    task_id = f"{PROBE_PREFIX}{uuid.uuid4()}"
    probe = {"probe": task_id, "text": "retention_admin round trip ✓"}
    step = "store"
    try:
        with warnings.catch_warnings():
            # Eager settings make Celery warn about reading results; the probe is deliberate.
            warnings.simplefilter("ignore", RuntimeWarning)
            t0 = time.monotonic()
            backend.store_result(task_id, probe, states.SUCCESS)
            health.steps.append({"step": "store", "ms": _ms(t0)})
            step = "read"
            t0 = time.monotonic()
            meta = backend.get_task_meta(task_id, cache=False)
            health.steps.append({"step": "read", "ms": _ms(t0)})
            if meta.get("status") != states.SUCCESS or meta.get("result") != probe:
                raise ValueError(
                    f"read back {meta.get('status')!r} with {meta.get('result')!r} instead of the stored probe"
                )
            step = "forget"
            t0 = time.monotonic()
            backend.forget(task_id)
            health.steps.append({"step": "forget", "ms": _ms(t0)})
            step = "verify forgotten"
            t0 = time.monotonic()
            after = backend.get_task_meta(task_id, cache=False)
            health.steps.append({"step": "verify forgotten", "ms": _ms(t0)})
            if after.get("status") != states.PENDING:
                raise ValueError(f"the probe is still there after forget ({after.get('status')!r})")
        health.ok = True
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        health.kind, sentence = describe(exc, health.backend)
        health.problem = f"{step} failed: {sentence}"
        health.steps.append({"step": step, "error": str(exc)})
        if step != "store":
            _forget_quietly(backend, task_id)
    health.total_ms = _ms(started)
    return health


def _forget_quietly(backend: Any, task_id: str) -> None:
    try:
        backend.forget(task_id)
    except Exception:  # noqa: BLE001 - best effort: the probe must not stay behind
        pass


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 2)


def remember(health: dict[str, Any]) -> None:
    """Keep the latest outcome for the dashboard."""
    try:
        cache.set(CACHE_KEY, health, CACHE_SECONDS)
    except Exception:  # noqa: BLE001 - a cache outage must not fail a check
        pass


def latest_health() -> tuple[dict[str, Any] | None, datetime | None]:
    """The most recent recorded outcome (Django's cache, else the latest snapshot) and when."""
    from .models import StorageSnapshot

    found: dict[str, Any] | None = None
    try:
        found = cache.get(CACHE_KEY)
    except Exception:  # noqa: BLE001
        found = None
    if found is None:
        found = (
            StorageSnapshot.objects.filter(health__isnull=False)
            .order_by("-taken_at")
            .values_list("health", flat=True)
            .first()
        )
    if not found:
        return None, None
    checked = found.get("checked_at")
    try:
        when = datetime.fromisoformat(checked) if checked else None
    except ValueError:
        when = None
    return found, when
