"""The storage banner on the app index: thresholds crossed and the link to the dashboard."""

from __future__ import annotations

from typing import Any

from django import template
from django.db import DatabaseError
from django.urls import reverse

register = template.Library()


@register.inclusion_tag("admin/retention_admin/storage_banner.html", takes_context=True)
def storage_banner(context: dict[str, Any]) -> dict[str, Any]:
    """One query: the thresholds the latest measured snapshot is over."""
    from ..alerts import current_alerts

    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.has_perm("retention_admin.view_storagesnapshot"):
        return {"show": False}
    try:
        _snapshot, alerts = current_alerts()
    except DatabaseError:
        alerts = []
    return {
        "show": True,
        "alerts": alerts,
        "url": reverse("admin:retention_admin_storagesnapshot_dashboard"),
    }
