"""Known answers on a small corpus: the right object is in the top 3 for near_text (the real
local MiniLM model), keyword (BM25) and hybrid."""

from __future__ import annotations

from typing import Any

import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from tests.retrieval.conftest import Retrieval, obj, props

CORPUS = {
    "eiffel": "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "photosynthesis": "Plants convert sunlight, water and carbon dioxide into sugar and oxygen.",
    "python": "Python is a programming language known for readable code and a big library.",
    "everest": "Mount Everest is the highest mountain above sea level, in the Himalayas.",
    "vaccine": "Vaccines train the immune system to recognise viruses and bacteria.",
    "bitcoin": "Bitcoin is a decentralised digital currency recorded on a blockchain ledger.",
    "coffee": "Espresso is brewed by forcing hot water through finely ground coffee beans.",
    "jupiter": "Jupiter is the largest planet in the solar system, a gas giant with many moons.",
    "shakespeare": "William Shakespeare wrote Hamlet, Macbeth and Romeo and Juliet.",
    "tides": "Ocean tides are caused by the gravitational pull of the moon and the sun.",
    "volcano": "A volcano erupts when molten rock called magma rises to the surface as lava.",
    "penguin": "Penguins are flightless birds that live mostly in the Southern Hemisphere.",
    "marathon": "A marathon is a long-distance running race of about 42 kilometres.",
    "chess": "In chess, each player starts with sixteen pieces including a king and a queen.",
    "insulin": "Insulin is a hormone that regulates blood sugar levels in the body.",
    "guitar": "An acoustic guitar usually has six strings and a hollow wooden body.",
    "recycling": "Recycling turns waste materials such as paper and glass into new products.",
    "earthquake": "Earthquakes happen when tectonic plates suddenly slip along a fault.",
    "sushi": "Sushi is a Japanese dish of vinegared rice with raw fish or vegetables.",
    "rainbow": "A rainbow appears when sunlight is refracted and reflected in raindrops.",
}

NEAR_TEXT = {
    "which famous landmark is in the French capital?": "eiffel",
    "how do green plants make food from light": "photosynthesis",
    "tallest peak in the world": "everest",
    "cryptocurrency and distributed ledgers": "bitcoin",
    "biggest planet orbiting our sun": "jupiter",
    "why does the sea level rise and fall every day": "tides",
    "hormone controlling glucose": "insulin",
    "birds that cannot fly living near Antarctica": "penguin",
}
KEYWORD = {
    "magma lava": "volcano",
    "tectonic plates fault": "earthquake",
    "Hamlet Macbeth": "shakespeare",
    "espresso coffee beans": "coffee",
    "guitar strings": "guitar",
}
HYBRID = {
    "Japanese rice with fish": "sushi",
    "programming language readable code": "python",
    "long running race": "marathon",
    "light refracted in raindrops": "rainbow",
    "board game with a king and queen pieces": "chess",
}


@pytest.fixture
async def stub(retrieval: Retrieval) -> Any:
    s = retrieval.stub
    collection = pb.Collection(
        name="Facts",
        properties=props(("key", pb.DATA_TYPE_TEXT), ("text", pb.DATA_TYPE_TEXT)),
        vectorizer=pb.Vectorizer(source_properties=["text"]),
    )
    await s.CreateCollection(pb.CreateCollectionRequest(collection=collection))
    resp = await s.UpsertObjects(
        pb.UpsertObjectsRequest(
            collection="Facts", objects=[obj({"key": k, "text": t}) for k, t in CORPUS.items()]
        )
    )
    assert len(resp.ids) == len(CORPUS) and not resp.errors
    return s


async def top3(stub: Any, request: pb.SearchRequest) -> list[str]:
    request.collection = "Facts"
    request.limit = 3
    res = await stub.Search(request)
    return [h.properties["key"] for h in res.hits]


async def test_near_text(stub: Any) -> None:
    for question, answer in NEAR_TEXT.items():
        request = pb.SearchRequest(near_text=pb.NearText(text=question))
        assert answer in await top3(stub, request), question
    res = await stub.Search(
        pb.SearchRequest(collection="Facts", near_text=pb.NearText(text="tallest mountain"))
    )
    assert res.embed_ms > 0


async def test_keyword(stub: Any) -> None:
    for question, answer in KEYWORD.items():
        assert answer in await top3(stub, pb.SearchRequest(keyword=pb.Keyword(text=question))), (
            question
        )


async def test_hybrid(stub: Any) -> None:
    for question, answer in HYBRID.items():
        for alpha in (0.25, 0.5, 0.75):
            request = pb.SearchRequest(hybrid=pb.Hybrid(text=question, alpha=alpha))
            assert answer in await top3(stub, request), (question, alpha)
