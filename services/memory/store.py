"""Conversations and interactions in Redis.

The key layout is in ``keys.py`` (and, for the keys a conversation owns, ``lua/keys.lua``);
``U`` there is the first 20 hex digits of sha256(tenant + NUL + user), or of sha256(user)
as before tenants for the tenant ``default`` and for a user alone in a tenant of its own
name — see ``Owner.digest``.

``{u:U}`` is the Redis Cluster hash tag: every key of one owner (a user of a tenant) lives
in one hash slot, so
the Lua scripts (``lua/*.lua``), which touch several of them, stay atomic on a cluster too. Because
the caller is part of every key, another user's data is simply not found. Conversation
hashes also store the owner, user and tenant, and every script checks both: the two
legacy owners of one user name share a tag (``Owner.digest``).

Every multi-key update is one Lua script (one round trip, atomic); a script that must
first declare a key it derives, or have the owner's accounting walked or measured by a
script declaring every key that reads, stops with nothing written and runs again after
(``MemoryStore._run``), so on a cluster mid-reshard no key not moved yet is taken for a
missing one. Lists are keyset pages:
``ZRANGE key (<cursor> - BYLEX REV LIMIT 0 n`` costs O(log N + n) however long the list.

An interaction is stored as its API message: protobuf encodes and decodes it in C, and the
list reply is a run of ready-made messages. UpdateInteraction rewrites the whole message
under a compare-and-set on its SHA-1 (lua/update_interaction.lua). Protobuf's
field evolution rules keep old records readable as the message grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Generic, Literal, TypeVar

from gensearch.memory.v1 import memory_service_pb2 as pb
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterError,
    ConnectionError,
    MovedError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    TimeoutError,
    TryAgainError,
)
from redis.typing import EncodableT, KeyT

from services.common import redis_errors
from services.common.auth import DEFAULT_TENANT
from services.common.call_deadline import call_cutoff
from services.common.errors import (
    Aborted,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from services.common.logs import ThrottledWarning
from services.common.redis_client import RedisClient, answered, node_of
from services.memory import keys
from services.memory.ids import UUIDv7Generator
from services.memory.recent_turns import RecentTurns

# Redis cannot serve now but may soon: down or unreachable, loading its data, a read-only
# replica after a failover, a cluster that is down or resharding (CLUSTERDOWN, MASTERDOWN
# and the cluster client's own failures to reach or map the cluster, TRYAGAIN).
_UNAVAILABLE = (
    ConnectionError,  # includes BusyLoadingError (LOADING)
    TimeoutError,
    BusyLoadingError,
    ReadOnlyError,
    ClusterError,  # includes ClusterDownError and MasterDownError
    TryAgainError,
    RedisClusterException,  # not a RedisError; includes SlotNotCoveredError
    OSError,
    # A connection closed under the command by the cluster client itself (a whole
    # cluster restarting: services/common/redis_client.py, REDIS_FAILURES).
    AttributeError,
)
_BUSY = "BUSY"  # a script runs too long; redis-py keeps it a plain ResponseError
# Redis at its maxmemory with noeviction (as deploy/ runs it) refuses writes: "OOM command
# not allowed ..." (OutOfMemoryError; a plain ResponseError when a script's write is
# refused). Until the operator makes room, or retention frees some, the store cannot take
# writes: UNAVAILABLE to the caller, a WARNING for the operator, who must act (one per
# 30 s while it lasts, and an INFO line when a write succeeds again: ``StoreWarnings``).
_FULL = "OOM "
# The commands of our scripts that Redis refuses past its maxmemory (those that may grow
# what it holds): a script calling one is a write, whose success ends a "store full".
_GROWS = frozenset(
    {"SET", "HSET", "HSETNX", "HINCRBY", "INCR", "INCRBY", "ZADD", "SADD", "RPUSH", "LPUSH"}
)
_CALLED = re.compile(r"redis\.p?call\(\s*'(\w+)'")
# A script touched a key it derives (an interaction's, from the conversation's list) that a
# reshard has already moved to the slot's new node: the script stopped there (its earlier
# writes stay; each script is written so that its retry completes it). Redis says "Script
# attempted to access a non local key in a cluster node", Valkey "Attempted to access ...".
_MOVING = "non local key in a cluster node"
# A write script stopped, nothing written, because the owner's accounting needs a script
# that declares keys it cannot (lua/usage.lua, USAGE_FIRST): "reconcile" or "measure <cid>".
_USAGE_FIRST = "GENSEARCH_USAGE_FIRST "
# A script stopped, nothing written, because a key it derives (a turn's conversation hash,
# the turn a request_id names) is missing and undeclared: mid-reshard it may not have moved
# yet (lua/read.lua, declare_first). Then the names of the keys to declare.
_DECLARE_FIRST = "GENSEARCH_DECLARE_FIRST "
log = logging.getLogger("gensearch.memory.store")
_URL_CREDENTIALS = re.compile(r"(\w+://)[^@/\s]*@")
_LUA = resources.files("services.memory") / "lua"
_NEEDS = "-- needs:"

T = TypeVar("T")
# Compare-and-set attempts of one UpdateInteraction before it gives up with ABORTED.
UPDATE_ATTEMPTS = 8
# Writes of one turn before it gives up with ABORTED, each finding a newer turn written by
# another replica (lua/create_interaction.lua, status 6). One write of a process at a time
# per conversation (``_one_turn_write``): only replicas compete, and every refusal means
# another's turn was stored; generous, as a refused turn is a refused answer.
TURN_WRITE_ATTEMPTS = 64
# Owners ``outbox_take_missed`` takes at once by default: a sweep takes them in batches of
# this many, however many the full outbox's refusals noted (up to SEARCH_OUTBOX_MAX_JOBS).
MISSED_BATCH = 100
# Turns one run of delete_conversation.lua deletes: bounds the keys it declares (a turn's
# and its request_id's) and how long it holds Redis; a longer conversation takes more runs.
DELETE_BATCH = 500
# How old (since its last batch) a deletion's mark (``MemoryStore._deleting_key``) is when
# it is taken as interrupted by default: far longer than one batch takes (a call marks
# again before each).
DELETE_RESUME_SECONDS = 60.0
# Deletions one ``MemoryStore.resume_deletions`` finishes at most.
RESUME_BATCH = 100
# How a resume runs one deletion (``resume_deletions``' ``around``): given the owner, the
# conversation and the deletion, answering what the deletion answered.
Around = Callable[["Owner", str, Callable[[], Awaitable[bool]]], Awaitable[object]]
# Turns one run of drop_missing.lua walks (declares, checks, drops): bounds how long one
# run holds Redis however long the conversation; a longer one takes more runs
# (``MemoryStore._drop_gone``).
DROP_BATCH = 500
# Members of the owner's list belonging to another owner (the other legacy owner of its
# tag, Owner.digest) one ListConversations page reads past at most before it ends early
# (with no item when it found none of the caller's by then: the next page goes on).
LIST_SKIP = 1000
# Turns one ListConversations page checks for a key gone (lua/list_conversations.lua)
# before it ends early, once it holds an item (also at most the turns a conversation may
# hold): a page costs O(this + one window, GONE_CHECK_TURNS), however long its
# conversations.
LIST_TURNS = 10_000
# Turns of a conversation one call checks for a key gone (lua/read.lua's missing_turn):
# GetConversation, each conversation of a ListConversations page, a write at the byte
# limit. A window from an offset chosen at random per call (``MemoryStore._gone_check``;
# GetConversation's is drawn one call ahead, so that the call before can name its turns),
# wrapping: no call costs more than this, however long the conversation, and repeated calls
# cover every turn (a conversation of t turns has a given gone turn found by one call in
# this/t, so within t/this calls in expectation). A conversation no longer is checked whole.
GONE_CHECK_TURNS = 512
# Who owns the conversations stored before their tenant was recorded, of the two legacy
# owners of a tag (docs/memory.md#legacy-owners): alice of "default", or alice of "alice".
UntenantedOwner = Literal["default", "own-tenant"]
# A script that may evict (create_interaction, update_conversation, update_summary) answers
# this status, then the turns its eviction deletes that its run did not declare: the
# caller runs it again declaring them (``_declare_turns``; lua/retention.lua).
_DECLARE = 7
# Runs of update_conversation.lua or update_summary.lua before giving up with ABORTED,
# each finding other turns to evict than its run declared (another write evicted or
# added turns in between). A turn's write counts these runs in TURN_WRITE_ATTEMPTS.
EVICT_ATTEMPTS = 8
# Runs of a script before giving up with ABORTED, each stopped to reconcile or measure
# first, or to declare a key it derives (``MemoryStore._run``): a run stops again only when
# a conversation expired, or the list or turns changed, in between, or for the next key of
# a chain (a request_id's turn, then that turn's conversation). The same bound for the
# runs of reconcile.lua and measure.lua that find the list they were given changed.
RUN_ATTEMPTS = 8
# The last runs of a read, out of RUN_ATTEMPTS, that leave out its check for gone turns
# (``RunOptions.sample_at``).
SAMPLE_RUNS = 2


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Where a script's ARGV holds what ``MemoryStore._run`` rewrites between its runs:
    0-based indexes into the ``args`` it is given (ARGV[n] is ``args[n - 1]``). One per
    script that needs them, below, its indexes written there only."""

    # The turn count of the window of the look for gone turns at the byte limit
    # (lua/usage.lua's gone_check_at, the second of ``MemoryStore._gone_check``): the
    # keys a run asked for that are missing are named after it, for the script to leave
    # alone (lua/read.lua's declare_present). Without it (nor ``gone_before_declared``) a
    # script asking for such keys is a bug (INTERNAL).
    gone_at: int | None = None
    # ``gone_at`` counted back from the turns declared for eviction that end ARGV
    # (lua/keys.lua's declared_turns: pairs, then their count), as lua/usage.lua's
    # gone_check_before_declared does: the window's two ARGV come just before them.
    gone_before_declared: bool = False
    # The size of the window of turns a read checks for gone ones (lua/read.lua's
    # missing_turn): 0 in its last SAMPLE_RUNS runs, so a read racing a stream of writes
    # to the conversation, each adding a turn to the window that no run had declared,
    # still answers (the check is a sample of the turns; the next read checks them)
    # instead of ABORTED.
    sample_at: int | None = None

    def gone_index(self, args: list[EncodableT]) -> int | None:
        """Where ``args`` holds the gone window's turn count (``gone_at``)."""
        if self.gone_before_declared:
            return len(args) - 2 * int(str(args[-1])) - 2
        return self.gone_at


# A script whose ARGV ``_run`` leaves as it is.
_AS_GIVEN = RunOptions()
# The scripts that charge bytes: the gone window's turn count.
_CHECK_STORAGE = RunOptions(gone_at=10)  # check_storage.lua's ARGV[11]
_UPDATE_INTERACTION = RunOptions(gone_at=6)  # update_interaction.lua's ARGV[7]
# create_interaction.lua, update_conversation.lua, update_summary.lua: ARGV[#ARGV - 2n - 1],
# n the count of turns declared, their last ARGV.
_CREATE_INTERACTION = RunOptions(gone_before_declared=True)
_UPDATE_CONVERSATION = RunOptions(gone_before_declared=True)
_UPDATE_SUMMARY = RunOptions(gone_before_declared=True)
# The reads that check a window of turns for gone ones: its size.
_GET_CONVERSATION = RunOptions(sample_at=3)  # get_conversation.lua's ARGV[4]
_LIST_CONVERSATIONS = RunOptions(sample_at=7)  # list_conversations.lua's ARGV[8]


@dataclass(frozen=True, slots=True)
class Owner:
    """Who owns conversations: a user of a tenant (alice of acme is not alice of globex)."""

    tenant: str
    user: str

    def digest(self) -> str:
        """``U`` in the key layout.

        Before tenants, it was sha256(user). It stays so for the two kinds of owner that
        existed then: anyone of the tenant ``default`` (``anonymous`` on an open server)
        and a user alone in a tenant of its own name (an API key given as ``user:key``),
        so their conversations are where they were. Any other owner hashes tenant, NUL,
        user (no name holds a NUL, so no two such owners share a digest).

        So alice of ``default`` and alice of ``alice`` share one tag: every conversation
        records its tenant beside its user, and every script checks both
        (``MemoryStore.caller``, lua/read.lua ``owns``). The key configuration also
        refuses that pair within one key list (``api_keys.py``), but not across lists
        (memory's own keys and the gateway's) nor over time."""
        text = self.user if self.legacy else self.key
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    @property
    def legacy(self) -> bool:
        """Whether the owner keeps the pre-tenant tag (``digest``), which it shares with
        the other legacy owner of the same user name."""
        return self.tenant in (DEFAULT_TENANT, self.user)

    @property
    def key(self) -> str:
        """One string per owner (page tokens are bound to it)."""
        return f"{self.tenant}\0{self.user}"


@dataclass(slots=True)
class Summary:
    text: str = ""
    through: str = ""
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    folds: int = 0
    update_ms: int = 0
    evicted_unsummarised: int = 0


@dataclass(slots=True)
class Retention:
    """A conversation's retention: ttl_ms 0 is none, max_turns 0 is no limit."""

    ttl_ms: int = 0
    max_turns: int = 0
    summary_disabled: bool = False


@dataclass(slots=True)
class ConversationRecord:
    conversation_id: str
    user: str
    name: str
    create_ms: int
    update_ms: int
    interaction_count: int
    expire_ms: int = 0
    retention: Retention = field(default_factory=Retention)
    summary: Summary = field(default_factory=Summary)
    # Turns deleted before the summary covered them (delete_interaction.lua): a fold's
    # update names the count it read first (update_summary.lua).
    unfolded_deletions: int = 0


