"""Redis: the SCAN enforcer that brings result keys in line with their policies, and Redis figures.

The enforcer walks ``celery-task-meta-*`` (with ``global_keyprefix``) by ``SCAN``,
never ``KEYS``, reading each batch's values and TTLs a couple of batches ahead of
the judging (sent before the replies are read: Redis works while Python
judges). For every key in the run's scope it applies the verdict of
``redis_policies`` (the same one the backend uses when it writes): a due key is
deleted (archive policies: written to an archive batch first), a key without a TTL
or with one that ends elsewhere than its policy says gets the right expiry, and
keep-forever, archive and kept keys lose a TTL they should not have. What is kept
(holds, restore grace) is asked from ``keep.kept_task_ids`` once per batch of
keys judged (about ``keep.ID_CHUNK``), never loaded whole. Every change is made
by a small Lua script only if the key still holds the value that was judged (the
value itself is sent back and compared; archive deletions, made long after the
read, compare its SHA-1), so a result stored again meanwhile is left to the next
run. Each command touches a bounded number of keys, so Redis never blocks for
long.

``redis_figures`` gives snapshots and the dashboard memory and key counts, within
a hard time limit.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone as dt_timezone
from typing import Any

from celery import states
try:
    from celery.backends.redis import RedisBackend
except ImportError:  # no redis-py (the [redis] extra): no Redis result backend to clean
    RedisBackend = None  # type: ignore[assignment,misc]

from . import archive, conf, keep
from .celery_config import get_app
from .matching import Governance, Rule
from .models import ArchiveBatch, CleanupRun, RetentionPolicy
from .redis_policies import PolicyTable, SizeDependent, lifetime

try:
    # Optional (the "redis" extra): parses a result's JSON ~4x faster than the
    # standard library, which was the largest part of judging a key.
    from orjson import loads as fast_loads
except ImportError:  # pragma: no cover - the standard library parser does the same, slower
    fast_loads = json.loads

try:
    # redis-py packs each argument in Python first; the bulk reads and changes
    # send thousands of arguments a call, so they pack with hiredis directly.
    from hiredis import pack_command as hiredis_pack
except ImportError:  # pragma: no cover - redis-py's packer does the same, slower
    hiredis_pack = None

# Seconds per command when Celery's redis_socket_timeout is not set: a stalled
# server fails the Redis part of a run instead of hanging it.
DEFAULT_SOCKET_TIMEOUT = 30.0
# An expiry within this of the policy's is left alone (the writer's SETEX and the
# result's date_done are a few milliseconds apart).
TOLERANCE_MS = 5000
# Keys and bytes per Lua call: each call compares (or hashes) the values it
# checks, so both are bounded to keep every call far below SLOWLOG's default 10 ms.
MUTATE_KEYS = 100
MUTATE_BYTES = 256 << 10
# Keys per read (values and TTLs of part of a SCAN batch, in one round trip).
READ_KEYS = 250
# Reads sent ahead of the judging, and batches of changes sent before the reply
# to the first is read: enough to keep Redis busy, few enough to keep memory flat.
READ_AHEAD = 2
CHANGES_AHEAD = 3
# Archive records handed to the archive writer at a time.
ARCHIVE_LINES = 500
# redis_figures: keys inspected before the counts are extrapolated from the sample.
FIGURES_KEY_BUDGET = 100_000

# The TTLs of a batch of keys in one command (their values come from one MGET
# beside it, which reads a key of another type as missing): packing and parsing
# two commands is far cheaper in redis-py than a pipeline of one or two per key,
# and MGET costs Redis less than a GET per key from Lua.
PTTL_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('PTTL', key)
end
return out
"""

# How many of the given keys have no TTL (snapshots and the dashboard).
COUNT_PERSISTENT_LUA = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('PTTL', key) == -1 then n = n + 1 end
end
return n
"""

# A guarded change per key: UNLINK ('D'), PERSIST ('P') or PEXPIREAT (a time),
# made only if the key still holds the value that was judged. ``{guard}`` compares
# the value read now with ARGV[2 * i - 1].
_GUARDED_CHANGE_LUA = """
local out = {{}}
for i, key in ipairs(KEYS) do
  local value = redis.pcall('GET', key)
  local done = 0
  if {guard} then
    local op = ARGV[2 * i]
    if op == 'D' then
      done = redis.call('UNLINK', key)
    elseif op == 'P' then
      redis.call('PERSIST', key)
      done = 1
    else
      done = redis.call('PEXPIREAT', key, op)
    end
  end
  out[i] = done
