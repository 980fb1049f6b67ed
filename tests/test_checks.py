from __future__ import annotations

from io import StringIO

import pytest
from django.core import checks
from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from retention_admin import checks as our_checks


def ids(messages: list[checks.CheckMessage]) -> list[str]:
    return [m.id for m in messages if m.id and m.id.startswith("retention_admin.")]


def test_checks_are_registered_and_the_test_project_is_clean(db):
    registered = {check.__name__ for check in checks.registry.registry.get_checks()}
    assert {
        "check_settings", "check_result_backend", "check_beat_scheduler", "check_result_extended",
        "check_pickle", "check_plain_redis", "check_archive_location", "check_stock_redis_backend",
    } <= registered
    assert ids(checks.run_checks()) == []
    assert ids(checks.run_checks(databases=["default"])) == []


DATABASE_CHECKS = {"check_result_backend", "check_archive_location", "check_stock_redis_backend"}


def test_checks_that_read_the_policies_are_database_checks():
    by_name = {check.__name__: check for check in checks.registry.registry.get_checks()}
    for name in DATABASE_CHECKS:
        assert checks.Tags.database in by_name[name].tags, name
    ours = {name for name, check in by_name.items() if check.__module__ == our_checks.__name__}
    # The others read only settings: they still run before every command.
    assert {name for name in ours if checks.Tags.database in by_name[name].tags} == DATABASE_CHECKS


def test_database_checks_query_only_the_databases_they_are_given(db, celery_conf):
    # W001 and E002 both read the policies; each would fire here.
    _archive_policy()
    celery_conf.result_backend = "django-db"
    expected = ["retention_admin.W001", "retention_admin.E002"]
    # Before every command and on runserver Django passes databases=None: no query.
    with CaptureQueriesContext(connection) as queries:
        assert ids(checks.run_checks()) == []
        assert ids(checks.run_checks(databases=[])) == []
        for check in (our_checks.check_result_backend, our_checks.check_archive_location):
            assert check(databases=["elsewhere"]) == []  # the policies are not there
    assert len(queries) == 0
    assert sorted(ids(checks.run_checks(databases=["default"]))) == sorted(expected)
    # A direct call (the dashboard's recommendations) queries the router's database.
    assert ids(our_checks.check_result_backend()) == ["retention_admin.W001"]
    assert ids(our_checks.check_archive_location(databases=None)) == []


def test_check_command_runs_database_checks_only_when_asked(db, celery_conf):
    celery_conf.result_backend = "django-db"
    plain, asked = StringIO(), StringIO()
    call_command("check", stdout=plain, stderr=plain)
    assert "retention_admin.W001" not in plain.getvalue()
    call_command("check", "--database", "default", stdout=asked, stderr=asked)
    assert "retention_admin.W001" in asked.getvalue()


def test_w001_stock_django_db_backend_while_policies_exist(db, celery_conf):
    celery_conf.result_backend = "django-db"
    messages = checks.run_checks(databases=["default"])
    assert ids(messages) == ["retention_admin.W001"]
    assert "including results that enabled retention policies keep" in messages[0].msg


def test_w001_is_silent_without_enabled_policies(db, celery_conf):
    from retention_admin.models import RetentionPolicy

    RetentionPolicy.objects.update(enabled=False)
    celery_conf.result_backend = "django-db"
    assert ids(checks.run_checks(databases=["default"])) == []


def test_w002_stock_database_scheduler(celery_conf):
    celery_conf.beat_scheduler = "django_celery_beat.schedulers:DatabaseScheduler"
    assert ids(our_checks.check_beat_scheduler()) == ["retention_admin.W002"]


def test_w003_result_extended_off(celery_conf):
    celery_conf.result_extended = False
    assert ids(our_checks.check_result_extended()) == ["retention_admin.W003"]


@pytest.mark.parametrize(
    "setting, value",
    [
        ("result_serializer", "pickle"),
        ("result_accept_content", ["json", "pickle"]),
        ("accept_content", ["application/x-python-serialize", "pickle"]),
        # Pickle by its content type, as accept_content also takes it.
        ("accept_content", ["application/x-python-serialize"]),
        ("result_accept_content", ["json", "application/x-python-serialize"]),
        ("result_accept_content", [" Application/X-Python-Serialize "]),
        ("result_serializer", "application/x-python-serialize"),
    ],
)
def test_w004_pickle(celery_conf, setting, value):
    setattr(celery_conf, setting, value)
    assert ids(our_checks.check_pickle()) == ["retention_admin.W004"]


