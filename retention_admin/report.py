"""Human-readable rendering of a run report (the JSON object in the README)."""

from __future__ import annotations

from typing import Any

from django.template.defaultfilters import filesizeformat


def human_bytes(value: int) -> str:
    return str(filesizeformat(value)).replace("\xa0", " ")


def format_report(report: dict[str, Any], notes: list[str] | None = None) -> str:
    dry = report["dry_run"]
    header = ("Policy", "Tier", "Matched" if not dry else "Would go", "Deleted", "Archived", "Size")
    rows: list[tuple[str, ...]] = [
        (
            p["name"], p["tier"], str(p["matched"]), str(p["deleted"]), str(p["archived"]),
            human_bytes(p["bytes"]),
        )
        for p in report["policies"]
    ]
    unmatched = report["unmatched"]
    totals = report["totals"]
    # The JSON keeps the documented shape (no bytes for the remainder): derive them.
    redis = report.get("redis")
    unmatched_bytes = totals["bytes"] - sum(p["bytes"] for p in report["policies"])
    if redis:
        unmatched_bytes -= redis["totals"]["bytes"]
    rows.append(
        ("(unmatched: result_expires)", "-", str(unmatched["matched"]), str(unmatched["deleted"]),
         "-", human_bytes(unmatched_bytes))
    )
    rows.append(
        ("Total", "", str(totals["matched"]), str(totals["deleted"]), str(totals["archived"]),
         human_bytes(totals["bytes"]))
    )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        cells = [
            cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        return "  ".join(cells).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in rows[:-1]]
    out.append("  ".join("-" * w for w in widths))
    out.append(line(rows[-1]))
    if not dry:  # a dry run's would-be counts are in the notes
        out.append(
            f"Group results deleted: {report['groups']['deleted']}; "
            f"chord counters deleted: {report['chord_counters']['deleted']}"
        )
    if redis:
        out += format_redis(redis, dry)
    for note in notes or []:
        out.append(f"Note: {note}")
    kind = "Dry run" if dry else "Run"
    out.append(
        f"{kind} #{report['run']} {report['status']} in {report['duration_s']:.1f} s"
        + (" (nothing was changed)" if dry else "")
    )
    return "\n".join(out)


def format_redis(redis: dict[str, Any], dry: bool) -> list[str]:
    """The Redis part of a run (report["redis"]), one line per policy."""
    out = [
        f"Redis {redis['server']}: {redis['scanned']} keys scanned, {redis['unreadable']} unreadable, "
        f"{redis['held']} held"
    ]
    scopes = [(p["name"], p) for p in redis["policies"]]
    if redis.get("unmatched") is not None:
        scopes.append(("(unmatched: result_expires)", redis["unmatched"]))
    for name, c in scopes:
        out.append(
            f"  {name}: {'would go' if dry else 'matched'} {c['matched']}, deleted {c['deleted']}, "
            f"archived {c['archived']}, {human_bytes(c['bytes'])}; wrong TTL {c['ttl_wrong']}, "
            f"fixed {c['ttl_fixed']}"
        )
    if redis.get("error"):
        out.append(f"  Redis failed: {redis['error']}")
    return out
