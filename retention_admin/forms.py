"""Admin forms: validation that turns bad input into form errors, never a 500."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.admin.widgets import AdminSplitDateTime
from django.utils import timezone

from . import conf
from .models import RetentionPolicy
from .validators import KNOWN_STATES


class RetentionPolicyForm(forms.ModelForm):  # type: ignore[type-arg]
    statuses = forms.MultipleChoiceField(
        choices=[(state, state) for state in KNOWN_STATES],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Celery states this policy applies to; none selected matches any state.",
    )
    # Hidden until saving would make many results due at once (see _post_clean).
    confirm_due = forms.BooleanField(
        label="Yes, make them due",
        required=False,
        widget=forms.HiddenInput,
    )

    class Meta:
        model = RetentionPolicy
        fields = [
            "name", "enabled", "priority", "tier", "task_name_pattern", "statuses",
            "min_result_bytes", "keep_for", "archive", "description",
        ]

    def clean_statuses(self) -> list[str]:
        value: list[str] = self.cleaned_data.get("statuses") or []
        return sorted(set(value))

    def clean_task_name_pattern(self) -> Any:
        return (self.cleaned_data.get("task_name_pattern") or "").strip()

    # False where the form has no room for the confirmation box (a tier's inline).
    can_confirm = True

    def _post_clean(self) -> None:
        super()._post_clean()
        if self.errors or (self.can_confirm and self.cleaned_data.get("confirm_due")):
            return
        problem = many_newly_due(self)
        if problem is None:
            return
        if not self.can_confirm:
            self.add_error(None, f"{problem} Make this change on the policy's own page, where you can confirm it.")
            return
        self.fields["confirm_due"].widget = forms.CheckboxInput()
        self.fields["confirm_due"].help_text = "Tick to save anyway; the tier's next run deletes (or archives) them."
        self.add_error("confirm_due", f"{problem} Tick “Yes, make them due” to save anyway.")


def many_newly_due(form: forms.ModelForm) -> str | None:  # type: ignore[type-arg]
    """Why saving ``form`` needs confirmation (too many newly due results), or None."""
    threshold = conf.get_config().confirm_due_over
    if threshold is None:
        return None
    policy = form.instance
    if policy.pk is not None and not form.has_changed():
        return None  # an unchanged policy makes nothing newly due
    from .previews import newly_due

    original = None
    if policy.pk is not None:
        original = RetentionPolicy.objects.filter(pk=policy.pk).values_list("name", flat=True).first()
    count = newly_due(policy, original, cap=threshold)
    if count.timed_out:
        how_many = "results due at once that could not be counted in time (possibly many)"
    elif count.more:
        how_many = f"more than {threshold:,} results due at once"
        if count.estimate:
            how_many += f" (about {count.estimate:,} by the planner's estimate)"
    else:
        return None
    return (
        f"Saving {policy.name!r} makes {how_many}; RETENTION_ADMIN['CONFIRM_DUE_OVER'] is {threshold:,}."
    )


class RetentionPolicyInlineForm(RetentionPolicyForm):
    can_confirm = False


class PolicyListEditForm(forms.ModelForm):  # type: ignore[type-arg]
    """A changelist row (priority, enabled): too many newly due results are refused here.

    A row has no room for a confirmation box, so the operator is sent to the
    policy's own page, where saving can be confirmed.
    """

    class Meta:
        model = RetentionPolicy
        fields = ["priority", "enabled"]

    def _post_clean(self) -> None:
        super()._post_clean()
        if self.errors:
            return
        problem = many_newly_due(self)
        if problem is not None:
            self.add_error(None, f"{problem} Make this change on the policy's own page, where you can confirm it.")


class PlaceHoldForm(forms.Form):
    """The reason and optional end of holds placed from the TaskResult changelist."""

    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=2000,
        error_messages={"required": "Say why these results are held."},
    )
    until = forms.SplitDateTimeField(
        required=False,
        widget=AdminSplitDateTime,
        help_text="Empty holds until lifted.",
    )

    def clean_reason(self) -> str:
        reason = (self.cleaned_data.get("reason") or "").strip()
        if not reason:
            raise forms.ValidationError("Say why these results are held.")
        return reason

    def clean_until(self) -> Any:
        until = self.cleaned_data.get("until")
        if until is not None and until <= timezone.now():
            raise forms.ValidationError("The end of a hold must be in the future.")
        return until


class ExplainForm(forms.Form):
    task_id = forms.CharField(max_length=255, label="Task id", error_messages={"required": "Enter a task id."})

    def clean_task_id(self) -> str:
        value = (self.cleaned_data.get("task_id") or "").strip()
        if not value:
            raise forms.ValidationError("Enter a task id.")
        return value
