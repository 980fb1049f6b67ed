"""System checks: every misconfiguration that makes this app lose or keep the wrong results.

Ids are stable and listed in the README.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Final
from urllib.parse import urlsplit

from celery import Celery
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import DatabaseError, router

from . import conf
from .celery_config import get_app

RETENTION_BACKEND = "retention_admin.backends.RetentionDatabaseBackend"
RETENTION_SCHEDULER = "retention_admin.schedulers.RetentionScheduler"
STOCK_DB_BACKENDS = {
    "django-db",
    "django_celery_results.backends.database:DatabaseBackend",
    "django_celery_results.backends.database.DatabaseBackend",
    "django_celery_results.backends:DatabaseBackend",
    "django_celery_results.backends.DatabaseBackend",
}
STOCK_SCHEDULERS = {
    "django",
    "django_celery_beat.schedulers:DatabaseScheduler",
    "django_celery_beat.schedulers.DatabaseScheduler",
}
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
# Pickle by name and by content type: accept_content takes either.
PICKLE = {"pickle", "application/x-python-serialize"}
# RETENTION_ADMIN problems by kind (conf.setting_problems): E001 kept its meaning
# (malformed, wrong type, under the minimum); the kinds added later got new ids.
SETTING_IDS = {
    "invalid": "retention_admin.E001",
    "not_finite": "retention_admin.E003",
    "too_large": "retention_admin.E004",
}


class _Routed:
    def __repr__(self) -> str:
        return "ROUTED"


# ``databases`` left out: a direct call, not Django's check framework (which always
# passes it, None unless `check --database` or migrate asked), such as the
# dashboard's recommendations. Such a caller may query the router's database.
ROUTED: Final = _Routed()
Databases = Collection[str] | None | _Routed


def _policy_database(databases: Databases) -> str | None:
    """The alias to read policies from, or None when this call may not query it."""
    from .models import RetentionPolicy

    alias = router.db_for_read(RetentionPolicy)
    if isinstance(databases, _Routed) or (databases and alias in databases):
        return alias
    return None


def _policies_exist(using: str) -> bool:
    from .models import RetentionPolicy

    try:
        return RetentionPolicy.objects.using(using).filter(enabled=True).exists()
    except DatabaseError:
        # Tables not migrated yet or database down: assume the seeded policies.
        return True


def _app() -> Celery:
    return get_app()


@register(Tags.compatibility)
def check_settings(**kwargs: Any) -> list[CheckMessage]:
    value = getattr(settings, conf.SETTING_NAME, {})
    return [
        Error(message, hint="See the settings reference in the README.", id=SETTING_IDS[fault])
        for fault, message in conf.setting_problems(value)
    ]


# Checks that read the policies are database checks: Django runs them for
# `check --database ALIAS` and migrate, not before every command and runserver.
@register(Tags.compatibility, Tags.database)
def check_result_backend(
    app_configs: Any = None, databases: Databases = ROUTED, **kwargs: Any
) -> list[CheckMessage]:
    backend = _app().conf.result_backend
    if not (isinstance(backend, str) and backend in STOCK_DB_BACKENDS):
        return []
    using = _policy_database(databases)
    if using is not None and _policies_exist(using):
        return [
            Warning(
                f"CELERY_RESULT_BACKEND is {backend!r}: celery.backend_cleanup will delete "
                "every result older than result_expires, including results that enabled "
                "retention policies keep.",
                hint=f"Set CELERY_RESULT_BACKEND = {RETENTION_BACKEND!r}.",
                id="retention_admin.W001",
            )
        ]
    return []


@register(Tags.compatibility)
def check_beat_scheduler(**kwargs: Any) -> list[CheckMessage]:
    scheduler = _app().conf.beat_scheduler
    if isinstance(scheduler, str) and scheduler in STOCK_SCHEDULERS:
        return [
            Warning(
                f"CELERY_BEAT_SCHEDULER is {scheduler!r}: django-celery-beat resets the "
                "celery.backend_cleanup schedule to 04:00 every time beat starts, undoing "
                "edits made in the admin.",
                hint=f"Set CELERY_BEAT_SCHEDULER = {RETENTION_SCHEDULER!r}.",
                id="retention_admin.W002",
            )
        ]
    return []


@register(Tags.compatibility)
def check_result_extended(**kwargs: Any) -> list[CheckMessage]:
    if not _app().conf.result_extended:
        return [
            Warning(
                "CELERY_RESULT_EXTENDED is off: results are stored without their task name, "
                "so policies with a task name pattern match nothing and those results fall "
                "to the next policy or to result_expires.",
                hint="Set CELERY_RESULT_EXTENDED = True.",
                id="retention_admin.W003",
            )
        ]
    return []


@register(Tags.security)
def check_pickle(**kwargs: Any) -> list[CheckMessage]:
    app_conf = _app().conf
    accept = app_conf.result_accept_content or app_conf.accept_content or []
    if isinstance(accept, str):
        accept = [accept]  # a lone name: Celery would read it as one
    named = [app_conf.result_serializer, *accept]
    if any(str(item).strip().lower() in PICKLE for item in named if item is not None):
        return [
            Warning(
                "Celery results are (or may be) serialized with pickle: reading, explaining, "
                "archiving or restoring a stored result can execute code chosen by whoever "
                "could write to the result store.",
                hint="Use CELERY_RESULT_SERIALIZER = 'json' and drop 'pickle' from "
                "CELERY_RESULT_ACCEPT_CONTENT.",
                id="retention_admin.W004",
            )
        ]
    return []


def _insecure_redis_host(url: Any) -> str | None:
    if not isinstance(url, str):
        return None
    for part in url.split(";"):
        scheme, _, rest = part.strip().partition("://")
        if not rest:
            continue
        if scheme.rsplit("+", 1)[-1] not in {"redis", "sentinel"}:
            continue
        host = urlsplit(f"redis://{rest}").hostname or "localhost"
        if host not in LOOPBACK_HOSTS and not host.startswith("127."):
            return host
    return None


@register(Tags.security)
def check_plain_redis(**kwargs: Any) -> list[CheckMessage]:
    app_conf = _app().conf
    messages: list[CheckMessage] = []
    for setting, url in (
        ("CELERY_RESULT_BACKEND", app_conf.result_backend),
        ("CELERY_BROKER_URL", app_conf.broker_url),
    ):
        host = _insecure_redis_host(url)
        if host:
            messages.append(
                Warning(
                    f"{setting} uses plain redis:// to {host}, which is not loopback: task "
                    "results and their arguments travel unencrypted.",
                    hint="Use rediss:// (TLS) for a Redis server on another host.",
                    id="retention_admin.W005",
                )
            )
    return messages


@register(Tags.compatibility, Tags.database)
def check_archive_location(
    app_configs: Any = None, databases: Databases = ROUTED, **kwargs: Any
) -> list[CheckMessage]:
    """Archive policies with nowhere to archive would keep their results forever, silently."""
    from .archive import ArchiveError, configured_location
    from .models import RetentionPolicy

    using = _policy_database(databases)
    if using is None:
        return []
    try:
        names = list(
            RetentionPolicy.objects.using(using).filter(enabled=True, archive=True).values_list("name", flat=True)
        )
    except DatabaseError:
        return []  # not migrated yet: nothing to archive
    if not names:
        return []
    try:
        configured_location()
    except ArchiveError as exc:
        return [
            Error(
                f"{exc} Enabled archive policies ({', '.join(sorted(names))}) cannot run: "
                "their due results are kept and every run fails until this is fixed.",
                hint="See 'Archives' in the README.",
                id="retention_admin.E002",
            )
        ]
    except Exception as exc:  # noqa: BLE001 - a storage that cannot even be built
        return [
            Error(
                f"The 'retention_archive' storage cannot be used: {exc}",
                hint="Check its BACKEND and OPTIONS in STORAGES.",
                id="retention_admin.E002",
            )
        ]
    return []


@register(Tags.compatibility, Tags.database)
def check_stock_redis_backend(
    app_configs: Any = None, databases: Databases = ROUTED, **kwargs: Any
) -> list[CheckMessage]:
    """Celery's own Redis backend gives every result result_expires, whatever its policy."""
    from celery.app.backends import by_url

    try:
        from celery.backends.redis import RedisBackend
    except ImportError:  # no redis-py: Celery could not run a Redis result backend anyway
        return []

    from .backends import RetentionRedisMixin

    backend = _app().conf.result_backend
    try:
        cls, _url = by_url(backend, _app().loader)
    except Exception:  # noqa: BLE001 - a backend Celery cannot load is Celery's error to report
        return []
    if not (isinstance(cls, type) and issubclass(cls, RedisBackend)) or issubclass(cls, RetentionRedisMixin):
        return []
    using = _policy_database(databases)
    if using is None or not _policies_exist(using):
        return []
    scheme = str(backend).partition("://")[0]
    ours = "RetentionSentinelBackend" if scheme.rsplit("+", 1)[-1] == "sentinel" else "RetentionRedisBackend"
    return [
        Warning(
            f"CELERY_RESULT_BACKEND is Celery's own {scheme}:// backend: every result gets "
            "result_expires as its TTL when it is stored, so results that enabled retention "
            "policies keep longer expire early, and keep-forever and archive policies cannot keep them.",
            hint=f"Set CELERY_RESULT_BACKEND = \"retention_admin.backends.{ours}+{scheme}://...\" "
            "(same URL). cleanup_results --backend redis fixes the TTLs of results already stored.",
            id="retention_admin.W006",
        )
    ]

