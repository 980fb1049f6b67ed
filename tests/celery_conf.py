"""Set a Celery setting from a test so that it takes effect on every Celery we support.

testproject/celery.py loads the Django settings with ``namespace="CELERY"``, so the
app's configuration holds ``CELERY_RESULT_BACKEND`` (from settings.py) next to any
``result_backend`` a test assigns. Celery 5.3 to 5.6 look a key up under its prefixed
name first, through every layer, so the settings.py value wins and
``app.conf.result_backend = url`` silently does nothing; Celery 5.7 looks in the
changes layer first. Writing the value under both names in the changes layer works on
all of them, and putting back exactly what the changes layer held before (the value,
or no entry) restores the configuration as it was.

Use the ``celery_conf`` fixture (tests/conftest.py) in tests, ``celery_settings(...)``
in helpers and context managers. Never assign to ``app.conf`` directly in tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery

_ABSENT = object()


def _app(app: Celery | None) -> Celery:
    if app is None:
        from testproject.celery import app as project_app

        return project_app
    return app


def _conf(app: Celery) -> Any:
    conf = app.conf
    conf.get("result_backend")  # finalizes a pending configuration (app.conf is replaced)
    return app.conf


def _names(conf: Any, key: str) -> tuple[str, ...]:
    """``key`` and, when the app was configured with a namespace, its prefixed name."""
    prefix = conf.prefix or ""
    if not prefix or key.startswith(prefix):
        return (key,)
    prefixed = prefix + key
    return (key, prefixed.upper() if prefix.isupper() else prefixed.lower())


def set_celery_setting(key: str, value: Any, app: Celery | None = None) -> dict[str, Any]:
    """Set ``key`` (its new lowercase name) to ``value``; return what restore needs."""
    conf = _conf(_app(app))
    saved = {name: conf.changes.get(name, _ABSENT) for name in _names(conf, key)}
    for name in saved:
        conf.changes[name] = value
    return saved


def restore_celery_settings(saved: dict[str, Any], app: Celery | None = None) -> None:
    """Put the changes layer back as ``set_celery_setting`` found it."""
    conf = _conf(_app(app))
    for name, value in saved.items():
        if value is _ABSENT:
            conf.changes.pop(name, None)
        else:
            conf.changes[name] = value


@contextmanager
def celery_settings(app: Celery | None = None, **settings: Any) -> Iterator[Any]:
    """``with celery_settings(result_backend=url, result_expires=None): ...``"""
    saved: list[dict[str, Any]] = []
    try:
        for key, value in settings.items():
            saved.append(set_celery_setting(key, value, app))
        yield _app(app).conf
    finally:
        for entry in reversed(saved):
            restore_celery_settings(entry, app)


class CeleryConf:
    """``conf.result_backend = url`` sets it as set_celery_setting does; ``restore()`` undoes all.

    Reading an attribute or item reads the app's configuration.
    """

    def __init__(self, app: Celery | None = None) -> None:
        object.__setattr__(self, "_app_", _app(app))
        object.__setattr__(self, "_saved", [])

    def set(self, key: str, value: Any) -> None:
        self._saved.append(set_celery_setting(key, value, self._app_))

    def update(self, values: dict[str, Any] | None = None, **more: Any) -> None:
        for key, value in {**(values or {}), **more}.items():
            self.set(key, value)

    def restore(self) -> None:
        while self._saved:
            restore_celery_settings(self._saved.pop(), self._app_)

    def __setattr__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def __getattr__(self, key: str) -> Any:
        return getattr(self._app_.conf, key)

    def __getitem__(self, key: str) -> Any:
        return self._app_.conf[key]


def task_key_prefix(global_keyprefix: str) -> str:
    """What Celery's key-value result backends put before a task id for ``global_keyprefix``.

    Celery 5.3 and 5.4 always join ``global_keyprefix`` and ``celery-task-meta-`` with
    ``_`` (``"app:"`` gives ``app:_celery-task-meta-``); 5.5+ add the ``_`` only when the
    prefix does not already end in one of ``:_-.``. Asked of Celery itself (a backend
    object connects to nothing until used), so tests name the keys this Celery writes.
    """
    from celery.backends.base import KeyValueStoreBackend

    probe = Celery("keyprefix-probe", set_as_current=False)
    probe.conf.result_backend_transport_options = {"global_keyprefix": global_keyprefix}
    prefix = KeyValueStoreBackend(app=probe).task_keyprefix
    text = prefix.decode() if isinstance(prefix, bytes) else str(prefix)
    return text[: -len("celery-task-meta-")]
