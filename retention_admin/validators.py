"""Validators shared by the models, the admin forms, the settings and the commands.

The ranges of the numbers a user can give (``NumberRange``) are defined here once:
a command option and the ``RETENTION_ADMIN`` setting it overrides accept the same
values, and ``checks.py`` and the commands word their refusals from them.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from celery import states
from django.core.exceptions import ValidationError

from .globs import GlobError, validate_glob

MIN_KEEP_FOR = timedelta(minutes=1)
# Longer is "forever" in all but name, and date arithmetic on it overflows.
MAX_KEEP_FOR = timedelta(days=36525)
KNOWN_STATES = sorted(states.ALL_STATES)


def validate_task_name_pattern(value: str) -> None:
    if not value:
        return
    try:
        validate_glob(value)
    except GlobError as exc:
        raise ValidationError(
            "%(pattern)r is not a supported task-name glob: %(reason)s.",
            code="invalid_glob",
            params={"pattern": value, "reason": str(exc)},
        ) from exc


def validate_statuses(value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValidationError("Statuses must be a list of Celery state names.", code="invalid")
    unknown = sorted(set(value) - set(KNOWN_STATES))
    if unknown:
        raise ValidationError(
            "Unknown Celery state(s): %(unknown)s. Known states are %(known)s.",
            code="unknown_state",
            params={"unknown": ", ".join(unknown), "known": ", ".join(KNOWN_STATES)},
        )


def validate_keep_for(value: timedelta | None) -> None:
    if value is not None and value < MIN_KEEP_FOR:
        raise ValidationError(
            "Keep results for at least one minute, or leave empty to keep them forever.",
            code="keep_for_too_short",
        )
    if value is not None and value > MAX_KEEP_FOR:
        raise ValidationError(
            "Keep results for at most 100 years (36525 days), or leave empty to keep them forever.",
            code="keep_for_too_long",
        )


# What is wrong with a number, for the system check ids (checks.py): a wrong type
# or a value under the minimum (E001, as it always was), not finite (E003), over
# the maximum (E004).
Fault = Literal["invalid", "not_finite", "too_large"]


def _plain(number: float) -> str:
    # As a user would type it back (no separators, no ".0"): messages are copied
    # into settings files and shells.
    return str(int(number)) if float(number).is_integer() else repr(number)


@dataclass(frozen=True)
class NumberRange:
    """The numbers an option or setting accepts, and how to say so."""

    low: float
    high: float | None  # None: no maximum (only finite numbers, still)
    whole: bool = False
    low_excluded: bool = False  # "above 0" rather than "0 or more"
    unit: str = ""  # "seconds", "days", "bytes": said in sentences
    gloss: str = ""  # the maximum in words, "7 days"

    def contains(self, value: float) -> bool:
        above = value > self.low if self.low_excluded else value >= self.low
        return above and (self.high is None or value <= self.high)

    @property
    def noun(self) -> str:
        kind = "a whole number" if self.whole else "a number"
        return f"{kind} of {self.unit}" if self.unit else kind

    def minimum(self) -> str:
        """``a whole number of at least 1``: what a value under the minimum is told."""
        if self.low_excluded:
            return f"{self.noun} above {_plain(self.low)}"
        bound = "0 or more" if self.low == 0 else f"at least {_plain(self.low)}"
        return f"{self.noun}, {bound}" if self.unit or self.low == 0 else f"{self.noun} of {bound}"

    def __str__(self) -> str:
        """The whole range: ``a number of seconds from 0 to 3600 (1 hour)``."""
        if self.high is None:
            return self.minimum()
        gloss = f" ({self.gloss})" if self.gloss else ""
        if self.low_excluded:
            return f"{self.noun} above {_plain(self.low)} and at most {_plain(self.high)}{gloss}"
        return f"{self.noun} from {_plain(self.low)} to {_plain(self.high)}{gloss}"

    @property
    def span(self) -> str:
        """``1 to 100000``, for an option's --help."""
        if self.high is None:
            return f"above {_plain(self.low)}" if self.low_excluded else f"{_plain(self.low)} or more"
        if self.low_excluded:
            return f"above {_plain(self.low)}, at most {_plain(self.high)}"
        return f"{_plain(self.low)} to {_plain(self.high)}"

    def typed(self, value: Any) -> bool:
        """A finite number of the right kind (whole when it must be); bools are not numbers here."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        return isinstance(value, int) or not self.whole

    def fault(self, value: Any) -> Fault | None:
        """What is wrong with ``value``, or None when it is accepted."""
        if not self.typed(value):
            non_finite = isinstance(value, float) and not math.isfinite(value)
            return "not_finite" if non_finite else "invalid"
        if self.high is not None and value > self.high:
            return "too_large"
        return None if self.contains(value) else "invalid"

    def setting_problem(self, name: str, value: Any, *, optional: bool = False) -> tuple[Fault, str] | None:
        """``RETENTION_ADMIN['X'] must be ...``: the fault and its sentence, or None."""
        if optional and value is None:
            return None
        fault = self.fault(value)
        if fault is None:
            return None
        either = "None or " if optional else ""
        # A number under the minimum is told the minimum; anything else the whole range.
        expected = self.minimum() if self.typed(value) and fault == "invalid" else str(self)
        return fault, f"{name} must be {either}{expected}, not {value!r}."

    def option_problem(self, option: str, value: Any) -> str | None:
        """``--sleep must be 0 or more seconds, not -1.0.``, or None when ``value`` is accepted.

        A value of the right kind is told the bound it crossed; the unit is left
        out when the option's name says it (``--days``, ``--grace-days``).
        """
        fault = self.fault(value)
        if fault is None:
            return None
        if not self.typed(value):
            return f"{option} must be {self}, not {value!r}."
        singular = self.unit.removesuffix("s")
        unit = f" {self.unit}" if self.unit and singular not in option else ""
        if fault == "too_large":
            assert self.high is not None
            gloss = f" ({self.gloss})" if self.gloss else ""
            return f"{option} must be at most {_plain(self.high)}{unit}{gloss}, not {value!r}."
        if self.low_excluded:
            return f"{option} must be more than {_plain(self.low)}{unit}, not {value!r}."
        return f"{option} must be {_plain(self.low)} or more{unit}, not {value!r}."


def finite_float(text: str) -> float:
    """argparse ``type=`` for every fractional option: float() reads "nan" and "inf",
    which no option means (and which compare False with every bound)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number.") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a finite number; NaN and infinity are not accepted."
        )
    return value


