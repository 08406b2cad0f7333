"""TEXT_MATCH and payload indexes, on the real engine (qdrant-edge), with inputs where word
matching is easy to get wrong: a substring inside a word, case, punctuation inside and
around words, Unicode forms (NFD, ligatures, full-width, ß, Greek, CJK), several words,
and several words over a text array's elements.

TEXT_MATCH answers exactly as it did before payload indexes: the collection's indexes (a
keyword index on ``p.<name>``) leave it a check of the payload. Why it gets no full-text
index (docs/retrieval.md, "Payload indexes"), pinned here so an engine upgrade that
changes either fact fails this file: Qdrant keeps one index per payload key, so a
full-text index on ``p.<name>`` replaces the keyword index equality is looked up in; and
on a text array a full-text index pools the words of every element, so a query of several
words finds an object whose elements hold them between them, where the check of the
payload (our contract: one element matches) does not. On a single text the full-text
index (word tokenizer, lower-cased) answers as the check of the payload does.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import qdrant_edge as qe
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from services.common.auth import DEFAULT_TENANT
from services.retrieval import edge_store
from services.retrieval.edge_store import EdgeStore
from services.retrieval.payload_index import IndexKind
from services.retrieval.tenancy import storage_name
from tests.retrieval.conftest import TEXT, MakeRetrieval, Retrieval, cond, obj, vector_collection

NAME = "Words"
FULL_WIDTH = "\uff46\uff55\uff4c\uff4c"  # "full" in full-width letters
TITLES = [
    "alpha beta",
    "Alphabet soup",
    "x-ray vision",
    "Straße",
    "café",
    "cafe\u0301",  # NFD: its NFKC copy is "café"
    "ﬁsh",  # ligature: its NFKC copy is "fish"
    "fish",
    "don't stop",
    "a.b.c",
    "hello, world!",
    "東京タワー",
    "user_id 42",
    "ΣΊΣΥΦΟΣ",
    FULL_WIDTH + " width",
    "C++ and C#",
]
TAGS = [["Red", "green"], ["café"], ["x-ray", ""], ["red green"], []]
# TEXT_MATCH queries on the text property, and on the text array.
TITLE_QUERIES = [
    "alpha",
    "ALPHA",
    "alph",
    "bet",
    "beta alpha",
    "soup alphabet",
    "ray",
    "x-ray",
    "x ray",
    "xray",
    "straße",
    "STRASSE",
    "café",
    "cafe",
    "cafe\u0301",
    "fish",
    "ﬁsh",
    "don't",
    "don",
    "b.c",
    "hello world",
    "world!",
    "東京",
    "東京タワー",
    "user_id",
    "id",
    "σίσυφος",
    "full",
    FULL_WIDTH,
    "c++",
]
TAG_QUERIES = ["red", "RED", "red green", "green red", "x-ray", "ray", "cafe", "café"]
# The contract, as the check of the payload answers: title query -> titles found.
EXPECTED = {
    "alpha": {"alpha beta"},
    "ALPHA": {"alpha beta"},
    "alph": set(),  # no substrings of words
    "beta alpha": {"alpha beta"},  # every word, in any order
    "ray": {"x-ray vision"},  # punctuation splits words
    "xray": set(),
    "STRASSE": set(),  # lower-cased, not case-folded
    "café": {"café", "cafe\u0301"},  # both sides NFKC
    "fish": {"fish", "ﬁsh"},
    "東京": set(),  # a run of CJK is one word
    "full": {FULL_WIDTH + " width"},
}


def objects() -> list[pb.DataObject]:
    return [
        obj(
            {"title": title, "tags": TAGS[i % len(TAGS)]},
            id=str(uuid.UUID(int=0x3000 + i)),
            vector=[1.0, 0.5, 0.25, float(i)],
        )
        for i, title in enumerate(TITLES)
    ]


async def answers(stub: Any) -> dict[tuple[str, str], list[str]]:
    """(property, query) -> the titles its TEXT_MATCH finds (a filtered Search of every
    object), each checked against the filter's CountObjects."""
    out = {}
    for prop, queries in (("title", TITLE_QUERIES), ("tags", TAG_QUERIES)):
        for query in queries:
            flt = cond(prop, TEXT, query)
            found = await stub.Search(
                pb.SearchRequest(
                    collection=NAME,
                    near_vector=pb.NearVector(vector=[1.0, 0, 0, 0]),
                    filter=flt,
                    limit=100,
                )
            )
            count = await stub.CountObjects(pb.CountObjectsRequest(collection=NAME, filter=flt))
            assert count.count == len(found.hits), (prop, query)
            out[(prop, query)] = sorted(h.properties["title"] for h in found.hits)
    return out


