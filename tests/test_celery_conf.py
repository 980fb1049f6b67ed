"""The tests' way of changing Celery settings (tests/celery_conf.py) works on this Celery.

On Celery 5.3-5.6 a plain ``app.conf.result_backend = ...`` loses to settings.py's
``CELERY_RESULT_BACKEND``; every test that changes a setting relies on the helper.
"""

from __future__ import annotations

from testproject.celery import app

from .celery_conf import CeleryConf, celery_settings, task_key_prefix

DATABASE = "retention_admin.backends.RetentionDatabaseBackend"


def test_a_setting_takes_effect_and_comes_back_exactly():
    assert app.conf.result_backend == DATABASE and app.conf.result_extended is True
    before = dict(app.conf.changes)  # after a first read: the configuration is loaded
    with celery_settings(result_backend="django-db", result_extended=False, result_expires=None):
        assert app.conf.result_backend == "django-db"
        assert app.conf["result_backend"] == "django-db"
        assert app.conf.result_extended is False
        assert app.conf.find_value_for_key("extended", "result") is False
        assert app.conf.result_expires is None
    assert app.conf.result_backend == DATABASE and app.conf.result_extended is True
    assert dict(app.conf.changes) == before


def test_the_fixture_sets_attributes_and_items_and_restores_them(celery_conf: CeleryConf):
    assert app.conf.result_serializer == "json"
    before = dict(app.conf.changes)
    celery_conf.result_backend = "django-db"
    celery_conf["result_backend"] = "cache+memory://"
    celery_conf.update(result_serializer="pickle")
    assert (celery_conf.result_backend, app.conf.result_serializer) == ("cache+memory://", "pickle")
    celery_conf.restore()
    assert app.conf.result_backend == DATABASE and app.conf.result_serializer == "json"
    assert dict(app.conf.changes) == before


def test_task_key_prefix_is_what_this_celery_writes():
    prefix = task_key_prefix("ratest:")
    assert prefix in ("ratest:", "ratest:_")  # "_" always on Celery 5.3-5.4
    assert task_key_prefix("ratest") == "ratest_"
