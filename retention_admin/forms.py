"""Admin forms: validation that turns bad input into form errors, never a 500."""

from __future__ import annotations

from typing import Any

from django import forms

from .models import RetentionPolicy
from .validators import KNOWN_STATES


class RetentionPolicyForm(forms.ModelForm):  # type: ignore[type-arg]
    statuses = forms.MultipleChoiceField(
        choices=[(state, state) for state in KNOWN_STATES],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Celery states this policy applies to; none selected matches any state.",
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
