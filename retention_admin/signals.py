"""Signals other code can connect to.

``threshold_crossed`` is sent when a storage snapshot crosses a threshold set in
``RETENTION_ADMIN`` (``ALERT_ROWS``, ``ALERT_BYTES``, ``ALERT_GROWTH_PER_DAY``,
``ALERT_REDIS_MEMORY``) that the previous snapshot was not over. Keyword
arguments: ``snapshot`` (the ``StorageSnapshot``) and ``alerts`` (a list of dicts
with ``key``, ``value``, ``threshold``, ``estimated`` and ``message``). Sent with
``send_robust``: a receiver that raises is logged and never stops a snapshot.

Example receiver (the README shows where to put it)::

    from django.core.mail import mail_admins
    from django.dispatch import receiver
    from retention_admin.signals import threshold_crossed

    @receiver(threshold_crossed)
    def tell_the_admins(sender, snapshot, alerts, **kwargs):
        mail_admins("Celery result store", "\\n".join(a["message"] for a in alerts))
"""

from __future__ import annotations

from django.dispatch import Signal

threshold_crossed = Signal()