end
return out
"""

# Guarded by the value itself, sent back with the change: comparing two strings
# costs Redis far less than hashing one (Lua interns strings, so equal values are
# one string).
CHANGE_LUA = _GUARDED_CHANGE_LUA.format(guard="value == ARGV[2 * i - 1]")

# Guarded by the SHA-1 of the value: for archive deletions, which come after a
# whole batch is written and would otherwise keep its values in memory.
MUTATE_LUA = _GUARDED_CHANGE_LUA.format(
    guard="type(value) == 'string' and redis.sha1hex(value) == ARGV[2 * i - 1]"
)


class RedisUnavailable(Exception):
    """Redis could not be used; the message names the server, never the password."""


def send(connection: Any, *args: Any) -> None:
    """Send one command on ``connection`` without reading its reply."""
    if hiredis_pack is not None:
        connection.send_packed_command([hiredis_pack(args)], check_health=False)
    else:
        connection.send_packed_command(connection.pack_command(*args), check_health=False)


def pool_connection(client: Any, command: str) -> Any:
    """A connection of its own from ``client``'s pool, for commands sent without waiting.

    redis-py before 5.3 requires the command's name (4.5 is our floor); 5.3+ deprecate
    passing it (DeprecationWarning).
    """
    pool = client.connection_pool
    if _POOL_WANTS_COMMAND_NAME:
        return pool.get_connection(command)
    return pool.get_connection()


def _redis_before_5_3() -> bool:
    try:
        import redis
    except ImportError:  # the [redis] extra is not installed: nothing here is used
        return False
    major, minor = (int(part) for part in re.findall(r"\d+", redis.__version__)[:2])
    return (major, minor) < (5, 3)


_POOL_WANTS_COMMAND_NAME = _redis_before_5_3()


# -- the configured backend and how to reach it ---------------------------------


def redis_backend(app: Any = None) -> RedisBackend | None:
    """The Celery result backend when it is Redis (ours or Celery's own), else None."""
    from celery.app.backends import by_url

    if RedisBackend is None:
        return None
    app = app or get_app()
    try:
        # Resolve the class first: building a backend of another kind here could have side effects.
        cls, _url = by_url(app.conf.result_backend, app.loader)
        if not (isinstance(cls, type) and issubclass(cls, RedisBackend)):
            return None
        backend = app.backend
    except Exception:  # noqa: BLE001 - a backend that cannot be built is not ours to clean
        return None
    return backend if isinstance(backend, RedisBackend) else None


def server_label(backend: RedisBackend) -> str:
    """Where the backend's Redis is, for messages: scheme, host, port and database, no credentials."""
    params = backend.connparams
    if params.get("hosts"):  # Sentinel: the sentinels asked, the database and the master's name
        sentinels = ";".join(f"{h.get('host', 'localhost')}:{h.get('port', 26379)}" for h in params["hosts"])
        master = (getattr(backend, "_transport_options", None) or {}).get("master_name")
        return f"sentinel://{sentinels}/{params.get('db', 0)} (master {master!r})"
    if params.get("path"):
        return f"redis+socket://{params['path']}?db={params.get('db', 0)}"
    connection_class = params.get("connection_class")
    scheme = "rediss" if connection_class is not None and "SSL" in connection_class.__name__ else "redis"
    return f"{scheme}://{params.get('host', 'localhost')}:{params.get('port', 6379)}/{params.get('db', 0)}"


def connect(backend: RedisBackend, timeout: float | None = None) -> Any:
    """A client of the backend's server (same URL, TLS and credentials) with bounded waits."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    app_conf = backend.app.conf
    timeout = timeout or float(app_conf.redis_socket_timeout or DEFAULT_SOCKET_TIMEOUT)
    params = dict(backend.connparams)
    params.update(
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, float(app_conf.redis_socket_connect_timeout or timeout)),
        retry_on_timeout=False,
        # Fail at once: the next run tries again, and a page or run must not wait.
        retry=Retry(NoBackoff(), 0),
        max_connections=None,
    )
    return backend._create_client(**params)


def describe_error(backend: RedisBackend, exc: BaseException) -> str:
    from redis import exceptions as rx

    label = server_label(backend)
    text = str(exc) or type(exc).__name__
    password = backend.connparams.get("password")
    if password:
        text = text.replace(str(password), "***")
    upper = text.upper()
    if isinstance(exc, rx.AuthenticationError) or any(word in upper for word in ("NOAUTH", "WRONGPASS", "AUTH <PASSWORD>")):
        return (
            f"Redis at {label} refused authentication ({text}); check the user and password "
            "in CELERY_RESULT_BACKEND."
        )
    if isinstance(exc, (rx.ConnectionError, rx.TimeoutError, OSError)):
        return f"Redis at {label} is not reachable: {text}"
    return f"Redis at {label} failed: {text}"


def scan_pattern(prefix: bytes) -> bytes:
    """``SCAN MATCH`` pattern for keys starting with ``prefix`` (glob characters escaped)."""
    return re.sub(rb"([*?\[\]\\])", rb"\\\1", prefix) + b"*"


def parse_date(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt_timezone.utc)


def remainder_expires(backend: RedisBackend, status: str) -> timedelta | None:
    """Celery's own lifetime for a result no policy governs (None: kept)."""
    seconds = backend.expires
    if status == states.FAILURE:
        seconds = getattr(backend, "failure_expires", seconds)
    return timedelta(seconds=seconds) if seconds else None


def record_from_meta(backend: RedisBackend, meta: dict[str, Any], *, policy: str) -> dict[str, Any]:
    """A Redis result as an archive record with the TaskResult columns, so it restores as one."""
    content_type, content_encoding, result = backend._encode(meta.get("result"))
    if isinstance(result, bytes):
        result = result.decode("utf-8", errors="replace")
    done = parse_date(meta.get("date_done"))
    extra = {k: meta[k] for k in ("children", "group_id", "parent_id") if meta.get(k) is not None}
    as_json = lambda value: None if value is None else json.dumps(value, default=str)  # noqa: E731
    done_text = done.astimezone(dt_timezone.utc).isoformat() if done else None
    return {
        "id": None,
        "task_id": meta.get("task_id"),
        "periodic_task_name": None,
        "task_name": meta.get("name"),
        "task_args": as_json(meta.get("args")),
        "task_kwargs": as_json(meta.get("kwargs")),
        "status": meta.get("status"),
        "worker": meta.get("worker"),
        "content_type": content_type,
        "content_encoding": content_encoding,
        "result": result,
        # Redis keeps no creation date: the completion date stands in.
        "date_created": done_text,
        "date_started": None,
        "date_done": done_text,
        "traceback": meta.get("traceback"),
        "meta": json.dumps(extra),
        "source": ArchiveBatch.Source.REDIS,
        "policy": policy,
    }


# -- the enforcer ----------------------------------------------------------------


@dataclass
class Counts:
    matched: int = 0  # due keys selected (dry run: would go)
    deleted: int = 0
    archived: int = 0
    bytes: int = 0
    ttl_wrong: int = 0  # keys found with a missing or wrong TTL (dry run: would be fixed)
    ttl_fixed: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _ArchiveState:
    rule: Rule
    writer: archive.ArchiveWriter
    pending: dict[bytes, str] = field(default_factory=dict)  # key -> SHA-1 of the archived value
    # Encoded records not yet handed to the writer: it takes them in chunks
    # (each hand-off wakes its compressor thread).
    lines: list[tuple[str, str | None, bytes]] = field(default_factory=list)


# How the keys of one (task name, status) are treated in this run: their counts,
# governing rule (None: the remainder), lifetime for their TTL (None: no TTL) and
# the cutoff: they are due when completed strictly before it, as in SQL
# (``date_done < now - keep_for``; None: never due). None
# instead of a plan: out of this run's scope.
_Plan = tuple[Counts, Rule | None, timedelta | None, datetime | None]
_UNKNOWN = object()


class _ReadAhead:
    """SCAN and the reads of values and TTLs, sent ahead of the judging on one connection.

    Iterating yields ``(keys, values, pttls, read_ms)`` per part of a SCAN batch.
    Before a part is handed out, the reads of up to ``READ_AHEAD`` parts (and the
    next SCAN, when the keys known run short) are already sent, so Redis works
    while Python judges (no thread: on a busy machine a second one cost more than
    it saved). Memory stays flat: at most about two SCAN batches' keys wait.
    """

    def __init__(self, client: Any, pattern: bytes, count: int):
        self.client = client
        self.pattern = pattern
        self.count = count
        self.connection: Any = None
        # Most parts of SCAN batches held at once (read or not): bounded, whatever the key count.
        self.peak_parts = 0

    def close(self) -> None:
        if self.connection is not None:
            # Replies still unread must not reach another command.
            self.connection.disconnect()
            self.connection = None
        self.client.close()

    def __iter__(self) -> Any:
        connection = self.connection = pool_connection(self.client, "SCAN")
        sent: deque[tuple[bytes, ...] | None] = deque()  # None: a SCAN; else the keys of a read
        sent_times: deque[int] = deque()
        unsent: deque[list[bytes]] = deque()  # parts of SCAN batches not read yet
        ready: deque[tuple[list[bytes], list[Any], list[int], int]] = deque()
        reading = 0
        cursor: bytes | None = b"0"  # None: the SCAN is over
        scanning = False  # a SCAN is sent, its reply not read yet
        while True:
            # The next SCAN only when the keys known run short: SCAN must not run
            # ahead of the reads, or the key names would pile up in memory.
            if cursor is not None and not scanning and len(unsent) <= READ_AHEAD:
                send(connection, "SCAN", cursor, "MATCH", self.pattern, "COUNT", self.count)
                sent.append(None)
                scanning = True
            while unsent and reading + len(ready) < READ_AHEAD:
                chunk = unsent.popleft()
                # A TTL read counts down from here, not from the start of the run.
                sent_times.append(int(time.time() * 1000))
                # Values first, then TTLs: a key stored again in between is
                # judged by its old value, whose changes then do not apply.
                send(connection, "MGET", *chunk)
                send(connection, "EVAL", PTTL_LUA, len(chunk), *chunk)
                sent.append(tuple(chunk))
                reading += 1
            self.peak_parts = max(self.peak_parts, len(unsent) + reading + len(ready))
            if ready:
                yield ready.popleft()
                continue
            if not sent:
                return
            request = sent.popleft()
            if request is None:
                next_cursor, keys = connection.read_response()
                scanning = False
                cursor = None if next_cursor == b"0" else next_cursor
                unsent.extend(keys[i : i + READ_KEYS] for i in range(0, len(keys), READ_KEYS))
            else:
                values = connection.read_response()
                pttls = connection.read_response()
                reading -= 1
                ready.append((list(request), values, pttls, sent_times.popleft()))


class Enforcer:
    """One pass over the result keys for the selected policies (and the remainder)."""

    def __init__(
        self,
        backend: RedisBackend,
        governance: Governance,
        *,
        rules: list[Rule],
        remainder: bool,
        now: datetime,
        days: int | None = None,
        dry_run: bool = False,
        run: CleanupRun | None = None,
        holder: str = "",
        deadline: float | None = None,
        tick: Callable[[], None] = lambda: None,
        progress: Any = None,
    ):
        self.backend = backend
        self.rules = rules
        self.selected = {rule.name for rule in rules}
        self.remainder = remainder
        self.now = now
        # When the batch being judged was read: a TTL counts down from then, not
        # from the start of a run that may have been scanning for minutes.
        self.read_ms = int(now.timestamp() * 1000)
        self.days = timedelta(days=days) if days is not None else None
        self.dry_run = dry_run
        self.run_record = run
        self.holder = holder
        self.deadline = deadline
        self.tick = tick
        self.progress = progress
        self.table = PolicyTable(governance, time.monotonic())
        # The task ids of the batch being judged that a hold or restore grace keeps.
        self.kept: set[str] = set()
        # (task name, status) -> _Plan, or SizeDependent: judging a key is mostly a lookup.
        self.plans: dict[tuple[Any, str], Any] = {}
        self.prefix: bytes = backend.task_keyprefix
        self.counts: dict[str, Counts] = {rule.name: Counts() for rule in rules}
        self.unmatched = Counts()
        self.scanned = self.unreadable = self.held = 0
        self.stopped = False
        self.notes: list[str] = []
        self.archives: dict[str, _ArchiveState] = {}
        # Changes waiting for one CHANGE_LUA call: its keys, its arguments (value
        # and action per key) and what to count for each key when it is done.
        self.change_keys: list[bytes] = []
        self.change_args: list[Any] = []
        self.change_counts: list[tuple[Counts, bool]] = []  # (counts, deletes)
        self.change_bytes = 0
        # Changes go out on a connection of their own without waiting for the reply:
        # Redis makes them while the next keys are judged. (keys, args, counts) of
        # the batches whose replies are still to be read, oldest first.
        self.change_connection: Any = None
        self.in_flight: deque[tuple[list[bytes], list[Any], list[tuple[Counts, bool]]]] = deque()
        self.client: Any = None
        self.script: Any = None
        self.changer: Any = None
        self.location: archive.Location | None = None
        self.scan_count = conf.get_config().redis_scan_count
        self.expires = remainder_expires(backend, states.SUCCESS)
        self.failure_expires = remainder_expires(backend, states.FAILURE)
        # JSON results, not compressed: parsed without kombu (see _decode).
        self.plain_json = backend.content_type == "application/json" and not getattr(backend, "compression", None)

    # -- reporting ---------------------------------------------------------------
    def report(self, error: str | None = None) -> dict[str, Any]:
        policies = [
            {"name": rule.name, "tier": rule.tier, **self.counts[rule.name].as_dict()} for rule in self.rules
        ]
        everything = [*(self.counts[rule.name] for rule in self.rules), self.unmatched]
        return {
            "server": server_label(self.backend),
            "scanned": self.scanned,
            "unreadable": self.unreadable,
            "held": self.held,
            "policies": policies,
            "unmatched": self.unmatched.as_dict() if self.remainder else None,
            "totals": {
                name: sum(getattr(c, name) for c in everything) for name in Counts().as_dict()
            },
            "stopped": self.stopped,
            "error": error,
        }

    # -- the pass ------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Walk the keys once; raise RedisUnavailable (counts so far in ``report()``)."""
        from redis.exceptions import RedisError

        try:
            self.client = connect(self.backend)
            self.script = self.client.register_script(MUTATE_LUA)
            self.changer = self.client.register_script(CHANGE_LUA)
            self.client.script_load(CHANGE_LUA)  # sent by EVALSHA without waiting (see _flush_changes)
            if not self.dry_run:
                self._settle_interrupted()
            self._scan()
            self._flush_changes()
            self._collect_changes()
            for state in list(self.archives.values()):
                self._finish_archive(state)
        except RedisError as exc:
            self._abort_archives()
            raise RedisUnavailable(describe_error(self.backend, exc)) from exc
        except BaseException:
            self._abort_archives()
            raise
        finally:
            if self.change_connection is not None:
                # Unread replies (after an error) must not reach another command.
                self.change_connection.disconnect()
                self.change_connection = None
            if self.client is not None:
                self.client.close()
        return self.report()

    def _scan(self) -> None:
        pattern = scan_pattern(self.prefix)
        if self.progress is not None:
            total = self.client.dbsize() if self.progress.wants_totals else None
            self.progress.start(f"redis {server_label(self.backend)}", total)
        reads = _ReadAhead(connect(self.backend), pattern, self.scan_count)
        try:
            # Parts are judged in groups of about keep.ID_CHUNK keys, with one
            # question to keep.py per group: asking per part of 250 keys cost more
            # than the judging itself.
            group: list[tuple[list[bytes], list[Any], list[int], int]] = []
            size = 0
            for part in reads:
                group.append(part)
                size += len(part[0])
                if size >= keep.ID_CHUNK:
                    if not self._judge_group(group):
                        return
                    group, size = [], 0
            self._judge_group(group)
        finally:
            reads.close()
            if self.progress is not None:
                self.progress.finish()

    def _judge_group(self, group: list[tuple[list[bytes], list[Any], list[int], int]]) -> bool:
        """Judge parts read by SCAN; False when the run is out of time."""
        # Asked just before the keys are judged: a hold placed during the run
        # protects the keys of every group after it.
        prefix = len(self.prefix)
        self.kept = keep.kept_task_ids(
            (
                key[prefix:].decode(errors="replace")
                for keys, values, _pttls, _read_ms in group
                for key, value in zip(keys, values)
                if value is not None
            ),
            self.now,
        )
        judge = self._judge
        for keys, values, pttls, read_ms in group:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self.stopped = True
                self.notes.append("redis: stopped at max runtime; the next run scans again")
                return False
            self.tick()
            self.read_ms = read_ms
            self.scanned += len(keys)
            for key, value, pttl in zip(keys, values, pttls):
                if value is None or pttl == -2:
                    continue  # expired or deleted since SCAN saw it, or not a string
                judge(key, value, pttl)
            if self.progress is not None:
                self.progress.advance(len(keys))
        return True

    def _decode(self, value: bytes) -> dict[str, Any] | None:
        try:
            if self.plain_json and value[:1] == b"{":
                # A C parser: kombu's loads adds a Python hook per object, which
                # dominated the scan's time. Its extra types (dates, UUIDs) stay
                # marked dicts, which is all judging and archiving need.
                try:
                    meta = fast_loads(value)
                except ValueError:  # what orjson refuses (NaN, huge integers) the standard parser reads
                    meta = json.loads(value)
            else:
                meta = self.backend.decode(value)
        except Exception:  # noqa: BLE001 - unreadable (other serializer, corrupt): leave it
            return None
        return meta if isinstance(meta, dict) and "status" in meta else None

    def _plan(self, rule: Rule | None, status: str) -> _Plan | None:
        """How this run treats the results ``rule`` governs (None: the remainder), or None: out of scope."""
        keep_for = lifetime(rule, self.failure_expires if status == states.FAILURE else self.expires)
        # --days overrides every lifetime but keep-forever (and sets no TTL).
        if rule is None:
            if not self.remainder:
                return None
            counts = self.unmatched
            due_keep = self.days or keep_for
        elif rule.name in self.selected:
            counts = self.counts[rule.name]
            due_keep = None if rule.keep_for is None else (self.days or rule.keep_for)
        else:
            return None  # governed by a policy outside this run
        cutoff = None
        if due_keep is not None:
            try:
                cutoff = self.now - due_keep
            except OverflowError:  # a lifetime longer than the calendar: never due
                cutoff = None
        return counts, rule, keep_for, cutoff

    def _judge(self, key: bytes, value: bytes, pttl: int) -> None:
        meta = self._decode(value)
        if meta is None:
            self.unreadable += 1
            return
        status = str(meta.get("status"))
        task_name = meta.get("name")
        if task_name is not None and not isinstance(task_name, str):
            self.unreadable += 1  # not a result Celery wrote: leave it
            return
        plan = self.plans.get((task_name, status), _UNKNOWN)
        if plan is _UNKNOWN:
            rule = self.table.rule_by_name_status(task_name, status)
            plan = rule if isinstance(rule, SizeDependent) else self._plan(rule, status)
            self.plans[(task_name, status)] = plan
        if isinstance(plan, SizeDependent):
            rule = self.table.governing(
                task_name=task_name,
                status=status,
                result_text=lambda: record_text(self.backend, meta.get("result")),
            )
            plan = self._plan(rule, status)
        if plan is None:
            return
        counts, rule, keep_for, cutoff = plan
        # The id is the key's name (Celery's key for a task is the prefix and its id):
        # the same id the batch's kept look-up was asked about.
        if self.kept and key[len(self.prefix) :].decode(errors="replace") in self.kept:
            self.held += 1
            if pttl >= 0:
                self._change(key, value, "P", counts, ttl=True)
            return
        done = parse_date(meta.get("date_done"))
        # Due when done strictly before the cutoff, as SQL's date_done < now - keep_for:
        # a result exactly at the cutoff is not deleted as due; it gets its expiry
        # (date_done + keep_for), which is that very moment.
        if done is not None and cutoff is not None and done < cutoff:
            counts.matched += 1
            counts.bytes += len(value)
            if rule is not None and rule.archive:
                self._archive(rule, key, value, meta)
            else:
                self._change(key, value, "D", counts)
            return
        # Not due: its TTL should end when its policy says (never with --days).
        if keep_for is None:
            if rule is not None and pttl >= 0:
                self._change(key, value, "P", counts, ttl=True)  # keep-forever or archive policy
            return
        if done is None and pttl >= 0:
            return  # no completion date (not finished): a TTL it has stands
        expire_at = int(((done or self.now) + keep_for).timestamp() * 1000)
        if pttl == -1 or abs(self.read_ms + pttl - expire_at) > TOLERANCE_MS:
            self._change(key, value, expire_at, counts, ttl=True)

    def _change(self, key: bytes, value: bytes, op: str | int, counts: Counts, ttl: bool = False) -> None:
        """Queue a change: "D" delete, "P" persist, or an expiry time (ms since the epoch)."""
        if ttl:
            counts.ttl_wrong += 1
        if self.dry_run:
            return
        self.change_keys.append(key)
        self.change_args += (value, op)
        self.change_counts.append((counts, op == "D"))
        self.change_bytes += len(value)
        if len(self.change_keys) >= MUTATE_KEYS or self.change_bytes >= MUTATE_BYTES:
            self._flush_changes()

    def _flush_changes(self) -> None:
        """Send the queued changes; their reply is read a few batches later, or at the end."""
        keys, args, counted = self.change_keys, self.change_args, self.change_counts
        if not keys:
            return
        self.change_keys, self.change_args, self.change_counts, self.change_bytes = [], [], [], 0
        self._collect_changes(keep=CHANGES_AHEAD - 1)
        if self.change_connection is None:
            self.change_connection = pool_connection(self.client, "EVALSHA")
        send(self.change_connection, "EVALSHA", self.changer.sha, len(keys), *keys, *args)
        self.in_flight.append((keys, args, counted))

    def _collect_changes(self, keep: int = 0) -> None:
        """Read the replies to the changes in flight, all but ``keep``, and count what was done."""
        from redis.exceptions import NoScriptError

        while len(self.in_flight) > keep:
            keys, args, counted = self.in_flight.popleft()
            try:
                done = self.change_connection.read_response()
            except NoScriptError:  # the script cache was flushed meanwhile: nothing was done, send again
                done = self.changer(keys=keys, args=args, client=self.client)
            for (counts, deletes), ok in zip(counted, done):
                if not ok:
                    continue  # stored again since it was read: the next run judges it
                if deletes:
                    counts.deleted += 1
                else:
                    counts.ttl_fixed += 1

    def _mutate(self, items: list[tuple[bytes, str, str, int]]) -> list[int]:
        """SHA-1-guarded changes: ``(key, sha1 of the value judged, op, at)`` each."""
        keys = [key for key, _sha, _op, _at in items]
        args: list[Any] = []
        for _key, sha, op, at in items:
            # One argument per action: "D", "P", or the expiry time for PEXPIREAT.
            args += [sha, at if op == "E" else op]
        return [int(flag) for flag in self.script(keys=keys, args=args, client=self.client)]

    # -- archives --------------------------------------------------------------------
    def _archive(self, rule: Rule, key: bytes, value: bytes, meta: dict[str, Any]) -> None:
        if self.dry_run:
            return
        state = self.archives.get(rule.name)
        if state is None:
            if self.location is None:
                self.location = archive.configured_location()
            policy = RetentionPolicy.objects.filter(pk=rule.pk).first()
            writer = archive.ArchiveWriter(
                self.location,
                policy=policy,
                policy_name=rule.name,
                run=self.run_record,
                source=ArchiveBatch.Source.REDIS,
                holder=self.holder,
            )
            state = self.archives[rule.name] = _ArchiveState(rule, writer)
        if key in state.pending:
            return  # SCAN may return a key twice
        record = record_from_meta(self.backend, meta, policy=rule.name)
        record["task_id"] = record["task_id"] or key[len(self.prefix) :].decode(errors="replace")
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
        state.lines.append((record["task_id"], record["date_done"], line))
        state.pending[key] = hashlib.sha1(value).hexdigest()
        if len(state.lines) >= ARCHIVE_LINES:
            state.writer.add_lines(state.lines)
            state.lines = []
        if len(state.pending) >= conf.get_config().archive_batch_records:
            self._finish_archive(state)

    def _finish_archive(self, state: _ArchiveState) -> None:
        """Archive-then-delete: the batch is durable before any of its keys goes."""
        del self.archives[state.rule.name]
        state.writer.add_lines(state.lines)
        state.lines = []
        if not len(state.writer):
            state.writer.abort()
            return
        batch = state.writer.finish()
        counts = self.counts[state.rule.name]
        counts.archived += batch.records
        deleted = self._delete_unchanged(list(state.pending.items()))
        counts.deleted += deleted
        archive.complete_batch(batch, deleted)

    def _delete_unchanged(self, items: list[tuple[bytes, str]]) -> int:
        """Delete archived keys that still hold what was archived (compared by SHA-1).

        The keys were judged when they were read, possibly minutes ago: one a hold
        or a restore now keeps stays (it is in the archive too; archived twice,
        never lost).
        """
        start_at = len(self.prefix)
        kept = keep.kept_task_ids((key[start_at:].decode("utf-8", "replace") for key, _sha in items), self.now)
        if kept:
            items = [(key, sha) for key, sha in items if key[start_at:].decode("utf-8", "replace") not in kept]
        deleted = 0
        for start in range(0, len(items), MUTATE_KEYS):
            self.tick()
            chunk = items[start : start + MUTATE_KEYS]
            deleted += sum(self._mutate([(key, sha, "D", 0) for key, sha in chunk]))
        return deleted

    def _abort_archives(self) -> None:
        for state in self.archives.values():
            state.writer.abort()
        self.archives.clear()

    def _settle_interrupted(self) -> None:
        """Finish Redis batches a crashed run left ``written``: delete the keys still as archived."""
        names = [r.name for r in self.rules if r.archive]
        for batch, verdict in archive.unfinished_batches(names, ArchiveBatch.Source.REDIS, items="keys"):
            if verdict == "interrupted":
                self.notes.append(f"redis: archive batch {batch.pk} was interrupted while writing; marked corrupt")
                continue
            if verdict == "corrupt":
                self.notes.append(f"redis: archive batch {batch.pk} cannot be finished: {batch.error}")
                continue
            deleted = 0
            chunk: list[tuple[bytes, str | None]] = []
            for record in archive.read_records(batch):
                chunk.append((self.prefix + str(record["task_id"]).encode(), record.get("date_done")))
                if len(chunk) >= MUTATE_KEYS:
                    deleted += self._delete_if_done(chunk)
                    chunk = []
            deleted += self._delete_if_done(chunk)
            archive.complete_batch(batch, deleted)
            self.counts[batch.policy_name].deleted += deleted
            self.notes.append(
                f"redis: finished archive batch {batch.pk} left by an interrupted run ({deleted} keys deleted)"
            )

    def _delete_if_done(self, chunk: list[tuple[bytes, str | None]]) -> int:
        """Delete the keys whose result still has the archived completion date."""
        if not chunk:
            return 0
        values = self.client.mget([key for key, _done in chunk])
        doomed = []
        for (key, archived_done), value in zip(chunk, values):
            meta = self._decode(value) if value is not None else None
            if meta is not None and parse_date(meta.get("date_done")) == parse_date(archived_done):
                doomed.append((key, hashlib.sha1(value).hexdigest()))
        return self._delete_unchanged(doomed)


def record_text(backend: RedisBackend, result: Any) -> str:
    """The result as the database backend would store it in ``TaskResult.result``."""
    payload = backend._encode(result)[2]
    return payload if isinstance(payload, str) else payload.decode("utf-8", errors="replace")


# -- figures for snapshots and the dashboard ------------------------------------


def redis_figures(timeout: float = 2.0) -> dict[str, Any] | None:
    """Memory and key counts of the Redis result store; None when Redis is not the backend.

    Never takes much longer than ``timeout``: the work runs in a thread that is
    abandoned (its socket times out soon after) when it is late. Keys are
    counted by SCAN; beyond ``FIGURES_KEY_BUDGET`` keys, or when time runs short,
    the counts are extrapolated from those seen (``estimated``). ``keys_without_ttl``
    counts result keys (task, group, chord) only.
    """
    backend = redis_backend()
    if backend is None:
        return None
    figures: dict[str, Any] = {
        "used_memory": None,
        "keys": {"task": 0, "group": 0, "chord": 0, "other": 0},
        "keys_without_ttl": 0,
        "estimated": False,
        "error": None,
    }
    outcome: dict[str, Any] = {}
    started = time.monotonic()

    def work() -> None:
        try:
            outcome["figures"] = _count(backend, timeout, started + timeout * 0.6)
        except Exception as exc:  # noqa: BLE001 - reported, never raised into a page
            outcome["error"] = describe_error(backend, exc)

    worker = threading.Thread(target=work, name="retention-redis-figures", daemon=True)
    worker.start()
    worker.join(timeout)
    if "figures" in outcome:
        return outcome["figures"]  # type: ignore[no-any-return]
    figures["error"] = outcome.get("error") or f"Redis at {server_label(backend)} did not answer within {timeout:g} s"
    return figures


def _count(backend: RedisBackend, timeout: float, stop_at: float) -> dict[str, Any]:
    client = connect(backend, timeout)
    try:
        memory = client.info("memory").get("used_memory")
        total = int(client.dbsize())
        prefixes = (
            ("task", backend.task_keyprefix),
            ("group", backend.group_keyprefix),
            ("chord", backend.chord_keyprefix),
        )
        keys = {"task": 0, "group": 0, "chord": 0, "other": 0}
        without_ttl = scanned = 0
        cursor = 0
        complete = False
        counter = client.register_script(COUNT_PERSISTENT_LUA)
        while scanned < FIGURES_KEY_BUDGET and time.monotonic() < stop_at:
            cursor, batch = client.scan(cursor, count=1000)
            results = []
            for key in batch:
                for kind, prefix in prefixes:
                    if key.startswith(prefix):
                        keys[kind] += 1
                        results.append(key)
                        break
                else:
                    keys["other"] += 1
            if results:
                without_ttl += counter(keys=results)
            scanned += len(batch)
            if cursor == 0:
                complete = True
                break
        estimated = not complete
        if estimated and scanned:
            scale = total / scanned
            keys = {kind: round(n * scale) for kind, n in keys.items()}
            without_ttl = round(without_ttl * scale)
        elif estimated:
            keys["other"] = total  # nothing sampled in time: only the total is known
        return {
            "used_memory": int(memory) if memory is not None else None,
            "keys": keys,
            "keys_without_ttl": without_ttl,
            "estimated": estimated,
            "error": None,
        }
    finally:
        client.close()
