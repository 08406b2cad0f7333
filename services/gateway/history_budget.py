"""History by token budget for Ask: the prompt fitted with the model's tokenizer, the
summary placed before the recent turns, and the fold of what the budget left out.

The history sent with a turn is the newest turns (at most ``interaction_size``, newer
than what the summary covers) that fit the budget: the model's context window minus the
answer reserve, the system prompt and the question with its retrieved context
(``prompting.fit_prompt``). Turns older than the oldest one sent, or beyond the
conversation's ``max_turns``, are folded into the rolling summary after the turn is
stored (``summarizer``).
"""

from __future__ import annotations

from collections.abc import Sequence

from services.common.tokens import estimate_tokens
from services.gateway.clients import Caller
from services.gateway.conversation import Turn
from services.gateway.generator import Options
from services.gateway.prompting import AskPrompt, ContextHit, fit_prompt, prompt_texts
from services.gateway.summarizer import FoldJob, Summarizer
from services.gateway.tokens import Tokenizer
from services.gateway.turns import History


async def fit(
    tokenizer: Tokenizer,
    *,
    system_prompt: str,
    summary: str,
    turns: Sequence[Turn],
    hits: Sequence[ContextHit],
    context_fields: Sequence[str],
    user_instructions: str,
    question: str,
    context_window: int,
    answer_tokens: int,
) -> AskPrompt:
    """``fit_prompt`` with every piece counted by ``tokenizer`` in one batch."""
    texts = list(
        dict.fromkeys(
            prompt_texts(
                system_prompt=system_prompt,
                summary=summary,
                turns=turns,
                hits=hits,
                context_fields=context_fields,
                user_instructions=user_instructions,
                question=question,
            )
        )
    )
    counts = dict(zip(texts, await tokenizer.count(texts), strict=True))
    return fit_prompt(
        system_prompt=system_prompt,
        summary=summary,
        turns=turns,
        hits=hits,
        context_fields=context_fields,
        user_instructions=user_instructions,
        question=question,
        context_window=context_window,
        answer_tokens=answer_tokens,
        count=lambda text: counts[text] if text in counts else estimate_tokens(text),
    )


def fold_after_turn(
    summarizer: Summarizer,
    history: History,
    turns: Sequence[Turn],
    prompt: AskPrompt,
    new_interaction_id: str,
    *,
    conversation_id: str,
    caller: Caller,
    options: Options,
    window: int,
    tokenizer: Tokenizer,
) -> bool:
    """Queues a fold when turns wait for the summary: some were left out of this prompt
    (budget or interaction_size) or lie beyond max_turns. ``turns`` are the prompt's
    candidates, oldest first; the newest ``prompt.turns_used`` of them were sent."""
    conversation = history.conversation
    if conversation is None or not history.summary_on or not new_interaction_id:
        return False
    # Fold everything strictly older than keep_from.
    keep_from = turns[len(turns) - prompt.turns_used].interaction_id if prompt.turns_used else ""
    keep_from = keep_from or new_interaction_id
    due = prompt.turns_used < len(turns) or history.older_unsummarised
    newest_first = [new_interaction_id] + [t.interaction_id for t in reversed(turns)]
    limit = conversation.max_turns
    if limit and conversation.interaction_count + 1 > limit:
        due = True
        if limit <= len(newest_first):
            keep_from = min(keep_from, newest_first[limit - 1])
    if not due:
        return False
    return summarizer.submit(
        FoldJob(caller, conversation_id, keep_from, options, window, tokenizer)
    )
