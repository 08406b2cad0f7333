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
    max_chars: int = 0,
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
        max_chars=max_chars,
    )


def fold_after_turn(
    summarizer: Summarizer,
    history: History,
    turns: Sequence[Turn],
    prompt: AskPrompt,
    stored: tuple[str, str, str],
    *,
    conversation_id: str,
    caller: Caller,
    options: Options,
    window: int,
    tokenizer: Tokenizer,
    interaction_size: int,
    summary_tokens: int,
) -> bool:
    """Queues a fold when turns wait for the summary, or will at the next turn: some were
    left out of this prompt (budget or interaction_size), lie beyond max_turns, or the
    turn just stored (``stored``: its id, question and answer) will push the oldest one
    sent out of the next prompt. ``summary_tokens``: room kept for the summary."""
    conversation = history.conversation
    new_id, question, answer = stored
    if conversation is None or not history.summary_on or not new_id:
        return False
    keep_tokens = prompt.history_budget - summary_tokens
    new_turn = estimate_tokens(question) + estimate_tokens(answer) + 8
    limit = conversation.max_turns
    due = (
        prompt.turns_used < len(turns)
        or history.older_unsummarised
        or (limit > 0 and conversation.interaction_count + 1 > limit)
        or prompt.history_tokens + new_turn > keep_tokens
    )
    if not due:
        return False
    return summarizer.submit(
        FoldJob(
            caller,
            conversation_id,
            keep_turns=interaction_size,
            keep_tokens=max(0, keep_tokens),
            options=options,
            window=window,
            tokenizer=tokenizer,
        )
    )
