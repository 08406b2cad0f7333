"""The rerank stage of a Search: retrieved candidates, re-scored against the query, best first.

Two kinds of reranker:

* **remote**: any endpoint speaking the common ``POST /rerank`` JSON API (Cohere's shape,
  also served by vLLM, Text Embeddings Inference and llama.cpp's server in reranking mode):
  ``{model, query, documents, top_n}`` -> ``{results: [{index, relevance_score}]}``. Either a
  provider the operator named (``GENSEARCH_RETRIEVAL_RERANK_PROVIDERS``: its base URL, its
  key from the environment, reached without the allowlist, like the operator's embeddings
  endpoints), or a base URL the caller gave (``Rerank.base_url``): checked against the
  allowlist (``GENSEARCH_RETRIEVAL_ALLOWED_HOSTS``) and again on every connection, with only
  the key the caller sent (``x-rerank-api-key``). A collection's default block
  (``Collection.rerank``) is its admin's choice: a caller's key goes to its base URL only when
  the caller names that URL in ``x-rerank-base-url`` (``endpoints.caller_key_for``); a
  request's block naming the same URL counts as the default (the gateway copies the default
  into the search it sends). The call goes through the official
  ``openai`` SDK's generic ``post`` (the SDK has no rerank method, but its transport, the
  egress-checked connector and its error types are the ones the embedders use), under the
  shared retry policy (``services.common.upstream_retry``) and within ``rerank_timeout``.
* **local MMR** (``provider`` empty or ``"mmr"``): maximal marginal relevance with the local
  embedder, no download and no network. Each pick maximises
  ``lambda * sim(query, hit) - (1 - lambda) * max(sim(hit, picked))``: relevant hits first,
  near-duplicates of what was already picked pushed down. A hit's ``rerank_score`` is that
  marginal value when it was picked. A collection whose vectorizer is the local model
  reuses its stored vectors; any other collection's hits are embedded here.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import openai
from aiohttp.abc import AbstractResolver
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from opentelemetry.trace import Status, StatusCode

from services.common.egress import (
    RERANK_KEY_HEADER,
    RERANK_URL_HEADER,
    UPSTREAM_REDIRECT,
    EgressPolicy,
    UrlRefused,
    canonical_url,
    header_value,
    is_redirect,
    refusal,
    url_not_allowed,
)
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    MissingField,
    Unavailable,
    out_of_range,
    quote,
)
from services.common.logs import hide_in_this_call, register_secret
from services.common.model_names import check_model_name
from services.common.openai_api import (
    ATTEMPTS,
    ExtraHeaders,
    OpenAIClients,
    authorized,
    upstream_span,
)
from services.common.suggest import did_you_mean
from services.common.tracing import service_tracer
from services.common.upstream_retry import RetryPolicy
from services.common.values import check_chars
from services.retrieval.embedders import LocalEmbedder
from services.retrieval.endpoints import ALLOWLIST_SETTING, MAX_URL_SETTING, caller_key_for
from services.retrieval.schema import (
    MODEL_SETTING,
    RERANK_DEFAULT_SETTING,
    TEXT_TYPES,
    Schema,
)
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import PROPS, FoundPoint
from services.retrieval.upstream import Attempts, problem, slots_busy
from services.retrieval.upstream_slots import UpstreamSlots

MMR = "mmr"
FIELD = "rerank"
MAX_CANDIDATES_SETTING = "GENSEARCH_RETRIEVAL_MAX_RERANK_CANDIDATES"
RERANK_QUERY_SETTING = "GENSEARCH_RETRIEVAL_MAX_RERANK_QUERY_CHARS"
# The caller's key and the base URL it names for it (x-rerank-base-url), per RPC.
_caller_key: ContextVar[tuple[str, str]] = ContextVar("gensearch_rerank_key", default=("", ""))


def use_caller_rerank_key(metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
    """Take the caller's ``x-rerank-api-key`` (if any) for a caller-named rerank endpoint,
    and the ``x-rerank-base-url`` it names for it."""
    key = header_value(metadata, RERANK_KEY_HEADER)
    hide_in_this_call(key)
    _caller_key.set((key, header_value(metadata, RERANK_URL_HEADER)))


def _canonical(url: str) -> str:
    try:
        return canonical_url(url)
    except UrlRefused:
        return ""


@dataclass(frozen=True)
class RerankPlan:
    """A checked ``Rerank`` block: who reranks, over how many candidates, with which text."""

    candidates: int
    query: str
    properties: list[str]
    # Local MMR: lambda; remote: None.
    mmr_lambda: float | None = None
    provider: str = MMR
    base_url: str = ""
    model: str = ""
    # The operator's endpoint (its key, its client) or a caller's.
    operator: bool = False
    key_env: str = ""

    @property
    def local(self) -> bool:
        return self.mmr_lambda is not None

    def needs_vectors(self, schema: Schema) -> bool:
        """MMR reuses the stored vectors of a collection embedded by the local model."""
        return self.local and _local_vectors(schema)


def _local_vectors(schema: Schema) -> bool:
    return schema.collection.vectorizer.kind == pb.VECTORIZER_KIND_LOCAL


class Rerankers:
    def __init__(
        self,
        settings: RetrievalSettings,
        local: LocalEmbedder,
        *,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._settings = settings
        self._local = local
        self._egress = EgressPolicy.parse(settings.allowed_hosts)
        bound = settings.max_response_bytes
        self._operator_clients = OpenAIClients(max_response_bytes=bound)
        self._caller_clients = OpenAIClients(
            egress=self._egress, resolver=resolver, max_response_bytes=bound
        )
        self._retry = RetryPolicy(
            max_attempts=settings.rerank_retries + 1, retry_after_max=settings.retry_after_max
        )
        # As the embeddings endpoints' (a slot per attempt), in slots of their own.
        self._slots = UpstreamSlots(
            settings.upstream_max_in_flight, settings.upstream_max_in_flight_per_tenant
        )

    async def close(self) -> None:
        await self._operator_clients.close()
        await self._caller_clients.close()

    # -- checks ----------------------------------------------------------------------------
    def plan(
        self, rerank: pb.Rerank, schema: Schema, query_text: str, offset: int, limit: int
    ) -> RerankPlan:
        """Check ``rerank`` (fields named ``rerank.*``) for a page of ``limit`` hits from
        ``offset`` over ``schema``; ``query_text`` is the search's own text."""
        s = self._settings
        wanted = offset + limit
        # The page first: a collection's default candidates are raised to it
        # (servicer.default_rerank), so a page past the ceiling is the page's fault, not
        # the candidates' (it named rerank.candidates, a field the caller never set).
        if wanted > s.max_rerank_candidates:
            raise page_too_deep(offset, limit, s.max_rerank_candidates)
        if rerank.candidates < 0 or rerank.candidates > s.max_rerank_candidates:
            raise out_of_range(
                f"{FIELD}.candidates must be in 0..{s.max_rerank_candidates}",
                field=f"{FIELD}.candidates",
                bound=s.max_rerank_candidates,
                setting=MAX_CANDIDATES_SETTING,
            )
        if rerank.candidates and rerank.candidates < wanted:
            raise InvalidArgument(
                f"{FIELD}.candidates ({rerank.candidates}) must be at least offset + limit "
                f"({wanted})",
                field=f"{FIELD}.candidates",
                reason="OUT_OF_RANGE",
            )
        candidates = rerank.candidates or min(
            max(s.rerank_candidates, wanted), s.max_rerank_candidates
        )
        query = rerank.query or query_text
        if not query.strip():
            raise MissingField(
                f"{FIELD}.query is required when the search has no text (near_vector)",
                field=f"{FIELD}.query",
            )
        check_chars(query, f"{FIELD}.query", s.max_rerank_query_chars, RERANK_QUERY_SETTING)
        properties = self._properties(rerank, schema)
        common: dict[str, Any] = {
            "candidates": candidates,
            "query": query,
            "properties": properties,
        }
        reranker = self._reranker(rerank, FIELD, stored=_stored_default(rerank, schema))
        self._check_key_destination(reranker, schema)
        return RerankPlan(**common, **reranker)

    def _check_key_destination(self, reranker: dict[str, Any], schema: Schema) -> None:
        """A caller's key goes to the collection's default base URL (its admin's choice,
        here directly or copied by the gateway) only if the caller named it; refused before
        anything is retrieved or sent."""
        base_url = reranker.get("base_url", "")
        default = schema.collection.rerank.base_url if schema.collection.HasField("rerank") else ""
        if reranker.get("operator") or not base_url or not default:
            return
        if _canonical(base_url) != _canonical(default):
            return
        key, named = _caller_key.get()
        caller_key_for(
            key,
            named,
            base_url,
            where=f"collection.{FIELD}.base_url",
            key_header=RERANK_KEY_HEADER,
            url_header=RERANK_URL_HEADER,
            collection=schema.name,
        )

    def check_default(self, collection: pb.Collection) -> None:
        """A new collection's default rerank: its provider exists and its base URL passes
        the allowlist, as a request's would (checked again at use: the policy may tighten),
        fields named ``collection.rerank.*``; its candidates within MAX_RERANK_CANDIDATES,
        which every search using it would otherwise refuse."""
        if collection.HasField("rerank"):
            where = f"collection.{FIELD}"
            # First: stored with the collection, so bounded before anything reads them.
            for name in ("provider", "model", "base_url"):
                check_chars(
                    getattr(collection.rerank, name),
                    f"{where}.{name}",
                    self._settings.max_rerank_default_chars,
                    RERANK_DEFAULT_SETTING,
                )
            limit = self._settings.max_rerank_candidates
            if collection.rerank.candidates > limit:
                raise out_of_range(
                    f"{where}.candidates must be in 0..{limit}",
                    field=f"{where}.candidates",
                    bound=limit,
                    setting=MAX_CANDIDATES_SETTING,
                )
            self._reranker(collection.rerank, where)

    def _reranker(self, rerank: pb.Rerank, where: str, *, stored: bool = False) -> dict[str, Any]:
        """Who reranks: ``RerankPlan``'s fields for ``rerank``'s provider or base URL, or
        its refusal naming ``where``'s fields. ``stored``: its base URL is the collection's
        default's, held to MAX_URL_CHARS when it was set (not again: a bound lowered since
        bounds what callers send, and does not refuse every later search of the collection;
        the allowlist is read again)."""
        s = self._settings
        # Sent upstream in the body and named in the span: held to a generation model
        # name's shape, as the providers' configured models are at start.
        check_model_name(rerank.model, f"{where}.model", s.max_model_chars, MODEL_SETTING)
        provider = rerank.provider.strip()
        if rerank.base_url:
            if provider and provider != MMR:
                raise InvalidArgument(
                    f"give {where}.provider or {where}.base_url, not both",
                    field=f"{where}.base_url",
                )
            if not stored:
                check_chars(rerank.base_url, f"{where}.base_url", s.max_url_chars, MAX_URL_SETTING)
            try:
                self._egress.check_url(rerank.base_url)
                # Called as checked: the caller's own spelling ("127.0.0.1.", "HTTP://")
                # passed the allowlist, and the HTTP client then failed to connect to it.
                base_url = canonical_url(rerank.base_url)
            except UrlRefused as err:
                raise url_not_allowed(f"{where}.base_url", err.why, ALLOWLIST_SETTING) from None
            return {"provider": "endpoint", "base_url": base_url, "model": rerank.model}
        if rerank.HasField("mmr_lambda") and provider not in ("", MMR):
            raise InvalidArgument(
                f"{where}.mmr_lambda applies to the local mmr reranker only",
                field=f"{where}.mmr_lambda",
            )
        if provider in ("", MMR):
            value = rerank.mmr_lambda if rerank.HasField("mmr_lambda") else s.mmr_lambda
            if not 0.0 <= value <= 1.0:  # NaN fails too
                raise InvalidArgument(
                    f"{where}.mmr_lambda must be in [0, 1]",
                    field=f"{where}.mmr_lambda",
                    reason="OUT_OF_RANGE",
                )
            if rerank.model:
                raise InvalidArgument(
                    f"{where}.model: the local mmr reranker uses the local embedder",
                    field=f"{where}.model",
                )
            return {"mmr_lambda": value}
        configured = s.rerank_providers.get(provider)
        if configured is None:
            known = ", ".join(sorted([MMR, *s.rerank_providers]))
            raise InvalidArgument(
                f"{where}.provider: no rerank provider {quote(provider)} (known: {known})",
                field=f"{where}.provider",
                reason="UNKNOWN_PROVIDER",
                metadata={"provider": provider[:64]},
            )
        return {
            "provider": provider,
            "base_url": configured.base_url,
            "model": rerank.model or configured.model,
            "operator": True,
            "key_env": configured.api_key_env,
        }

    def _properties(self, rerank: pb.Rerank, schema: Schema) -> list[str]:
        for i, name in enumerate(rerank.properties):
            kind = schema.types.get(name)
            if kind is None or kind not in TEXT_TYPES:
                texts = [p for p, t in schema.types.items() if t in TEXT_TYPES]
                hint, metadata = did_you_mean(name, texts) if kind is None else ("", {})
                raise InvalidArgument(
                    f"{FIELD}.properties[{i}]: {quote(name)} is not a text property of "
                    f"this collection{hint}",
                    field=f"{FIELD}.properties[{i}]",
                    reason="UNKNOWN_PROPERTY",
                    metadata=metadata,
                )
        # Each once: a collection's default made before repeats were refused may hold one.
        return list(dict.fromkeys(rerank.properties)) or schema.text_properties()

    # -- reranking -------------------------------------------------------------------------
    async def rerank(
        self,
        plan: RerankPlan,
        schema: Schema,
        hits: list[FoundPoint],
        keep: int,
        *,
        time_left: float | None = None,
    ) -> list[tuple[FoundPoint, float]]:
        """The best ``keep`` of ``hits`` with their rerank scores, best first; a remote
        call ends within ``rerank_timeout`` and within ``time_left`` (the RPC's deadline)."""
        if not hits or keep <= 0:
            return []
        if plan.local:
            assert plan.mmr_lambda is not None
            return await self._mmr(plan, schema, hits, keep)
        documents = [self._document(hit, plan.properties) for hit in hits]
        ranked = await self._remote(plan, documents, keep, time_left)
        return [(hits[index], score) for index, score in ranked]

    def _document(self, hit: FoundPoint, properties: Sequence[str]) -> str:
        values = hit.payload.get(PROPS, {})
        parts: list[str] = []
        for name in properties:
            value = values.get(name)
            if isinstance(value, list):
                parts.extend(str(v) for v in value if v is not None)
            elif value is not None:
                parts.append(str(value))
        return "\n".join(parts)[: self._settings.max_rerank_document_chars]

    async def _mmr(
        self,
        plan: RerankPlan,
        schema: Schema,
        hits: list[FoundPoint],
        keep: int,
    ) -> list[tuple[FoundPoint, float]]:
        assert plan.mmr_lambda is not None
        tracer = service_tracer("retrieval")
        # Neither recorded nor set as the status: an exception's message may quote a key,
        # and spans are not redacted (services/common/chassis.py); only its type is kept.
        with tracer.start_as_current_span(
            "rerank mmr",
            attributes={"gensearch.hits": len(hits)},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                stored = plan.needs_vectors(schema) and all(h.dense is not None for h in hits)
                texts = [plan.query]
                if not stored:  # the hits' texts are embedded only when no vector is reused
                    texts += [self._document(hit, plan.properties) for hit in hits]
                vectors = await self._local.embed(texts)
                query = np.asarray(vectors[0], dtype=np.float32)
                docs = np.asarray(
                    [h.dense for h in hits] if stored else vectors[1:], dtype=np.float32
                )
                picked = mmr(query, docs, plan.mmr_lambda, keep)
            except Exception as err:
                span.set_status(Status(StatusCode.ERROR, type(err).__name__))
                raise
        return [(hits[i], score) for i, score in picked]

    async def _remote(
        self, plan: RerankPlan, documents: list[str], keep: int, time_left: float | None
    ) -> list[tuple[int, float]]:
        api_key = "" if plan.operator else _caller_key.get()[0]
        if plan.operator and plan.key_env:
            api_key = os.environ.get(plan.key_env, "").strip()  # as an embeddings key
            register_secret(api_key)
        clients = self._operator_clients if plan.operator else self._caller_clients
        timeout = self._settings.rerank_timeout
        client, headers = authorized(
            clients.get(plan.base_url, connect_timeout=timeout, read_timeout=timeout), api_key
        )
        body: dict[str, Any] = {
            "query": plan.query,
            "documents": documents,
            "top_n": min(keep, len(documents)),
        }
        if plan.model:
            body["model"] = plan.model
        # RERANK_TIMEOUT, and the Search's deadline less the margin that lets the status
        # reach the caller (RERANK_TIMEOUT alone bounds a call without one).
        host = urlsplit(plan.base_url).hostname or "rerank"
        upstream = plan.provider if plan.operator else host
        attempts = Attempts(self._retry, time_left, timeout, upstream)
        deadline = attempts.deadline
        with upstream_span(
            service_tracer("retrieval"),
            "rerank",
            plan.model or "default",
            provider=plan.provider,
            base_url=plan.base_url,
        ) as span:
            while True:
                span.set_attribute(ATTEMPTS, attempts.begin())
                try:
                    payload = await self._exchange(plan, client, body, headers, deadline.expires_at)
                except (openai.OpenAIError, TimeoutError) as err:
                    refused = refusal(err)
                    if refused is not None:
                        raise url_not_allowed(
                            f"{FIELD}.base_url", refused.why, ALLOWLIST_SETTING
                        ) from None
                    redirect = is_redirect(err)
                    if redirect is not None:
                        raise _redirected(plan, redirect) from None
                    fault = problem(err)
                    if await attempts.retry(err, fault):
                        continue
                    limited = attempts.rate_limit(err)
                    if limited is not None:
                        raise attempts.rate_limited(
                            limited,
                            who=named(plan.provider, plan.operator),
                            what="search",
                            timeout_setting="GENSEARCH_RETRIEVAL_RERANK_TIMEOUT",
                            reason="RERANK_RATE_LIMITED",
                            metadata={"provider": plan.provider},
                        ) from None
                    late = attempts.out_of_time(err, named(plan.provider, plan.operator))
                    if late is not None:
                        raise late from None
                    raise Unavailable(
                        f"{named(plan.provider, plan.operator)} failed ({fault})",
                        reason="RERANK_UNAVAILABLE",
                        metadata={"provider": plan.provider},
                    ) from None
                except (ValueError, RecursionError):  # not JSON, or nested too deep
                    payload = None
                return parse_results(payload, len(documents), plan.provider, operator=plan.operator)

    async def _exchange(
        self,
        plan: RerankPlan,
        client: openai.AsyncOpenAI,
        body: dict[str, Any],
        headers: ExtraHeaders,
        expires_at: float,
    ) -> Any:
        """One attempt, in a slot at the provider (``upstream_slots``), given back when it
        ends: a retry's pause holds none. No slot by ``expires_at``: RESOURCE_EXHAUSTED."""
        slot = await self._slots.take(
            plan.base_url,
            expires_at,
            slots_busy(
                named(plan.provider, plan.operator),
                "RERANK_RATE_LIMITED",
                {"provider": plan.provider},
            ),
        )
        try:
            async with asyncio.timeout_at(expires_at):
                response = await client.post(
                    "/rerank", cast_to=httpx.Response, body=body, options={"headers": headers}
                )
                return response.json()
        finally:
            slot.release()


def _redirected(plan: RerankPlan, status: int) -> FailedPrecondition:
    """A redirect, never followed: the next address was not checked against the allowlist,
    and the documents and the key would go there."""
    said = (
        f"{named(plan.provider, plan.operator)} answered with a redirect (HTTP {status}), "
        "which is not followed: "
    )
    metadata = {"provider": plan.provider, "http_status": str(status)}
    if plan.operator:  # the operator's URL: nothing the caller can change
        return FailedPrecondition(
            said + "its base_url in GENSEARCH_RETRIEVAL_RERANK_PROVIDERS must name the final "
            "address",
            reason=UPSTREAM_REDIRECT,
            metadata=metadata,
        )
    return FailedPrecondition(
        said + f"{FIELD}.base_url must name the final address",
        field=f"{FIELD}.base_url",
        reason=UPSTREAM_REDIRECT,
        metadata=metadata,
    )


def page_too_deep(offset: int, limit: int, ceiling: int) -> InvalidArgument:
    """A reranked page past MAX_RERANK_CANDIDATES. It names the larger of offset and limit
    (offset on a tie), the one whose cut helps most, and says so; the metadata holds both.
    It named ``limit`` whatever the two were, so a client paging deep with a small limit
    was told to shrink the limit."""
    field = "offset" if offset >= limit else "limit"
    which = "as large as limit" if offset == limit else "the larger of the two"
    return InvalidArgument(
        f"offset + limit ({offset} + {limit}) must be at most {ceiling} with a rerank "
        f"stage ({MAX_CANDIDATES_SETTING}): lower {field}, {which}",
        field=field,
        reason="OUT_OF_RANGE",
        metadata={
            "offset": str(offset),
            "limit": str(limit),
            "max": str(ceiling),
            "setting": MAX_CANDIDATES_SETTING,
        },
    )


def named(provider: str, operator: bool) -> str:
    """Who reranks, as a message names it: an operator's provider by its name, as the
    generation service names its providers (``rerank provider 'cohere'``); a caller's URL by
    the field that set it. A caller's URL goes by the provider name "endpoint" (its span,
    its ErrorInfo ``provider``), which an operator's provider may bear too: both read "the
    rerank endpoint of 'endpoint'" before."""
    if operator:
        return f"rerank provider {provider!r}"
    return f"the rerank endpoint at {FIELD}.base_url"


def parse_results(
    payload: object, count: int, provider: str, *, operator: bool = True
) -> list[tuple[int, float]]:
    """``results`` as (index, score), best first; each index once, within the documents
    (``relevance_score``, or ``score`` as some servers name it)."""
    malformed = Unavailable(
        f"{named(provider, operator)} answered with a malformed body",
        reason="RERANK_UNAVAILABLE",
        metadata={"provider": provider},
    )
    # Cohere's shape ({"results": [...]}, vLLM, llama.cpp); a bare list of {index, score}
    # is what Text Embeddings Inference's own /rerank answers.
    results = payload.get("results") if isinstance(payload, dict) else payload
    if not isinstance(results, list):
        raise malformed
    ranked: dict[int, float] = {}
    for row in results:
        index = row.get("index") if isinstance(row, dict) else None
        score = row.get("relevance_score", row.get("score")) if isinstance(row, dict) else None
        if (
            not isinstance(index, int)
            or isinstance(index, bool)
            or not 0 <= index < count
            or not isinstance(score, int | float)
            # NaN and 1e309 parse as floats: NaN scores were returned and sorted on
            # (in no defined order), as were infinite ones.
            or not math.isfinite(score)
            or index in ranked
        ):
            raise malformed
        ranked[index] = float(score)
    return sorted(ranked.items(), key=lambda item: (-item[1], item[0]))


def mmr(query: Any, docs: Any, lam: float, keep: int) -> list[tuple[int, float]]:
    """Maximal marginal relevance over unit vectors: (index, marginal score) in pick order.
    Ties go to the earlier (better retrieved) hit."""
    relevance = docs @ query
    similarity = docs @ docs.T
    remaining = list(range(len(docs)))
    picked: list[tuple[int, float]] = []
    redundancy = np.zeros(len(docs), dtype=np.float32)
    while remaining and len(picked) < keep:
        scores = [lam * float(relevance[i]) - (1.0 - lam) * float(redundancy[i]) for i in remaining]
        best = max(range(len(remaining)), key=lambda k: (scores[k], -remaining[k]))
        index = remaining.pop(best)
        picked.append((index, scores[best]))
        redundancy = np.maximum(redundancy, similarity[index])
    return picked


def _stored_default(rerank: pb.Rerank, schema: Schema) -> bool:
    """Whether ``rerank`` calls the base URL of ``schema``'s default rerank, as stored (the
    collection's default applied here, or copied onto the search by the gateway)."""
    default = schema.collection.rerank if schema.collection.HasField("rerank") else None
    return default is not None and bool(rerank.base_url) and rerank.base_url == default.base_url
