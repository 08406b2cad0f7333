"""The Redis client of the memory service and the gateway (one for its quotas and its
generation cache): ``redis.asyncio``, standalone or Redis Cluster.

A pooled client as its maintainers intend it: connections are opened on demand and reused,
replies are parsed by hiredis (redis-py picks it when installed), and redis-py's
``socket_timeout`` / ``socket_connect_timeout`` bound every wait.

One rule is ours: **a command is never sent twice.** redis-py retries a command after a
``ConnectionError`` or ``TimeoutError`` by default (``Redis(...)`` and ``RedisCluster``:
three times). After a
lost connection nobody can know whether Redis ran the command, and a write re-run could
store an interaction twice, so both clients get a retry policy of zero retries; the call
fails with UNAVAILABLE and the caller decides (a ``request_id`` makes its retry safe). What
stays automatic is what cannot run a command twice: a pooled connection that Redis closed
while idle is dialled again before anything is written on it; a script Redis forgot
(NOSCRIPT: it did not run) is loaded and run by ``register_script``'s object; and in a
cluster, MOVED/ASK/TRYAGAIN redirections (the node did not run it) are followed.

A MOVED reply (a slot moved to another node while the cluster reshards) only patches the
cluster client's slot map (``reinitialize_steps=0``). redis-py's default rebuilds the whole
map on every fifth MOVED by closing every node's connections, including those other calls
are using at that moment: under traffic, a reshard then broke concurrent calls mid-command
(a write whose fate is unknown, or an AttributeError from a connection closed under it).
A node that fails (connection error, CLUSTERDOWN) still refreshes the whole map.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, Protocol, TypeAlias
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError
from redis.typing import KeyT

from services.common.logs import ThrottledWarning, register_secret, url_secrets

log = logging.getLogger("gensearch.redis")

RedisClient: TypeAlias = Redis | RedisCluster

# What a Redis call may raise when Redis (or a cluster node) fails, for the callers that
# carry on without it (quotas, provider limits, the generation cache) or answer
# UNAVAILABLE (memory). RedisClusterException is not a RedisError ("Redis Cluster cannot
# be connected": every node down). AttributeError: when a whole cluster restarts, the
# cluster client's CLUSTERDOWN handling disconnects every node's connections, including
# one another call is using, whose writer redis-py then finds None mid-command
# ("'NoneType' object has no attribute 'writelines'"); that call is a Redis failure like
# any lost connection (its command's fate unknown), not a bug of ours.
REDIS_FAILURES: tuple[type[Exception], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    AttributeError,
)
# The same, for a call also bounded by ``asyncio.timeout`` (the generation cache's reads).
REDIS_FAILURES_OR_TIMEOUT: tuple[type[Exception], ...] = (*REDIS_FAILURES, TimeoutError)


def connect(
    url: str, *, cluster: bool, socket_timeout: float, connect_timeout: float
) -> RedisClient:
    """A client for ``url``; with ``cluster``, ``url`` names any node of a Redis Cluster and
    the client discovers the others (``CLUSTER SLOTS``) and routes each key to its node."""
    # Zero retries: see the module docstring. For RedisCluster this is also the count of
    # its own retry-after-reinitialize loop on ConnectionError/TimeoutError/CLUSTERDOWN;
    # its view of the cluster is still refreshed for the next call.
    never_resend = Retry(NoBackoff(), 0)
    if cluster:
        _quiet_dropped_cluster_nodes()
        client = RedisCluster.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=never_resend,
            reinitialize_steps=0,  # MOVED patches the map; see the module docstring
        )
        _startup_nodes[client] = _address_of(url)
        return client
    return Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=never_resend,
    )


# redis-py's cluster client drops node objects whose connections it has not closed yet
# when a node fails (redis-py#3572); the garbage collector closes their sockets, but each
# drop reaches the event loop's exception handler, which asyncio logs at ERROR ("Unclosed
# ClusterNode object"): hundreds of ERROR lines for one node's outage, which is an expected
# event (UNAVAILABLE, logged as a WARNING). The loops of this process's cluster clients
# log it as such instead, at most every 30 s; everything else reaches the handler as
# before.
_DROPPED_NODE = "Unclosed ClusterNode object"
_dropped_node = ThrottledWarning(
    log, "Redis Cluster node failed: its client dropped the node's connections (%s)"
)
_quieted: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def _quiet_dropped_cluster_nodes() -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop yet: nothing is dropped before one runs the client
    if loop in _quieted:
        return
    _quieted.add(loop)
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == _DROPPED_NODE:
            _dropped_node(ConnectionError(_DROPPED_NODE))
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


# The node each cluster client of ``connect`` starts from (its URL's host:port): until the
# client has read a slot map, the only node it calls. Kept here, from the URL we gave it,
# rather than read from redis-py's node manager (no public API names it).
_startup_nodes: weakref.WeakKeyDictionary[RedisCluster, str] = weakref.WeakKeyDictionary()


def _address_of(url: str) -> str:
    """``host:port`` of a redis:// URL (never its user name or password)."""
    parsed = urlsplit(url)
    return f"{parsed.hostname or 'localhost'}:{parsed.port or 6379}"