@dataclass(frozen=True, slots=True)
class NewConversation:
    """The conversation a turn starts (CreateInteraction's new_conversation)."""

    name: str
    retention: Retention


@dataclass(slots=True)
class ConversationUpdate:
    """What UpdateConversation changes; None leaves a field as it is."""

    name: str | None = None
    ttl_ms: int | None = None
    max_turns: int | None = None
    summary_disabled: bool | None = None


class _UsageFirst(Exception):
    """A write script stopped (nothing written) for ``reconcile.lua`` (``what``
    "reconcile") or, for conversation ``cid``, ``measure.lua`` ("measure") or
    ``drop_missing.lua`` ("drop") to run first (lua/usage.lua). Only
    ``MemoryStore._run`` runs the scripts that raise it, and handles it."""

    def __init__(self, what: str, cid: str | None) -> None:
        super().__init__(what, cid)
        self.what = what
        self.cid = cid


class _DeclareFirst(Exception):
    """A script stopped (nothing written) for a run with ``names`` declared too
    (lua/read.lua's declare_first); ``MemoryStore._run`` handles it."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(names)
        self.names = names


class SummaryConflict(Exception):
    """The summary no longer covers what the writer expected (someone folded first)."""

    def __init__(self, current: str) -> None:
        super().__init__(current)
        self.current = current


@dataclass(frozen=True, slots=True)
class StorageUsage:
    """An owner's stored bytes and conversations, and the most allowed of each."""

    used_bytes: int
    limit_bytes: int
    conversations: int
    max_conversations: int


@dataclass(slots=True)
class Page(Generic[T]):
    items: list[T]
    # Sort key of the last item when more follow; None on the last page.
    next_cursor: str | None


# The order of the fields in a conversation row; lua/read.lua returns the same.
CONVERSATION_FIELDS = (
    "user", "name", "create_time", "update_time", "interaction_count", "expire_time",
    "ttl_ms", "max_turns", "summary_disabled", "summary", "summary_through",
    "summary_turns", "summary_prompt_tokens", "summary_completion_tokens", "summary_folds",
    "summary_update_time", "summary_evicted", "tenant", "unfolded_deletions",
)  # fmt: skip
_TENANT = CONVERSATION_FIELDS.index("tenant")


# update_conversation.lua and retention_step.lua answer a conversation row and then
# whether a walk of its turns is still pending (b"1"); retention_step.lua then the ids of
# the walk's next batch.
_WALK_PENDING = len(CONVERSATION_FIELDS)
# get_conversation.lua answers a conversation row and then whether a turn it lists has no
# key (b"1"), then where the next call's window starts and that window's turn ids (or
# b"=": the turn keys the run declared).
_MISSING_TURN = len(CONVERSATION_FIELDS)
_NEXT_WINDOW = _MISSING_TURN + 1


@cache
def lua_source(name: str) -> str:
    """The script ``lua/<name>.lua``, preceded by the helpers its first line asks for
    (``-- needs: read touch``): Redis runs one self-contained source per script."""
    source = (_LUA / f"{name}.lua").read_text()
    first = source.partition("\n")[0]
    needs = first.removeprefix(_NEEDS).split() if first.startswith(_NEEDS) else []
    return "".join(lua_source(helper) for helper in needs) + source


class StoreWarnings:
    """What the store tells its operator about Redis failing many calls at once: each kind
    one WARNING per outage of each Redis node (again every 30 s while it lasts) and one
    INFO line at its end, not a line per call. ``down``: Redis unreachable (or busy, or
    moving slots), ended by any answer of that node; ``full``: Redis at its maxmemory
    refusing writes (OOM), ended by a write that node takes (reads succeed all along).
    The node of a call is the one the client routes its key to (``node``): with a Redis
    Cluster master down, the other masters' answers are not its recovery."""

    __slots__ = ("_redis", "down", "full")

    def __init__(self, redis: RedisClient | None = None) -> None:
        self._redis = redis
        self.down = ThrottledWarning(
            log,
            "memory store unavailable (%s): calls answer UNAVAILABLE until Redis answers "
            "(GENSEARCH_MEMORY_REDIS_URL)",
            recovery="memory store reachable again",
        )
        self.full = ThrottledWarning(
            log,
            "memory store full (%s): Redis refuses writes past its maxmemory; writes answer "
            "UNAVAILABLE until it has room (docs/operations.md)",
            recovery="memory store takes writes again: Redis has room",
        )

    def node(self, key: KeyT | None) -> str | None:
        """The node of a call on ``key`` (``redis_client.node_of``; None: not known)."""
        return None if self._redis is None else node_of(self._redis, key)

    def answered(self, key: KeyT | None, write: bool) -> None:
        """A call on ``key`` answered (``redis_client.answered``: its node's outage ends, and
        that of a master a failover replaced)."""
        if self._redis is None:
            return
        answered(self.down, self._redis, key)
        if write:
            answered(self.full, self._redis, key)


def writes(source: str) -> bool:
    """Whether a script's ``source`` calls a command Redis refuses past its maxmemory."""
    return any(command.upper() in _GROWS for command in _CALLED.findall(source))


def _slot_moving(err: BaseException) -> bool:
    """Whether ``err`` is a reshard's refusal of a call that no node ran, so that sending it
    again is safe: TRYAGAIN (a multi-key script, or command, on a slot being moved whose
    keys are split between the slot's two nodes, or one of whose keys does not exist yet:
    Redis cannot tell a missing key from one not moved yet), or redis-py's cluster client
    giving up after following such refusals and MOVED/ASK redirections (a bare
    ``ClusterError("TTL exhausted.")``, raised only once every try was refused or
    redirected: ``RedisCluster._execute_command``). CLUSTERDOWN and MASTERDOWN are
    subclasses, not this."""
    return isinstance(err, TryAgainError) or type(err) is ClusterError


class _SlotMoving(Exception):
    """A call refused by a slot move (``_slot_moving``), raised by ``_redis`` only for a
    caller that waits for the move (``_redis_waiting``), which handles it."""

    def __init__(self, err: BaseException) -> None:
        super().__init__(err)
        self.err = err


# The pauses between the tries of a call refused by a slot move (``_redis_waiting``):
# doubled from the first up to the last, each with jitter so that the replicas' retries
# spread. Each try is itself up to 16 of redis-py's (the last eight 50 ms apart).
SLOT_MOVE_FIRST_PAUSE = 0.01
SLOT_MOVE_MAX_PAUSE = 0.25
# When a call refused by a slot move past its wait is told to try again (RetryInfo): a
# move outlasting GENSEARCH_MEMORY_SLOT_MOVE_WAIT_SECONDS is a large slot, or one paused;
# a second is four of the store's own longest pauses, not a busy loop of the clients'.
SLOT_MOVE_RETRY_AFTER = 1.0


async def _redis_waiting(
    outage: StoreWarnings,
    make: Callable[[], Awaitable[Any]],
    *,
    key: KeyT | None,
    wait: float,
    write: bool = False,
) -> Any:
    """``_redis`` of the call ``make`` makes, made again while a slot move refuses it
    (``_slot_moving``: it did not run) for at most ``wait`` seconds, and never past the
    call's own cutoff (``call_deadline.call_cutoff``: the gRPC call's deadline less the
    chassis' margin): a try is started only when it and another as long (for the answer)
    end before then. Then the refusal is UNAVAILABLE ``STORE_UNAVAILABLE`` (retryable), as
    without waiting. A script that declares a key it creates (a new turn beside its
    conversation) is refused by Redis for the whole move, on either node (TRYAGAIN), so
    only waiting for the move's end lets it run: a small slot moves in milliseconds."""
    loop = asyncio.get_running_loop()
    until = loop.time() + wait
    cutoff = call_cutoff()
    # Ended by the call's own cutoff, the caller has no time left for a retry: no RetryInfo
    # then (it would promise time the caller has not got), only when the wait ran out.
    by_cutoff = cutoff is not None and cutoff.when < until
    if cutoff is not None:
        until = min(until, cutoff.when)
    pause = SLOT_MOVE_FIRST_PAUSE
    while True:
        started = loop.time()
        try:
            return await _redis(outage, make(), key=key, write=write, moving=True)
        except _SlotMoving as refused:
            took = loop.time() - started
            pause_now = pause * (0.5 + random.random() / 2)
            if loop.time() + pause_now + 2 * took > until:
                outage.down(
                    refused.err, extra={"error": _describe(refused.err)}, node=outage.node(key)
                )
                raise _slot_still_moving(retry=not by_cutoff) from None
            await asyncio.sleep(pause_now)
            pause = min(pause * 2, SLOT_MOVE_MAX_PAUSE)


async def _redis(
    outage: StoreWarnings,
    call: Awaitable[Any] | Any,
    *,
    key: KeyT | None,
    write: bool = False,
    moving: bool = False,
    at: str | None = None,
) -> Any:
    """Awaits one Redis call; its failure becomes the service's error, here and only here.
    ``outage`` logs Redis unreachable, or full, once per outage (and its end), not once per
    call, per Redis node: ``key``, one of the call's keys, names the node (None: a call
    of no key, or of every node); ``write``: the call may grow what Redis holds, so its
    success ends a full one;
    ``moving``: a slot move's refusal is ``_SlotMoving`` (counted, not logged), for
    ``_redis_waiting``; ``at``: the node a call of no key was sent to (one master of
    ``load_scripts``). (Typed loosely: redis-py annotates a command's result as
    ``Awaitable[T] | T``, one set of annotations for its sync and async clients.)"""
    try:
        out = await call
    except _UNAVAILABLE as err:
        redis_errors.count("memory", err)
        if moving and _slot_moving(err):
            raise _SlotMoving(err) from None
        outage.down(err, extra={"error": _describe(err)}, node=at or outage.node(key))
        raise _unavailable() from None
    except (MovedError, AskError) as err:
        redis_errors.count("memory", err)
        # The cluster client follows these itself; the standalone one gets them from a
        # cluster node it was given by mistake (GENSEARCH_MEMORY_REDIS_CLUSTER unset).
        raise FailedPrecondition(
            "memory store is a Redis Cluster: set GENSEARCH_MEMORY_REDIS_CLUSTER=true",
            reason="STORE_IS_CLUSTER",
        ) from None
    except RedisError as err:
        # Redis 7 appends " script: <where>" to an error a script raises (older ones put
        # their own words first): the words between the marker and that are ours.
        if _USAGE_FIRST in str(err):
            what = str(err).partition(_USAGE_FIRST)[2].partition(" script: ")[0].split()
            raise _UsageFirst(what[0], what[1] if len(what) > 1 else None) from None
        if _DECLARE_FIRST in str(err):
            names = str(err).partition(_DECLARE_FIRST)[2].partition(" script: ")[0].split()
            raise _DeclareFirst(names) from None
        redis_errors.count("memory", err)
        if str(err).startswith(_BUSY) or _MOVING in str(err):
            outage.down(err, extra={"error": _describe(err)}, node=at or outage.node(key))
            raise _unavailable() from None
        if isinstance(err, OutOfMemoryError) or str(err).startswith(_FULL):
            # A script's refused write is a plain ResponseError: named as Redis's OOM.
            outage.full(
                err, extra={"error": _describe(err)}, cause="OOM", node=at or outage.node(key)
            )
            raise Unavailable(
                "memory store unavailable; try again", reason="STORE_UNAVAILABLE"
            ) from None
        log.error("memory store error", extra={"error": _describe(err)})
        raise Internal("memory store error") from None
    # Which node answered is worked out only while an outage is open (most calls: none).
    if outage.down.any_down or (write and outage.full.any_down):
        if at is not None:
            outage.down.recovered(at)
            if write:
                outage.full.recovered(at)
        else:
            outage.answered(key, write)
    return out


def _slot_still_moving(*, retry: bool = True) -> Unavailable:
    """UNAVAILABLE for a call a slot move refused past its wait (``_redis_waiting``): the
    move's refusal ran nothing, so the same request again is safe (a turn's request_id
    finds it stored at most once), and it is said so (ErrorInfo metadata ``cause``, and
    ``RetryInfo`` when ``retry``: the store's wait ran out, not the call's own deadline,
    which leaves the caller no time for the retry it would promise) for a client to retry
    rather than give up: a move ends by itself."""
    return Unavailable(
        "memory store unavailable while its data moves between Redis Cluster nodes; try again",
        reason="STORE_UNAVAILABLE",
        metadata={"cause": "SLOT_MOVING"},
        retry_after=SLOT_MOVE_RETRY_AFTER if retry else None,
    )


def _unavailable() -> Unavailable:
    # redis-py's text names Redis's host and port: for the log (the outage's line), not
    # for the caller.
    return Unavailable("memory store unavailable; try again", reason="STORE_UNAVAILABLE")


def _describe(err: BaseException) -> str:
    # redis-py names the server in some messages; a URL there must not carry a password.
    text = str(err) or type(err).__name__
    return _URL_CREDENTIALS.sub(r"\1", text)[:300]


def _conversation(cid: str, row: list[bytes | None]) -> ConversationRecord:
    # Fields after interaction_count are absent from conversations stored before them.
    user, name, create_ms, update_ms, count = (v or b"" for v in row[:5])

    def num(i: int) -> int:
        value = row[i]
        return int(value) if value else 0

    def text(i: int) -> str:
        value = row[i]
        return value.decode() if value else ""

    return ConversationRecord(
        cid,
        user.decode(),
        name.decode(),
        int(create_ms),
        int(update_ms),
        int(count),
        expire_ms=num(5),
        retention=Retention(num(6), num(7), row[8] == b"1"),
        summary=Summary(text(9), text(10), num(11), num(12), num(13), num(14), num(15), num(16)),
        unfolded_deletions=num(18),
    )