@pytest.mark.parametrize(
    "setting, value",
    [
        ("accept_content", ["json", "application/json"]),
        ("result_accept_content", ["application/x-yaml", "msgpack"]),
        ("result_serializer", "json"),
    ],
)
def test_w004_is_silent_without_pickle(celery_conf, setting, value):
    setattr(celery_conf, setting, value)
    assert ids(our_checks.check_pickle()) == []


@pytest.mark.parametrize(
    "setting, url, flagged",
    [
        ("result_backend", "redis://:secret@cache.internal:6379/0", True),
        ("broker_url", "redis://10.1.2.3:6379/0", True),
        ("broker_url", "redis://127.0.0.1:6379/0", False),
        ("broker_url", "redis://localhost/0", False),
        ("result_backend", "rediss://cache.internal:6379/0", False),
        ("broker_url", "amqp://guest@rabbit.internal//", False),
    ],
)
def test_w005_plain_redis_to_another_host(celery_conf, setting, url, flagged):
    setattr(celery_conf, setting, url)
    messages = our_checks.check_plain_redis()
    assert ids(messages) == (["retention_admin.W005"] if flagged else [])
    assert all("secret" not in m.msg for m in messages)


@pytest.mark.parametrize(
    "value, fragment",
    [
        ([], "must be a dict, not list"),
        ({"BATCH_SIZ": 10}, "unknown key 'BATCH_SIZ'"),
        ({"BATCH_SIZE": 0}, "BATCH_SIZE'] must be None or a whole number of at least 1, not 0"),
        ({"BATCH_SIZE": True}, "BATCH_SIZE'] must be None or a whole number"),
        ({"SLEEP_SECONDS": -1}, "SLEEP_SECONDS'] must be None or a number of seconds, 0 or more"),
        ({"MAX_RUNTIME_SECONDS": 0}, "MAX_RUNTIME_SECONDS'] must be None or a number"),
        ({"FAN_OUT": "yes"}, "FAN_OUT'] must be True or False"),
    ],
)
def test_e001_malformed_setting(value, fragment):
    with override_settings(RETENTION_ADMIN=value):
        messages = our_checks.check_settings()
    assert ids(messages) and set(ids(messages)) == {"retention_admin.E001"}
    assert any(fragment in m.msg for m in messages)


def test_malformed_setting_stops_a_run_with_a_clear_error(db):
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import call_command

    with override_settings(RETENTION_ADMIN={"BATCH_SIZE": "big"}):
        with pytest.raises(ImproperlyConfigured, match="BATCH_SIZE'] must be None or a whole number"):
            call_command("cleanup_results")


def _archive_policy() -> None:
    from retention_admin.models import RetentionPolicy

    RetentionPolicy.objects.filter(name="audit-30d").update(enabled=True, task_name_pattern="audit.*")


def test_e002_archive_policy_without_a_location(db):
    _archive_policy()
    (message,) = our_checks.check_archive_location()
    assert message.id == "retention_admin.E002"
    assert "ARCHIVE_DIR" in message.msg and "audit-30d" in message.msg


def test_e002_archive_directory_missing_or_unwritable(db, tmp_path):
    _archive_policy()
    with override_settings(RETENTION_ADMIN={"ARCHIVE_DIR": str(tmp_path / "missing")}):
        (message,) = our_checks.check_archive_location()
        assert "does not exist" in message.msg
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with override_settings(RETENTION_ADMIN={"ARCHIVE_DIR": str(a_file)}):
        (message,) = our_checks.check_archive_location()
        assert "is a file, not a directory" in message.msg


def test_e002_silent_with_a_usable_directory_or_no_archive_policy(db, tmp_path):
    assert our_checks.check_archive_location() == []
    _archive_policy()
    with override_settings(RETENTION_ADMIN={"ARCHIVE_DIR": str(tmp_path)}):
        assert our_checks.check_archive_location() == []
