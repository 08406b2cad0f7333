"""Every key layout in Redis keeps the keys of one script or multi-key command in one
Redis Cluster slot, and each tenant's (or user's) in a tag of its own, whatever the names
a request carries: tenants, users, collections and request ids with ``{``, ``}``, ``:``.
The scripts themselves run on a real cluster in the memory suite (every test on both
backends), tests/common/test_quotas.py, tests/gateway/test_generation_cache_budget.py and
tests/generation/test_provider_limits.py; this holds the layouts to it for any input."""

from __future__ import annotations

from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.crc import key_slot

from services.common.quotas import Quotas
from services.gateway.generation_cache import GenerationCache, Scope
from services.gateway.generator import Options
from services.generation.rate_buckets import DeclaredLimits, RedisLimits, scope_of
from services.memory import keys
from services.memory.store import MemoryStore, Owner

# Names built to break a hash tag: braces, colons, NULs, and anything else.
NAMES = st.one_of(
    st.text(alphabet="{}:ab\0", max_size=12),
    st.text(max_size=24),
)
PREFIX = "gs:v1"
# A client that never connects: building key names and registering scripts send nothing.
REDIS = Redis(port=1)


def tag_of(key: str) -> str:
    """What Redis hashes: between the first ``{`` and the next ``}`` (whole key if none)."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key if start < 0 or end <= start + 1 else key[start + 1 : end]


def one_tag(names: list[str]) -> str:
    tags = {tag_of(name) for name in names}
    assert len(tags) == 1, names
    assert len({key_slot(name.encode()) for name in names}) == 1
    return tags.pop()


@settings(max_examples=300, deadline=None)
@given(tenant=NAMES, user=NAMES, other=NAMES, cid=NAMES, iid=NAMES, rid=NAMES)
def test_memory_keys_of_an_owner_share_its_own_tag(
    tenant: str, user: str, other: str, cid: str, iid: str, rid: str
) -> None:
    store = MemoryStore(REDIS, key_prefix=PREFIX)

    def all_keys(owner: Owner) -> list[str]:
        tag = store.tag(owner)
        return [
            keys.conversations(tag),
            keys.conversation(tag, cid),
            keys.conversation_interactions(tag, cid),
            keys.interaction(tag, iid),
            keys.request(tag, rid),
            keys.claim(tag, rid),
            keys.claim_fingerprint(tag, rid),
            keys.usage(tag),
        ]

    mine = one_tag(all_keys(Owner(tenant, user)))
    assert mine == "u:" + Owner(tenant, user).digest()
    if other != user:  # another user of the tenant: another tag
        assert one_tag(all_keys(Owner(tenant, other))) != mine


@settings(max_examples=300, deadline=None)
@given(tenant=NAMES, other=NAMES, collection=NAMES, text=NAMES)
def test_gateway_keys_of_a_tenant_share_its_own_tag(
    tenant: str, other: str, collection: str, text: str
) -> None:
    cache = GenerationCache(REDIS, PREFIX, 3600, 1 << 20)
    quotas = Quotas(REDIS, key_prefix=PREFIX, concurrent_calls=1, llm_calls_per_minute=1, lease=1)
    messages = [gen_pb.Message(role=gen_pb.ROLE_USER, content=text)]

    def cache_keys(tenant: str) -> list[str]:
        entry = cache.keys_for(Scope(tenant, collection, 7), Options(provider="p"))(messages)
        # One gencache_put: entry, ledger, sizes, index, drop mark.
        scope = Scope(tenant, collection, 7)
        index = cache.index_key(tenant, collection)
        return [entry, *cache.ledger_keys(tenant), index, cache.dropped_key(scope)]

    mine = one_tag(cache_keys(tenant))
    if other != tenant:
        assert one_tag(cache_keys(other)) != mine
    quota_tags = {one_tag([quotas._key(tenant, name)]) for name in ("calls", "llm", "write-bytes")}
    assert len(quota_tags) == 1
    if other != tenant:
        assert quotas._key(other, "llm").split("}")[0] != quotas._key(tenant, "llm").split("}")[0]


@settings(max_examples=200, deadline=None)
@given(
    provider=st.from_regex(r"[a-z][a-z0-9_-]{0,62}", fullmatch=True),
    api_key=st.one_of(st.none(), NAMES),
)
def test_provider_limit_keys_of_one_scope_share_a_tag(provider: str, api_key: str | None) -> None:
    limits = RedisLimits(REDIS, DeclaredLimits(None, None, None), key_prefix=PREFIX)
    one_tag(list(limits.keys(scope_of(provider, api_key))))
