"""Condensing a follow-up question into a standalone search query, checked before use.

A weak model (the bundled SmolLM2-135M) often "rewrites" a follow-up into a copy of the
previous answer, so retrieval searches for the wrong thing. Every rewrite is therefore
checked (``check_rewrite``) and, when rejected, replaced by a deterministic query built
from the question and the last user turn (``fallback_query``). The result says which was
used and why (``Rewrite``), so the response and a trace can show it.

Words: lowercase runs of letters/digits (Unicode-aware, ``\\w`` minus ``_``) of the text in
Unicode NFKC, so a word is the same whatever form it was typed in (precomposed or decomposed
accents, full-width letters, ligatures), as in retrieval's keyword search. Content words
are words of two or more characters that are not in ``STOPWORDS``.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb

from services.gateway.conversation import (
    SYSTEM,
    USER,
    Turn,
    clean_rewrite,
    rewrite_messages,
)

ASSISTANT = gen_pb.ROLE_ASSISTANT

# A small, deliberately short English list: function words, question words and the
# pronouns a follow-up uses to point back ("it", "those"). Anything longer starts eating
# words that carry meaning in a technical corpus ("return", "first", "case"...).
_STOPWORD_LIST = """
    a an the and or but nor so of to in on at by for with from into onto about as than then
    is are was were be been being am do does did done doing have has had having can could
    will would shall should may might must
    i me my we us our you your he him his she her it its they them their this that these
    those there here what which who whom whose when where why how
    not no yes if else also just only very too more most much many some any all each both
    one ones other such own same again further once out up down off over under
    tell explain show give please know like want need let get make
