"""Splitting long texts into chunks: the function, and ``gensearch import --chunk-*``."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from gensearch.client import DataObject

from services.cli.chunking import Chunker, split_text
from services.gateway.chunks import join_overlapping

TEXT = "\n\n".join(
    f"Paragraph {i}. " + " ".join(f"word{i}_{j}" for j in range(30)) for i in range(12)
)


def test_chunks_are_bounded_and_keep_every_word_in_order() -> None:
    chunks = split_text(TEXT, 500)
    assert len(chunks) > 3
    assert all(len(c) <= 500 for c in chunks)
    assert " ".join(chunks).split() == TEXT.split()


def test_overlap_repeats_the_end_of_the_chunk_before_and_merges_back() -> None:
    plain = split_text(TEXT, 500)
    chunks = split_text(TEXT, 500, overlap=80)
    assert len(chunks) == len(plain)
    for before, after in itertools.pairwise(chunks):
        head = after.split("\n\n", 1)[0]
        assert len(head) >= 80 and before.endswith(head)
    # The gateway's merge of neighbours gives the text back (paragraph breaks and all).
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = join_overlapping(merged, chunk)
    assert merged.split() == TEXT.split()


def test_a_short_text_is_one_chunk() -> None:
    assert split_text("just a line", 100, overlap=20) == ["just a line"]


def test_the_chunker_names_document_and_position_and_keeps_ids_stable() -> None:
    obj = DataObject(
        id="0f0e0d0c-0b0a-4999-8888-777766665555", properties={"title": "Guide", "text": TEXT}
    )
    chunker = Chunker(property="text", size=400, overlap=50)
    chunks = chunker.split(obj)
    assert [c.properties["chunk_index"] for c in chunks] == list(range(len(chunks)))
    assert {c.properties["doc_id"] for c in chunks} == {obj.id}
    assert {c.properties["title"] for c in chunks} == {"Guide"}
    assert [c.id for c in chunks] == [c.id for c in chunker.split(obj)]
    assert len({c.id for c in chunks}) == len(chunks)
    with pytest.raises(ValueError, match="text"):
        chunker.split(DataObject(properties={"text": 3}))
    assert Chunker(property="text", size=10).check()
    assert Chunker(property="text", size=100, overlap=100).check()
    assert Chunker(property="doc_id").check()


def test_import_splits_long_texts_into_chunks(cli: Any, tmp_path: Path) -> None:
    name = f"Chunked{abs(hash(tmp_path)) % 10_000}"
    created = cli(
        "collections", "create", "--name", name, "--property", "title:text",
        "--property", "text:text", "--property", "doc_id:text", "--property", "chunk_index:int",
        "--chunking", "doc_id:chunk_index", "--json",
    )  # fmt: skip
    assert created.code == 0, created.err
    assert json.loads(created.out)["chunking"] == {
        "document_property": "doc_id",
        "order_property": "chunk_index",
    }
    lines = [
        json.dumps({"title": "A", "text": TEXT, "doc_id": "guide-a"}),
        json.dumps({"title": "B", "text": "short text"}),
        json.dumps({"title": "C", "text": 5}),
    ]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = cli(
        "import", str(path), "--collection", name, "--chunk-property", "text",
        "--chunk-size", "400", "--chunk-overlap", "40", "--json",
    )  # fmt: skip
    report = json.loads(result.out)
    expected = len(split_text(TEXT, 400, 40)) + 1
    assert report["imported"] == expected, report
    assert [e["line"] for e in report["errors"]] == [3]  # a number cannot be chunked
    shown = json.loads(cli("collections", "show", name, "--json").out)
    assert int(shown["object_count"]) == expected
    # Importing again replaces the chunks (stable ids), it does not add to them.
    cli("import", str(path), "--collection", name, "--chunk-property", "text",
        "--chunk-size", "400", "--chunk-overlap", "40")  # fmt: skip
    shown = json.loads(cli("collections", "show", name, "--json").out)
    assert int(shown["object_count"]) == expected
    bad = cli("import", str(path), "--collection", name, "--chunk-property", "text",
              "--chunk-size", "10")  # fmt: skip
    assert bad.code == 2 and re.search(r"--chunk-size must be at least", bad.err)
