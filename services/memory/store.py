"""Conversations and interactions in Redis.

Key layout (``P`` = key prefix, ``U`` = first 20 hex digits of sha256(user)):

    P:{u:U}:convs              ZSET  the user's conversations, members "<update_ms:015d>:<cid>"
                                     (score 0, lexicographic order = update_time order)
    P:{u:U}:conv:<cid>         HASH  user, name, create_time, update_time, interaction_count
    P:{u:U}:conv:<cid>:ints    ZSET  the conversation's interaction ids (score 0; UUIDv7
                                     strings sort by creation time)
    P:{u:U}:int:<iid>          HASH  conversation_id, data (the serialized
                                     gensearch.memory.v1.Interaction), request_id (if given)
    P:{u:U}:req:<request_id>   STRING  interaction id, expires after request_id_ttl_seconds

``{u:U}`` is the Redis Cluster hash tag: every key of one user lives in one hash slot, so
the Lua scripts below, which touch several of them, stay atomic on a cluster too. Because
the caller is part of every key, another user's data is simply not found. Conversation
hashes also store the owner, and every script checks it.

Every multi-key update is one Lua script (one round trip, atomic). Lists are keyset pages:
``ZRANGE key (<cursor> - BYLEX REV LIMIT 0 n`` costs O(log N + n) however long the list.

An interaction never changes once written, so it is stored as its API message: protobuf
encodes and decodes it in C, and the list reply is a run of ready-made messages. Protobuf's
field evolution rules keep old records readable as the message grows.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from gensearch.memory.v1 import memory_service_pb2 as pb
from redis.exceptions import BusyLoadingError, ReadOnlyError, RedisError

from services.common.errors import Internal, InvalidArgument, NotFound, Unavailable
from services.memory.ids import UUIDv7Generator
from services.memory.redis_link import LinkError, RedisLink, ReplyError, Script

# Redis answers these while it cannot serve (starting, failing over, read-only replica);
# redis-py turns LOADING and READONLY into classes, the rest stay plain replies.
_UNAVAILABLE_REPLIES = ("MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY")
_UNAVAILABLE_ERRORS = (LinkError, OSError, BusyLoadingError, ReadOnlyError)
_URL_CREDENTIALS = re.compile(r"(\w+://)[^@/\s]*@")


@dataclass(slots=True)
class ConversationRecord:
    conversation_id: str
    user: str
    name: str
    create_ms: int
    update_ms: int
    interaction_count: int


T = TypeVar("T")


@dataclass(slots=True)
class Page(Generic[T]):
    items: list[T]
    # Sort key of the last item when more follow; None on the last page.
    next_cursor: str | None


# KEYS: conv, convs. ARGV: user, name, now_ms, list member.
_CREATE_CONVERSATION = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'user', ARGV[1], 'name', ARGV[2], 'create_time', ARGV[3],
           'update_time', ARGV[3], 'interaction_count', 0)
redis.call('ZADD', KEYS[2], 0, ARGV[4])
return 1
"""

CONVERSATION_FIELDS = ("user", "name", "create_time", "update_time", "interaction_count")

# Rows in a fixed field order: cheaper to build and to parse than HGETALL's pairs.
_READ = f"""
local function interaction(key)
  return redis.call('HMGET', key, 'conversation_id', 'data')
end
local function conversation(key)
  return redis.call('HMGET', key, '{"', '".join(CONVERSATION_FIELDS)}')
end
"""

# Moves a conversation to its new place in the user's list; update_time never goes back,
# even if replicas' clocks disagree. Further field/value pairs are set in the same HSET.
_TOUCH = """
local function touch(conv, convs, cid, now_ms, old, ...)
  local now = tonumber(now_ms)
  local prev = tonumber(old)
  if now < prev then now = prev end
  redis.call('HSET', conv, 'update_time', string.format('%d', now), ...)
  if now ~= prev then
    redis.call('ZREM', convs, string.format('%015d', prev) .. ':' .. cid)
    redis.call('ZADD', convs, 0, string.format('%015d', now) .. ':' .. cid)
  end
end
"""

