"""Unicode normalization in keyword search: the same word in precomposed (NFC), decomposed
(NFD, as macOS file names) or compatibility form (full-width letters, ligatures) is one
token, on both adapters, while the stored text comes back exactly as it was written."""

from __future__ import annotations

import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from tests.retrieval.conftest import MakeRetrieval, cond, none_of, obj, vector_collection

NFC = "Café au lait"
NFD = "Cafe\u0301 crème"
WIDE = "\uff43\uff41\uff46é society"  # full-width letters, then a precomposed é
PLAIN = "cafe racer"  # no accent: a different word, as before
LIGATURE = "\ufb01sh market"  # U+FB01 LATIN SMALL LIGATURE FI
OTHER = "tea house"

TITLES = [NFC, NFD, WIDE, PLAIN, LIGATURE, OTHER]


@pytest.fixture(params=["edge", "server"])
async def stub(request: pytest.FixtureRequest, make_retrieval: MakeRetrieval) -> object:
    retrieval = await make_retrieval(request.param)
    s = retrieval.stub
    await s.CreateCollection(pb.CreateCollectionRequest(collection=vector_collection("U", 2)))
    objects = [
        obj(
            {"title": title, "tags": [OTHER, title]},
            id=f"00000000-0000-0000-0000-00000000000{i}",
            vector=[1.0, i],
        )
        for i, title in enumerate(TITLES, start=1)
    ]
    await s.UpsertObjects(pb.UpsertObjectsRequest(collection="U", objects=objects))
    return s


async def keyword_titles(stub: object, text: str) -> set[str]:
    res = await stub.Search(  # type: ignore[attr-defined]
        pb.SearchRequest(collection="U", keyword=pb.Keyword(text=text), limit=10)
    )
    return {h.properties["title"] for h in res.hits}


@pytest.mark.parametrize("query", ["cafe\u0301", "café", "CAFÉ", "\uff43\uff41\uff46\uff45\u0301"])
async def test_keyword_matches_every_form_of_a_word(stub: object, query: str) -> None:
    # Stored titles come back byte for byte: NFD stays NFD, full-width stays full-width.
    assert await keyword_titles(stub, query) == {NFC, NFD, WIDE}


@pytest.mark.parametrize("query", ["cafe\u0301", "café", "CAFÉ", "\uff43\uff41\uff46\uff45\u0301"])
@pytest.mark.parametrize("prop", ["title", "tags"])
async def test_text_match_matches_every_form_of_a_word(stub: object, query: str, prop: str) -> None:
    res = await stub.Search(  # type: ignore[attr-defined]
        pb.SearchRequest(
            collection="U",
            near_vector=pb.NearVector(vector=[1.0, 0.0]),
            filter=cond(prop, pb.OPERATOR_TEXT_MATCH, query),
            limit=10,
        )
    )
    assert {h.properties["title"] for h in res.hits} == {NFC, NFD, WIDE}
    # Returned exactly as stored, arrays included.
    assert {tuple(h.properties["tags"]) for h in res.hits} == {(OTHER, t) for t in (NFC, NFD, WIDE)}
    res = await stub.Search(  # type: ignore[attr-defined]
        pb.SearchRequest(
            collection="U",
            near_vector=pb.NearVector(vector=[1.0, 0.0]),
            filter=none_of(cond(prop, pb.OPERATOR_TEXT_MATCH, query)),
            limit=10,
        )
    )
    assert {h.properties["title"] for h in res.hits} == {PLAIN, LIGATURE, OTHER}


async def test_text_match_compatibility_forms(stub: object) -> None:
    for query in ("fish", "\ufb01sh", "FISH"):
        res = await stub.Search(  # type: ignore[attr-defined]
            pb.SearchRequest(
                collection="U",
                near_vector=pb.NearVector(vector=[1.0, 0.0]),
                filter=cond("title", pb.OPERATOR_TEXT_MATCH, query),
            )
        )
        assert [h.properties["title"] for h in res.hits] == [LIGATURE], query


async def test_equal_stays_exact(stub: object) -> None:
    # EQUAL compares the stored string as it is: NFC does not equal NFD.
    res = await stub.Search(  # type: ignore[attr-defined]
        pb.SearchRequest(
            collection="U",
            near_vector=pb.NearVector(vector=[1.0, 0.0]),
            filter=cond("title", pb.OPERATOR_EQUAL, "Café crème"),
        )
    )
    assert not res.hits
    res = await stub.Search(  # type: ignore[attr-defined]
        pb.SearchRequest(
            collection="U",
            near_vector=pb.NearVector(vector=[1.0, 0.0]),
            filter=cond("title", pb.OPERATOR_EQUAL, NFD),
        )
    )
    assert [h.properties["title"] for h in res.hits] == [NFD]


async def test_get_object_returns_stored_text(stub: object) -> None:
    for i, title in ((2, NFD), (3, WIDE), (5, LIGATURE)):
        res = await stub.GetObject(  # type: ignore[attr-defined]
            pb.GetObjectRequest(collection="U", id=f"00000000-0000-0000-0000-00000000000{i}")
        )
        assert dict(res.object.properties) == {"title": title, "tags": [OTHER, title]}


async def test_keyword_compatibility_forms(stub: object) -> None:
    assert await keyword_titles(stub, "fish") == {LIGATURE}
    assert await keyword_titles(stub, "\ufb01sh") == {LIGATURE}
    # Accents are not folded away (like Elasticsearch's icu_normalizer, unlike icu_folding).
    assert await keyword_titles(stub, "cafe") == {PLAIN}


@pytest.mark.parametrize(
    "text", ["Café straße Σοφός naïve", "plain ASCII words", "日本語のテキスト"]
)
def test_nfc_text_keeps_its_old_tokens(text: str) -> None:
    # Keyword indexes built before normalization stay valid for NFC text: same vectors.
    import qdrant_edge

    from services.retrieval import bm25

    raw = qdrant_edge.Bm25()
    for ours, theirs in (
        (bm25.document_vector(text), raw.embed_document(text)),
        (bm25.query_vector(text), raw.embed_query(text)),
    ):
        assert ours is not None
        assert (ours.indices, ours.values) == (list(theirs.indices), list(theirs.values))


def test_normalized_copy_is_bounded() -> None:
    from services.retrieval.normalize import MAX_GROWTH, normalized_copy

    assert normalized_copy("Café") is None  # already NFKC: no copy
    assert normalized_copy("Cafe\u0301") == "Café"
    assert normalized_copy(["tea", "\ufb01sh"]) == ["tea", "fish"]
    assert normalized_copy(["tea", "fish"]) is None
    # U+FDFA is 18 characters in NFKC: the copy would dwarf the value, so none is kept.
    assert normalized_copy("\ufdfa" * 100) is None
    assert normalized_copy(["\ufdfa" * 100, "x"]) is None
    assert len(normalized_copy("\ufb03" * 10) or "") == 30 <= MAX_GROWTH * 10