def node_of(client: RedisClient, key: KeyT | None) -> str | None:
    """The Redis node that serves ``key``, as an outage's log line names it: its
    ``host:port`` (a unix socket's path), never the URL's user name or password; None when
    it cannot be known (a Redis Cluster whose slot map the client has not read, a call of
    no key). Outages are logged per node (``ThrottledWarning``'s ``node``).

    redis-py's exceptions name no node in a public attribute: a connection error says
    ``host:port`` in its text only (a timeout not even there), and the undeclared
    ``connection`` attribute its cluster client sets on some errors, for its own metrics,
    is no API. So the node is the one the client's slot map routes ``key`` to, through
    ``RedisCluster.get_node_from_key`` (public), read just after the call: the map the call
    was routed by unless another call refreshed it meanwhile (a failover moving the slot;
    not for a master down without a replica, which keeps its slots). A standalone client
    has one node: its connection pool's."""
    if isinstance(client, RedisCluster):
        if not client.get_nodes():
            # No slot map read yet (public ``get_nodes``: the nodes of the map): every call
            # goes to the URL's node first, to read one. It used to name no node.
            return _startup_nodes.get(client)
        if key is None:
            return None
        try:
            node = client.get_node_from_key(key)  # type: ignore[arg-type]
        except RedisClusterException:  # the slot is in no map the client has read
            return None
        return node.name if node is not None else None
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def no_longer_serving(client: RedisClient, nodes: list[str]) -> list[str]:
    """Those of ``nodes`` (``host:port``) that serve no slot in the cluster client's
    current map (public ``RedisCluster.get_primaries``): masters a failover replaced by
    a replica. Their calls now go to the new master, so no answer of theirs will ever end
    their outage; the client does not call replicas, so their return (as a replica) is
    never seen either. Empty for a standalone client or before a map is read."""
    if not isinstance(client, RedisCluster) or not nodes or not client.get_nodes():
        return []
    serving = {node.name for node in client.get_primaries()}
    return [name for name in nodes if name not in serving]


def answered(warning: ThrottledWarning, client: RedisClient, key: KeyT | None) -> None:
    """A call on ``key`` answered: ends the outage of its node (``warning.recovered``) and
    of any down node a failover has replaced (``no_longer_serving``: ``retired``), whose
    outage no answer would end. Cheap when nothing is down (most calls)."""
    if not warning.any_down:
        return
    warning.recovered(node_of(client, key))
    if isinstance(client, RedisCluster) and (mapped := client.get_nodes()):
        # An outage named before any map by the URL's name for its node, which the map
        # names otherwise (a host name where the map lists addresses), ends here: the map
        # was read from that node, so it answered. Left open, the check below ended it as
        # a failover's old master. (Named as the map names it, it is a node of the map:
        # only its own answer ends it.)
        url_node = _startup_nodes.get(client)
        if url_node is not None and url_node not in {node.name for node in mapped}:
            warning.recovered(url_node)
    for gone in no_longer_serving(client, warning.down_nodes):
        warning.retired(gone, "it serves no slot any more: a failover moved its slots")


class RedisSettings(Protocol):
    """The Redis settings every service that uses Redis has (``GENSEARCH_<SVC>_REDIS_*``)."""

    @property
    def redis_cluster(self) -> bool: ...

    @property
    def redis_socket_timeout(self) -> float: ...

    @property
    def redis_connect_timeout(self) -> float: ...


def connect_configured(url: str, settings: RedisSettings) -> RedisClient:
    """``connect`` as a service's settings say; the URL's password never reaches a log."""
    for secret in url_secrets(url):
        register_secret(secret)
    return connect(
        url,
        cluster=settings.redis_cluster,
        socket_timeout=settings.redis_socket_timeout,
        connect_timeout=settings.redis_connect_timeout,
    )
