"""Gateway-specific metrics, beside the chassis' per-RPC ones."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

GENERATIONS = Counter(
    "gensearch_gateway_generations_total",
    "Generation outcomes of generative searches, per hit or grouped, by status code.",
    ["kind", "code"],
)
FANOUT_SIZE = Histogram(
    "gensearch_gateway_fanout_hits",
    "Per-hit generation calls of one generative search.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200),
)
TRIMMED = Counter(
    "gensearch_gateway_ask_trimmed_total",
    "What the context-window guard removed from Ask prompts.",
    ["what"],
)
CACHE_LOOKUPS = Counter(
    "gensearch_gateway_cache_lookups_total",
    "Answer cache lookups (exact: per hit or grouped; semantic: per Ask), by outcome "
    "(hit, miss, error; semantic also stale: passed over, a source deleted or changed).",
    ["cache", "outcome"],
)
SEMANTIC_STORES = Counter(
    "gensearch_gateway_semantic_cache_stores_total",
    "Semantic answer cache stores, made after the answer: stored, failed, refused (the "
    "entry too large for retrieval), too_large (not sent: the answer past the gateway's "
    "semantic_cache_max_answer_bytes), gone (its collection deleted, or made again, "
    "meanwhile), dropped (queue full or stopping).",
    ["outcome"],
)
SUMMARY_FOLDS = Counter(
    "gensearch_gateway_summary_folds_total",
    "Rolling-summary folds: folded, conflict (another fold won the compare-and-set), "
    "failed, dropped (queue full or stopping), skipped (the owner's memory is full: no "
    "LLM call made; or the conversation was deleted or expired, or its summary turned "
    "off, while it ran).",
    ["outcome"],
)
SUMMARY_READ_FALLBACKS = Counter(
    "gensearch_gateway_summary_read_fallbacks_total",
    "Rolling-summary folds that read their turns newest first from the newest turn, as "
    "before ListInteractions' oldest_first and after_interaction_id, because memory's "
    "replicas are of two versions (mid-upgrade): order_ignored (memory listed newest "
    "first though asked oldest first), page_token_refused (a replica refused another "
    "version's page token). Counted beside the fold's outcome.",
    ["reason"],
)
SUMMARY_TOKENS = Counter(
    "gensearch_gateway_summary_tokens_total",
    "LLM tokens spent on rolling summaries, prompt and completion.",
    ["kind"],
)
SUMMARY_QUEUE = Gauge(
    "gensearch_gateway_summary_queue", "Rolling-summary folds waiting in this replica."
)
GENERATION_WAITING = Gauge(
    "gensearch_gateway_generation_waiting",
    "Generation calls waiting for a slot under GENSEARCH_GATEWAY_GENERATION_MAX_IN_FLIGHT.",
)
GENERATION_REFUSED = Counter(
    "gensearch_gateway_generation_refused_total",
    "Generation calls the generation service refused before running them, by reason "
    "(TOO_MANY_CONCURRENT_RPCS: its process was full; TOO_MANY_CONCURRENT_STREAMS: the "
    "gateway's connection to it was; SHUTTING_DOWN: its replica was stopping and ended "
    "the call before anything of it was sent on, sent again once); each is sent again "
    "while its deadline allows.",
    ["reason"],
)
