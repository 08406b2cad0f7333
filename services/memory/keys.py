"""Names of the memory service's Redis keys, in one place (``P`` = key prefix, ``U`` =
the owner's digest, ``store.Owner.digest``; ``tag`` = ``P:{u:U}``, the cluster hash tag
that puts every key of one owner in one slot):

    tag:convs                 ZSET  the owner's conversations, "<update_ms:015d>:<cid>"
    tag:conv:<cid>            HASH  the conversation (its owner's user and tenant, name,
                                    times, counts, retention, summary:
                                    store.CONVERSATION_FIELDS)
    tag:conv:<cid>:ints       ZSET  its interaction ids (UUIDv7: by creation time)
    tag:int:<iid>             HASH  conversation_id, data (serialized Interaction),
                                    request_id, traces (a serialized
                                    ListInteractionTracesResponse holding only its traces:
                                    a field, so written, expired and deleted with it)
    tag:req:<request_id>      STRING  an interaction id, for request_id_ttl_seconds
                                    (tag:t:req:<request_id> and tag:t:claim:<request_id>
                                    below: the same for the second legacy owner of a
                                    shared tag, ``request``)
    tag:claim:<request_id>    STRING  the claim_token of the attempt that reserved
                                    request_id (CheckStorage), for its claim_seconds;
                                    deleted by the write of a turn with request_id
    tag:claimfp:<request_id>  STRING  the request_fingerprint (digested, as kept with a turn)
                                    of the attempt holding tag:claim:<request_id>, set
                                    and expiring with it (tag:t:claimfp: the second legacy
                                    owner's): an attempt of another request finds the key
                                    reused, not merely in use
    tag:usage                 HASH  the owner's stored bytes: "total", <cid> -> the
                                    bytes of that conversation, and "next_expiry" (ms)
                                    (lua/usage.lua)

The keys *of a conversation* (expired, evicted and deleted with it) are listed by
``lua/keys.lua``: ``conversation_keys`` (the hash and the id list) and, for each of its
interactions, ``interaction_keys`` (today only ``tag:int:<iid>``; traces are a field of its
hash and need nothing). A feature that stores more keys under a conversation or an
interaction adds them to those two functions and to the functions below, and sets a new key's expiry
with ``renew``'s result (``lua/retention.lua``) in the script that creates it: then it
expires, is evicted and deleted with its conversation without further code, except that
``store.delete_conversation`` declares the keys it deletes (an interaction's:
``interaction``, ``request``), ``store._finish_walk`` those whose expiry it sets
(``interaction``) and ``store._declare_turns`` those eviction and DeleteInteraction
delete (``interaction``, ``request``), so a new key of an interaction is declared there
too. Nothing may
read an interaction's keys without checking its conversation hash (owner, existence):
the hash expires first (see retention.lua), and that is when the turn is gone.
"""

from __future__ import annotations


def conversations(tag: str) -> str:
    return f"{tag}:convs"


def conversation(tag: str, cid: str) -> str:
    return f"{tag}:conv:{cid}"


def conversation_interactions(tag: str, cid: str) -> str:
    return f"{tag}:conv:{cid}:ints"


def interaction(tag: str, iid: str) -> str:
    return f"{tag}:int:{iid}"


def request(tag: str, request_id: str, *, apart: bool = False) -> str:
    """``apart``: the key of the legacy owner of a shared tag that does not own its
    untenanted conversations (store.MemoryStore._request), ``tag:t:req:<request_id>``: the
    two owners sharing the tag may send the same request_id without one finding, taking
    over or holding the other's."""
    return f"{tag}:{'t:req' if apart else 'req'}:{request_id}"


def claim(tag: str, request_id: str, *, apart: bool = False) -> str:
    return f"{tag}:{'t:claim' if apart else 'claim'}:{request_id}"


def claim_fingerprint(tag: str, request_id: str, *, apart: bool = False) -> str:
    return f"{tag}:{'t:claimfp' if apart else 'claimfp'}:{request_id}"


def usage(tag: str) -> str:
    return f"{tag}:usage"
