"""The demo corpus: CPython's language reference topics, chunked into passages.

The demo collection declares its chunking (``topic`` is the document, ``part`` the position),
so Ask and GenerativeSearch can widen a hit with the parts around it (``expand_context``).

``pydoc_data.topics`` ships with every CPython (it backs ``help("assert")``), so the demo
has real text with no download. Each topic is split on blank lines and the paragraphs are
packed into passages of roughly ``target``..``limit`` characters, so a passage is small
enough to embed well and to quote in a prompt, and large enough to say something.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from services.cli import chunking

TARGET_CHARS = 800
LIMIT_CHARS = 1200
# A tail shorter than this is folded into the previous passage rather than left alone.
MIN_TAIL_CHARS = 300
# Stable ids: importing the corpus twice replaces the passages instead of duplicating them.
_NAMESPACE = uuid.UUID("5f0c3b9e-3c1a-4a57-9a8e-2f6d1c0b7a41")
# reStructuredText underlines ("*****", "=====") carry no meaning once the title is known.
_UNDERLINE = re.compile(r"^\s*([*=\-~^\"'`#+])\1{2,}\s*$")


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    topic: str
    part: int
    text: str

    def properties(self) -> dict[str, object]:
        return {"title": self.title, "topic": self.topic, "part": self.part, "text": self.text}


def load_topics() -> dict[str, str]:
    from pydoc_data.topics import topics

    return dict(topics)


def passages(
    topics: Mapping[str, str] | None = None,
    *,
    target: int = TARGET_CHARS,
    limit: int = LIMIT_CHARS,
    max_passages: int | None = None,
    prefer: Sequence[str] = (),
) -> list[Passage]:
    """The topics' passages; at most ``max_passages``.

    When capped, the ``prefer``-red topics come first (whole), then the first part of every
    other topic, then the second parts, and so on: a small corpus still spans the language.
    """
    source = load_topics() if topics is None else topics
    out: list[Passage] = []
    for name in sorted(source):
        chunks = chunk_text(source[name], target=target, limit=limit)
        for part, text in enumerate(chunks, start=1):
            title = name if len(chunks) == 1 else f"{name} (part {part} of {len(chunks)})"
            pid = str(uuid.uuid5(_NAMESPACE, f"{name}/{part}"))
            out.append(Passage(id=pid, title=title, topic=name, part=part, text=text))
    if max_passages is None or max_passages >= len(out):
        return out
    rank = {name: i for i, name in enumerate(prefer)}
    out.sort(
        key=lambda p: (0, rank[p.topic], p.part, "") if p.topic in rank else (1, 0, p.part, p.topic)
    )
    return out[: max(max_passages, 0)]


def chunk_text(text: str, *, target: int = TARGET_CHARS, limit: int = LIMIT_CHARS) -> list[str]:
    """Pack blank-line separated paragraphs into chunks of about ``target``..``limit`` chars
    (the importer's packing, ``services/cli/chunking.py``, without its overlap)."""
    return chunking.pack(
        _paragraphs(text, limit), target=target, limit=limit, min_tail=MIN_TAIL_CHARS
    )


def _paragraphs(text: str, limit: int) -> Iterator[str]:
    for block in re.split(r"\n\s*\n", text):
        lines = [line.rstrip() for line in block.splitlines() if not _UNDERLINE.match(line)]
        para = "\n".join(lines).strip("\n")
        if not para.strip():
            continue
        yield from chunking.split_long(para, limit)
