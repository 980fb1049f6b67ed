from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from retention_admin.models import RetentionHold, RetentionPolicy, RetentionTier

pytestmark = pytest.mark.django_db


def policy_form(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "reports",
        "enabled": "on",
        "priority": "10",
        "tier": str(RetentionTier.objects.get(slug="daily").pk),
        "task_name_pattern": "reports.*",
        "statuses": ["SUCCESS"],
        "min_result_bytes": "",
        "keep_for": "2 00:00:00",
        "description": "",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def test_changelists_render(admin_client):
    for model in ("retentionpolicy", "retentiontier", "retentionhold", "cleanuprun", "storagesnapshot"):
        response = admin_client.get(reverse(f"admin:retention_admin_{model}_changelist"))
        assert response.status_code == 200, model


def test_create_policy(admin_client):
    response = admin_client.post(reverse("admin:retention_admin_retentionpolicy_add"), policy_form())
    assert response.status_code == 302
    policy = RetentionPolicy.objects.get(name="reports")
    assert policy.statuses == ["SUCCESS"] and policy.keep_for == timedelta(days=2)


@pytest.mark.parametrize(
    "overrides, field, message",
    [
        ({"task_name_pattern": "reports.[abc"}, "task_name_pattern", "never closed"),
        ({"statuses": ["DONE"]}, "statuses", "Select a valid choice"),
        ({"min_result_bytes": "-5"}, "min_result_bytes", "greater than or equal to 0"),
        ({"keep_for": "00:00:30"}, "keep_for", "at least one minute"),
        ({"keep_for": "36526 00:00:00"}, "keep_for", "at most 100 years"),
        ({"keep_for": "two days"}, "keep_for", "Enter a valid duration"),
        ({"priority": "-1"}, "priority", "greater than or equal to 0"),
        ({"name": "failures-7d"}, "name", "already exists"),
    ],
)
def test_bad_policy_input_is_a_form_error_not_a_500(admin_client, overrides, field, message):
    response = admin_client.post(
        reverse("admin:retention_admin_retentionpolicy_add"), policy_form(**overrides)
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert message in " ".join(errors[field])
    assert not RetentionPolicy.objects.filter(name="reports").exists()


def test_empty_keep_for_means_forever(admin_client):
    admin_client.post(reverse("admin:retention_admin_retentionpolicy_add"), policy_form(keep_for=""))
    assert RetentionPolicy.objects.get(name="reports").keep_for is None


def test_priorities_are_edited_in_place_on_the_changelist(admin_client):
    policies = list(RetentionPolicy.objects.order_by("priority"))
    data = {
        "form-TOTAL_FORMS": str(len(policies)),
        "form-INITIAL_FORMS": str(len(policies)),
        "_save": "Save",
    }
    for i, policy in enumerate(policies):
        data[f"form-{i}-id"] = str(policy.pk)
        data[f"form-{i}-priority"] = str(100 - i)  # reverse the order
        if policy.enabled:
            data[f"form-{i}-enabled"] = "on"
    response = admin_client.post(reverse("admin:retention_admin_retentionpolicy_changelist"), data)
    assert response.status_code == 302
    assert list(RetentionPolicy.objects.order_by("priority").values_list("name", flat=True)) == [
        p.name for p in reversed(policies)
    ]


def test_place_hold_records_who(admin_client):
    response = admin_client.post(
        reverse("admin:retention_admin_retentionhold_add"),
        {"task_id": "abc-123", "reason": "incident 7", "until_0": "", "until_1": ""},
    )
    assert response.status_code == 302
    hold = RetentionHold.objects.get()
    assert hold.created_by == admin_client.user and hold.is_active()


def test_runs_are_read_only(admin_client):
    response = admin_client.get(reverse("admin:retention_admin_cleanuprun_add"))
    assert response.status_code == 403