# KEYS: conv, convs. ARGV: user, name, now_ms, cid. Returns the updated hash, or nil.
_RENAME_CONVERSATION = (
    _READ
    + _TOUCH
    + """
local h = redis.call('HMGET', KEYS[1], 'user', 'update_time')
if h[1] ~= ARGV[1] then return false end
redis.call('HSET', KEYS[1], 'name', ARGV[2])
touch(KEYS[1], KEYS[2], ARGV[4], ARGV[3], h[2])
return conversation(KEYS[1])
"""
)

# KEYS: conv, ints, convs. ARGV: user, tag, cid. Returns 1, or 0 when not found.
_DELETE_CONVERSATION = """
local h = redis.call('HMGET', KEYS[1], 'user', 'update_time')
if h[1] ~= ARGV[1] then return 0 end
for _, iid in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local key = ARGV[2] .. ':int:' .. iid
  local rid = redis.call('HGET', key, 'request_id')
  if rid then
    local req = ARGV[2] .. ':req:' .. rid
    if redis.call('GET', req) == iid then redis.call('DEL', req) end
  end
  redis.call('UNLINK', key)
end
redis.call('UNLINK', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], string.format('%015d', tonumber(h[2])) .. ':' .. ARGV[3])
return 1
"""

# KEYS: conv, ints, int, convs, req.
# ARGV: user, tag, cid, iid, now_ms, request_id, ttl_ms, serialized interaction.
# Returns {0} not found, {1} created, {2, cid, data} already created by this request_id.
_CREATE_INTERACTION = (
    _READ
    + _TOUCH
    + """
local h = redis.call('HMGET', KEYS[1], 'user', 'update_time', 'interaction_count')
if h[1] ~= ARGV[1] then return {0} end
if ARGV[6] ~= '' then
  local prev = redis.call('GET', KEYS[5])
  if prev then
    local found = interaction(ARGV[2] .. ':int:' .. prev)
    if found[1] then return {2, found[1], found[2]} end
  end
end
redis.call('HSET', KEYS[3], 'conversation_id', ARGV[3], 'data', ARGV[8])
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[3], 'request_id', ARGV[6])
  redis.call('SET', KEYS[5], ARGV[4], 'PX', ARGV[7])
end
redis.call('ZADD', KEYS[2], 0, ARGV[4])
touch(KEYS[1], KEYS[4], ARGV[3], ARGV[5], h[2], 'interaction_count', tonumber(h[3]) + 1)
return {1}
"""
)

# KEYS: int. ARGV: user, tag. Returns the data, or nil when missing or not the caller's.
_GET_INTERACTION = (
    _READ
    + """
local row = interaction(KEYS[1])
if not row[1] or redis.call('HGET', ARGV[2] .. ':conv:' .. row[1], 'user') ~= ARGV[1] then
  return false
end
return row[2]
"""
)

# KEYS: conv, ints. ARGV: user, tag, start bound, page size.
# Returns nil when the conversation is not the caller's, else {last id or '', data1, ...}
# where the last id is set only when more items follow.
_LIST_INTERACTIONS = (
    _READ
    + """
if redis.call('HGET', KEYS[1], 'user') ~= ARGV[1] then return false end
local n = tonumber(ARGV[4])
local ids = redis.call('ZRANGE', KEYS[2], ARGV[3], '-', 'BYLEX', 'REV', 'LIMIT', 0, n + 1)
local out = {''}
if #ids > n then out[1] = ids[n] end
for i = 1, math.min(n, #ids) do
  out[i + 1] = redis.call('HGET', ARGV[2] .. ':int:' .. ids[i], 'data')
end
return out
"""
)

# KEYS: convs. ARGV: tag, start bound, page size. Returns {more, member1, row1, ...}.
_LIST_CONVERSATIONS = (
    _READ
    + """
local n = tonumber(ARGV[3])
local members = redis.call('ZRANGE', KEYS[1], ARGV[2], '-', 'BYLEX', 'REV', 'LIMIT', 0, n + 1)
local out = {0}
if #members > n then out[1] = 1 end
for i = 1, math.min(n, #members) do
  out[#out + 1] = members[i]
  out[#out + 1] = conversation(ARGV[1] .. ':conv:' .. string.sub(members[i], 17))
end
return out
"""
)


