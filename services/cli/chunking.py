"""Long texts split into chunks for collections that declare ``chunking`` (the importer's
``--chunk-property``; the demo corpus is loaded through that command, ``demo.import_argv``).

Text is cut where a reader would cut it: paragraphs (blank lines) are packed into chunks of
about two thirds of ``size`` up to ``size`` characters; a paragraph longer than ``size`` is
cut at line breaks, then at spaces. With ``overlap``, each chunk after the first begins
with the end of the one before (at least ``overlap`` characters, whole words, copied
exactly), so a sentence cut at a boundary is whole in one of them; the gateway removes that
repeated stretch when it merges neighbouring chunks back into a passage.

Each chunk becomes its own object: the other properties copied, the chunked property
replaced by the chunk, ``document_property`` set to the document's key (the object's own
value for it, else its id, else a digest of its text) and ``order_property`` to the chunk's
position from 0. Chunk ids derive from (document, position), so importing the same file
again replaces the chunks instead of duplicating them.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from gensearch.client import DataObject

_NAMESPACE = uuid.UUID("1b4e28ba-2fa1-4d3b-a3f5-ef19e5f0c8a7")
MIN_SIZE = 50


def split_long(para: str, limit: int) -> Iterator[str]:
    """A paragraph longer than ``limit`` is cut at line breaks, then at spaces."""
    while len(para) > limit:
        cut = para.rfind("\n", 0, limit)
        if cut <= limit // 2:
            cut = para.rfind(" ", 0, limit)
        if cut <= 0:
            cut = limit
        yield para[:cut].rstrip()
        para = para[cut:].lstrip()
    if para:
        yield para


def paragraphs(text: str, limit: int) -> Iterator[str]:
    for block in re.split(r"\n\s*\n", text):
        para = block.strip("\n")
        if para.strip():
            yield from split_long(para, limit)


def pack(paras: Iterable[str], *, target: int, limit: int, min_tail: int) -> list[str]:
    """Paragraphs packed into chunks of about ``target``..``limit`` characters; a tail
    shorter than ``min_tail`` is folded into the chunk before it."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for para in paras:
        added = len(para) + (2 if current else 0)
        if current and size + added > limit:
            chunks.append("\n\n".join(current))
            current, size = [], 0
            added = len(para)
        current.append(para)
        size += added
        if size >= target:
            chunks.append("\n\n".join(current))
            current, size = [], 0
    if current:
        tail = "\n\n".join(current)
        if chunks and len(tail) < min_tail:
            chunks[-1] = f"{chunks[-1]}\n\n{tail}"
        else:
            chunks.append(tail)
    return chunks


def split_text(text: str, size: int, overlap: int = 0) -> list[str]:
    """``text`` in chunks of at most ``size`` characters, each but the first prefixed with
    the last ``overlap``-or-more characters (whole words) of the chunk before it."""
    pieces = pack(paragraphs(text, size), target=size * 2 // 3, limit=size, min_tail=size // 4)
    if overlap <= 0:
        return pieces
    out = pieces[:1]
    for before, piece in itertools.pairwise(pieces):
        out.append(f"{_tail(before, overlap)}\n\n{piece}")
    return out


def _tail(text: str, overlap: int) -> str:
    """The shortest end of ``text`` that starts at a word and holds ``overlap`` characters
    (the whole text when it is shorter)."""
    if len(text) <= overlap:
        return text
    start = len(text) - overlap
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return text[start:].lstrip()


@dataclass(frozen=True)
class Chunker:
    """How ``gensearch import`` splits each object (``--chunk-*`` options)."""

    property: str
    size: int = 1000
    overlap: int = 100
    document_property: str = "doc_id"
    order_property: str = "chunk_index"

    def check(self) -> str | None:
        """What is wrong with the options, if anything."""
        if self.size < MIN_SIZE:
            return f"--chunk-size must be at least {MIN_SIZE} characters"
        if not 0 <= self.overlap < self.size:
            return "--chunk-overlap must be at least 0 and less than --chunk-size"
        names = {self.property, self.document_property, self.order_property}
        if len(names) < 3:
            return "--chunk-property, --document-property and --order-property must differ"
        return None

    def split(self, obj: DataObject) -> list[DataObject]:
        """The chunks of ``obj``; ValueError (a line's error) when it cannot be chunked."""
        props: dict[str, Any] = dict(obj.properties)
        text = props.get(self.property)
        if not isinstance(text, str):
            raise ValueError(f"{self.property}: the chunked property must be a text")
        if obj.vector:
            raise ValueError("vector: a chunked object cannot carry one vector for its chunks")
        document = props.get(self.document_property) or obj.id
        if not document:
            document = str(uuid.uuid5(_NAMESPACE, text))
        return [
            DataObject(
                id=str(uuid.uuid5(_NAMESPACE, f"{document}/{index}")),
                properties={
                    **props,
                    self.property: piece,
                    self.document_property: document,
                    self.order_property: index,
                },
            )
            for index, piece in enumerate(split_text(text, self.size, self.overlap) or [""])
        ]