def _declare_turns(
    tag: str, turns: dict[str, str], reply: list[Any] | None = None
) -> tuple[list[str], list[EncodableT]]:
    """Adds the turns a script named in its ``_DECLARE`` answer (``reply``: ``[_DECLARE,
    iid, request_id, ...]``) to ``turns`` (iid -> request_id, '' for none: every turn a
    run of this call asked for, so the runs converge), and returns the keys and the last
    ARGV (declared_turns, lua/keys.lua) that declare them: their interaction keys and
    request_id keys, which eviction deletes. Declared, a run on a half-moved slot is
    refused by Redis (TRYAGAIN) instead of deleting turns whose keys are still on the
    other node."""
    pairs = [bytes(v).decode() for v in (reply or [])[1:]]
    turns.update(zip(pairs[0::2], pairs[1::2], strict=True))
    names = [keys.interaction(tag, iid) for iid in turns] + _request_keys(tag, turns)
    args: list[EncodableT] = []
    for iid, rid in turns.items():
        args += [iid, rid]
    return names, [*args, len(turns)]


def _request_keys(tag: str, turns: dict[str, str]) -> list[str]:
    """Both owners' request_id keys of a shared tag (keys.request) for the request_ids of
    ``turns`` (iid -> request_id): a turn's entry is under the one its writer used;
    lua/keys.lua's forget_interaction deletes whichever is declared and still names it."""
    return [
        keys.request(tag, rid, apart=apart)
        for rid in turns.values()
        if rid
        for apart in (False, True)
    ]


# How a turn's request fingerprint starts: the client's request_fingerprint (digested),
# or, when it gave none, the request's own content (servicer._turn_fingerprint).
GIVEN = "given:"
CONTENT = "content:"


def _same_request(fingerprint: str, stored: bytes | None) -> None:
    """INVALID_ARGUMENT / REQUEST_ID_REUSED when the turn stored under a request_id was
    stored for another request: its fingerprint is not ``fingerprint``. Not compared: a
    turn stored before fingerprints were kept (``stored`` None), a caller that gives none,
    and a client's fingerprint against a turn's content one (a turn an Ask stored through
    a gateway older than request_fingerprint: its retry through a newer one is compared
    by the question, by the gateway, as before, whichever was upgraded first)."""
    if not fingerprint or stored is None:
        return
    kept = bytes(stored).decode()
    if kept.startswith(CONTENT) and not fingerprint.startswith(CONTENT):
        return
    if kept != fingerprint:
        raise InvalidArgument(
            "request_id was already used for another request (an interaction with other "
            "content, or an Ask with other fields); a retry sends the same request, a new "
            "one a new request_id",
            field="request_id",
            reason="REQUEST_ID_REUSED",
        )


def _concurrent_update(cid: str) -> Aborted:
    return Aborted(
        "the conversation kept changing while it was updated; try again",
        reason="CONCURRENT_UPDATE",
        metadata={"conversation_id": cid},
    )


def conversation_not_found(cid: str) -> NotFound:
    # The same answer whether it never existed or belongs to someone else.
    return NotFound(
        f"conversation {cid} not found",
        field="conversation_id",
        reason="CONVERSATION_NOT_FOUND",
        metadata={"conversation_id": cid},
    )


def interaction_not_found(iid: str, field: str = "interaction_id") -> NotFound:
    # The same answer whether it never existed or belongs to someone else; ``field`` is
    # where the request named it (UpdateInteraction: interaction.interaction_id).
    return NotFound(
        f"interaction {iid} not found",
        field=field,
        reason="INTERACTION_NOT_FOUND",
        metadata={"interaction_id": iid},
    )