"""
STOPWORDS = frozenset(_STOPWORD_LIST.split())

_WORD = re.compile(r"[^\W_]+")
# A citation marker, as answers carry them (citations.py's form).
_MARKER = re.compile(r"\[\s*\d+\s*(?:[,;]\s*\d+\s*)*\]")

# How much longer than "question + last user question" a rewrite may be, in words: twice
# their length plus room to name what a pronoun pointed at. A copied answer is longer.
MAX_GROWTH = 2.0
MAX_EXTRA_WORDS = 8
# Near-copy of an earlier answer: Jaccard similarity of the word sets at or above this,
# or a long rewrite (at least COPY_MIN_WORDS distinct words) whose words nearly all
# (COPY_CONTAINMENT) come from one answer. A short query naming the answer's subject
# ("when was dune written") is neither.
COPY_JACCARD = 0.6
COPY_CONTAINMENT = 0.9
COPY_MIN_WORDS = 8
# Those two miss a short copy: "The answer is Dune." out of a three-line answer shares
# 4 of its 7 words and is under COPY_MIN_WORDS. So a rewrite is also answer text, whatever
# its length, when its words are one line or sentence of an earlier answer, or a run of
# consecutive words making most (COPY_JACCARD) of one and carrying a function word (a
# stopword or a one-letter word): copied prose brings its "the/is/a" along. A query naming
# the answer's subject ("sandworms", "desert planet Arrakis") or repeating a phrase of a
# longer sentence ("close a file in Python" out of "You can close a file in Python with
# f.close().") is what a good rewrite looks like, and passes.
_PASSAGE_BREAK = re.compile(r"\n|(?<=[.!?])\s+")
# Providers whose models get the few-shot prompt: the bundled llama.cpp server.
SMALL_MODEL_PROVIDERS = frozenset({"local"})
# ... and models known to be small wherever they are served (name contains one of these).
SMALL_MODEL_NAMES = ("smollm",)


class Method(enum.Enum):
    """How the retrieval query was obtained (mirrors gateway.v1.RewriteMethod)."""

    UNCHANGED = "UNCHANGED"  # no history, or rewriting off: the question as asked
    MODEL = "MODEL"  # the model's rewrite passed every check
    FALLBACK = "FALLBACK"  # the deterministic query; ``rejection`` says why


class Rejection(enum.Enum):
    """Why a model rewrite was not used (mirrors gateway.v1.RewriteRejection)."""

    EMPTY = "EMPTY"
    TOO_LONG = "TOO_LONG"
    COPIES_ANSWER = "COPIES_ANSWER"
    NO_SHARED_WORDS = "NO_SHARED_WORDS"
    MODEL_FAILED = "MODEL_FAILED"  # the rewrite call itself failed


@dataclass(frozen=True)
class Rewrite:
    """The query retrieval uses, how it was obtained, and the model's raw reply ("" when
    the model was not asked or failed). ``query`` is "" for UNCHANGED (the question)."""

    query: str
    method: Method
    raw: str = ""
    rejection: Rejection | None = None

    def search_text(self, question: str) -> str:
        return self.query or question


def words(text: str) -> list[str]:
    # NFKC first: a decomposed "e\u0301" is not a word character, so without it "café"
    # typed on macOS would be the word "cafe".
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    return [w.lower() for w in _WORD.findall(text)]


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if len(w) >= 2 and w not in STOPWORDS]


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def check_rewrite(rewrite: str, question: str, turns: Sequence[Turn]) -> Rejection | None:
    """None when ``rewrite`` may be used; otherwise the first rule it breaks."""
    got = words(rewrite)
    if not got:
        return Rejection.EMPTY
    last_question = turns[-1].question if turns else ""
    allowed = MAX_GROWTH * (len(words(question)) + len(words(last_question))) + MAX_EXTRA_WORDS
    if len(got) > allowed:
        return Rejection.TOO_LONG
    if _MARKER.search(rewrite):  # "[1]", "[1, 3]": a query never cites, only an answer does
        return Rejection.COPIES_ANSWER
    got_set = set(got)
    for turn in turns:
        answer = set(words(turn.answer))
        if not answer:
            continue
        if any(_copies_passage(got, passage) for passage in answer_passages(turn.answer)):
            return Rejection.COPIES_ANSWER
        if jaccard(got_set, answer) >= COPY_JACCARD:
            return Rejection.COPIES_ANSWER
        if (
            len(got_set) >= COPY_MIN_WORDS
            and len(got_set & answer) / len(got_set) >= COPY_CONTAINMENT
        ):
            return Rejection.COPIES_ANSWER
    known = set(content_words(question))
    for turn in turns:
        known.update(content_words(turn.question))
        known.update(content_words(turn.answer))
    if not known & set(content_words(rewrite)):
        return Rejection.NO_SHARED_WORDS
    return None


def answer_passages(answer: str) -> list[list[str]]:
    """The words of each line and sentence of ``answer``, citation markers left out (the
    model's copy of "Frank Herbert [2]." is "Frank Herbert")."""
    text = _MARKER.sub(" ", answer)
    return [found for part in _PASSAGE_BREAK.split(text) if (found := words(part))]


def _copies_passage(got: list[str], passage: list[str]) -> bool:
    """``got`` is the whole ``passage``, or a run of most of its consecutive words with a
    function word in it (see the comment on _PASSAGE_BREAK)."""
    if got == passage:
        return True
    if len(got) >= len(passage) or len(got) < COPY_JACCARD * len(passage):
        return False
    if all(len(w) >= 2 and w not in STOPWORDS for w in got):
        return False
    # Compare only where the first word matches: an answer may be a long single line.
    first, n = got[0], len(got)
    return any(
        passage[i : i + n] == got for i in range(len(passage) - n + 1) if passage[i] == first
    )


def fallback_query(question: str, turns: Sequence[Turn]) -> str:
    """The question, then the last user turn's content words it does not already have (in
    their order, once each): "How can those checks be switched off?" after "What does
    the assert statement do?" gives "How can those checks be switched off? assert
    statement"."""
    if not turns:
        return question
    have = set(content_words(question))
    extra: list[str] = []
    for word in content_words(turns[-1].question):
        if word not in have:
            have.add(word)
            extra.append(word)
    return f"{question} {' '.join(extra)}" if extra else question


def decide(raw: str, question: str, turns: Sequence[Turn]) -> Rewrite:
    """The model's reply ``raw`` cleaned and checked; the fallback when it fails a check."""
    cleaned = clean_rewrite(raw, "")
    rejection = check_rewrite(cleaned, question, turns)
    if rejection is None:
        return Rewrite(cleaned, Method.MODEL, raw)
    return Rewrite(fallback_query(question, turns), Method.FALLBACK, raw, rejection)


def failed(question: str, turns: Sequence[Turn]) -> Rewrite:
    """The rewrite call failed: the deterministic query, reported as such."""
    return Rewrite(fallback_query(question, turns), Method.FALLBACK, "", Rejection.MODEL_FAILED)


def unchanged() -> Rewrite:
    return Rewrite("", Method.UNCHANGED)


# -- prompts ------------------------------------------------------------------------------

# Few-shot examples for small models: each resolves a pronoun of the follow-up from the
# previous question into a short keyword query, which a 135M model imitates far better
# than an instruction.
_EXAMPLES = (
    ("What is the capital of France?", "How many people live there?", "population of Paris France"),
    ("Who wrote Dune?", "What else did he write?", "other books by Frank Herbert"),
    ("How do I open a file in Python?", "And how do I close it?", "close a file in Python"),
)
SMALL_MODEL_SYSTEM_PROMPT = (
    "Rewrite the follow-up question as a short standalone search query. Reply with the query only."
)


def _small_model_exchange(previous: str, follow_up: str) -> str:
    return f"Previous question: {previous}\nFollow-up question: {follow_up}"


def small_model_messages(turns: Sequence[Turn], question: str) -> list[gen_pb.Message]:
    """Few-shot as a chat: the examples as user/assistant pairs, then the last question and
    the follow-up. No answer is shown: SmolLM2-135M copies whatever answer it sees (4 of 4
    follow-ups of the issue), while with the previous question alone its reply, query or
    not, starts with that question's subject (5 of 5 tried, see docs/gateway.md)."""
    messages = [gen_pb.Message(role=SYSTEM, content=SMALL_MODEL_SYSTEM_PROMPT)]
    for previous, follow_up, query in _EXAMPLES:
        asked = _small_model_exchange(previous, follow_up)
        messages.append(gen_pb.Message(role=USER, content=asked))
        messages.append(gen_pb.Message(role=ASSISTANT, content=query))
    messages.append(
        gen_pb.Message(role=USER, content=_small_model_exchange(turns[-1].question, question))
    )
    return messages


@dataclass(frozen=True)
class RewritePrompt:
    messages: list[gen_pb.Message]
    max_tokens: int


def is_small_model(provider: str, model: str) -> bool:
    return provider in SMALL_MODEL_PROVIDERS or any(
        name in model.lower() for name in SMALL_MODEL_NAMES
    )


def rewrite_prompt(
    provider: str, model: str, turns: Sequence[Turn], question: str
) -> RewritePrompt:
    """The few-shot prompt and a short output for the bundled small model; the general
    instruction with the whole transcript for others (a capable model resolves a
    reference from several turns back, which the small prompt leaves out)."""
    if is_small_model(provider, model):
        return RewritePrompt(small_model_messages(turns, question), 24)
    return RewritePrompt(rewrite_messages(turns, question), 64)


# -- the wire form ------------------------------------------------------------------------


_METHODS = {
    Method.UNCHANGED: gw_pb.REWRITE_METHOD_UNCHANGED,
    Method.MODEL: gw_pb.REWRITE_METHOD_MODEL,
    Method.FALLBACK: gw_pb.REWRITE_METHOD_FALLBACK,
}
_REJECTIONS = {
    Rejection.EMPTY: gw_pb.REWRITE_REJECTION_EMPTY,
    Rejection.TOO_LONG: gw_pb.REWRITE_REJECTION_TOO_LONG,
    Rejection.COPIES_ANSWER: gw_pb.REWRITE_REJECTION_COPIES_ANSWER,
    Rejection.NO_SHARED_WORDS: gw_pb.REWRITE_REJECTION_NO_SHARED_WORDS,
    Rejection.MODEL_FAILED: gw_pb.REWRITE_REJECTION_MODEL_FAILED,
}


def method_value(rewrite: Rewrite) -> gw_pb.RewriteMethod:
    return _METHODS[rewrite.method]


def rejection_value(rewrite: Rewrite) -> gw_pb.RewriteRejection:
    if rewrite.rejection is None:
        return gw_pb.REWRITE_REJECTION_UNSPECIFIED
    return _REJECTIONS[rewrite.rejection]
