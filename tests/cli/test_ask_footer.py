"""The answer footer of `gensearch ask` and the demo: how the search query was obtained
and how many sentences a cited source backs."""

from __future__ import annotations

from gensearch.client import types as t
from gensearch.gateway.v1 import gateway_service_pb2 as gpb

from services.cli.render import answer_footer


def test_footer_names_the_fallback_and_the_backed_sentences() -> None:
    reply = gpb.AskResponse(
        rewritten_query="How can those checks be switched off? assert statement",
        rewrite_method=gpb.REWRITE_METHOD_FALLBACK,
        rewrite_rejection=gpb.REWRITE_REJECTION_COPIES_ANSWER,
        sentences=[gpb.AnswerSentence(supported=True), gpb.AnswerSentence()],
    )
    facts = answer_footer(t.from_proto(t.Answer, reply))[1]
    assert (
        "searched for 'How can those checks be switched off? assert statement' "
        "(fallback: the model's rewrite copied an earlier answer)"
    ) in facts
    assert "1/2 sentences backed by a cited source" in facts


def test_footer_of_a_model_rewrite() -> None:
    reply = gpb.AskResponse(rewritten_query="q", rewrite_method=gpb.REWRITE_METHOD_MODEL)
    answer = t.from_proto(t.Answer, reply)
    assert "searched for 'q' (rewritten by the model)" in answer_footer(answer)[1]