DAY_SECONDS = 86_400
# A batch is one DELETE transaction: its row locks (and on SQLite the database's
# only write lock) are held until it commits. The benchmark's 10,000-row windows
# already held transactions for up to 385 ms; 100,000 rows means seconds-long
# transactions, which is the stock backend_cleanup's failure mode this app avoids.
BATCH_SIZE = NumberRange(1, 100_000, whole=True)
# The pause is meant in hundredths of a second (it lets SQLite's other writers in,
# see conf.DATABASE_DEFAULTS); an hour between batches is a run that never ends.
SLEEP_SECONDS = NumberRange(0, 3600, unit="seconds", gloss="1 hour")
# A run holds its scopes' leases while it runs, so every scheduled run of them
# is skipped meanwhile; more than a week is no limit in practice.
MAX_RUNTIME_SECONDS = NumberRange(0, 7 * DAY_SECONDS, low_excluded=True, unit="seconds", gloss="7 days")
# --days: as long as a policy can keep results (MAX_KEEP_FOR).
KEEP_DAYS = NumberRange(1, MAX_KEEP_FOR.days, whole=True, unit="days", gloss="100 years")
# Restore grace: the same 100 years. Longer is "forever" in all but name (a hold
# says that better), and far beyond it the grace's end date overflows (1e308 did).
RESTORE_GRACE_DAYS = NumberRange(0, MAX_KEEP_FOR.days, unit="days", gloss="100 years")
# check_result_backend --timeout: a probe that needs more than five minutes has
# failed; a larger value only makes a monitoring job hang.
BACKEND_TIMEOUT_SECONDS = NumberRange(0, 300, low_excluded=True, unit="seconds", gloss="5 minutes")