class MemoryStore:
    def __init__(
        self,
        redis: RedisClient,
        *,
        key_prefix: str = "gensearch",
        request_id_ttl: int = 86400,
        eviction_grace_turns: int = 100,
        max_bytes_per_owner: int = 256 * 1024 * 1024,
        max_conversations_per_owner: int = 10_000,
        max_interactions_per_conversation: int = 10_000,
        ids: UUIDv7Generator | None = None,
        untenanted_owner: UntenantedOwner = "default",
        gone_check_turns: int = GONE_CHECK_TURNS,
        gone_check_offsets: Callable[[], int] | None = None,
        drop_batch: int = DROP_BATCH,
        slot_move_wait: float = 0.0,
        delete_resume_seconds: float = DELETE_RESUME_SECONDS,
    ) -> None:
        self._redis = redis
        # How old a deletion's mark is when ``resume_deletions`` takes it as interrupted
        # (GENSEARCH_MEMORY_DELETE_RESUME_SECONDS).
        self._delete_resume_ms = max(int(delete_resume_seconds * 1000), 1)
        # How long a call refused by a slot move waits at most for the move to end
        # (``_redis_waiting``; GENSEARCH_MEMORY_SLOT_MOVE_WAIT_SECONDS): 0, refused at once.
        self._slot_move_wait = slot_move_wait
        # Redis unreachable or full: one WARNING per outage (again every 30 s while it
        # lasts), and one INFO line when it ends; a line per call buried everything else.
        self._outage = StoreWarnings(redis)
        self._grace = eviction_grace_turns
        self._max_bytes = max_bytes_per_owner
        self._max_conversations = max_conversations_per_owner
        self._max_interactions = max_interactions_per_conversation
        self._prefix = key_prefix
        self._request_ttl_ms = request_id_ttl * 1000
        self._ids = ids or UUIDv7Generator()
        self._tags: dict[Owner, str] = {}
        self._untenanted_owner = untenanted_owner
        self._gone_turns = gone_check_turns
        self._drop_batch = drop_batch
        # Where a call's check for gone turns starts (taken modulo the conversation's turns
        # by the script); a test may give a fixed sequence.
        self._gone_offsets = gone_check_offsets or (lambda: random.randrange(1 << 31))
        # Keys to declare with a turn's key (its conversation's hash), learnt (``_run``).
        self._hints: dict[str, list[str]] = {}
        # The turn keys each conversation's next page and window are expected to read,
        # learnt from the last read and this replica's own writes (recent_turns.py).
        self._recent = RecentTurns(gone_check_turns)
        # Turn writes under way per conversation: [lock, writers holding or waiting].
        self._turn_writes: dict[str, list[Any]] = {}

        def script(name: str) -> AsyncScript:
            # EVALSHA; on NOSCRIPT (a restarted or flushed Redis) redis-py loads it again.
            # (redis-py annotates register_script's self as Redis; RedisCluster has it too.)
            made: AsyncScript = redis.register_script(lua_source(name))  # type: ignore[misc]
            if writes(lua_source(name)):
                self._writers.add(made)
            return made

        # The scripts that write (``writes``): their success ends a "store full".
        self._writers: set[AsyncScript] = set()

        self._create_conversation = script("create_conversation")
        self._update_conversation = script("update_conversation")
        self._retention_step = script("retention_step")
        self._update_summary = script("update_summary")
        self._delete_conversation = script("delete_conversation")
        self._turn_requests = script("turn_requests")
        self._create_interaction = script("create_interaction")
        self._get_interaction = script("get_interaction")
        self._list_interactions = script("list_interactions")
        self._list_conversations = script("list_conversations")
        self._get_interaction_traces = script("get_interaction_traces")
        self._update_interaction = script("update_interaction")
        self._delete_interaction = script("delete_interaction")
        self._get_interactions = script("get_interactions")
        self._interactions_exist = script("interactions_exist")
        self._check_storage = script("check_storage")
        self._stored_request = script("stored_request")
        self._claim_request = script("claim_request")
        self._release_request = script("release_request")
        self._reconcile_script = script("reconcile")
        self._measure_script = script("measure")
        self._drop_missing_script = script("drop_missing")
        self._get_conversation = script("get_conversation")
        self._outbox_add = script("outbox_add")
        self._outbox_remove = script("outbox_remove")
        self._unmark_deletion = script("unmark_deletion")

    async def load_scripts(self) -> None:
        """Loads every script now (SCRIPT LOAD; on a cluster, into every master).

        Not needed for correctness (a script Redis lacks is loaded on first use) but for
        availability on a cluster: redis-py loads a missing script into *every* master, so
        a script first used while one master is down would fail for the users of the
        healthy ones too. Loaded at start, it is already where it is needed."""
        scripts = [
            self._create_conversation, self._update_conversation, self._delete_conversation,
            self._update_summary, self._turn_requests,
            self._create_interaction, self._get_interaction, self._list_interactions,
            self._list_conversations, self._get_interaction_traces, self._update_interaction,
            self._delete_interaction, self._get_interactions, self._interactions_exist,
            self._check_storage,
            self._stored_request, self._retention_step, self._claim_request,
            self._release_request, self._reconcile_script, self._measure_script,
            self._drop_missing_script, self._get_conversation, self._outbox_add,
            self._outbox_remove, self._unmark_deletion,
        ]  # fmt: skip
        if not isinstance(self._redis, RedisCluster):
            for script in scripts:
                await _redis(self._outage, self._redis.script_load(script.script), key=None)
            return
        # On a cluster, into each master on its own (public get_primaries, target_nodes),
        # so that a master down is named in the outage line: one SCRIPT LOAD sent to every
        # master at once failed naming no node. The map is read first (initialize: a
        # failure there names the URL's node, the only one called).
        # A master down does not keep the scripts from the others; the call still fails.
        await _redis(self._outage, self._redis.initialize(), key=None)
        failed: Unavailable | None = None
        for node in self._redis.get_primaries():
            try:
                for script in scripts:
                    await _redis(
                        self._outage,
                        self._redis.execute_command(
                            "SCRIPT LOAD", script.script, target_nodes=node
                        ),
                        key=None,
                        at=node.name,
                    )
            except Unavailable as err:
                failed = failed or err
        if failed is not None:
            raise failed

    async def close(self) -> None:
        await self._redis.aclose()

    def node(self, owner: Owner) -> str | None:
        """The Redis node holding ``owner``'s keys, as outage lines name it (None: not
        known; ``redis_client.node_of``)."""
        return self._outage.node(self.tag(owner))

    def answered(self, warning: ThrottledWarning, owner: Owner) -> None:
        """A call on ``owner``'s keys answered: ``warning``'s outage of their node ends, and
        that of a master a failover replaced (``redis_client.answered``)."""
        answered(warning, self._redis, self.tag(owner))

    def tag(self, owner: Owner) -> str:
        """Key prefix of everything ``owner`` owns, including the cluster hash tag."""
        tag = self._tags.get(owner)
        if tag is None:
            tag = f"{self._prefix}:{{u:{owner.digest()}}}"
            if len(self._tags) < 10_000:  # a cache, not a leak
                self._tags[owner] = tag
        return tag

    def caller(self, owner: Owner) -> str:
        """The owner as the scripts take it (lua/read.lua ``caller``): user, tenant and
        whether the conversations stored without a tenant (before it was recorded) are
        its: always for an owner whose tag is its own, and for one of the two legacy owners
        of a tag, the one ``untenanted_owner`` names (docs/memory.md#legacy-owners)."""
        return f"{owner.user}\0{owner.tenant}\0{int(self._untenanted(owner))}"

    def _untenanted(self, owner: Owner) -> bool:
        """Whether the conversations without a tenant under the owner's tag are its."""
        if not owner.legacy:
            return True  # its tag is its own
        if self._untenanted_owner == "default":
            return owner.tenant == DEFAULT_TENANT
        return owner.tenant == owner.user

    def _request(self, owner: Owner, tag: str, request_id: str) -> str:
        # The legacy owner that does not own the untenanted conversations keeps its
        # request_id keys apart (keys.py): never the other owner's, though they share a tag.
        return keys.request(tag, request_id, apart=not self._untenanted(owner))

    def _claim(self, owner: Owner, tag: str, request_id: str) -> str:
        return keys.claim(tag, request_id, apart=not self._untenanted(owner))

    def _claim_fingerprint(self, owner: Owner, tag: str, request_id: str) -> str:
        return keys.claim_fingerprint(tag, request_id, apart=not self._untenanted(owner))

    def _owns(self, owner: Owner, user: bytes | None, tenant: bytes | None) -> bool:
        """lua/read.lua's ``owns``, for the one read made without a script."""
        if user is None or user.decode() != owner.user:
            return False
        if tenant is not None:
            return tenant.decode() == owner.tenant
        return self.caller(owner).endswith("1")

    def _gone_check(self) -> list[EncodableT]:
        """The window of one call's check for gone turns (lua/read.lua's missing_turn), as
        the scripts take it in ARGV: where it starts, how many turns it checks. Chosen here,
        per call, so that a script is deterministic given its arguments."""
        return [self._gone_offsets(), self._gone_turns]

    async def _run(
        self,
        tag: str,
        script: AsyncScript,
        names: list[str],
        args: list[EncodableT],
        *,
        hint: str = "",
        options: RunOptions = _AS_GIVEN,
        asked: list[str] | None = None,
        maybe_missing: str = "",
        hinted_turns: Sequence[str] = (),
        maybe_absent: Sequence[str] = (),
        moving_to_caller: bool = False,
    ) -> Any:
        """The answer of ``script`` (on ``names``, ``args``), after what a run of it
        stopped for, nothing written (``asked``, given empty, gets the keys its runs asked
        for: the answering run declared ``names`` and those):

        - a write that charges the owner's bytes, for the reconcile or the measure
          (lua/usage.lua), which read keys the script does not declare, so they are
          scripts of their own, run with every key they read declared (three more round
          trips each, only when a write would not fit and a conversation may have
          expired, or once per conversation stored before the accounting), or for the
          drop of the gone turns of the conversation written to (drop_missing.lua: three
          more, only when the write would not fit and a turn of its conversation has no
          key);
        - a script that reads a key it derives and its run did not declare, for a run with
          it declared too (lua/read.lua's declare_first: one more round trip each; see
          ``_to_declare`` for keys that may not exist).

        ``hint`` (a turn's key) names the call's turn: the keys a run of it asked for are
        kept, beside those kept already (its conversation's hash: a turn never changes
        conversation), and declared up front by the next call naming it, which so takes
        one round trip. ``hinted_turns`` (without ``hint``): the turns' keys of a
        many-turn read, whose kept keys are declared up front the same way (``_known``),
        and dropped the same way (below).
        ``options``: where the script's ARGV holds what the runs rewrite (``RunOptions``).

        ``maybe_missing``: a key of ``names`` that may not exist (the list of turns of a
        conversation this replica has not seen without turns, ``_turn_list``: one without
        turns has none). Mid-reshard Redis refuses a run declaring a missing key for the
        whole move (TRYAGAIN: it may be one not moved yet), so a run declaring it that a
        move refuses is made again at once without it, rather than waiting out the move
        (GENSEARCH_MEMORY_SLOT_MOVE_WAIT_SECONDS) for a key there is no need of: a run
        that needs it (the conversation has turns) asks for it (lua/read.lua's
        declare_first), and that run waits for the move as any other.

        ``maybe_absent``: keys of ``names`` of which some may not exist, none needed when
        missing (the request_id keys of turns a run deletes: of both owners' of a shared
        tag, one never exists). A run a move refuses is made again at once with only those
        found (``_present``, read each alone): a missing one declared had Redis refuse it
        for the whole move. Read only then: no round trip outside a slot move.

        ``moving_to_caller``: a run a move refuses, with nothing of the above left to drop,
        raises ``_SlotMoving`` at once for the caller to handle (a many-turn read, which
        leaves out the turns that do not exist: ``_read_turns``) instead of waiting out the
        move."""
        # A hint may be stale: its turn deleted or evicted since, by this replica or
        # another. Mid-move Redis refuses, for the whole move, a run declaring the missing
        # turn's key beside its conversation's (TRYAGAIN), so a hinted run a move refuses
        # is made again at once without the hint: a run that needs the conversation asks
        # for it (declare_first) and waits as any other. A many-turn read names its turns
        # (``hinted_turns``): the same for each (a batch read of a turn deleted elsewhere
        # was refused for the whole move). This covers every stale hint, so the deletes
        # do not forget their turns' hints too: that saved only the deleting replica's
        # first refused run of a read of one of them, mid-move (redis-py's own tries of
        # it, about 0.1 s), the answer the same; every other replica pays it anyway.
        hinted_turns = [hint] if hint else list(hinted_turns)
        hinted = self._known(hinted_turns)
        base = len(names)
        names = list(names) + hinted
        args = list(args)
        missing: list[str] = []
        asked = [] if asked is None else asked
        declared = measured = walked = 0
        # A stop for the reconcile follows a conversation that really expired since the
        # last walk (reconcile.lua sets next_expiry from the hashes' own expiry), so in a
        # burst of conversations with one ttl, expiring a few milliseconds apart, each
        # run again may ask for another walk: more than RUN_ATTEMPTS of them. But each walk
        # reads the whole list (O(conversations)): bounded by their number, the walks of
        # one call cost O(conversations²). So the bound is on the members walked, linear:
        # RUN_ATTEMPTS times the most conversations an owner may have (a small owner may
        # walk many times, a full one RUN_ATTEMPTS times). Past it the call is ABORTED;
        # what its walks dropped stays dropped, so a retry goes on from there. A stop for
        # the measure names the write's own conversation, measured then: RUN_ATTEMPTS.
        budget = self._max_conversations * RUN_ATTEMPTS
        while declared < RUN_ATTEMPTS and measured < RUN_ATTEMPTS and walked < budget:
            if options.sample_at is not None and declared >= RUN_ATTEMPTS - SAMPLE_RUNS:
                args[options.sample_at] = 0
            try:
                out = await self._script(
                    script,
                    names,
                    args,
                    refused_moving=bool(
                        maybe_missing or hinted or maybe_absent or moving_to_caller
                    ),
                )
                if hint and asked:
                    # Added to what was kept, not in its place: a turn's hint, its
                    # conversation's hash (kept by its write or a read), grows by what a
                    # DeleteInteraction's first run asks for (the list, the usage). Replaced,
                    # the delete's next run declared no hash and asked for it again: one
                    # more run on every delete of a turn the replica knew. (A request_id's
                    # hint reused after its ttl so keeps the earlier turn's keys too:
                    # declared, read by nothing, as any stale hint; dropped as one, below.)
                    self._hint(hint, list(dict.fromkeys(hinted + asked)))
                return out
            except _SlotMoving:
                if moving_to_caller and not (hinted or maybe_missing or maybe_absent):
                    raise
                if hinted:
                    del names[base : base + len(hinted)]
                    for turn in hinted_turns:
                        self._hints.pop(turn, None)
                    hinted = []
                if maybe_missing:
                    names.remove(maybe_missing)
                    maybe_missing = ""
                if maybe_absent:
                    absent = set(maybe_absent) - set(await self._present(list(maybe_absent)))
                    names = [name for name in names if name not in absent]
                    maybe_absent = ()
            except _DeclareFirst as first:
                declared += 1
                wanted = await self._to_declare(first.names, args, options, missing)
                names += wanted
                asked += wanted
            except _UsageFirst as first:
                if first.cid is None:
                    walked += await self._walk(tag)
                    continue
                measured += 1
                if first.what == "drop":
                    # A write at the limit whose conversation lists a turn with no key
                    # (lua/usage.lua's gone_turns): its bytes are counted again without
                    # the gone ones. The caller is the script's first argument.
                    await self._drop_gone(tag, first.cid, str(args[0]))
                else:
                    await self._measure(tag, first.cid)
        raise Aborted(
            "the owner's conversations kept changing meanwhile; try again",
            reason="CONCURRENT_UPDATE",
        )

    async def _run_declaring(
        self,
        tag: str,
        script: AsyncScript,
        names: list[str],
        args: list[EncodableT],
        *,
        attempts: int,
        exhausted: Callable[[], ServiceError],
        options: RunOptions = _AS_GIVEN,
        hint: str = "",
        maybe_missing: str = "",
    ) -> Any:
        """``_run`` of a script that may stop, nothing written, naming the turns it would
        delete (``_DECLARE``: eviction's turns, a deleted turn's request_id keys): run again
        with those turns' keys declared after ``names`` and their ids after ``args``
        (``_declare_turns``), every turn named so far, until it answers something else, at
        most ``attempts`` runs (then ``exhausted()`` is raised: the turns kept changing).

        The turns' request_id keys are declared as ``maybe_absent``: each turn has at most
        one of its two (``_request_keys``), and mid-reshard Redis refuses a run declaring
        a missing key for the whole move (TRYAGAIN), so a run declaring both was refused
        until the move ended even with every key it needs on one node. Only a run a move
        refuses reads which exist (``_run``). Before, DeleteInteraction read them on every
        call (two more round trips a turn with a request_id), and eviction
        (UpdateConversation's max_turns, a summary) declared both: refused for the move."""
        named: dict[str, str] = {}
        turn_keys, declared = _declare_turns(tag, named)
        for _ in range(attempts):
            out = await self._run(
                tag,
                script,
                names + turn_keys,
                args + declared,
                options=options,
                hint=hint,
                maybe_missing=maybe_missing,
                maybe_absent=_request_keys(tag, named),
            )
            if not (isinstance(out, list) and out and out[0] == _DECLARE):
                return out
            turn_keys, declared = _declare_turns(tag, named, out)
        raise exhausted()

    async def _run_evicting(
        self,
        tag: str,
        cid: str,
        script: AsyncScript,
        names: list[str],
        args: list[EncodableT],
        options: RunOptions,
    ) -> Any:
        """``_run_declaring`` of an update of conversation ``cid`` that may evict turns
        (update_conversation.lua, update_summary.lua): ``names`` ends with its list of
        turns, which may not exist (``_turn_list``)."""
        return await self._run_declaring(
            tag,
            script,
            names,
            args,
            attempts=EVICT_ATTEMPTS,
            exhausted=lambda: _concurrent_update(cid),
            options=options,
            maybe_missing=self._unseen_list(names),
        )

    async def _script(
        self,
        script: AsyncScript,
        names: list[str],
        args: list[EncodableT],
        *,
        wait: bool = True,
        refused_moving: bool = False,
    ) -> Any:
        """One run of ``script`` on ``names``, ``args``, sent again while a slot move
        refuses it (``_redis_waiting``; ``wait`` False: refused at once, UNAVAILABLE;
        ``refused_moving``: refused at once as ``_SlotMoving``, for the caller to handle)."""
        if refused_moving:
            return await _redis(
                self._outage,
                script(keys=names, args=args),
                key=names[0] if names else None,
                write=script in self._writers,
                moving=True,
            )
        return await _redis_waiting(
            self._outage,
            lambda: script(keys=names, args=args),
            key=names[0] if names else None,
            wait=self._slot_move_wait if wait else 0.0,
            write=script in self._writers,
        )

    async def _to_declare(
        self, asked_for: list[str], args: list[EncodableT], options: RunOptions, missing: list[str]
    ) -> list[str]:
        """The keys to declare in the next run, of those a run asked for (``_DeclareFirst``).
        Those that may not exist (``?``-marked: another conversation's hash, in the look
        for gone turns at the byte limit: lua/read.lua's declare_present) are read first,
        each alone (``_present``): those found are declared, the others join ``missing``,
        named after the gone window's turn count in ``args`` (``RunOptions.gone_at``) for
        the script to leave alone: mid-reshard Redis refuses a run declaring a missing key
        (TRYAGAIN) for as long as the move lasts, as it cannot tell it from one not moved
        yet."""
        wanted = [name for name in asked_for if not name.startswith("?")]
        maybe = [name[1:] for name in asked_for if name.startswith("?")]
        if maybe:
            window = options.gone_index(args)
            if window is None:
                raise Internal("a script asked for keys that may not exist") from None
            found = await self._present(maybe)
            wanted += found
            missing += [name for name in maybe if name not in found]
            turns = str(args[window]).split()[0]
            args[window] = " ".join([turns, *missing])
        return wanted

    async def _present(self, names: list[str]) -> list[str]:
        """Those of ``names`` that exist, each read alone: a command on one key is served
        mid-reshard by the node holding it (the client follows ASK), where a script
        declaring a missing key is refused (``_run``). One after the other (at most
        usage.lua's OTHER_CONVERSATIONS, only at the byte limit): redis-py's cluster client
        sends ASKING and the command it precedes as two calls on the node's pool, so
        concurrent ones may get them on two connections and bounce between the nodes
        until it gives up (ClusterError: sent again as a slot move's refusal,
        ``_redis_waiting``).

        One wait for the whole read, the store's ``slot_move_wait``: each key's own wait
        made a read of many turns, each refused, last that wait times their number (bounded
        only by the call's deadline). Past it, a key is still read once (a read the move
        does not refuse waits for nothing), and the first the move refuses ends the read
        UNAVAILABLE, as a move outlasting any other wait (``_slot_still_moving``)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self._slot_move_wait
        found = []
        for name in names:

            def exists(name: str = name) -> Awaitable[Any]:
                return self._redis.exists(name)  # type: ignore[no-any-return]

            left = max(0.0, until - loop.time())
            if await _redis_waiting(self._outage, exists, key=name, wait=left):
                found.append(name)
        return found

    def _hint(self, turn: str, names: list[str]) -> None:
        """Keeps ``names`` to declare up front with the turn key ``turn`` (``_run``)."""
        if len(self._hints) >= 10_000:  # a cache, not a leak
            self._hints.clear()
        self._hints[turn] = names

    def _known(self, turns: list[str]) -> list[str]:
        """The conversation hashes ``_hint`` keeps for ``turns``, each once (declared up
        front by a read of several turns, so that it usually takes one run)."""
        return list(dict.fromkeys(name for turn in turns for name in self._hints.get(turn, [])))

    async def _reconcile(self, tag: str, gone: list[str]) -> bool:
        """Drops the conversations whose hash is gone from the owner's list and accounting
        (lua/reconcile.lua): the members ``gone`` names (ListConversations found their
        hashes missing). The hashes are declared: mid-reshard, split between the nodes,
        Redis refuses the run (TRYAGAIN: UNAVAILABLE) rather than one not moved yet being
        taken for expired. False when a member of ``gone`` has its hash after all (a move
        ended since it was read missing): nothing dropped for it."""
        return await self._reconcile_run(tag, gone) == 1

    async def _walk(self, tag: str) -> int:
        """A write's reconcile (lua/usage.lua): every member of the owner's list whose
        hash is gone dropped, as ``_reconcile``, and next_expiry set. Returns the members
        read, summed over its runs (``_run`` bounds the work of one call by them)."""
        read: list[int] = []
        await self._reconcile_run(tag, None, read)
        return sum(read)

    async def _reconcile_run(
        self, tag: str, gone: list[str] | None, read: list[int] | None = None
    ) -> int:
        """reconcile.lua's answer (1 or 2) on ``gone``, or (None) on every member of the
        list, read again while the list changed since its read (0); ``read`` gets the
        number of members of each run."""
        convs = keys.conversations(tag)
        for _ in range(RUN_ATTEMPTS):
            if gone is None:
                members = [
                    bytes(m).decode()
                    for m in await _redis(self._outage, self._redis.zrange(convs, 0, -1), key=convs)
                ]
            else:
                members = gone
            if read is not None:
                read.append(len(members))
            names = [keys.conversation(tag, m[16:]) for m in members]
            done = await self._script(
                self._reconcile_script,
                [convs, keys.usage(tag), *names],
                [tag, "1" if gone is None else "0", *members],
            )
            if done != 0:
                return int(done)
        raise Aborted(
            "the owner's conversations kept changing while they were counted; try again",
            reason="CONCURRENT_UPDATE",
        )

    async def _measure(self, tag: str, cid: str) -> None:
        """Counts conversation ``cid``, stored before the accounting (lua/measure.lua),
        with every turn it reads declared, so that mid-reshard a turn not moved yet is not
        counted as the bare overhead: Redis refuses the run (TRYAGAIN: UNAVAILABLE). Walked
        in chunks (``_walk_in_chunks``): the runs carry the sum and the last sets the
        conversation's bytes; a walk whose earlier turns changed under it (an eviction, a
        deletion) starts over."""
        await self._walk_in_chunks(self._measure_script, tag, cid, tag, "0")

    async def _walk_in_chunks(
        self, script: AsyncScript, tag: str, cid: str, head: str, mark: str, *, wait: bool = True
    ) -> None:
        """Runs ``script`` (measure.lua, drop_missing.lua) over conversation ``cid``'s list
        in chunks of ``drop_batch`` turns, one run each (each chunk read just before, its
        turns declared), so no run holds Redis for O(turns). A run answers 1 (done), 2
        (what the walk carried changed under it: start over), 0 (the chunk changed since
        its read: read it again), or 3 with what it carries to the next run: a mark (the
        script's own) and a byte sum. ``head`` is the script's first argument, ``mark``
        the first run's. At most RUN_ATTEMPTS restarts, and as many misreads in a row,
        then ABORTED (what the runs did stays done). ``wait`` False: a run refused by a
        slot move is UNAVAILABLE at once (``_script``)."""
        conv = keys.conversation(tag, cid)
        ints = keys.conversation_interactions(tag, cid)
        usage = keys.usage(tag)
        first_mark = mark
        after, total = "", 0
        misreads = restarts = 0
        while True:
            start = f"({after}" if after else "-"
            batch = [
                bytes(m).decode()
                for m in await _redis(
                    self._outage,
                    self._redis.zrange(
                        ints, start, "+", bylex=True, offset=0, num=self._drop_batch
                    ),
                    key=ints,
                )
            ]
            out = await self._script(
                script,
                [conv, ints, usage, *(keys.interaction(tag, iid) for iid in batch)],
                [head, cid, after, mark, total, *batch],
                wait=wait,
            )
            status = int(out[0])
            if status == 1:
                return
            if status == 2:
                restarts += 1
                if restarts >= RUN_ATTEMPTS:
                    raise _concurrent_update(cid)
                after, mark, total = "", first_mark, 0
                continue
            if status == 0 or not batch:  # the chunk changed since its read: read again
                misreads += 1
                if misreads >= RUN_ATTEMPTS:
                    raise _concurrent_update(cid)
                continue
            misreads = 0
            carried = out[1]
            mark = carried.decode() if isinstance(carried, bytes) else str(carried)
            after, total = batch[-1], int(out[2])

    async def shared_secret(self) -> bytes:
        """A random secret created once per key prefix, the same for every replica."""
        key = f"{self._prefix}:page-token-secret"
        await _redis(
            self._outage, self._redis.set(key, os.urandom(32).hex(), nx=True), key=key, write=True
        )
        value = await _redis(self._outage, self._redis.get(key), key=key)
        if not value:
            raise Unavailable("memory store unavailable: page token secret missing")
        return bytes(value)

    async def check_storage(
        self, owner: Owner, cid: str, turn_bytes: int, *, summary: bool = False
    ) -> StorageUsage:
        """Whether a turn of ``turn_bytes`` (serialized interaction and traces, without
        the fixed overhead) fits in conversation ``cid``, or in a new conversation when
        ``cid`` is empty: the same decision ``create_interaction`` (and
        ``create_conversation``) would make now, nothing of the turn written. With
        ``summary`` (``cid`` required), ``turn_bytes`` is a new summary's length and the
        decision is ``update_summary``'s. A guard, not a reservation: the writes still
        check atomically."""
        tag = self.tag(owner)
        # The usage hash is written (measure) but read by name: declared too, so that
        # mid-reshard Redis refuses the script (TRYAGAIN) rather than letting it create
        # the hash on the slot's new node before the old one's has moved (MIGRATE would
        # then fail: BUSYKEY). The same in the other scripts that charge bytes.
        # At the limit (the cap on turns, the look for gone ones) the script reads the
        # conversation's list of turns: asked for by a first run then, as the window's turn
        # keys are (lua/usage.lua's gone_turns), not declared up front: a conversation
        # without turns has no list, and a key declared and missing makes Redis refuse
        # the script while a reshard moves the slot (TRYAGAIN: UNAVAILABLE, for as long as
        # the move lasts), where the check has its answer.
        names = [keys.conversations(tag)]
        if cid:
            names.append(keys.conversation(tag, cid))
        names.append(keys.usage(tag))
        # Past the limit it cannot fit whatever the count: no huge number for Lua.
        turn_bytes = min(turn_bytes, self._max_bytes + 1)
        status, used, count = await self._run(
            tag,
            self._check_storage,
            names,
            [
                self.caller(owner), tag, cid, turn_bytes, self._max_bytes,
                self._max_conversations, "1" if summary else "0", self._max_interactions,
                self._grace, *self._gone_check(),
            ],
            options=_CHECK_STORAGE,
        )  # fmt: skip
        if status == 0:
            raise conversation_not_found(cid)
        if status == 2:
            raise self._conversations_full()
        if status == 3:
            raise self._storage_full()
        if status == 4:
            raise self._conversation_full(cid)
        return StorageUsage(int(used), self._max_bytes, int(count), self._max_conversations)

    async def stored_request(
        self, owner: Owner, request_id: str, fingerprint: str = ""
    ) -> pb.Interaction | None:
        """The interaction ``owner`` stored with ``request_id`` (CreateInteraction's
        idempotency key, remembered for ``request_id_ttl``), if it still exists.
        REQUEST_ID_REUSED when it was stored for another request than ``fingerprint``
        (_same_request)."""
        tag = self.tag(owner)
        req = self._request(owner, tag, request_id)
        # The turn it names and that turn's conversation hash are asked for by first runs
        # (lua/read.lua's declare_first), then kept for a retry's look-up (``_run``).
        out = await self._run(tag, self._stored_request, [req], [self.caller(owner), tag], hint=req)
        if not out:
            return None
        _same_request(fingerprint, out[2])
        return pb.Interaction.FromString(out[1])

    async def claim_request(
        self, owner: Owner, request_id: str, token: str, seconds: int, fingerprint: str = ""
    ) -> pb.Interaction | bool:
        """Reserves ``request_id`` for the attempt ``token`` for ``seconds`` (renewed when
        it holds it already), keeping ``fingerprint`` with the reservation: True. False
        when another attempt holds it; the interaction ``owner`` stored with it
        meanwhile, if any (checked in the same atomic step). Either one stored or a
        holder claiming for another request than ``fingerprint``: REQUEST_ID_REUSED,
        before "in use" (a retry of another request never succeeds). A holder with no
        fingerprint kept (claimed without one, or by a replica older than this) is not
        compared: False, in use."""
        tag = self.tag(owner)
        req = self._request(owner, tag, request_id)
        out = await self._run(
            tag,
            self._claim_request,
            [
                req,
                self._claim(owner, tag, request_id),
                self._claim_fingerprint(owner, tag, request_id),
            ],
            [self.caller(owner), tag, token, seconds * 1000, fingerprint],
            hint=req,
        )
        if out[0] == 1:
            _same_request(fingerprint, out[3])
            return pb.Interaction.FromString(out[2])
        if out[0] == 2:
            _same_request(fingerprint, out[1] if len(out) > 1 else None)
            return False
        return True

    async def release_request(self, owner: Owner, request_id: str, token: str) -> None:
        """Ends the attempt ``token``'s reservation of ``request_id``, if it still holds
        it."""
        tag = self.tag(owner)
        claim = self._claim(owner, tag, request_id)
        held = self._claim_fingerprint(owner, tag, request_id)
        await _redis(
            self._outage, self._release_request(keys=[claim, held], args=[token]), key=claim
        )

    async def create_conversation(
        self, owner: Owner, name: str, retention: Retention | None = None
    ) -> ConversationRecord:
        tag = self.tag(owner)
        cid, now = self._ids.new()
        r = retention or Retention()
        expire_ms = await self._run(
            tag,
            self._create_conversation,
            [keys.conversation(tag, cid), keys.conversations(tag), keys.usage(tag)],
            [
                self.caller(owner), name, now, tag, cid, r.ttl_ms, r.max_turns,
                int(r.summary_disabled), self._max_conversations, self._max_bytes,
            ],
        )  # fmt: skip
        if expire_ms == -2:
            raise self._conversations_full()
        if expire_ms == -3:
            raise self._storage_full()
        self._recent.learn_count(keys.conversation(tag, cid), 0)
        return ConversationRecord(cid, owner.user, name, now, now, 0, int(expire_ms), r)

    async def get_conversation(
        self, owner: Owner, cid: str, *, counted: bool = True
    ) -> ConversationRecord:
        """The conversation, NOT_FOUND unless the caller's. Its interaction_count never
        includes a turn whose key is gone for good (evicted under a maxmemory-policy other
        than noeviction, deleted by hand) once found: lua/get_conversation.lua checks a
        window of the listed turns (at most GONE_CHECK_TURNS from a random offset, drawn by
        the call before, which named the window's turns: declared up front, they make it
        one round trip, two when they changed since; repeated reads cover them all) and,
        when one has no key, the store drops such turns with their bytes
        (``_drop_missing``, every turn declared) and reads again: two round trips more,
        only then. Mid-reshard, with the turns split between the slot's two nodes, Redis
        refuses the drop: the conversation is answered as read (its turns not moved yet
        are not gone). ``counted`` False (an ownership check only) reads the hash alone."""
        tag = self.tag(owner)
        if not counted:
            row = await _redis(
                self._outage,
                self._redis.hmget(keys.conversation(tag, cid), list(CONVERSATION_FIELDS)),
                key=keys.conversation(tag, cid),
            )
            if not self._owns(owner, row[0], row[_TENANT]):
                raise conversation_not_found(cid)
            return _conversation(cid, row)
        conv = keys.conversation(tag, cid)
        names = [conv, *self._turn_list(tag, cid)]
        for _ in range(RUN_ATTEMPTS):
            # The window's turns: those the last call found for this one (its offset drawn
            # then), declared up front; a run asks for any other (read.lua's missing_turn).
            offset, turns = self._recent.window(conv)
            if offset is None:
                offset = self._gone_offsets()
            args: list[EncodableT] = [
                self.caller(owner), tag, offset, self._gone_turns, self._gone_offsets(),
            ]  # fmt: skip
            asked: list[str] = []
            row = await self._run(
                tag,
                self._get_conversation,
                names + turns,
                args,
                options=_GET_CONVERSATION,
                asked=asked,
                maybe_missing=self._unseen_list(names),
            )
            if not row:
                raise conversation_not_found(cid)
            named = [key for key in asked if key.startswith(keys.interaction(tag, ""))]
            self._learn_window(tag, conv, row[_NEXT_WINDOW:], turns + named)
            if row[_MISSING_TURN] != b"1" or not await self._dropped(owner, tag, cid):
                break
        record = _conversation(cid, row)
        self._recent.learn_count(conv, record.interaction_count)
        return record

    def _turn_list(self, tag: str, cid: str) -> list[str]:
        """The conversation's list of turns, to declare up front, unless this replica saw
        it without turns last (``RecentTurns.known_empty``): then it has no list, and a
        script declaring a key that does not exist is refused by Redis for as long as a
        reshard moves the slot (TRYAGAIN); a run that finds turns asks for it
        (lua/read.lua's declare_first: one more run)."""
        if self._recent.known_empty(keys.conversation(tag, cid)):
            return []
        return [keys.conversation_interactions(tag, cid)]

    @staticmethod
    def _unseen_list(names: list[str]) -> str:
        """The list of turns among ``names`` (``_turn_list`` put it there: the conversation
        was not seen without turns), which may not exist: ``_run``'s
        ``maybe_missing``; "" when ``names`` has none."""
        return next((name for name in names if name.endswith(":ints")), "")

    def _learn_window(self, tag: str, conv: str, reply: list[Any], declared: list[str]) -> None:
        """Keeps the next window get_conversation.lua named (``reply``: its start, then
        b"=" when its turns are the run's ``declared`` turn keys, else their ids)."""
        rest = reply[1:]
        if rest == [b"="]:
            turns = declared
        else:
            turns = [keys.interaction(tag, bytes(iid).decode()) for iid in rest]
        self._recent.learn_window(conv, int(reply[0]), turns)

    async def _dropped(self, owner: Owner, tag: str, cid: str) -> bool:
        """``_drop_missing`` for a read that found a listed turn without its key: True
        once done (the read is made again), False when Redis refused it (UNAVAILABLE:
        mid-reshard the turns are split between the slot's nodes, not gone) or the
        conversation's turns kept changing under it (ABORTED: turns written meanwhile, as
        many times as it reads them again): the read is answered as it was, its count
        still including the gone turn, which a later read drops."""
        try:
            # Not waiting for a slot move: the read has its answer already.
            await self._drop_missing(owner, tag, cid, wait=False)
        except (Unavailable, Aborted):
            return False
        return True

    async def update_conversation(
        self, owner: Owner, cid: str, update: ConversationUpdate
    ) -> ConversationRecord:
        tag = self.tag(owner)
        now = time.time_ns() // 1_000_000
        args: list[EncodableT] = [self.caller(owner), tag, cid, now, self._grace, self._max_bytes]
        for value in (
            update.name,
            update.ttl_ms,
            update.max_turns,
            None if update.summary_disabled is None else int(update.summary_disabled),
        ):
            args += ["0", ""] if value is None else ["1", value]
        args += self._gone_check()
        names = [
            keys.conversation(tag, cid),
            keys.conversations(tag),
            keys.usage(tag),
            *self._turn_list(tag, cid),
        ]
        row = await self._run_evicting(
            tag, cid, self._update_conversation, names, args, _UPDATE_CONVERSATION
        )
        if not row:
            raise conversation_not_found(cid)
        if row == -1:
            raise self._storage_full()
        self._recent.learn_count(names[0], _conversation(cid, row).interaction_count)
        # A new ttl sets every turn's expiry in batches (lua/retention.lua): the answer
        # waits for the last.
        if row[_WALK_PENDING] == b"1":
            row = await self._finish_walk(owner, tag, cid)
            if not row:
                raise conversation_not_found(cid)
        return _conversation(cid, row)

    async def _finish_walk(self, owner: Owner, tag: str, cid: str) -> Any:
        """Runs the pending walk of a conversation's turns' expiry to its end, one batch per
        script run so Redis is never blocked for O(turns) (lua/retention.lua); returns the
        last run's answer (a conversation row, or None when the conversation is gone).
        Each run says whether the walk is still pending (retention.lua's renew) and names
        the next batch's turns, which the next run declares with their keys: while a
        reshard moves the slot, a run whose keys are split between the nodes is refused by
        Redis (TRYAGAIN: UNAVAILABLE, retryable) instead of renewing only the turns its node
        holds. Until the end, the conversation expires no later than its unwalked turns:
        cut short (a lost connection, a refused run), it is safe and finished by the next
        turn or update.

        Each run but the first walks a batch of turns or ends the walk (or finds that
        another caller's run just did, and names the batch after it), so a conversation
        within the turn cap needs far fewer runs than ``_max_interactions + 2``: a walk
        still pending after that many is a bug (a run that walks nothing), failed loudly
        rather than left looping or stopped without a word."""
        runs = self._max_interactions + 2
        # usage: renew may lower its next_expiry (lua/usage.lua's expires_at).
        names = [
            keys.conversation(tag, cid),
            keys.conversation_interactions(tag, cid),
            keys.usage(tag),
        ]
        batch: list[str] = []
        for _ in range(runs):
            row = await self._script(
                self._retention_step,
                names + [keys.interaction(tag, iid) for iid in batch],
                [self.caller(owner), tag, cid, *batch],
            )
            if not row or row[_WALK_PENDING] != b"1":
                return row
            batch = [bytes(iid).decode() for iid in row[_WALK_PENDING + 1 :]]
        log.error(
            "walk of a conversation's turn expiries still pending after %d runs",
            runs,
            extra={"conversation_id": cid},
        )
        raise Internal("the conversation's turns' expiry could not be set; try again")

    def _conversations_full(self) -> ResourceExhausted:
        return ResourceExhausted(
            f"the caller has {self._max_conversations} conversations, the most "
            "allowed; delete some to create more",
            reason="OWNER_CONVERSATIONS_FULL",
            metadata={
                "limit": str(self._max_conversations),
                "setting": "GENSEARCH_MEMORY_MAX_CONVERSATIONS_PER_OWNER",
            },
        )

    def _conversation_full(self, cid: str) -> ResourceExhausted:
        # What a caller can do about it: start another conversation (or give this one a
        # max_turns, so its oldest turns make room).
        return ResourceExhausted(
            f"conversation {cid} holds {self._max_interactions} interactions, the most "
            "allowed; start a new conversation (or set max_turns on this one)",
            reason="CONVERSATION_INTERACTIONS_FULL",
            metadata={
                "limit": str(self._max_interactions),
                "setting": "GENSEARCH_MEMORY_MAX_INTERACTIONS_PER_CONVERSATION",
                "conversation_id": cid,
            },
        )

    def _storage_full(self) -> ResourceExhausted:
        # What a caller can do about it: delete conversations (or let them expire).
        return ResourceExhausted(
            f"this would take the caller's stored conversations over {self._max_bytes} "
            "bytes, the most allowed; delete conversations to make room",
            reason="OWNER_STORAGE_FULL",
            metadata={
                "limit_bytes": str(self._max_bytes),
                "setting": "GENSEARCH_MEMORY_MAX_BYTES_PER_OWNER",
            },
        )

    async def update_summary(
        self,
        owner: Owner,
        cid: str,
        *,
        expected_through: str,
        through: str,
        text: str,
        turns: int,
        prompt_tokens: int,
        completion_tokens: int,
        expected_deletions: int | None = None,
    ) -> ConversationRecord:
        """Compare-and-set of the rolling summary; SummaryConflict when the summary no
        longer covers the turns up to ``expected_through``, or when ``expected_deletions``
        (the conversation's ``unfolded_deletions`` as the fold read it first; None: not
        checked) changed: a turn the fold read may have been deleted since."""
        tag = self.tag(owner)
        now = time.time_ns() // 1_000_000
        # The owner's list too: read when the new summary does not fit (usage.lua).
        names = [
            keys.conversation(tag, cid),
            keys.usage(tag),
            keys.conversations(tag),
            *self._turn_list(tag, cid),
        ]
        args: list[EncodableT] = [
            self.caller(owner), tag, cid, now, expected_through, through, text, turns,
            prompt_tokens, completion_tokens, self._grace, self._max_bytes,
            "" if expected_deletions is None else expected_deletions, *self._gone_check(),
        ]  # fmt: skip
        out = await self._run_evicting(tag, cid, self._update_summary, names, args, _UPDATE_SUMMARY)
        status = out[0]
        if status == 0:
            raise conversation_not_found(cid)
        if status == 1:
            raise SummaryConflict(out[1].decode())
        if status == 2:
            raise InvalidArgument(
                "through_interaction_id must name an interaction of the conversation newer "
                "than the one the summary covers",
                field="through_interaction_id",
                reason="INVALID_SUMMARY_RANGE",
            )
        if status == 3:
            raise FailedPrecondition(
                f"conversation {cid} has its summary disabled",
                reason="SUMMARY_DISABLED",
                metadata={"conversation_id": cid},
            )
        if status == 5:
            raise self._storage_full()
        return _conversation(cid, out[1])

    async def delete_conversation(
        self, owner: Owner, cid: str, *, finish_only: int | None = None
    ) -> bool:
        """Deletes the conversation and its turns (with their request_id keys).

        Runs of delete_conversation.lua, each after reading the turn ids and their
        request ids, so that every key a run touches is declared: while a reshard moves
        the slot, a run whose keys are split between the nodes is refused by Redis
        (TRYAGAIN: UNAVAILABLE, retryable) instead of deleting only what the node it ran
        on holds. At most DELETE_BATCH turns per run: the first removes the conversation
        (gone for every reader and writer from then on, so its list no longer changes),
        later ones its remaining turns and any written between the read and the first
        run; a retry of a call that failed in between finishes them.

        A call that failed in between and is never retried (the caller gave up, the
        process died, Redis failed) left turns stored that nothing reads: before each run
        the call marks the deletion in ``_deleting_key`` (with the time), and unmarks it
        once done, so ``resume_deletions`` finishes any left marked longer than
        DELETE_RESUME_SECONDS. The call does not depend on its marks: one Redis refuses
        (full: a ZADD grows it, the deletion's steps do not; or, on a Cluster, the marks'
        master down while the owner's answers) leaves the deletion unmarked, which only a
        retry finishes if it is cut off, as before the marks; an unmark refused after the
        last step leaves a mark the resume clears (nothing left to finish). Before, a full
        Redis refused every DeleteConversation, the one call that frees room, the marks'
        master down every owner's, and a deletion done answered UNAVAILABLE.

        ``finish_only`` (the resume's: the time, in ms, the marks it took were made by):
        a conversation whose hash is still there was never deleted (the mark was made,
        the first run was not) and is left alone: False then, else True. Its mark is
        removed only while still made by then: a call deleting the conversation now (it
        marks again before each run) keeps its own."""
        tag = self.tag(owner)
        ints = keys.conversation_interactions(tag, cid)
        names = [keys.conversation(tag, cid), ints, keys.conversations(tag), keys.usage(tag)]
        self._recent.forget(names[0])  # its turns are expected by no read any more
        mark = json.dumps([owner.tenant, owner.user, cid])
        started = marked = False
        marking = finish_only is None
        while True:
            batch = [
                bytes(m).decode()
                for m in await _redis(
                    self._outage, self._redis.zrange(ints, 0, DELETE_BATCH - 1), key=ints
                )
            ]
            turns = [keys.interaction(tag, iid) for iid in batch]
            read = await self._script(self._turn_requests, turns, []) if batch else []
            rids = [bytes(rid).decode() if rid else "" for rid in read]
            args: list[EncodableT] = [self.caller(owner), tag, cid]
            for iid, rid in zip(batch, rids, strict=True):
                args += [iid, rid]
            args.append("0" if finish_only is None else "1")
            requests = [self._request(owner, tag, rid) for rid in rids if rid]
            # Marked (again) before every run that may leave turns to a later one: a run
            # whose call fails after it is found by the resume, and one under way is not
            # taken for interrupted. A run reading fewer than DELETE_BATCH turns deletes
            # them all at once, so the first run of a small (or missing) conversation is
            # not marked: every call marking, a client sending deletes it cuts short (a
            # deadline, a cancel) piled marks up faster than the resume clears them. The
            # resume leaves the mark it took as it is (due) until it is done.
            if marking and (started or len(batch) == DELETE_BATCH):
                # Not again in this call once refused: a node that hangs would cost each
                # step its socket timeout.
                marking = await self._marked(mark)
                marked = marked or marking
            status = await self._script(self._delete_conversation, names + turns + requests, args)
            if status == 3:
                started = True
                if marking and not marked:
                    # An unmarked first run left turns (written between its read and it),
                    # the conversation gone: marked at once, whatever becomes of the call,
                    # or one cut before its next run left them to no one.
                    marking = marked = await asyncio.shield(self._marked(mark))
                continue
            if finish_only is None:
                if marked:
                    with contextlib.suppress(Unavailable):
                        await self._unmark_deleting(mark)
            else:
                await self._unmark_deleting(mark, finish_only)
            if status == 0 and not started and finish_only is None:
                raise conversation_not_found(cid)
            # 1: this run deleted the last of it; 0: nothing was left (another call
            # finished it, or, for the resume, it was done already); 2: the resume's, a
            # conversation never deleted. The resume counts only what it deleted: a mark
            # whose deletion was complete (its unmark refused) is no deletion finished.
            return finish_only is None or started or status == 1

    def _deleting_key(self) -> str:
        # P:{deletes}:pending  ZSET  [tenant, user, cid] JSON of each deletion under way or
        # interrupted, scored by when (ms) it was last marked: the time of the last batch
        # its call began (``resume_deletions`` takes the old ones as interrupted).
        # One hash tag for the whole service: the resume finds every owner's with one read.
        return f"{self._prefix}:{{deletes}}:pending"

    async def _mark_deleting(self, mark: str) -> None:
        now = time.time_ns() // 1_000_000
        await _redis(
            self._outage,
            self._redis.zadd(self._deleting_key(), {mark: now}),
            key=self._deleting_key(),
            write=True,
        )

    async def _marked(self, mark: str) -> bool:
        """Marks the deletion, best effort: False when Redis refused (logged by _redis),
        and the deletion goes on unmarked (``delete_conversation``)."""
        try:
            await self._mark_deleting(mark)
        except Unavailable:
            return False
        return True

    async def _unmark_deleting(self, mark: str, made_by: int | None = None) -> None:
        """Removes ``mark``; with ``made_by`` (the resume's) only while it was made by then."""
        args: list[EncodableT] = [mark, "" if made_by is None else made_by]
        await _redis(
            self._outage,
            self._unmark_deletion(keys=[self._deleting_key()], args=args),
            key=self._deleting_key(),
        )

    async def deletions_pending(self) -> int:
        """How many deletions are marked (under way, or interrupted and not resumed yet)."""
        key = self._deleting_key()
        return int(await _redis(self._outage, self._redis.zcard(key), key=key))

    async def resume_deletions(
        self,
        count: int = RESUME_BATCH,
        *,
        around: Around | None = None,
    ) -> int:
        """Finishes up to ``count`` deletions whose call was interrupted
        (``delete_conversation``: last marked more than DELETE_RESUME_SECONDS ago, by this
        replica's setting); how many it finished. ``around`` runs each (given the owner,
        the conversation and the deletion to run; answering what it answered), for what
        the interrupted call did around its deletion: the search index's drop job written
        ahead (``Indexer.dropping``), and ``DeletionResumer``'s count. One that fails (its
        owner's Cluster master down, say) stays marked, for the next resume, and holds no
        other back: the rest are finished, then the first failure is raised. (Stopping at it, the
        oldest mark first every time, finished no other owner's while it lasted.)"""
        made_by = time.time_ns() // 1_000_000 - self._delete_resume_ms
        due = await _redis(
            self._outage,
            self._redis.zrangebyscore(self._deleting_key(), "-inf", made_by, start=0, num=count),
            key=self._deleting_key(),
        )
        finished = 0
        failed: ServiceError | None = None
        for member in due:
            mark = bytes(member).decode()
            try:
                tenant, user, cid = json.loads(mark)
                owner = Owner(str(tenant), str(user))
            except (ValueError, TypeError):
                await self._unmark_deleting(mark)  # not ours
                continue
            finish = functools.partial(
                self.delete_conversation, owner, str(cid), finish_only=made_by
            )
            try:
                if await (finish() if around is None else around(owner, str(cid), finish)):
                    finished += 1
            except ServiceError as err:
                failed = failed or err
        if failed is not None:
            raise failed
        return finished

    async def list_conversations(
        self, owner: Owner, page_size: int, cursor: str | None
    ) -> Page[ConversationRecord]:
        """A page of the owner's conversations, most recently updated first: at most
        ``page_size``, and fewer (none, with a cursor, when the other owner's fill all a
        page reads) when the list is shared with another owner whose conversations fill
        it: a page reads at most ``page_size + 1 + LIST_SKIP`` members, so its runs are
        bounded however many of the other's come first (lua/list_conversations.lua)."""
        tag = self.tag(owner)
        start = f"({cursor}" if cursor else "+"
        args: list[EncodableT] = [
            self.caller(owner), tag, start, page_size, page_size + 1 + LIST_SKIP,
            min(LIST_TURNS, self._max_interactions), *self._gone_check(),
        ]  # fmt: skip
        for _ in range(RUN_ATTEMPTS):
            # The page's hashes, lists and windows' turns are asked for by first runs
            # (lua/list_conversations.lua).
            out = await self._run(
                tag,
                self._list_conversations,
                [keys.conversations(tag)],
                args,
                options=_LIST_CONVERSATIONS,
            )
            # Members whose hash was missing: expired, or (mid-reshard) not moved yet to
            # the node that ran the script. Removed with the hashes declared, so Redis
            # refuses while they are split (UNAVAILABLE) rather than a live one leaving;
            # one found after all (the move ended in between) was left out of this page,
            # which is read again.
            if out[1] and not await self._reconcile(tag, [bytes(m).decode() for m in out[1]]):
                continue
            # Conversations of the page with a listed turn whose key is missing: gone for
            # good, dropped (``_dropped``) and the page read again, so no count shown
            # includes it; or, mid-reshard, not moved yet: the page as read.
            stale = [bytes(c).decode() for c in out[2]]
            dropped = [await self._dropped(owner, tag, c) for c in stale]
            if not any(dropped):
                break
        else:
            raise Unavailable(
                "the owner's conversations are being moved; try again",
                reason="STORE_UNAVAILABLE",
            )
        items = [_conversation(out[i].decode()[16:], out[i + 1]) for i in range(3, len(out), 2)]
        # The cursor is a list member, "<update_ms:015d>:<cid>" (lua/list_conversations.lua).
        return Page(items, out[0].decode() or None)

    async def create_interaction(
        self,
        owner: Owner,
        cid: str,
        interaction: pb.Interaction,
        request_id: str,
        traces: bytes = b"",
        new: NewConversation | None = None,
        fingerprint: str = "",
        beside: Callable[[str], object] | None = None,
        stored: Callable[[pb.Interaction], Awaitable[None]] | None = None,
    ) -> pb.Interaction:
        """Stores ``interaction`` (its id, conversation and create_time are set here) with
        its serialized ``traces``, in one atomic step. With ``new`` (``cid`` empty), the
        turn starts a conversation made in that same step: it exists only with its first
        turn, and a write refused (a limit) or never made leaves nothing. The interaction
        already stored with ``request_id`` is then returned whatever its conversation.
        ``fingerprint`` (with ``request_id``) is kept with the turn: a write with the
        same key and another fingerprint is REQUEST_ID_REUSED, nothing written.
        ``beside`` is called with the turn's id once it is chosen, just before its first
        write is sent, to start a write of its own beside it (the search index's job
        written ahead, indexer.WriteAhead): the two round trips overlap. A run after
        another replica's newer turn (status 6) writes the turn under another id, which
        ``beside`` is not told. ``stored`` is awaited with the turn the call answers with
        (this one stored, or ``request_id``'s earlier one) as soon as it is known stored,
        before the walk of the turns' expiry, which may still fail the call: the turn is
        stored all the same (its index job must not be taken out)."""
        tag = self.tag(owner)
        created: list[EncodableT] = ["0"]
        if new is not None:
            cid, create_ms = self._ids.new()
            r = new.retention
            created = [
                "1", new.name, create_ms, r.ttl_ms, r.max_turns, int(r.summary_disabled),
                self._max_conversations,
            ]  # fmt: skip
        async with self._one_turn_write(tag, cid):
            out = await self._write_turn(
                owner, tag, cid, interaction, request_id, traces, created, fingerprint, beside
            )
        status = out[0]
        if status == 0:
            raise conversation_not_found(cid)
        if status == 2:
            if new is None and out[1].decode() != cid:
                raise InvalidArgument(
                    "request_id was already used for an interaction of another conversation",
                    field="request_id",
                    reason="REQUEST_ID_REUSED",
                )
            _same_request(fingerprint, out[3])
            earlier = pb.Interaction.FromString(out[2])
            if stored is not None:
                await stored(earlier)
            return earlier
        if status == 3:
            raise self._storage_full()
        if status == 4:
            raise self._conversation_full(cid)
        if status == 5:
            raise self._conversations_full()
        # A read of the turn by its id declares its conversation's hash up front (``_run``),
        # and the next page and window of its conversation declare the turn (RecentTurns).
        turn = keys.interaction(tag, interaction.interaction_id)
        self._hint(turn, [keys.conversation(tag, cid)])
        self._recent.wrote(keys.conversation(tag, cid), turn, new=new is not None)
        if stored is not None:
            await stored(interaction)
        if out[1] == b"1":
            # This turn's renewal started a walk of every turn's expiry (once per ttl of
            # activity): finished before the turn is acknowledged, so the conversation
            # gets its full sliding ttl.
            await self._finish_walk(owner, tag, cid)
        return interaction

    @contextlib.asynccontextmanager
    async def _one_turn_write(self, tag: str, cid: str) -> AsyncIterator[None]:
        """One turn write at a time per conversation in this process: the ids it makes
        then reach Redis in their order, and only another replica's write can make one
        stale (``_write_turn``)."""
        key = f"{tag}:{cid}"
        entry = self._turn_writes.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._turn_writes[key]

    async def _write_turn(
        self,
        owner: Owner,
        tag: str,
        cid: str,
        interaction: pb.Interaction,
        request_id: str,
        traces: bytes,
        created: list[EncodableT],
        fingerprint: str,
        beside: Callable[[str], object] | None = None,
    ) -> Any:
        """create_interaction.lua's answer for ``interaction`` with a new id, made again
        after the newest turn when another replica, its clock ahead of ours, wrote a turn
        with a later id (status 6): turns keep the order they were written in. Run again
        too, nothing written, when it names turns to declare (``_DECLARE``): those the
        turn's eviction deletes (max_turns), or the turn ``request_id`` names when its key
        is not on the node (mid-reshard: declared, Redis refuses the run until it moved,
        rather than the turn being stored twice). At max_turns a turn takes two runs, under
        one id: the id is made again only after status 6 (before, every run made one, so
        the index job ``beside`` wrote for the first was taken out again and written anew
        for the second: two more outbox writes per turn at max_turns)."""
        named: dict[str, str] = {}
        evicted, declared = _declare_turns(tag, named)
        iid, now = self._ids.new()
        for _ in range(TURN_WRITE_ATTEMPTS):
            interaction.interaction_id = iid
            interaction.conversation_id = cid
            interaction.create_time.FromMilliseconds(now)
            names = [
                keys.conversation(tag, cid),
                keys.conversation_interactions(tag, cid),
                keys.interaction(tag, iid),
                keys.conversations(tag),
                self._request(owner, tag, request_id),
                self._claim(owner, tag, request_id),
                keys.usage(tag),
                self._claim_fingerprint(owner, tag, request_id),
                *evicted,
            ]
            args: list[EncodableT] = [
                self.caller(owner), tag, cid, iid, now, request_id, self._request_ttl_ms,
                interaction.SerializeToString(), traces, self._grace, self._max_bytes,
                self._max_interactions, fingerprint, *created, *self._gone_check(), *declared,
            ]  # fmt: skip
            if beside is not None:
                beside(iid)  # the first attempt's id only (create_interaction)
                beside = None
            out = await self._run(
                tag, self._create_interaction, names, args, options=_CREATE_INTERACTION
            )
            if out[0] == _DECLARE:
                # The turns this write evicts (or the turn request_id names), declared in
                # the next run: nothing was written.
                evicted, declared = _declare_turns(tag, named, out)
            elif out[0] == 6:
                self._ids.advance_past(out[1].decode())
                iid, now = self._ids.new()  # after the newest turn (nothing written)
            else:
                return out
        raise Aborted(
            "the conversation kept getting newer turns while this one was written; try again",
            reason="CONCURRENT_UPDATE",
            metadata={"conversation_id": cid},
        )

    async def get_interaction(self, owner: Owner, iid: str) -> pb.Interaction:
        return pb.Interaction.FromString(await self.get_interaction_data(owner, iid))

    async def list_interactions(
        self,
        owner: Owner,
        cid: str,
        page_size: int,
        cursor: str | None,
        max_bytes: int,
        *,
        oldest_first: bool = False,
        after: str = "",
    ) -> Page[bytes]:
        """A page of serialized ``Interaction`` messages, newest first (``oldest_first``:
        oldest first): at most ``page_size`` of them, and fewer when more would exceed
        ``max_bytes`` (then ``next_cursor`` continues right after the last one returned).
        ``after``: only the turns whose id sorts after it (newer), in either order; a
        position, so it need not name a turn that exists. Ids sort by creation
        (``ids.py``), and the list is read from the position on: a page costs
        O(log N + page_size) however many turns lie before it."""
        tag = self.tag(owner)
        if oldest_first:
            start = f"({cursor}" if cursor else f"({after}" if after else "-"
            stop = "+"
        else:
            start = f"({cursor}" if cursor else "+"
            stop = f"({after}" if after else "-"
        # Only a plain first page is the newest page the replica guesses the turns of.
        newest_page = cursor is None and not oldest_first and not after
        conv = keys.conversation(tag, cid)
        for _ in range(RUN_ATTEMPTS):
            # The newest page's turns (an Ask's history) as the last read found them and
            # this replica's writes since added, declared up front; a run asks for any
            # other (lua/list_interactions.lua). Any other page is read once: asked for.
            turns = self._recent.page(conv, page_size) if newest_page else []
            out = await self._run(
                tag,
                self._list_interactions,
                [conv, keys.conversation_interactions(tag, cid), *turns],
                [
                    self.caller(owner),
                    tag,
                    start,
                    page_size,
                    max_bytes,
                    stop,
                    "1" if oldest_first else "0",
                ],
            )
            if out is None:
                raise conversation_not_found(cid)
            if out[0] != 0:
                read = 2 + int(out[1])
                if newest_page:
                    ids = [bytes(iid).decode() for iid in out[2:read]]
                    turns = [keys.interaction(tag, iid) for iid in ids]
                    self._recent.learn_page(conv, turns, page_size)
                return Page(out[read:], out[0].decode() or None)
            # A listed turn has no key on the node the page ran on: gone, or not moved
            # there yet (lua/list_interactions.lua). Dropped only by a run that declares
            # every turn; then the page is read again.
            await self._drop_missing(owner, tag, cid)
        raise _concurrent_update(cid)

    async def _drop_missing(self, owner: Owner, tag: str, cid: str, *, wait: bool = True) -> None:
        """Drops the turns of conversation ``cid`` whose key is gone from its list, and
        counts its bytes again from what is left (lua/drop_missing.lua), with every turn
        declared: mid-reshard, split between the slot's two nodes, Redis refuses the run
        (TRYAGAIN: UNAVAILABLE, retryable) rather than a turn not moved yet being dropped.
        Standalone (or once the move is done) a missing key is gone for good: before, the
        conversation answered UNAVAILABLE to every ListInteractions (and Ask) forever."""
        await self._drop_gone(tag, cid, self.caller(owner), wait=wait)

    async def _drop_gone(self, tag: str, cid: str, caller: str, *, wait: bool = True) -> None:
        """``_drop_missing``'s walk, ``caller`` the script's, in chunks
        (``_walk_in_chunks``): each run drops its chunk's gone turns and sets
        interaction_count; the last sets the conversation's bytes from the sum the runs
        carried (lua/drop_missing.lua); a walk whose conversation's bytes changed under it
        (a write between two runs) starts over."""
        await self._walk_in_chunks(self._drop_missing_script, tag, cid, caller, "-", wait=wait)

    async def get_interaction_traces(self, owner: Owner, iid: str) -> bytes:
        """The interaction's serialized traces (b"" when it has none)."""
        return bytes((await self._read_turn(owner, iid, self._get_interaction_traces))[0])

    async def get_interaction_data(self, owner: Owner, iid: str) -> bytes:
        return bytes(await self._read_turn(owner, iid, self._get_interaction))

    async def _read_turn(self, owner: Owner, iid: str, script: AsyncScript) -> Any:
        """The answer of a read of one of the caller's turns (get_interaction.lua,
        get_interaction_traces.lua: ARGV caller, tag), its hint declared up front; NOT_FOUND
        when the script answers nil (missing, or not the caller's)."""
        tag = self.tag(owner)
        turn = keys.interaction(tag, iid)
        out = await self._run(tag, script, [turn], [self.caller(owner), tag], hint=turn)
        if out is None:
            raise interaction_not_found(iid)
        return out

    async def update_interaction(
        self, owner: Owner, iid: str, change: Callable[[pb.Interaction], None]
    ) -> pb.Interaction:
        """Applies ``change`` to the stored interaction and writes it back, atomically
        against concurrent updates: a compare-and-set, read again and retried when another
        update landed in between (ABORTED after UPDATE_ATTEMPTS lost races in a row)."""
        for _ in range(UPDATE_ATTEMPTS):
            old = await self.get_interaction_data(owner, iid)
            interaction = pb.Interaction.FromString(old)
            cid = interaction.conversation_id
            change(interaction)
            new = interaction.SerializeToString()
            if await self._replace_interaction(owner, iid, cid, old, new):
                return interaction
        raise Aborted(
            "the interaction kept changing while it was updated; try again",
            reason="CONCURRENT_UPDATE",
            metadata={"interaction_id": iid},
        )

    async def _replace_interaction(
        self, owner: Owner, iid: str, cid: str, old: bytes, new: bytes
    ) -> bool:
        """Compare-and-set of the interaction's data: False when it changed since ``old``
        was read; NOT_FOUND when it is gone or not the caller's. Redis compares SHA-1
        digests (``redis.sha1hex``), so ``old`` itself is not sent back. Every key the
        script touches is declared: the turn's conversation ``cid`` (its hash, and its
        list and the owner's list, read at the byte limit), and the window's turns the
        look for gone ones reads there (asked for by a first run: lua/usage.lua)."""
        tag = self.tag(owner)
        digest = hashlib.sha1(old, usedforsecurity=False).hexdigest()
        status = await self._run(
            tag,
            self._update_interaction,
            [
                keys.interaction(tag, iid),
                keys.usage(tag),
                keys.conversation(tag, cid),
                keys.conversation_interactions(tag, cid),
                keys.conversations(tag),
            ],
            [self.caller(owner), tag, digest, new, self._max_bytes, *self._gone_check()],
            options=_UPDATE_INTERACTION,
        )
        if status == 0:
            raise interaction_not_found(iid)
        if status == 3:
            raise self._storage_full()
        return bool(status == 1)

    async def delete_interaction(self, owner: Owner, iid: str) -> str:
        """Deletes one of the caller's turns as eviction deletes one (lua/retention.lua's
        drop_turns, run by lua/delete_interaction.lua): its keys and request_id key, its
        entry in its conversation's list, its count, its bytes from the owner's
        accounting, in one atomic step; returns its conversation's id. NOT_FOUND when it
        is missing or not the caller's (a retry after a deletion included). The
        conversation's summary is not rewritten. Every key the script touches is declared:
        the turn's conversation hash and list and the owner's usage (asked for by a first
        run: a turn deleted already is read alone) and its request_id keys (named by a
        run, as eviction's are: ``_declare_turns``; mid-move only the one that exists:
        ``_run_declaring``), so mid-reshard Redis refuses a run rather than half of it."""
        tag = self.tag(owner)
        turn = keys.interaction(tag, iid)
        out = await self._run_declaring(
            tag,
            self._delete_interaction,
            [turn],
            [self.caller(owner), tag, iid],
            attempts=RUN_ATTEMPTS,
            exhausted=lambda: Aborted(
                "the interaction kept changing while it was deleted; try again",
                reason="CONCURRENT_UPDATE",
                metadata={"interaction_id": iid},
            ),
            hint=turn,
        )
        if out[0] == 0:
            raise interaction_not_found(iid)
        cid = bytes(out[1]).decode()
        # Its conversation's next page and window no longer expect the turn.
        self._recent.forget(keys.conversation(tag, cid))
        return cid

    async def get_interactions(self, owner: Owner, iids: list[str]) -> list[pb.Interaction | None]:
        """Each of ``iids`` that exists and is the caller's, else None, in one round trip."""
        out = await self._read_turns(owner, iids, self._get_interactions)
        found = [pb.Interaction.FromString(data) if data else None for data in out]
        tag = self.tag(owner)
        for iid, interaction in zip(iids, found, strict=True):
            if interaction is not None:
                self._hint(
                    keys.interaction(tag, iid),
                    [keys.conversation(tag, interaction.conversation_id)],
                )
        return found

    async def interactions_exist(self, owner: Owner, iids: list[str]) -> list[bool]:
        """Whether each of ``iids`` exists and is the caller's, in one round trip, without
        reading or parsing the interactions (the search index's sweep)."""
        return [flag == 1 for flag in await self._read_turns(owner, iids, self._interactions_exist)]

    async def _read_turns(self, owner: Owner, iids: list[str], script: AsyncScript) -> list[Any]:
        """The answer of a read of several of the caller's turns in one round trip
        (get_interactions.lua, interactions_exist.lua: ARGV caller, tag, their number), one
        item a turn (None: missing or not the caller's); the conversation hashes ``_hint``
        keeps for them declared up front.

        Mid-reshard Redis refuses, for the whole move, a run declaring a key that does not
        exist (TRYAGAIN: it cannot tell it from one not moved yet), so a read naming one
        turn id that does not exist (deleted, evicted, expired, mistyped) waited out the
        move (GENSEARCH_MEMORY_SLOT_MOVE_WAIT_SECONDS), then UNAVAILABLE. So a run a move
        refuses is followed by a read of each turn's key alone (``_present``: a command on
        one key is served by whichever node holds it, the client following ASK), and the
        script runs again on the turns found only, the others answered missing: they were
        missing when read (a turn never comes back). Those found all on one node are
        answered at once; split between the two nodes, the run waits for the move's end
        as any other. One round trip per turn more, only mid-move."""
        if not iids:
            return []
        tag = self.tag(owner)
        turns = [keys.interaction(tag, iid) for iid in iids]
        args: list[EncodableT] = [self.caller(owner), tag, len(turns)]
        try:
            return list(
                await self._run(tag, script, turns, args, hinted_turns=turns, moving_to_caller=True)
            )
        except _SlotMoving:
            pass
        found = await self._present(turns)
        if not found:
            return [None] * len(turns)
        args = [self.caller(owner), tag, len(found)]
        answers = iter(await self._run(tag, script, found, args, hinted_turns=found))
        present = set(found)
        return [next(answers) if turn in present else None for turn in turns]

    # -- the search index's outbox -------------------------------------------------------
    # P:{search-outbox}:jobs     ZSET  index work waiting (failed, or beyond the running
    #                                  jobs), scored by when to try it (ms)
    # P:{search-outbox}:tenants  HASH  tenant -> its jobs in the outbox
    # P:{search-outbox}:missed   SET   owners ([tenant, user] JSON) an index job of which
    #                                  the outbox refused, for the sweep to catch up
    # One hash tag for the whole service (not an owner's): the retry loop finds all of it
    # with one read, and the scripts that bound it (lua/outbox_add.lua) see all three keys.
    # Members name the owner, so they never need another key to be acted on.
    # P:search-outbox (no tag) is where jobs waited before the bound: ``outbox_adopt``.

    def _outbox_keys(self) -> list[str]:
        base = f"{self._prefix}:{{search-outbox}}"
        return [f"{base}:jobs", f"{base}:tenants", f"{base}:missed"]

    @property
    def outbox_key(self) -> str:
        return self._outbox_keys()[0]

    async def outbox_add(
        self,
        job: str,
        due_ms: int,
        owner: Owner,
        *,
        max_jobs: int,
        per_tenant: int,
        index: bool,
        deletion: bool = False,
    ) -> int:
        """Queues ``job`` (of ``owner``) unless the outbox holds ``max_jobs``, or
        ``per_tenant`` of the owner's tenant (0: no share): 1 queued (one queued already
        only gets the new due time), 0 refused as full, -1 refused as the tenant's share.
        A refused ``index`` job notes its owner for ``outbox_take_missed``. A
        ``deletion``'s drop, written ahead of it, has a reserve: refused only past twice
        ``max_jobs``, and no share applies (lua/outbox_add.lua)."""
        args: list[EncodableT] = [
            job,
            due_ms,
            owner.tenant,
            json.dumps([owner.tenant, owner.user]),
            max_jobs,
            per_tenant,
            2 if deletion else 1 if index else 0,
        ]
        # Mid-move of the outbox's slot Redis refuses this script (TRYAGAIN) for the whole
        # move: it declares keys that often do not exist (``missed``; ``jobs`` in a quiet
        # outbox). It waits for the move's end as the store's other writes do, within the
        # call's deadline when a call awaits it (a write ahead).
        out = await _redis_waiting(
            self._outage,
            lambda: self._outbox_add(keys=self._outbox_keys(), args=args),
            key=self.outbox_key,
            wait=self._slot_move_wait,
            write=True,
        )
        return int(out)

    async def outbox_due(self, now_ms: int, count: int) -> list[str]:
        out = await _redis(
            self._outage,
            self._redis.zrangebyscore(self.outbox_key, "-inf", now_ms, start=0, num=count),
            key=self.outbox_key,
        )
        return [bytes(member).decode() for member in out]

    async def outbox_remove(self, job: str, tenant: str) -> None:
        await _redis_waiting(
            self._outage,
            lambda: self._outbox_remove(keys=self._outbox_keys()[:2], args=[job, tenant]),
            key=self.outbox_key,
            wait=self._slot_move_wait,
        )

    async def outbox_missed_count(self) -> int:
        """How many owners the outbox's refusals have noted (``outbox_take_missed``)."""
        missed = self._outbox_keys()[2]
        return int(await _redis(self._outage, self._redis.scard(missed), key=missed))

    async def outbox_take_missed(self, count: int = MISSED_BATCH) -> list[Owner]:
        """Up to ``count`` of the owners an index job of which the outbox refused, taken
        off the set (a refusal from now on notes its owner again, for the next sweep).
        One SPOP: atomic, and bounded (the set holds up to SEARCH_OUTBOX_MAX_JOBS owners;
        SMEMBERS then SREM read it whole and could drop an owner noted in between)."""
        missed = self._outbox_keys()[2]
        members = list(
            await _redis(self._outage, self._redis.spop(missed, count), key=missed) or []
        )
        owners = []
        for member in members:
            try:
                pair = json.loads(bytes(member).decode())
            except ValueError:
                continue  # not ours
            if isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair):
                owners.append(Owner(pair[0], pair[1]))
        return owners

    async def outbox_note_missed(self, owners: list[Owner]) -> None:
        """Puts back owners ``outbox_take_missed`` gave a sweep that did not finish."""
        if owners:
            members = [json.dumps([o.tenant, o.user]) for o in owners]
            missed = self._outbox_keys()[2]
            await _redis(self._outage, self._redis.sadd(missed, *members), key=missed, write=True)

    def _sweep_mark(self) -> str:
        # P:{search-outbox}:swept  STRING  when (ms) the last sweep that finished began
        return f"{self._prefix}:{{search-outbox}}:swept"

    async def sweep_since(self, default_ms: int) -> int:
        """When the last sweep that finished began (``sweep_done``): where the next one's
        catch-up starts. None recorded yet: ``default_ms``, recorded now, so that sweeps
        failing from the first one on still look back to it."""
        mark = self._sweep_mark()
        await _redis(self._outage, self._redis.set(mark, default_ms, nx=True), key=mark, write=True)
        value = await _redis(self._outage, self._redis.get(mark), key=mark)
        try:
            return int(value) if value is not None else default_ms
        except ValueError:  # not ours
            return default_ms

    async def sweep_done(self, started_ms: int) -> None:
        """A sweep that began at ``started_ms`` finished: the next one looks back to it."""
        mark = self._sweep_mark()
        await _redis(self._outage, self._redis.set(mark, started_ms), key=mark, write=True)

    def _legacy_outbox(self) -> str:
        return f"{self._prefix}:search-outbox"

    async def legacy_outbox(self, count: int) -> list[str]:
        """Up to ``count`` jobs of the outbox from before the bound (``P:search-outbox``):
        the caller queues them anew, then ``forget_legacy_outbox``."""
        legacy = self._legacy_outbox()
        members = await _redis(self._outage, self._redis.zrange(legacy, 0, count - 1), key=legacy)
        return [bytes(member).decode() for member in members]

    async def forget_legacy_outbox(self, jobs: list[str]) -> None:
        if jobs:
            legacy = self._legacy_outbox()
            await _redis(self._outage, self._redis.zrem(legacy, *jobs), key=legacy)

    async def try_lock(self, name: str, ttl_ms: int) -> bool:
        """True for the one caller that takes ``P:lock:<name>`` until it expires."""
        key = f"{self._prefix}:lock:{name}"
        return bool(
            await _redis(
                self._outage,
                self._redis.set(key, "1", nx=True, px=max(ttl_ms, 1)),
                key=key,
                write=True,
            )
        )
