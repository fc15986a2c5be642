"""The Redis store (redis-py asyncio + hiredis): one connection pool per process.

Key space (every key starts with the configured prefix, default `tasks:`):

    <prefix>meta:layout             "3": version of this layout (migrations bump it)
    <prefix>meta:layout-min         "3": the oldest build layout that may read and write it
    <prefix>task:<id>               hash: the task's fields ("" for a null completed_at)
    <prefix>index:all               sorted set of ids, all scores 0, so ordered by id = by creation
    <prefix>index:status:<status>   the same, per status
    <prefix>index:completed         sorted set of the done tasks' ids, scored by completed_at
                                    (`completion_score`: microseconds since the epoch)
    <prefix>idempotency:<sha256>    "<body fingerprint>\\n<task json>", expiring after the TTL
    <prefix>lock:<name>             a job's lock: a random token, expiring (SET NX PX)

Cluster mode (TASKS_REDIS_MODE=cluster, a RedisCluster client): the tasks are split into
TASKS_REDIS_SHARDS index shards, each under a hash tag of its own, so that every key above but
the metadata and the locks exists once per shard, as `<prefix>{s<k>.<i>}task:<id>`, `...index:all`
and so on (`RedisKeys`). A task, its index entries and an idempotency record share one shard: the
task's follows from its id, the record's from its key, and a create under a key takes an id in
the key's shard. So every script below touches one slot. A listing reads every shard's newest
`limit + 1` at once and merges them; the jobs' batches do the same, or run per shard. The
metadata lives under `<prefix>{meta}:` (`layout`, `layout-min`, and `shards`: the count, fixed at
first use; another count is refused with `ShardCountMismatch`). Standalone is the one-shard case
under the names above.

Every change is one Lua script (one round trip, atomic): create, a patch, a delete (If-Match
checked in the script, which computes the ETag), the batches of the jobs. Nothing WATCHes or
opens a MULTI that a cancelled call would have to reset, so the timeout bounds each operation as
a whole, waiting for a pooled connection included. A listing reads its index range and the
hashes in one script too, so a page is a consistent snapshot.

The completion-time index: every script that changes a task keeps it too (a done task is in it,
no other), so cleanup touches only the expired tasks, and deletes them in place
(`delete_completed`: a script per shard and batch; a dry run reads them with `scan_completed`).
Builds of layout 1 did not keep it: layout 2 backfills it while they may still serve, layout 3
(a contraction, run by `python -m jobs migrate --contract`) stops them and backfills it again,
and only on data at layout 3 or later (`COMPLETION_INDEX_LAYOUT`) does cleanup rely on it.

Failures: every Redis error becomes `StoreUnavailable` with its reason (never the command or
its arguments, which hold task data). A read-only node (READONLY, MASTERDOWN, or ROLE on the
readiness check) makes the store drop its pool, so the next call connects afresh and reaches
whichever node the address now names: after a failover, the new primary.

Layout guard: the stored layout window is checked on every ping and, at most a second stale,
before every write. An empty database gets this build's window recorded; a window that does not
admit this build (`BuildLayout.serves`: contracted past it, or not yet migrated to what it
needs) raises `LayoutMismatch`, so a pod never writes a layout it does not know. Within the
window, builds of different layouts share the data: that is what lets old pods keep serving
while an upgrade migrates, and a rollback become ready. Older layouts and the migrations that
move the window are in `service.store.migrations`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import re
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

import hiredis
import pydantic_core
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    ConnectionPool,
    SSLConnection,
    parse_url,
)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.connection import HiredisRespSerializer
from redis.crc import key_slot
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    ConnectionError,
    MasterDownError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.maint_notifications import MaintNotificationsConfig
from redis.typing import EncodableT, KeyT

from service.domain import (
    PageJson,
    Status,
    Task,
    TaskFields,
    TaskJson,
    TaskPatch,
    etag,
    fields_json,
    json_object,
    json_time,
    task_fields,
    task_json,
    utcnow,
    with_new_id,
)
from service.errors import (
    IdempotencyKeyReused,
    PreconditionFailed,
    StoreUnavailable,
    TaskNotFound,
    Unavailability,
)
from service.settings import redis_urls
from service.store.base import (
    BuildLayout,
    Completion,
    CompletionList,
    Created,
    Idempotency,
    IdList,
    LayoutMismatch,
    LayoutWindow,
    ShardCountMismatch,
    Swept,
    TaskList,
    completed_at,
    completion_score,
)

T = TypeVar("T")
X = TypeVar("X")  # what a batch groups by shard: tasks, or their ids
_Row = list[str | None]  # a task's hash fields in _FIELDS order (HMGET): all None once deleted
_Found = list[tuple[str, _Row]]  # ids, each with its row
log = logging.getLogger("tasks.store")

# A cluster client also raises RedisClusterException, which is not a RedisError: no seed node
# answers, a slot that no node serves.
REDIS_FAILURES = (RedisError, RedisClusterException, TimeoutError)
"""What a call to Redis raises when Redis cannot answer: give them to `unavailable`."""

# Error replies that mean "not now" (the first word of the reply), and what they are called.
_REPLY_REASONS = {
    "READONLY": Unavailability.readonly,
    "MASTERDOWN": Unavailability.masterdown,
    "LOADING": Unavailability.loading,
    "BUSY": Unavailability.busy,
    "OOM": Unavailability.oom,
    "MISCONF": Unavailability.misconf,
    "TRYAGAIN": Unavailability.tryagain,
    "CLUSTERDOWN": Unavailability.clusterdown,
}
_ERROR_CLASSES = (  # most specific first: MasterDownError is a ClusterDownError
    (MasterDownError, "MASTERDOWN"),
    (ClusterDownError, "CLUSTERDOWN"),
    (SlotNotCoveredError, "CLUSTERDOWN"),
    (TryAgainError, "TRYAGAIN"),
    # The cluster client's "TTL exhausted": still redirected or told TRYAGAIN after its last
    # attempt, i.e. a slot still moving.
    (ClusterError, "TRYAGAIN"),
    (ReadOnlyError, "READONLY"),
    (BusyLoadingError, "LOADING"),
    (OutOfMemoryError, "OOM"),
)
# uvloop's error for a write on a socket already closed. The cluster client can hand out a pooled
# connection whose node has just gone (a primary shut down) and expects asyncio's own
# ConnectionError there; this is the same lost connection.
_LOST_TRANSPORT = "the handler is closed"
_PIPELINE_ANNOTATION = "caused error: "  # redis-py's prefix on a pipeline command's error
_STALE_NODE = frozenset({Unavailability.readonly, Unavailability.masterdown})
_ROLE_RECHECK_SECONDS = 1.0
# A script's reply when a key it derives (not declares) has left the node: a slot migration.
_NON_LOCAL_KEY = "Script attempted to access a non local key"


def unavailable(exc: BaseException) -> StoreUnavailable:
    """The StoreUnavailable for a Redis failure. Its message never carries the exception's
    text: redis-py puts the command and its arguments (task titles, descriptions) there."""
    # redis-py keeps an error reply's first word for the codes it knows (LOADING, READONLY,
    # OOM, MASTERDOWN, ...; older versions only in the exception's class) and leaves it in the
    # message of the others (BUSY, MISCONF, ...).
    code = getattr(exc, "status_code", None)
    if not code:
        code = next((c for cls, c in _ERROR_CLASSES if isinstance(exc, cls)), None)
    if not code and isinstance(exc, ResponseError):
        code = str(exc).rpartition(_PIPELINE_ANNOTATION)[2].split(" ", 1)[0]
    if code:
        reason = _REPLY_REASONS.get(code, Unavailability.error)
    elif isinstance(exc, TimeoutError):  # redis-py's TimeoutError, and asyncio.timeout's
        reason = Unavailability.timeout
    elif isinstance(exc, ConnectionError | RedisClusterException):  # no node reachable
        reason = Unavailability.connection
    else:
        reason = Unavailability.error
    return StoreUnavailable(reason)


RedisClient = aioredis.Redis | RedisCluster


def connect(
    url: str,
    *,
    password: str | None,
    timeout: float,
    username: str | None = None,
    max_connections: int = 16,
    socket_timeouts: bool = True,
    cluster: bool = False,
) -> RedisClient:
    """A client with its own pool; nothing connects until the first command. Connecting is
    bounded by `timeout`, and so is each socket read and write unless `socket_timeouts` is off
    (for callers that bound whole operations themselves, as RedisTaskStore does).

    The pool (`_Pool`) holds at most `max_connections`, and a call that finds them all busy
    fails at once: callers bound their own concurrency. RedisTaskStore queues its operations
    for a turn (one per connection), so a burst waits there and never finds the pool short. (A
    blocking pool would wait as well, at the price of a condition and a timer on every
    command: a tenth of a GET's CPU, measured in-process.)

    `cluster`: a RedisCluster client seeded by the URL's nodes (a comma-separated list of URLs;
    the first one's credentials and options apply), which discovers the others, follows MOVED
    and ASK, and refreshes its slot map after a failover. Its pools are per node, and a call
    that finds one full fails rather than waits: size them for the fan-out (RedisTaskStore's
    operations call every shard at once)."""
    options: dict[str, Any] = {
        **parse_url(url.split(",")[0].strip()),
        "socket_timeout": timeout if socket_timeouts else None,
        "socket_connect_timeout": timeout,
        "decode_responses": True,
    }
    if password is not None:
        options["password"] = password
    if username is not None:
        options["username"] = username
    if cluster:
        return _cluster_client(url, options, max_connections)
    options["max_connections"] = max_connections
    options["retry"] = Retry(NoBackoff(), 0)  # one bounded attempt: the caller answers 503
    # redis-py 8's default ("auto") skips the pool's check for a connection the server has
    # closed, so after a Redis restart each pooled connection failed its next call (one 503
    # per connection, long after Redis was back). The notifications need RESP3; we speak RESP2.
    options["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
    options["connection_class"] = _packed_by_hiredis(options.get("connection_class", Connection))
    pool = _Pool(**options)
    return aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))


class _Pool(ConnectionPool):
    """redis-py's pool, without what every command pays for and we do not use: a lock around
    each take and return (the lists change between no two awaits of this one event loop), the
    OpenTelemetry connection counts and the after-release event (re-authentication for
    streaming credential providers). The same checks on the connection it hands out. Measured
    in-process, 16 callers at once: 60 us of CPU per HGETALL instead of 78."""

    async def get_connection(self, *args: Any, **options: Any) -> AbstractConnection:
        # MaxConnectionsError when all are taken, as before
        connection = cast(AbstractConnection, self.get_available_connection())  # type: ignore[no-untyped-call]
        try:
            await self.ensure_connection(connection)  # reconnects one the server has closed
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        self._in_use_connections.remove(connection)
        if connection.should_reconnect():  # type: ignore[no-untyped-call]
            await connection.disconnect()
        self._available_connections.append(connection)


class _Script(AsyncScript):
    """A Lua script, run by EVALSHA and loaded on NOSCRIPT, as redis-py's runs it, without what
    its call does each time for a pipeline, which this store never passes (an import and an
    isinstance against a Protocol), nor `evalsha`'s two layers: 0.7 us a call instead of 2.5."""

    async def __call__(
        self,
        keys: Sequence[KeyT] | None = None,
        args: Iterable[EncodableT] | None = None,
        client: RedisClient | None = None,
    ) -> Any:
        client = client or self.registered_client
        keys = keys or ()
        args = args or ()
        try:
            return await client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:  # a server that never saw it (a restart, a failover)
            self.sha = await client.script_load(self.script)
            return await client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


_PACKER = HiredisRespSerializer()


@functools.cache
def _packed_by_hiredis(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """`base`, packing each command with hiredis, in C, as redis-py's synchronous client does
    when hiredis is installed; its asyncio client packs in Python, which took a tenth of a
    create's CPU (26 arguments: 58 us, against 6). (The cluster client picks its connections'
    class itself, and keeps packing in Python.)"""

    class Packed(base):  # type: ignore[valid-type,misc]
        def pack_command(self, *args: Any) -> list[bytes]:
            name = args[0]
            if isinstance(name, str) and " " in name:  # "CLIENT SETINFO": two words on the wire
                args = (*name.split(), *args[1:])
            # hiredis itself: its serializer's wrapper first walks every argument in Python
            # (a create's 18: 3.1 us, against 1.3)
            try:
                return [hiredis.pack_command(args)]
            except TypeError:  # a bytearray or memoryview, or no value at all: the wrapper's way
                packed: list[bytes] = _PACKER.pack(*args)
                return packed

    Packed.__name__ = Packed.__qualname__ = f"HiredisPacked{base.__name__}"
    return cast(type[AbstractConnection], Packed)


class _PatientCluster(RedisCluster):
    # Attempts per command (redirects and TRYAGAIN replies; the latter half 50 ms apart). While
    # a slot migrates, a script whose keys are split between the two nodes gets TRYAGAIN until
    # the move completes: keep trying for about as long as the operation's own timeout allows
    # (redis-py's 16 attempts give up after 0.4 s), rather than answer 503 early.
    RedisClusterRequestTTL = 48


def _cluster_client(url: str, options: dict[str, Any], max_connections: int) -> RedisCluster:
    seeds = []
    for node in redis_urls(url):
        parts = parse_url(node)
        seeds.append(ClusterNode(parts.get("host", "localhost"), parts.get("port", 6379)))
    options.pop("db", None)
    options.pop("host", None)
    options.pop("port", None)
    # No socket timeout: RedisTaskStore bounds every operation as a whole. A command that
    # times out at the socket makes redis-py's cluster client disconnect the node's idle
    # connections while other calls may be taking them (an AttributeError, not a RedisError).
    options["socket_timeout"] = None
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    return _PatientCluster(
        startup_nodes=seeds,
        max_connections=max_connections,
        # A few quick retries, each after the slot map is refreshed: the caller's timeout
        # bounds them all, and a failover's MOVED is followed rather than answered with 503.
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 3),
        # A MOVED updates the one slot's owner; redis-py's default also closes every
        # connection on each fifth, failing the other calls in flight.
        reinitialize_steps=0,
        **options,
    )


SLOTS = 16384  # Redis Cluster's hash slots


@functools.cache
def shard_tag(shard: int, shards: int) -> str:
    """The hash tag of index shard `shard` of `shards`: the first `s<shard>.<i>` whose slot lies
    in the shard's share of the slot space, so shards spread over the nodes as evenly as the
    slots do, whatever the prefix."""
    salt = 0
    while key_slot(f"s{shard}.{salt}".encode()) * shards // SLOTS != shard:
        salt += 1
    return f"{{s{shard}.{salt}}}"


class ShardKeys:
    """The keys of one index shard: its tasks, their indexes and idempotency records. In cluster
    mode they share a hash tag (one slot), so every script on them is single-slot."""

    def __init__(self, number: int, base: str) -> None:
        self.number = number
        self.base = base
        self.all = f"{base}index:all"
        self.completed = f"{base}index:completed"

    def task(self, task_id: str) -> str:
        return f"{self.base}task:{task_id}"

    def status(self, status: str) -> str:  # a Status, or its value
        return f"{self.base}index:status:{status}"

    def index(self, status: Status | None) -> str:
        return self.all if status is None else self.status(status)

    def idempotency(self, digest: str) -> str:
        return f"{self.base}idempotency:{digest}"

    def indexes(self) -> list[str]:
        """The id index, every status index and the completion-time index, in this order (a
        delete removes the id from all of them)."""
        return [self.all, *(self.status(s) for s in Status), self.completed]


class RedisKeys:
    """Every key the store writes, in one place. Every key starts with the prefix (so an ACL key
    pattern `~<prefix>*` covers them all).

    Standalone: one shard, under the names the module docstring lists. Cluster: `shards` shards,
    `<prefix>{s<k>.<i>}task:<id>` and so on (see `shard_tag`); a task lives in the shard its id
    hashes to (CRC-32 modulo the count), an idempotency record in the one its key hashes to, and
    the layout metadata under a tag of its own (`<prefix>{meta}:layout`, `:layout-min`, and
    `:shards`, the count, fixed at first use)."""

    def __init__(self, prefix: str, *, cluster: bool = False, shards: int = 1) -> None:
        self.prefix = prefix
        self.cluster = cluster
        meta = f"{prefix}{{meta}}:" if cluster else f"{prefix}meta:"
        self.layout = f"{meta}layout"
        self.layout_min = f"{meta}layout-min"
        self.shard_count = f"{meta}shards"  # cluster mode only
        count = shards if cluster else 1
        self.shards = [
            ShardKeys(k, prefix + shard_tag(k, count) if cluster else prefix) for k in range(count)
        ]

    def shard_of(self, name: str) -> ShardKeys:
        """The shard a task id (or an idempotency digest) hashes to; standalone has just one."""
        if len(self.shards) == 1:  # no hash to compute on every call of a standalone store
            return self.shards[0]
        return self.shards[zlib.crc32(name.encode()) % len(self.shards)]

    def task(self, task_id: str) -> str:
        return self.shard_of(task_id).task(task_id)

    def idempotency(self, key: str) -> tuple[ShardKeys, str]:
        """The shard an Idempotency-Key belongs to, and its record's key there."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        shard = self.shard_of(digest)
        return shard, shard.idempotency(digest)

    def lock(self, name: str) -> str:
        return f"{self.prefix}lock:{name}"

    def by_shard(
        self, items: Iterable[X], task_id: Callable[[X], str]
    ) -> list[tuple[ShardKeys, list[X]]]:
        """The items grouped by their task's shard, in first-seen order: a batch script runs
        once per shard (one slot each)."""
        groups: dict[int, list[X]] = {}
        for item in items:
            groups.setdefault(self.shard_of(task_id(item)).number, []).append(item)
        return [(self.shards[number], group) for number, group in groups.items()]


# What the Lua scripts share; each script sits in RedisTaskStore next to the operation that
# calls it, with its KEYS and ARGV, and is registered once per process (in __init__).
# The index keys: index:all, one per status, index:completed (ShardKeys.indexes).
_INDEXES = 2 + len(Status)
_FIELDS = TaskFields._fields  # a task's hash fields, in this order in every script
assert _FIELDS[0] == "id"
_STATUS_AT = _FIELDS.index("status")
_ABSENT = [None] * len(_FIELDS)  # what HMGET answers for a task that does not exist
_LUA_FIELD_NAMES = "local names = {" + ", ".join(f"'{name}'" for name in _FIELDS) + "}"
# HSET's field-value pairs from ARGV[1..7], written out: no table to build on each create
_LUA_FIELDS_FROM_ARGV = ", ".join(f"'{name}', ARGV[{i}]" for i, name in enumerate(_FIELDS, 1))
_CHANGED = -1  # what the conditional writes answer when If-Match does not name the task's ETag
# `etag` (service.domain) as a script computes it, and the If-Match check of conditional writes:
# `tags` is "*" (any) or the tags allowed, concatenated (`_tags`). A script using these declares
# its KEYS as [1] the task's hash, [2..] every index (ShardKeys.indexes).
_LUA_ETAG = (
    _LUA_FIELD_NAMES
    + """
    local function etag(row)
      local parts = {}
      for i = 1, #names do
        local value = row[i] or ''
        parts[i] = #value .. ':' .. value
      end
      return '"' .. string.sub(redis.sha1hex(table.concat(parts)), 1, 20) .. '"'
    end
    local function allowed(tags, row)
      return tags == '*' or string.find(tags, etag(row), 1, true) ~= nil
    end
    """
)
_TAG = re.compile(r'"[0-9a-f]{20}"')  # the ETags this service issues (both forms)
_LAYOUT_RECHECK_SECONDS = 1.0


def _to_hash(task: Task) -> dict[Any, str]:
    return task_fields(task)._asdict()


def _from_hash(fields: Mapping[str, str]) -> Task:
    return Task.model_validate({**fields, "completed_at": fields.get("completed_at") or None})


def _json_fields(rows: Sequence[_Row]) -> list[dict[str, str | None]]:
    """Tasks as JSON objects (`json_object`) from their hashes' fields in _FIELDS order
    (HMGET), without building the models. A hash without every field goes through the model,
    whose validation says what is wrong."""
    return [
        json_object(row) if None not in row else _from_row(row).model_dump(mode="json")
        for row in rows
    ]


def _from_row(row: _Row) -> Task:
    present = {name: value for name, value in zip(_FIELDS, row, strict=True) if value is not None}
    return _from_hash(present)


def _tags(if_match: frozenset[str] | None) -> str:
    """If-Match's tags as the conditional scripts take them (`_LUA_ETAG`): only well-formed
    ones (no other can match), so that the script's substring search matches whole tags."""
    return "*" if if_match is None else "".join(t for t in if_match if _TAG.fullmatch(t))


def _json_etag(row: _Row) -> str:
    """The ETag earlier builds issued for a task (a hash of its JSON): a conditional write
    that names it is served as one naming the task's ETag now, so that a client's ETag from a
    pod of the previous release stays good through a rolling upgrade."""
    body = pydantic_core.to_json(_json_fields([row])[0])
    return '"' + hashlib.blake2b(body, digest_size=10).hexdigest() + '"'


def _task_id(task: Task) -> str:
    return task.id


def _score(completed_at: str) -> int | str:
    """A task's score in the completion-time index, from its stored `completed_at`; "" for a
    task that is not done."""
    return completion_score(datetime.fromisoformat(completed_at)) if completed_at else ""


class RedisTaskStore:
    """Tasks in Redis, for a build that serves the data layouts `layout` describes (production:
    `service.store.migrations.BUILD_LAYOUT`; tests pass others to act as other builds)."""

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str,
        timeout: float,
        layout: BuildLayout,
        shards: int = 1,
        concurrency: int | None = None,
    ) -> None:
        self._redis = client
        self._build = layout
        self._cluster = isinstance(client, RedisCluster)
        self._keys = RedisKeys(prefix, cluster=self._cluster, shards=shards)
        self._timeout = timeout
        # One operation per pooled connection at a time (an operation uses one connection at a
        # time, per shard); the others queue here, first come first served, within their
        # budget. Waiting here rather than in the pool means a call that runs out of time is
        # cancelled while it holds no connection: under overload, connections are not torn down
        # (each one cancelled mid-command must be), so the pool does not churn into a collapse.
        if concurrency is None:
            assert isinstance(client, aioredis.Redis), "a cluster client's pools are per node"
            concurrency = client.connection_pool.max_connections
        self._slots = asyncio.Semaphore(concurrency)
        self._layout_checked_at: float | None = None
        self._role_checked_at: float | None = None
        # Registered once per process (the store is): each call runs EVALSHA, loading the
        # script only if the server does not know it yet.
        self._create_script = _Script(client, self._CREATE)
        self._list_script = _Script(client, self._LIST)
        self._patch_script = _Script(client, self._PATCH)
        self._delete_script = _Script(client, self._DELETE)
        self._delete_unchanged = _Script(client, self._DELETE_UNCHANGED)
        self._put = _Script(client, self._PUT)
        self._completed_script = _Script(client, self._COMPLETED)
        self._delete_completed = _Script(client, self._DELETE_COMPLETED)
        self._get_many_script = _Script(client, self._GET_MANY)
        self._renew_lock = _Script(client, self._RENEW_LOCK)
        self._release_lock = _Script(client, self._RELEASE_LOCK)

    @property
    def client(self) -> RedisClient:
        """The Redis client (for migrations, which know older layouts)."""
        return self._redis

    @property
    def keys(self) -> RedisKeys:
        return self._keys

    @property
    def build(self) -> BuildLayout:
        """The data layouts this build serves."""
        return self._build

    @property
    def write_lag_seconds(self) -> float:
        """How long after the window moves a write of a build it no longer admits may still
        land: a build checks the window at most a second before a write, and a write takes at
        most the operation timeout (the builds of one release share that setting)."""
        return _LAYOUT_RECHECK_SECONDS + self._timeout

    async def _bounded(self, operation: Awaitable[T]) -> T:
        """Run one store operation within the timeout; any Redis failure becomes
        StoreUnavailable, and a node that no longer takes writes loses our connections."""
        try:
            async with asyncio.timeout(self._timeout), self._slots:
                return await operation
        except REDIS_FAILURES as exc:
            error = unavailable(exc)
        except StoreUnavailable as exc:  # the ROLE check's verdict
            error = exc
        except RuntimeError as exc:
            if _LOST_TRANSPORT not in str(exc):
                raise
            error = StoreUnavailable(Unavailability.connection)
        finally:
            if isinstance(operation, Coroutine):
                operation.close()  # one that timed out waiting for its turn never started
        if error.reason in _STALE_NODE:
            await self._drop_connections()
        raise error

    async def _drop_connections(self) -> None:
        """Close every pooled connection, so the next call connects (and resolves the
        address) afresh: after a failover, a Service or DNS name leads to the new primary.
        (A cluster client follows failovers itself: it refreshes its slot map.)"""
        self._layout_checked_at = self._role_checked_at = None
        if not isinstance(self._redis, aioredis.Redis):
            return
        with contextlib.suppress(*REDIS_FAILURES, OSError):
            async with asyncio.timeout(self._timeout):
                await self._redis.connection_pool.disconnect()
        # Info: each request that met the read-only node logs its own "store unavailable".
        log.info("dropped the Redis connections: the node no longer takes writes")

    async def ping(self) -> None:
        await self._bounded(self._ping())

    async def _ping(self) -> None:
        await self._check_role()
        await self._check_layout()

    async def _check_role(self) -> None:
        """Refuse a replica (it would answer reads and fail every write), at most a second
        stale: readiness probes come often, failovers rarely. In cluster mode, refuse a cluster
        that does not serve every slot (CLUSTER INFO's cluster_state, asked of one node): the
        client itself sends each call to the primary that holds its slot."""
        checked = self._role_checked_at
        if checked is not None and time.monotonic() - checked < _ROLE_RECHECK_SECONDS:
            return
        if isinstance(self._redis, RedisCluster):
            info = await self._redis.cluster_info(target_nodes=RedisCluster.RANDOM)
            if info.get("cluster_state") != "ok":
                raise StoreUnavailable(
                    Unavailability.clusterdown, "the cluster does not serve every slot"
                )
        else:
            role = await self._redis.role()
            if role[0] != "master":
                raise StoreUnavailable(Unavailability.readonly, "the store is a read-only replica")
        self._role_checked_at = time.monotonic()

    async def _check_layout(self) -> None:
        """Raise LayoutMismatch unless the stored window admits this build; record this build's
        window when the database is empty."""
        stored = await self._layout()
        if stored is None:
            build = self._build
            # MSETNX: both keys or neither, and never over another process's first record.
            await self._redis.msetnx(
                {self._keys.layout: build.version, self._keys.layout_min: build.fresh_min}
            )
            stored = await self._layout() or LayoutWindow(0, 0)
        self._layout_checked_at = None
        await self._claim_shards()
        if not self._build.serves(stored):
            raise LayoutMismatch(stored, self._build)
        self._layout_checked_at = time.monotonic()

    async def _guard_write(self) -> None:
        """Before a write: the layout check, unless one passed within the last second."""
        checked = self._layout_checked_at
        if checked is None or time.monotonic() - checked > _LAYOUT_RECHECK_SECONDS:
            await self._check_layout()

    async def layout(self) -> LayoutWindow | None:
        return await self._bounded(self._layout())

    async def _layout(self) -> LayoutWindow | None:
        from service.store.migrations import legacy_data_present

        keys = self._keys
        meta = [keys.layout, keys.layout_min, *([keys.shard_count] if self._cluster else [])]
        current, floor, *shards = cast(list[str | None], await self._redis.mget(meta))
        if shards and shards[0] is not None and int(shards[0]) != len(keys.shards):
            raise ShardCountMismatch(int(shards[0]), len(keys.shards))
        if current is not None:
            # No floor: recorded before the window existed, when only one layout was served.
            return LayoutWindow(int(current), int(floor if floor is not None else current))
        return LayoutWindow(0, 0) if await legacy_data_present(self) else None

    async def _claim_shards(self) -> None:
        """Cluster mode: record the shard count if none is, and refuse data sharded otherwise
        (its tasks would be looked for in the wrong shards)."""
        if not self._cluster:
            return
        key, count = self._keys.shard_count, len(self._keys.shards)
        await self._redis.set(key, count, nx=True)
        stored = int(cast(str, await self._redis.get(key)))
        if stored != count:
            raise ShardCountMismatch(stored, count)

    async def set_layout(self, window: LayoutWindow) -> None:
        await self._bounded(self._set_layout(window))

    async def _set_layout(self, window: LayoutWindow) -> None:
        await self._claim_shards()
        mapping = {self._keys.layout: window.current, self._keys.layout_min: window.min_compatible}
        await self._redis.mset(mapping)
        self._layout_checked_at = None

    async def close(self) -> None:
        if isinstance(self._redis, RedisCluster):
            await self._redis.aclose()
        else:
            await self._redis.aclose(close_connection_pool=True)

    # Create, atomically, optionally under an Idempotency-Key.
    # KEYS: [1] the task's hash, [2] index:all, [3] its status index, [4] index:completed,
    #   [5] (with a key only) the idempotency record.
    # ARGV: [1..7] the hash's fields, in _FIELDS order (the names are the script's: half the
    #   arguments), the id first; [8] its completion score, or "" (not done); with a key only,
    #   [9] the idempotency record ("<fingerprint>\n<task json>") and [10] its TTL in seconds.
    # Returns nil when it created the task, else the record stored earlier under the key.
    _CREATE = f"""
    if KEYS[5] then
      local remembered = redis.call('GET', KEYS[5])
      if remembered then return remembered end
      redis.call('SET', KEYS[5], ARGV[9], 'EX', ARGV[10])
    end
    redis.call('HSET', KEYS[1], {_LUA_FIELDS_FROM_ARGV})
    redis.call('ZADD', KEYS[2], 0, ARGV[1])
    redis.call('ZADD', KEYS[3], 0, ARGV[1])
    if ARGV[8] ~= '' then redis.call('ZADD', KEYS[4], ARGV[8], ARGV[1]) end
    return false
    """

    async def create(self, task: TaskFields, idempotency: Idempotency | None = None) -> Created:
        return await self._bounded(self._create(task, idempotency))

    async def _create(self, task: TaskFields, idempotency: Idempotency | None) -> Created:
        await self._guard_write()
        shard = self._keys.shard_of(task.id)
        record = None
        if idempotency is not None:
            home, record = self._keys.idempotency(idempotency.key)
            if home is not shard:  # the task takes an id in the key's shard: one slot, one script
                task = with_new_id(task, lambda task_id: self._keys.shard_of(task_id) is home)
                shard = home
        created = Created(task.id, fields_json(task))
        keys = [shard.task(task.id), shard.all, shard.status(task.status), shard.completed]
        args: list[str | int] = [*task, _score(task.completed_at)]
        if idempotency is not None and record is not None:
            keys.append(record)
            args += (
                idempotency.fingerprint + "\n" + created.json.body.decode(),
                idempotency.ttl_seconds,
            )
        remembered = await self._create_script(keys=keys, args=args)
        if remembered is None or idempotency is None:
            return created
        return self._replay(cast(str, remembered), idempotency)

    @staticmethod
    def _replay(remembered: str, idempotency: Idempotency) -> Created:
        fingerprint, _, first = remembered.partition("\n")
        if fingerprint != idempotency.fingerprint:
            raise IdempotencyKeyReused("this Idempotency-Key was used with another body")
        task = Task.model_validate_json(first)
        return Created(task.id, task_json(task), replayed=True)

    async def get(self, task_id: str) -> Task:
        return _from_row(await self._row(task_id))

    async def get_json(self, task_id: str) -> TaskJson:
        row = await self._row(task_id)
        (fields,) = _json_fields([row])
        return TaskJson(pydantic_core.to_json(fields), etag(row))

    async def _row(self, task_id: str) -> _Row:
        """The task's fields in _FIELDS order (as a list page reads them), or TaskNotFound."""
        key = self._keys.task(task_id)
        row = cast(_Row, await self._bounded(self._redis.hmget(key, _FIELDS)))
        if row == _ABSENT:
            raise TaskNotFound()
        return row

    # A listing page in one round trip, so the index and the hashes are read at one instant.
    # KEYS: [1] the index to read (index:all or one status index).
    # ARGV: [1] the upper bound ("+" or "(<id>"), [2] how many ids (the limit plus one),
    #   [3] the shard's task key prefix (`<prefix>task:`, or `<prefix>{<tag>}task:`): task keys
    #   are derived here, not declared, which Redis allows for keys in the declared key's slot.
    # Returns {ids, rows}: each row the task's fields in _FIELDS order, all nil for a task
    #   deleted meanwhile.
    _LIST = (
        _LUA_FIELD_NAMES
        + """
    local ids = redis.call('ZREVRANGEBYLEX', KEYS[1], ARGV[1], '-', 'LIMIT', 0, ARGV[2])
    local rows = {}
    for i, id in ipairs(ids) do rows[i] = redis.call('HMGET', ARGV[3] .. id, unpack(names)) end
    return {ids, rows}
    """
    )

    async def list(self, *, status: Status | None, limit: int, before: str | None) -> PageJson:
        return await self._bounded(self._list(status, limit, before))

    async def _list(self, status: Status | None, limit: int, before: str | None) -> PageJson:
        # Each shard's newest `limit + 1` below the cursor, read at once: the page's newest
        # `limit + 1` are among them, so merging keeps the keyset cursor exact across shards.
        upper = "+" if before is None else f"({before}"
        replies = await _each(
            self._list_shard(shard, status, upper, limit + 1) for shard in self._keys.shards
        )
        if len(replies) == 1:
            (found,) = replies
        else:
            found = sorted((pair for reply in replies for pair in reply), reverse=True)[: limit + 1]
        has_more = len(found) > limit
        # A deleted task (all nil) is simply absent; a row is checked against the filter as
        # well, so the answer can only hold tasks that have the status asked for.
        rows = [
            row
            for _, row in found[:limit]
            if row != _ABSENT and (status is None or row[_STATUS_AT] == status)
        ]
        return PageJson(
            items=pydantic_core.to_json(_json_fields(rows)),
            next_cursor=found[limit - 1][0] if has_more else None,
        )

    async def _list_shard(
        self, shard: ShardKeys, status: Status | None, upper: str, count: int
    ) -> _Found:
        """One shard's newest `count` ids below `upper`, each with its row."""
        index = shard.index(status)
        try:
            reply = await self._list_script(keys=[index], args=[upper, count, shard.task("")])
        except ResponseError as exc:
            if not str(exc).startswith(_NON_LOCAL_KEY):
                raise
            # The shard's slot is being migrated, and some of its keys have moved: read the
            # index, then each hash, one key per command (the client follows each ASK).
            found = cast(list[str], await self._redis.zrevrangebylex(index, upper, "-", 0, count))
            rows = await _each(self._redis.hmget(shard.task(i), _FIELDS) for i in found)
            return list(zip(found, cast(list[_Row], rows), strict=True))
        ids, read = cast(tuple[list[str], list[_Row]], reply)
        return list(zip(ids, read, strict=True))

    # A patch, `apply_patch` in Lua (a test holds the two equal): one round trip, If-Match or
    # not, since the script reads the task, checks its ETag and writes it at one instant.
    # KEYS: [1] the task's hash, [2..] every index (ShardKeys.indexes: all, one per status in
    #   Status order, completed).
    # ARGV: [1] the task id, [2] If-Match's tags or "*" (`_tags`), [3] now, as a timestamp
    #   field, [4] now's completion score, [5..] the patch: a field's name, then its value.
    # Returns {1, row}: the task after (written, or as it was when the patch changes nothing, or
    #   when a field is missing: its validation says what is wrong); {0} when the task is gone;
    #   {-1, row} when its ETag is not among the tags.
    _PATCH = (
        _LUA_ETAG
        + "local status_index = {"
        + ", ".join(f"{status.value} = KEYS[{i}]" for i, status in enumerate(Status, start=3))
        + """}
    local current = redis.call('HMGET', KEYS[1], unpack(names))
    if not current[1] then return {0} end
    if not allowed(ARGV[2], current) then return {-1, current} end
    local at, new, changed = {}, {}, false
    for i, name in ipairs(names) do
      if not current[i] then return {1, current} end
      at[name], new[i] = i, current[i]
    end
    local id, status, was = ARGV[1], at['status'], current[at['status']]
    if not status_index[was] then return {1, current} end
    for k = 5, #ARGV, 2 do
      if new[at[ARGV[k]]] ~= ARGV[k + 1] then new[at[ARGV[k]]], changed = ARGV[k + 1], true end
    end
    if not changed then return {1, current} end
    new[at['updated_at']] = ARGV[3]
    if new[status] ~= 'done' then
      new[at['completed_at']] = ''
      if was == 'done' then redis.call('ZREM', KEYS[#KEYS], id) end
    elseif was ~= 'done' then
      new[at['completed_at']] = ARGV[3]
      redis.call('ZADD', KEYS[#KEYS], ARGV[4], id)
    end
    if new[status] ~= was then
      redis.call('ZREM', status_index[was], id)
      redis.call('ZADD', status_index[new[status]], 0, id)
    end
    local fields = {}
    for i = 1, #names do
      fields[2 * i - 1] = names[i]
      fields[2 * i] = new[i]
    end
    redis.call('HSET', KEYS[1], unpack(fields))
    return {1, new}
    """
    )

    async def patch(
        self,
        task_id: str,
        patch: TaskPatch,
        if_match: frozenset[str] | None = None,
        now: datetime | None = None,
    ) -> Task:
        return await self._bounded(self._patch(task_id, patch, if_match, now or utcnow()))

    async def _patch(
        self, task_id: str, patch: TaskPatch, if_match: frozenset[str] | None, now: datetime
    ) -> Task:
        await self._guard_write()
        shard = self._keys.shard_of(task_id)
        keys = [shard.task(task_id), *shard.indexes()]
        changes = patch.model_dump(mode="json", exclude_unset=True)
        args: list[str | int] = [json_time(now), completion_score(now)]
        args += [part for change in changes.items() for part in change]
        return _from_row(await self._conditional(self._patch_script, keys, task_id, if_match, args))

    # Delete, unconditionally or only if the task's ETag is among If-Match's tags.
    # KEYS: [1] the task's hash, [2..] every index (ShardKeys.indexes).
    # ARGV: [1] the task id, [2] If-Match's tags or "*" (`_tags`).
    # Returns {1} when deleted, {0} when the task is gone, {-1, row} when its ETag is not
    #   among the tags.
    _DELETE = (
        _LUA_ETAG
        + """
    if ARGV[2] ~= '*' then
      local current = redis.call('HMGET', KEYS[1], unpack(names))
      if not current[1] then return {0} end
      if not allowed(ARGV[2], current) then return {-1, current} end
    end
    if redis.call('DEL', KEYS[1]) == 0 then return {0} end
    for k = 2, #KEYS do redis.call('ZREM', KEYS[k], ARGV[1]) end
    return {1}
    """
    )

    async def delete(self, task_id: str, if_match: frozenset[str] | None = None) -> None:
        await self._bounded(self._delete(task_id, if_match))

    async def _delete(self, task_id: str, if_match: frozenset[str] | None) -> None:
        await self._guard_write()
        shard = self._keys.shard_of(task_id)
        keys = [shard.task(task_id), *shard.indexes()]
        await self._conditional(self._delete_script, keys, task_id, if_match)

    async def _conditional(
        self,
        script: _Script,
        keys: Sequence[str],
        task_id: str,
        if_match: frozenset[str] | None,
        args: Sequence[str | int] = (),
    ) -> _Row:
        """Run a conditional write (`_PATCH`, `_DELETE`): the row it answers with, or
        `TaskNotFound`, or `PreconditionFailed`."""
        answer = await script(keys=keys, args=[task_id, _tags(if_match), *args])
        if answer[0] == _CHANGED and if_match and _json_etag(answer[1]) in if_match:
            # An ETag an earlier build issued, for the task as it is: the same write, on it.
            answer = await script(keys=keys, args=[task_id, etag(answer[1]), *args])
        if answer[0] == 0:
            raise TaskNotFound()
        if answer[0] == _CHANGED:
            raise PreconditionFailed()
        return cast(_Row, answer[1] if len(answer) > 1 else [])

    # --- for the admin jobs ---------------------------------------------------------------

    async def scan_ids(self, *, status: Status | None, after: str | None, limit: int) -> IdList:
        return await self._bounded(self._scan_ids(status, after, limit))

    async def _scan_ids(self, status: Status | None, after: str | None, limit: int) -> IdList:
        # Each shard's first `limit` above the cursor (at most shards x limit ids in memory).
        lower = "-" if after is None else f"({after}"
        batches = await _each(
            self._redis.zrangebylex(shard.index(status), lower, "+", start=0, num=limit)
            for shard in self._keys.shards
        )
        return sorted(i for batch in batches for i in cast(IdList, batch))[:limit]

    # One shard's next done tasks in completion order, after a (score, id) cursor.
    # KEYS: [1] index:completed.
    # ARGV: [1] the bound: only scores below it, [2] the cursor's score or "" (from the start),
    #   [3] the cursor's id, [4] how many.
    # Returns a flat list: id, score, id, score, ...
    # Members of one score sort by id, so the first above the cursor is found by bisecting the
    # ranks of the cursor's score (the cursor's own entry may be gone): O(log^2 n) however many
    # tasks share a completion time, and the walk never reads the entries it has passed.
    _COMPLETED = """
    local function above(a, b)  -- in byte order, as Redis sorts members (Lua's `>` uses the locale)
      for i = 1, math.min(#a, #b) do
        local x, y = string.byte(a, i), string.byte(b, i)
        if x ~= y then return x > y end
      end
      return #a > #b
    end
    local start = 0
    if ARGV[2] ~= '' then
      local low = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. ARGV[2])
      local high = redis.call('ZCOUNT', KEYS[1], '-inf', ARGV[2])
      while low < high do
        local middle = math.floor((low + high) / 2)
        local id = redis.call('ZRANGE', KEYS[1], middle, middle)[1]
        if above(id, ARGV[3]) then high = middle else low = middle + 1 end
      end
      start = low
    end
    local found = redis.call('ZRANGE', KEYS[1], start, start + ARGV[4] - 1, 'WITHSCORES')
    local below = tonumber(ARGV[1])
    for i = 2, #found, 2 do
      if tonumber(found[i]) >= below then
        return {unpack(found, 1, i - 2)}
      end
    end
    return found
    """

    async def scan_completed(
        self, *, before: datetime, after: Completion | None, limit: int
    ) -> CompletionList:
        return await self._bounded(self._scan_completed(before, after, limit))

    async def _scan_completed(
        self, before: datetime, after: Completion | None, limit: int
    ) -> CompletionList:
        # Each shard's first `limit` after the cursor (ids and scores only), merged.
        cursor = ["", ""] if after is None else [completion_score(after[0]), after[1]]
        bound = completion_score(before)
        replies = await _each(
            self._completed_script(keys=[shard.completed], args=[bound, *cursor, limit])
            for shard in self._keys.shards
        )
        found = sorted(
            (int(float(score)), task_id)
            for reply in cast(list[list[str]], replies)
            for task_id, score in zip(reply[::2], reply[1::2], strict=True)
        )[:limit]
        return [(completed_at(score), task_id) for score, task_id in found]

    # Delete one shard's oldest expired done tasks, entry by entry from the completion-time
    # index: no task is read by the client, and nothing can change between check and delete.
    # KEYS: [1] index:all, [2] index:status:done, [3] index:completed.
    # ARGV: [1] the bound: only scores below it, [2] how many, [3] the shard's task key prefix.
    # Returns {entries taken, tasks deleted}. An entry whose task is not done (which no writer
    # leaves) only loses its entry, so a walk never stalls on it.
    _DELETE_COMPLETED = """
    local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
    if #ids == 0 then return {0, 0} end
    local keys, done = {}, {}
    for _, id in ipairs(ids) do
      local key = ARGV[3] .. id
      if redis.call('HGET', key, 'status') == 'done' then
        keys[#keys + 1] = key
        done[#done + 1] = id
      end
    end
    redis.call('ZREMRANGEBYRANK', KEYS[3], 0, #ids - 1)  -- the entries just read, in order
    if #done > 0 then
      redis.call('DEL', unpack(keys))
      redis.call('ZREM', KEYS[1], unpack(done))
      redis.call('ZREM', KEYS[2], unpack(done))
    end
    return {#ids, #done}
    """

    async def delete_completed(self, *, before: datetime, limit: int) -> Swept:
        return await self._bounded(self._delete_completed_batch(before, limit))

    async def _delete_completed_batch(self, before: datetime, limit: int) -> Swept:
        await self._guard_write()
        bound, each = completion_score(before), max(1, limit // len(self._keys.shards))
        replies = await _each(
            self._delete_completed(
                keys=[shard.all, shard.status(Status.done), shard.completed],
                args=[bound, each, shard.task("")],
            )
            for shard in self._keys.shards
        )
        counts = cast(list[list[int]], replies)
        return Swept(sum(c[0] for c in counts), sum(c[1] for c in counts))

    async def get_many(self, task_ids: Sequence[str]) -> TaskList:
        if not task_ids:
            return []
        return await self._bounded(self._get_many(task_ids))

    # Read a batch of one shard's task hashes in one command: a script costs the client one
    # request and one reply to decode, a pipeline one of each per task.
    # KEYS: the task hashes. ARGV: none. Returns one flat HGETALL reply per key (empty: absent).
    _GET_MANY = """
    local rows = {}
    for i, key in ipairs(KEYS) do rows[i] = redis.call('HGETALL', key) end
    return rows
    """

    async def _get_many(self, task_ids: Sequence[str]) -> TaskList:
        groups = self._keys.by_shard(task_ids, str)
        replies = await _each(
            self._get_many_script(keys=[shard.task(i) for i in ids]) for shard, ids in groups
        )
        rows: dict[str, dict[str, str]] = {}
        for (_, ids), flat in zip(groups, cast(list[list[list[str]]], replies), strict=True):
            for task_id, row in zip(ids, flat, strict=True):
                if row:
                    rows[task_id] = dict(zip(row[::2], row[1::2], strict=True))
        return [_from_hash(rows[i]) for i in task_ids if i in rows]

    # Delete each task only if it is stored as read (status, updated_at, completed_at).
    # KEYS: the index keys (_INDEXES of them), then one task hash per task.
    # ARGV: [1] per task, one line "<id>\t<status>\t<updated_at>\t<completed_at>\n" (completed_at
    #   "" for none): one argument for the batch, as the client packs each argument one by one.
    # Returns the ids deleted.
    _DELETE_UNCHANGED = f"""
    local deleted = {{}}
    local i = {_INDEXES}
    for id, status, updated, completed in string.gmatch(
        ARGV[1], '([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)\\t([^\\n]*)\\n') do
      i = i + 1
      local current = redis.call('HMGET', KEYS[i], 'status', 'updated_at', 'completed_at')
      if current[1] == status and current[2] == updated and current[3] == completed then
        redis.call('DEL', KEYS[i])
        for k = 1, {_INDEXES} do redis.call('ZREM', KEYS[k], id) end
        deleted[#deleted + 1] = id
      end
    end
    return deleted
    """

    async def delete_unchanged(self, tasks: Sequence[Task]) -> IdList:
        if not tasks:
            return []
        return await self._bounded(self._delete_unchanged_batch(tasks))

    async def _delete_unchanged_batch(self, tasks: Sequence[Task]) -> IdList:
        await self._guard_write()
        return [
            i
            for ids in await _each(
                self._delete_in(s, ts) for s, ts in self._keys.by_shard(tasks, _task_id)
            )
            for i in ids
        ]

    async def _delete_in(self, shard: ShardKeys, tasks: Sequence[Task]) -> IdList:
        keys = [*shard.indexes(), *(shard.task(t.id) for t in tasks)]
        lines = []
        for task in tasks:
            fields = _to_hash(task)
            lines.append(
                f"{task.id}\t{fields['status']}\t{fields['updated_at']}\t{fields['completed_at']}\n"
            )
        return cast(IdList, await self._delete_unchanged(keys=keys, args=["".join(lines)]))

    # Upsert tasks exactly as given, indexes kept consistent, as one atomic batch (per shard).
    # KEYS: the index keys (_INDEXES of them, index:completed last), then one task hash per task.
    # ARGV: per task, its status index's position in KEYS (2 on), its completion score or ""
    #   (not done), then its fields in _FIELDS order.
    # Returns how many tasks it wrote.
    _PUT = (
        _LUA_FIELD_NAMES
        + f"""
    local width = 2 + #names
    for i = 1, #KEYS - {_INDEXES} do
      local base = (i - 1) * width
      local id = ARGV[base + 3]
      local fields = {{}}
      for f = 1, #names do
        fields[2 * f - 1] = names[f]
        fields[2 * f] = ARGV[base + 2 + f]
      end
      redis.call('DEL', KEYS[{_INDEXES} + i])
      redis.call('HSET', KEYS[{_INDEXES} + i], unpack(fields))
      redis.call('ZADD', KEYS[1], 0, id)
      for k = 2, {_INDEXES} - 1 do
        if k == tonumber(ARGV[base + 1]) then
          redis.call('ZADD', KEYS[k], 0, id)
        else
          redis.call('ZREM', KEYS[k], id)
        end
      end
      if ARGV[base + 2] ~= '' then
        redis.call('ZADD', KEYS[{_INDEXES}], ARGV[base + 2], id)
      else
        redis.call('ZREM', KEYS[{_INDEXES}], id)
      end
    end
    return #KEYS - {_INDEXES}
    """
    )

    async def put_many(self, tasks: Sequence[Task]) -> None:
        if tasks:
            await self._bounded(self._put_many(tasks))

    async def _put_many(self, tasks: Sequence[Task]) -> None:
        await self._guard_write()
        await _each(
            self._put_in(shard, group) for shard, group in self._keys.by_shard(tasks, _task_id)
        )

    async def _put_in(self, shard: ShardKeys, tasks: Sequence[Task]) -> None:
        indexes = shard.indexes()  # all, one per status in Status order, completed
        position = {status: indexes.index(shard.status(status)) + 1 for status in Status}
        keys, args = list(indexes), list[str | int]()
        for task in tasks:
            fields = task_fields(task)
            keys.append(shard.task(task.id))
            args += [position[task.status], _score(fields.completed_at), *fields]
        await self._put(keys=keys, args=args)  # one script: the shard's part is atomic

    async def acquire_lock(self, name: str, ttl_seconds: float) -> str | None:
        token = secrets.token_hex(16)
        call = self._redis.set(self._keys.lock(name), token, nx=True, px=_ms(ttl_seconds))
        return token if await self._bounded(call) else None

    # Extend a lock only while this token holds it.
    # KEYS: [1] the lock. ARGV: [1] the token, [2] the new TTL in milliseconds.
    # Returns 1 when extended, 0 when the lock expired or another token holds it.
    _RENEW_LOCK = """
    if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
    return 0
    """

    async def renew_lock(self, name: str, token: str, ttl_seconds: float) -> bool:
        call = self._renew_lock(keys=[self._keys.lock(name)], args=[token, _ms(ttl_seconds)])
        return bool(await self._bounded(call))

    # Release a lock only while this token holds it.
    # KEYS: [1] the lock. ARGV: [1] the token. Returns 1 when released, 0 otherwise.
    _RELEASE_LOCK = """
    if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
    return 0
    """

    async def release_lock(self, name: str, token: str) -> bool:
        call = self._release_lock(keys=[self._keys.lock(name)], args=[token])
        return bool(await self._bounded(call))


async def _each(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Await the calls at once (one per shard); the first failure cancels the rest and is
    raised as itself, so callers see a Redis error rather than an exception group."""
    pending = list(calls)
    if len(pending) == 1:
        return [await pending[0]]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaited(call)) for call in pending]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


async def _awaited(call: Awaitable[T]) -> T:
    return await call


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