class _RedisErrors:
    """``with _redis_errors:`` turns store failures into service errors. A plain class
    rather than ``@contextmanager``, whose generator machinery would run on every command."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, _: Any) -> None:
        if err is None:
            return
        if isinstance(err, _UNAVAILABLE_ERRORS) or (
            isinstance(err, ReplyError) and str(err).startswith(_UNAVAILABLE_REPLIES)
        ):
            raise Unavailable(
                f"memory store unavailable: {_describe(err)}", reason="STORE_UNAVAILABLE"
            ) from None
        if isinstance(err, RedisError):
            raise Internal(f"memory store error: {_describe(err)}") from None


_redis_errors = _RedisErrors()


def _describe(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return _URL_CREDENTIALS.sub(r"\1", text)[:300]


def _conversation(cid: str, row: list[bytes]) -> ConversationRecord:
    user, name, create_ms, update_ms, count = row
    return ConversationRecord(
        cid, user.decode(), name.decode(), int(create_ms), int(update_ms), int(count)
    )


def conversation_not_found(cid: str) -> NotFound:
    # The same answer whether it never existed or belongs to someone else.
    return NotFound(
        f"conversation {cid} not found",
        reason="CONVERSATION_NOT_FOUND",
        metadata={"conversation_id": cid},
    )


def interaction_not_found(iid: str) -> NotFound:
    return NotFound(
        f"interaction {iid} not found",
        reason="INTERACTION_NOT_FOUND",
        metadata={"interaction_id": iid},
    )


class MemoryStore:
    def __init__(
        self, link: RedisLink, *, key_prefix: str = "gensearch", request_id_ttl: int = 86400
    ) -> None:
        self._redis = link
        self._prefix = key_prefix
        self._request_ttl_ms = request_id_ttl * 1000
        self._ids = UUIDv7Generator()
        self._create_conversation = Script(_CREATE_CONVERSATION)
        self._rename_conversation = Script(_RENAME_CONVERSATION)
        self._delete_conversation = Script(_DELETE_CONVERSATION)
        self._create_interaction = Script(_CREATE_INTERACTION)
        self._get_interaction = Script(_GET_INTERACTION)
        self._list_interactions = Script(_LIST_INTERACTIONS)
        self._list_conversations = Script(_LIST_CONVERSATIONS)
        self._tags: dict[str, str] = {}

    async def close(self) -> None:
        await self._redis.close()

    def tag(self, user: str) -> str:
        """Key prefix of everything ``user`` owns, including the cluster hash tag."""
        tag = self._tags.get(user)
        if tag is None:
            digest = hashlib.sha256(user.encode()).hexdigest()[:20]
            tag = f"{self._prefix}:{{u:{digest}}}"
            if len(self._tags) < 10_000:  # a cache, not a leak
                self._tags[user] = tag
        return tag

    async def shared_secret(self) -> bytes:
        """A random secret created once per key prefix, the same for every replica."""
        key = f"{self._prefix}:page-token-secret"
        with _redis_errors:
            await self._redis.execute("SET", key, os.urandom(32).hex(), "NX")
            value = await self._redis.execute("GET", key)
        if not value:
            raise Unavailable("memory store unavailable: page token secret missing")
        return bytes(value)

    async def create_conversation(self, user: str, name: str) -> ConversationRecord:
        tag = self.tag(user)
        cid, now = self._ids.new()
        with _redis_errors:
            await self._redis.script(
                self._create_conversation,
                keys=[f"{tag}:conv:{cid}", f"{tag}:convs"],
                args=[user, name, now, f"{now:015d}:{cid}"],
            )
        return ConversationRecord(cid, user, name, now, now, 0)

    async def get_conversation(self, user: str, cid: str) -> ConversationRecord:
        with _redis_errors:
            row = await self._redis.execute(
                "HMGET", f"{self.tag(user)}:conv:{cid}", *CONVERSATION_FIELDS
            )
        if row[0] is None or row[0].decode() != user:
            raise conversation_not_found(cid)
        return _conversation(cid, row)

    async def rename_conversation(self, user: str, cid: str, name: str) -> ConversationRecord:
        tag = self.tag(user)
        now = time.time_ns() // 1_000_000
        with _redis_errors:
            row = await self._redis.script(
                self._rename_conversation,
                keys=[f"{tag}:conv:{cid}", f"{tag}:convs"],
                args=[user, name, now, cid],
            )
        if not row:
            raise conversation_not_found(cid)
        return _conversation(cid, row)

    async def delete_conversation(self, user: str, cid: str) -> None:
        tag = self.tag(user)
        with _redis_errors:
            deleted = await self._redis.script(
                self._delete_conversation,
                keys=[f"{tag}:conv:{cid}", f"{tag}:conv:{cid}:ints", f"{tag}:convs"],
                args=[user, tag, cid],
            )
        if not deleted:
            raise conversation_not_found(cid)

    async def list_conversations(
        self, user: str, page_size: int, cursor: str | None
    ) -> Page[ConversationRecord]:
        tag = self.tag(user)
        start = f"({cursor}" if cursor else "+"
        with _redis_errors:
            out = await self._redis.script(
                self._list_conversations, keys=[f"{tag}:convs"], args=[tag, start, page_size]
            )
        items = [_conversation(out[i].decode()[16:], out[i + 1]) for i in range(1, len(out), 2)]
        if out[0] != 1 or not items:
            return Page(items, None)
        last = items[-1]
        return Page(items, f"{last.update_ms:015d}:{last.conversation_id}")

    async def create_interaction(
        self, user: str, cid: str, interaction: pb.Interaction, request_id: str
    ) -> pb.Interaction:
        """Stores ``interaction`` (its id, conversation and create_time are set here)."""
        tag = self.tag(user)
        iid, now = self._ids.new()
        interaction.interaction_id = iid
        interaction.conversation_id = cid
        interaction.create_time.FromMilliseconds(now)
        with _redis_errors:
            out = await self._redis.script(
                self._create_interaction,
                keys=[
                    f"{tag}:conv:{cid}",
                    f"{tag}:conv:{cid}:ints",
                    f"{tag}:int:{iid}",
                    f"{tag}:convs",
                    f"{tag}:req:{request_id}",
                ],
                args=[
                    user, tag, cid, iid, now, request_id, self._request_ttl_ms,
                    interaction.SerializeToString(),
                ],
            )  # fmt: skip
        status = out[0]
        if status == 0:
            raise conversation_not_found(cid)
        if status == 2:
            if out[1].decode() != cid:
                raise InvalidArgument(
                    "request_id was already used for an interaction of another conversation",
                    field="request_id",
                    reason="REQUEST_ID_REUSED",
                )
            return pb.Interaction.FromString(out[2])
        return interaction

    async def get_interaction(self, user: str, iid: str) -> pb.Interaction:
        tag = self.tag(user)
        with _redis_errors:
            data = await self._redis.script(
                self._get_interaction, keys=[f"{tag}:int:{iid}"], args=[user, tag]
            )
        if data is None:
            raise interaction_not_found(iid)
        return pb.Interaction.FromString(data)

    async def list_interactions(
        self, user: str, cid: str, page_size: int, cursor: str | None
    ) -> Page[bytes]:
        """A page of serialized ``Interaction`` messages, newest first."""
        tag = self.tag(user)
        start = f"({cursor}" if cursor else "+"
        with _redis_errors:
            out: Any = await self._redis.script(
                self._list_interactions,
                keys=[f"{tag}:conv:{cid}", f"{tag}:conv:{cid}:ints"],
                args=[user, tag, start, page_size],
            )
        if out is None:
            raise conversation_not_found(cid)
        return Page(out[1:], out[0].decode() or None)
