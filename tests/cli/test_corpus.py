"""The demo corpus: CPython's pydoc topics chunked into passages."""

from __future__ import annotations

import json
import re

import pytest
from gensearch.client import DataObject

from services.cli import corpus, demo
from services.cli.__main__ import build_parser
from services.cli.demo import DEMO_TOPICS, demo_passages
from services.cli.importer import chunker_of


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z_]{3,}", text)


def test_every_topic_becomes_passages_of_a_sensible_size() -> None:
    topics = corpus.load_topics()
    passages = corpus.passages(topics)
    assert len(topics) > 50  # the real pydoc data, not a stub
    assert {p.topic for p in passages} == {name for name, text in topics.items() if text.strip()}
    for p in passages:
        assert 0 < len(p.text) <= corpus.LIMIT_CHARS + corpus.MIN_TAIL_CHARS, p.title
    # Whole topics shorter than the target stay small; every other passage reaches it.
    multi = [p for p in passages if "(part " in p.title]
    short = [p for p in multi if len(p.text) < corpus.TARGET_CHARS - 200]
    assert len(short) < len(multi) * 0.1
    sizes = sorted(len(p.text) for p in multi)
    assert corpus.TARGET_CHARS <= sizes[len(sizes) // 2] <= corpus.LIMIT_CHARS


def test_passages_keep_all_the_text_in_order() -> None:
    topics = corpus.load_topics()
    by_topic: dict[str, list[corpus.Passage]] = {}
    for p in corpus.passages(topics):
        by_topic.setdefault(p.topic, []).append(p)
    for name in ("assert", "try", "compound", "specialnames"):
        parts = by_topic[name]
        assert [p.part for p in parts] == list(range(1, len(parts) + 1))
        joined = " ".join(p.text for p in parts)
        source = re.sub(r"^\s*([*=\-~^])\1{2,}\s*$", "", topics[name], flags=re.M)
        assert _words(joined) == _words(source)


def test_titles_ids_and_properties() -> None:
    passages = corpus.passages()
    assert passages[0].title == "assert" and passages[0].part == 1
    assert "****" not in passages[0].text  # reST underlines are dropped
    try_parts = [p for p in passages if p.topic == "try"]
    assert len(try_parts) > 1
    assert try_parts[1].title == f"try (part 2 of {len(try_parts)})"
    ids = [p.id for p in passages]
    assert len(set(ids)) == len(ids)
    assert ids == [p.id for p in corpus.passages()]  # stable: re-import replaces
    assert set(passages[0].properties()) == {"title", "topic", "part", "text"}


def test_long_paragraphs_are_cut_at_line_breaks_or_spaces() -> None:
    text = ("word " * 700).strip() + "\n\nshort tail paragraph"
    chunks = corpus.chunk_text(text, target=800, limit=1200)
    assert all(len(c) <= 1200 + corpus.MIN_TAIL_CHARS for c in chunks)
    assert " ".join(chunks).split() == text.split()
    assert all(not c.startswith(" ") and not c.endswith(" ") for c in chunks)


def test_a_capped_corpus_keeps_the_demo_topics_and_spans_the_rest() -> None:
    capped = demo_passages(40)
    assert len(capped) == 40
    leading = [p.topic for p in capped[: len(capped) // 2]]
    assert set(DEMO_TOPICS) <= set(leading)
    rest = [p for p in capped if p.topic not in DEMO_TOPICS]
    assert rest and all(p.part == 1 for p in rest)
    assert len({p.topic for p in rest}) == len(rest)
    assert len(corpus.passages(max_passages=0)) == 0


@pytest.mark.parametrize("limit", [24, 300, None])
def test_the_import_command_cuts_the_demo_documents_into_the_demo_passages(
    limit: int | None,
) -> None:
    """The demo loads its corpus with `gensearch import --chunk-property text` (issue 15):
    that command's own parser and chunker, run on the demo's documents (a topic a line),
    give exactly the passages corpus.py packs (capped or not), ``part`` counted from 0."""
    args = build_parser().parse_args(demo.import_argv("corpus.jsonl"))
    assert args.command == "import" and args.chunk_property == "text"
    chunker = chunker_of(args)
    assert chunker is not None
    passages = demo.demo_passages(limit)
    made = []
    for line in demo.corpus_lines(passages):
        document = json.loads(line)
        assert set(document) == {"properties"}  # ids are the chunker's
        for chunk in chunker.split(DataObject(id="", properties=document["properties"])):
            made.append(
                (chunk.properties["topic"], chunk.properties["part"], chunk.properties["text"])
            )
    assert sorted(made) == sorted((p.topic, p.part - 1, p.text) for p in passages)
    stored = demo.demo_objects(limit)  # what the bundled model's demo test loads
    assert sorted(
        (o.properties["topic"], o.properties["part"], o.properties["text"]) for o in stored
    ) == sorted(made)
