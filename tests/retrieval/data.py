"""A small fixed data set with every property type, for filter and congruence tests."""

from __future__ import annotations

import math
import random
import uuid
from typing import Any

from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from tests.retrieval.conftest import obj

DIMS = 8


def _id(i: int) -> str:
    return str(uuid.UUID(int=0x1000 + i))


def _vector(rng: random.Random) -> list[float]:
    raw = [rng.uniform(-1, 1) for _ in range(DIMS)]
    norm = math.sqrt(sum(x * x for x in raw))
    return [x / norm for x in raw]


TITLES = [
    "Quantum computing for beginners",
    "A history of the Roman empire",
    "Cooking pasta like an Italian grandmother",
    "The quiet life of deep sea fish",
    "Training neural networks on a laptop",
    "Gardening with native plants",
    "The physics of black holes",
    "Bread baking with sourdough starters",
    "Mountain hiking safety tips",
    "Understanding the stock market",
    "Jazz improvisation basics",
    "Rust programming for systems engineers",
]
TAGS = [
    ["science", "computing"],
    ["history"],
    ["food", "italy"],
    ["science", "ocean"],
    ["computing", "ai"],
    ["garden"],
    ["science", "space"],
    ["food"],
    ["outdoors"],
    ["finance"],
    ["music"],
    ["computing"],
]


def articles() -> list[dict[str, Any]]:
    rng = random.Random(7)
    out = []
    for i, title in enumerate(TITLES):
        props: dict[str, Any] = {
            "title": title,
            "body": f"Article number {i} about {title.lower()}.",
            "tags": TAGS[i],
            "year": 2015 + i % 8,
            "rating": round(1.5 + (i * 0.37) % 3.5, 2),
            "published": i % 3 != 0,
            "date": f"2024-0{1 + i % 9}-1{i % 10}T12:00:00Z",
        }
        if i == 11:
            del props["rating"]  # one object lacks a property
        out.append({"id": _id(i), "props": props, "vector": _vector(rng)})
    return out


def article_objects() -> list[pb.DataObject]:
    return [obj(a["props"], id=a["id"], vector=a["vector"]) for a in articles()]


def ids_where(predicate: Any) -> set[str]:
    return {a["id"] for a in articles() if predicate(a["props"])}
