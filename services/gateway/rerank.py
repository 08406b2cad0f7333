"""The rerank stage of Ask and GenerativeSearch: the request's ``rerank`` block, else the
collection's default (``Collection.rerank``), carried on the search to retrieval.

Retrieval runs the stage (``services/retrieval/rerankers.py``): it retrieves the block's
``candidates``, reranks them and returns the best ``limit`` (Ask: ``context_size``), each hit
with its retrieval ``score`` and its ``rerank_score``. Its errors name ``rerank.*`` fields,
which are the gateway request's fields too.
"""

from __future__ import annotations

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from services.gateway.catalog import CollectionInfo

# A search's limit when it sets none (retrieval's DEFAULT_LIMIT; lower only when retrieval's
# MAX_LIMIT is, and then a few more candidates do no harm).
RETRIEVAL_DEFAULT_LIMIT = 10

Reranked = (
    gw_pb.AskRequest
    | gw_pb.StreamAskRequest
    | gw_pb.GenerativeSearchRequest
    | gw_pb.StreamGenerativeSearchRequest
)


def apply(
    search: ret_pb.SearchRequest,
    request: Reranked,
    info: CollectionInfo | None,
    question: str = "",
) -> None:
    """``question`` (Ask's, or its rewrite) is what the hits are ranked against when the
    block names no query, so an Ask by near_vector reranks too."""
    if request.HasField("rerank"):
        search.rerank.CopyFrom(request.rerank)
    elif info is not None and info.collection.HasField("rerank"):
        if not question and search.WhichOneof("query") == "near_vector":
            return  # no text to rank against: the default stays out of a vector search
        search.rerank.CopyFrom(info.collection.rerank)
        # The collection's candidates are a default: raised to the page, as retrieval
        # raises its own (a larger context_size was INVALID_ARGUMENT naming
        # rerank.candidates, a field the caller never set).
        wanted = search.offset + (search.limit or RETRIEVAL_DEFAULT_LIMIT)
        if search.rerank.candidates and search.rerank.candidates < wanted:
            search.rerank.candidates = wanted
    else:
        return
    if not search.rerank.query and question:
        search.rerank.query = question


def apply_or_default(search: ret_pb.SearchRequest, request: Reranked) -> None:
    """The request's ``rerank`` block; without one, retrieval is asked to apply the
    collection's default (``use_collection_rerank``), by the rule ``apply`` follows: not on a
    near_vector search, which has no text to rank against. For a caller that searches
    before it has read the collection: one search either way."""
    if request.HasField("rerank"):
        search.rerank.CopyFrom(request.rerank)
    else:
        search.use_collection_rerank = True
