"""The matcher's SQL filter and Python predicate agree (property tests, on every database)."""

from __future__ import annotations

import fnmatch
import re
import string
from datetime import timedelta

import pytest
from django.db import connection
from django_celery_results.models import TaskResult
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retention_admin.globs import GlobError, anchored, glob_to_regex
from retention_admin.matching import Governance, Rule, row_bytes, row_bytes_expression

STATES = ["SUCCESS", "FAILURE", "PENDING", "STARTED", "RETRY", "REVOKED"]
# Task names are free text: dotted identifiers, - : @ /, non-ASCII, and whitespace
# (a newline or carriage return is where SQL regexes and fnmatch used to disagree).
NAME_CHARS = string.ascii_letters + string.digits + "._-:@/éß \t\n\r%\\$^"
names = st.one_of(st.none(), st.text(NAME_CHARS, min_size=0, max_size=12))
pattern_atoms = st.one_of(
    st.sampled_from(["*", "?", "[a-c]", "[!x-z]", "[0-9_]", "[.-]", ".", "-", "é"]),
    st.text(string.ascii_lowercase + ".", min_size=1, max_size=3),
)
patterns = st.one_of(st.just(""), st.lists(pattern_atoms, min_size=1, max_size=5).map("".join))
rules = st.builds(
    Rule,
    name=st.text(string.ascii_lowercase, min_size=1, max_size=6),
    priority=st.integers(0, 5),
    task_name_pattern=patterns,
    statuses=st.lists(st.sampled_from(STATES), max_size=3, unique=True).map(tuple),
    min_result_bytes=st.one_of(st.none(), st.integers(0, 40)),
)
rows = st.lists(
    st.tuples(names, st.sampled_from(STATES), st.one_of(st.none(), st.text("aé€x ", max_size=20))),
    min_size=1,
    max_size=12,
)
db_settings = settings(
    max_examples=60, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def insert(rows_: list[tuple[str | None, str, str | None]]) -> dict[int, tuple[str | None, str, str | None]]:
    TaskResult.objects.all().delete()
    TaskResult.objects.bulk_create(
        TaskResult(task_id=f"t{i}", task_name=name, status=status, result=result,
                   content_type="application/json", content_encoding="utf-8")
        for i, (name, status, result) in enumerate(rows_)
    )
    # pk -> the generated row, read back so that what is compared is what was stored.
    return {
        pk: rows_[int(task_id[1:])] for pk, task_id in TaskResult.objects.values_list("pk", "task_id")
    }


@pytest.mark.django_db
@db_settings
@given(rule=rules, data=rows)
def test_sql_filter_and_python_predicate_agree(rule, data):
    stored = insert(data)
    in_sql = set(TaskResult.objects.filter(rule.q()).values_list("pk", flat=True))
    in_python = {
        pk for pk, (name, status, result) in stored.items()
        if rule.matches(task_name=name, status=status, result=result)
    }
    assert in_sql == in_python, connection.vendor


@pytest.mark.django_db
@db_settings
@given(policy_rules=st.lists(rules, min_size=1, max_size=4, unique_by=lambda r: r.name), data=rows)
def test_governance_in_sql_and_python_agree(policy_rules, data):
    stored = insert(data)
    governance = Governance(policy_rules)
    python = {
        pk: governance.governing(task_name=name, status=status, result=result)
        for pk, (name, status, result) in stored.items()
    }
    for rule in governance.rules:
        in_sql = set(TaskResult.objects.filter(governance.governed_q(rule)).values_list("pk", flat=True))
        assert in_sql == {pk for pk, governing in python.items() if governing == rule}
    remainder = set(TaskResult.objects.filter(governance.remainder_q()).values_list("pk", flat=True))
    assert remainder == {pk for pk, governing in python.items() if governing is None}


@pytest.mark.django_db
def test_row_bytes_sql_and_python_agree():
    TaskResult.objects.create(task_id="a", result='"é€"', traceback="Tb…", meta=None,
                              task_args="[1]", task_kwargs="{}", content_type="x", content_encoding="y")
    row = TaskResult.objects.get()
    in_sql = TaskResult.objects.annotate(size=row_bytes_expression()).get().size
    assert in_sql == row_bytes(row) == 200 + 7 + 5 + 3 + 2


@given(pattern=patterns, name=st.text(NAME_CHARS, max_size=12))
def test_translated_regex_means_what_fnmatch_means(pattern, name):
    regex = anchored(pattern, "python")
    assert bool(re.search(regex, name)) == fnmatch.fnmatchcase(name, pattern)


@pytest.mark.parametrize(
    "name, matches",
    [
        ("critical.x", True),
        ("critical.x\ny", True),
        ("critical.\n", True),
        ("critical.x\r", True),
        ("critical\n.x", False),
        ("x\ncritical.y", False),
        (" critical.y", False),
        (None, False),
    ],
)
def test_names_with_line_breaks_match_as_fnmatch_says_on_every_database(db, make_result, name, matches):
    make_result(task_id="it", task_name=name)
    rule = Rule(name="r", priority=1, task_name_pattern="critical.*")
    assert TaskResult.objects.filter(rule.q()).exists() is matches
    assert TaskResult.objects.exclude(rule.q()).exists() is not matches


@pytest.mark.parametrize(
    "pattern, reason",
    [
        ("reports.[abc", "never closed"),
        ("reports.[]", "empty"),
        ("reports.[!]", "empty"),
        ("a]b", "closes no"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace or control"),
        ("[z-a]", "not a range"),
        ("[a-Z]", "not a range"),
        ("[a-c-e]", "'-' stands for itself only first or last"),
        ("[a^b]", "cannot be used inside"),
        ("x" * 256, "longer than 255"),
    ],
)
def test_unsupported_globs_are_refused_with_a_reason(pattern, reason):
    with pytest.raises(GlobError, match=re.escape(reason)):
        glob_to_regex(pattern)


def test_case_sensitive_on_every_database(db, make_result):
    make_result(task_id="upper", task_name="Reports.build")
    make_result(task_id="lower", task_name="reports.build")
    rule = Rule(name="r", priority=1, task_name_pattern="reports.*")
    assert set(TaskResult.objects.filter(rule.q()).values_list("task_id", flat=True)) == {"lower"}


def test_keep_for_and_days_cutoffs():
    from django.utils import timezone

    now = timezone.now()
    assert Rule(name="f", priority=1).cutoff(now) is None
    assert Rule(name="f", priority=1).cutoff(now, days=3) is None  # forever stays forever
    assert Rule(name="d", priority=1, keep_for=timedelta(hours=6)).cutoff(now) == now - timedelta(hours=6)
    assert Rule(name="d", priority=1, keep_for=timedelta(hours=6)).cutoff(now, days=2) == now - timedelta(days=2)