async def start(make_retrieval: MakeRetrieval, data: Path, *, load: bool = False) -> Retrieval:
    harness = await make_retrieval("edge", data_dir=data)
    if load:
        await harness.stub.CreateCollection(
            pb.CreateCollectionRequest(collection=vector_collection(NAME, 4))
        )
        resp = await harness.stub.UpsertObjects(
            pb.UpsertObjectsRequest(collection=NAME, objects=objects())
        )
        assert len(resp.ids) == len(TITLES)
    return harness


def no_indexes(*args: Any, **kwargs: Any) -> dict[str, IndexKind]:
    """``create_indexes`` as the code before payload indexes had it: none made."""
    return {}


async def scanned_answers(
    make_retrieval: MakeRetrieval, data: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[tuple[str, str], list[str]]:
    """The answers of a collection without payload indexes: the check of every payload."""
    monkeypatch.setattr(edge_store, "create_indexes", no_indexes)
    harness = await start(make_retrieval, data, load=True)
    assert isinstance(harness.store, EdgeStore)
    assert await harness.store.indexes(storage_name(DEFAULT_TENANT, NAME)) == {}
    scanned = await answers(harness.stub)
    await harness.stop()
    monkeypatch.undo()
    for query, titles in EXPECTED.items():
        assert set(scanned[("title", query)]) == titles, query
    return scanned


async def test_text_match_answers_alike_with_the_collections_indexes_and_without(
    make_retrieval: MakeRetrieval, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    scanned = await scanned_answers(make_retrieval, data, monkeypatch)
    indexed = await start(make_retrieval, data)
    assert isinstance(indexed.store, EdgeStore)
    await indexed.store.migrated()  # the indexes the collection lacked, made after open
    keys = await indexed.store.indexes(storage_name(DEFAULT_TENANT, NAME))
    assert keys["p.title"] == keys["p.tags"] == IndexKind.KEYWORD
    assert await answers(indexed.stub) == scanned
    await indexed.stop()


async def test_a_full_text_index_would_replace_equalitys_index_and_change_array_answers(
    make_retrieval: MakeRetrieval, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    scanned = await scanned_answers(make_retrieval, data, monkeypatch)
    # Full-text indexes on every key TEXT_MATCH reads (the NFKC copies' too), as the
    # engine's check of the payload tokenizes: words, lower-cased.
    shard = qe.EdgeShard.load(
        str(data / "qdrant" / "collections" / storage_name(DEFAULT_TENANT, NAME))
    )
    for key in ("p.title", "n.title", "p.tags", "n.tags"):
        shard.update(
            qe.UpdateOperation.create_field_index(
                key, qe.TextIndexParams(tokenizer=qe.TokenizerType.Word, lowercase=True)
            )
        )
    shard.flush()
    shard.close()
    monkeypatch.setattr(edge_store, "create_indexes", no_indexes)
    full_text = await start(make_retrieval, data)
    assert isinstance(full_text.store, EdgeStore)
    keys = await full_text.store.indexes(storage_name(DEFAULT_TENANT, NAME))
    # One index per key: the keyword index equality (EQUAL, CONTAINS_ANY, GetChunks'
    # document lookup) is looked up in is gone.
    assert keys["p.title"] is None and keys["p.tags"] is None
    got = await answers(full_text.stub)
    await full_text.stop()
    differ = {key: (scanned[key], got[key]) for key in scanned if scanned[key] != got[key]}
    # A single text answers alike; a text array's elements are pooled: "Red" and "green"
    # in two elements match "red green", which no one element holds.
    one_element = sorted(t for i, t in enumerate(TITLES) if TAGS[i % len(TAGS)] == ["red green"])
    pooled = sorted(
        t for i, t in enumerate(TITLES) if TAGS[i % len(TAGS)] in (["red green"], ["Red", "green"])
    )
    assert differ == {
        ("tags", "red green"): (one_element, pooled),
        ("tags", "green red"): (one_element, pooled),
    }
