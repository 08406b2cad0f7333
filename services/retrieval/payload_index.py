"""Which payload index each filtered key of a collection gets: one mapping, both adapters.

Without a payload index the engine checks a filter by reading every point's payload; on
qdrant-edge that scan runs on the engine's one worker thread, so a filtered Search or
CountObjects over a large collection held every tenant's calls behind it. With an index
the engine looks the condition up (and its query planner picks the cheaper side).

What is indexed is read from the collection's stored schema, so the same function serves a
new collection (``create_collection``) and one made before indexes existed (``EdgeStore``
after open, ``ServerStore`` on first use):

- a collection's properties (``schema.prepare_object`` lays the payload out,
  ``filters.py`` builds the conditions on it):

  - text, text array: ``p.<name>``, keyword (EQUAL, NOT_EQUAL, CONTAINS_ANY/ALL: exact);
  - int: ``p.<name>``, integer with lookup and range (EQUAL, ANY; LESS/GREATER);
  - number: ``p.<name>``, float (every operator is a range);
  - bool: ``b.<name>``, integer (its 0/1 copy, matched);
  - date: ``p.<name>``, datetime (the stored RFC 3339 value, ranges; exact to the
    microsecond in every year). Collections from before filtered a float epoch-seconds
    copy ``ts.<name>``, inexact after 2242; they get this index after open like any
    other they lack, and answer through the payload until it is built.

  TEXT_MATCH is a full-text condition on the same ``p.<name>`` (and its NFKC copy
  ``n.<name>``) and has no index: it stays a check of the payload, as before, of the
  points the rest of the filter leaves. Qdrant keeps one index per key, so a full-text
  index would replace the keyword index equality (and GetChunks' document lookup) is
  looked up in, and on a text array it would pool the elements' words and change answers
  (measured and pinned: ``tests/retrieval/test_text_match_index.py``; docs/retrieval.md).
  The engine gives the same answers with our indexes and without
  (``tests/retrieval/test_payload_indexes.py``).
  Ids are the engine's point ids, indexed by the engine itself; tenants have collections
  of their own (``tenancy.py``), so no tenant key exists to index.
- the answer cache's hidden collections (``answer_cache.py``): ``k``, the context key every
  lookup filters on (keyword);
- the memory service's interaction index (``services/memory/search_index.py``), one
  collection for every tenant and user: ``t`` tenant (keyword, ``is_tenant``: Qdrant lays a
  tenant's points out together), ``u`` user, ``c`` conversation, ``i`` interaction
  (keyword), filtered on by every memory search, count and delete.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from google.protobuf import json_format

from services.retrieval.answer_cache_marker import is_cache_schema
from services.retrieval.schema import Schema

# The stored schema of the memory service's interaction index says this as its "kind".
INTERACTIONS_KIND = "gensearch-memory-interactions"


class IndexKind(enum.Enum):
    KEYWORD = "keyword"
    # A keyword index on the key that partitions a shared collection by tenant.
    TENANT = "tenant"
    INTEGER = "integer"
    FLOAT = "float"
    DATETIME = "datetime"


# Property type -> (payload key prefix its filters read, index).
_BY_TYPE: dict[int, tuple[str, IndexKind]] = {
    pb.DATA_TYPE_TEXT: ("p", IndexKind.KEYWORD),
    pb.DATA_TYPE_TEXT_ARRAY: ("p", IndexKind.KEYWORD),
    pb.DATA_TYPE_INT: ("p", IndexKind.INTEGER),
    pb.DATA_TYPE_NUMBER: ("p", IndexKind.FLOAT),
    pb.DATA_TYPE_BOOL: ("b", IndexKind.INTEGER),
    pb.DATA_TYPE_DATE: ("p", IndexKind.DATETIME),
}
_CACHE_KEYS = {"k": IndexKind.KEYWORD}
_INTERACTION_KEYS = {
    "t": IndexKind.TENANT,
    "u": IndexKind.KEYWORD,
    "c": IndexKind.KEYWORD,
    "i": IndexKind.KEYWORD,
}


def payload_indexes(schema: Mapping[str, Any]) -> dict[str, IndexKind]:
    """Payload key -> index for the collection stored with ``schema``; empty for a schema
    that is none of ours."""
    if is_cache_schema(dict(schema)):
        return dict(_CACHE_KEYS)
    if "kind" in schema:
        return dict(_INTERACTION_KEYS) if schema["kind"] == INTERACTIONS_KIND else {}
    try:
        types = Schema.from_json(dict(schema)).types
    except json_format.ParseError:
        return {}
    out: dict[str, IndexKind] = {}
    for name, data_type in types.items():
        if data_type in _BY_TYPE:
            prefix, kind = _BY_TYPE[data_type]
            out[f"{prefix}.{name}"] = kind
    return out


def missing(
    wanted: Mapping[str, IndexKind], existing: Mapping[str, IndexKind | None]
) -> dict[str, IndexKind]:
    """The indexes of ``wanted`` that ``existing`` (key -> the kind an engine reports, None
    for one we never make) lacks or has of another kind (creating one replaces it)."""
    return {key: kind for key, kind in wanted.items() if existing.get(key) != kind}
