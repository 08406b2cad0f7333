"""A small NetworkPolicy evaluator: can pod A open a TCP connection to port P of pod B?

It follows the networking.k8s.io/v1 semantics the manifests rely on: a pod selected by no
policy of a direction is open in that direction; once selected, only what some rule of
some selecting policy allows gets through, and a connection needs both the source's
egress and the destination's ingress. ipBlock peers are treated as matching endpoints
outside the cluster. Named ports resolve against the destination's container ports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.deploy.manifests import Doc, selects


@dataclass(frozen=True)
class Endpoint:
    name: str
    namespace: str | None  # None: outside the cluster
    namespace_labels: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)  # named container ports


def _port_matches(rule_ports: list[Doc] | None, port: int, dst: Endpoint) -> bool:
    if not rule_ports:
        return True
    for entry in rule_ports:
        wanted: Any = entry.get("port")
        if wanted is None:
            return True
        if isinstance(wanted, str):
            wanted = dst.ports.get(wanted)
        end = entry.get("endPort", wanted)
        if wanted is not None and wanted <= port <= end:
            return True
    return False


def _peer_matches(peer: Doc, other: Endpoint, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        return other.namespace is None
    if other.namespace is None:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != policy_namespace:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], other.labels)


def _direction_allows(
    policies: list[Doc], me: Endpoint, other: Endpoint, port: int, dst: Endpoint, kind: str
) -> bool:
    peers_key = "from" if kind == "Ingress" else "to"
    rules_key = "ingress" if kind == "Ingress" else "egress"
    selecting = [
        p
        for p in policies
        if p["metadata"].get("namespace", "default") == me.namespace
        and selects(p["spec"]["podSelector"], me.labels)
        and kind in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True
    for policy in selecting:
        namespace = policy["metadata"].get("namespace", "default")
        for rule in policy["spec"].get(rules_key) or []:
            if not _port_matches(rule.get("ports"), port, dst):
                continue
            peers = rule.get(peers_key)
            if not peers or any(_peer_matches(peer, other, namespace) for peer in peers):
                return True
    return False


def can_connect(policies: list[Doc], src: Endpoint, dst: Endpoint, port: int) -> bool:
    egress_ok = src.namespace is None or _direction_allows(policies, src, dst, port, dst, "Egress")
    ingress_ok = dst.namespace is None or _direction_allows(
        policies, dst, src, port, dst, "Ingress"
    )
    return egress_ok and ingress_ok
