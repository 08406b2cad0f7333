"""The one estimate of a text's length in tokens, for when no tokenizer of the model is at
hand (generation's usage when a provider reports none, the gateway's prompt budget for a
model without a known tokenizer).

About 3.5 characters a token: English prose with BPE tokenizers averages ~4, code and
other languages fewer, so 3.5 overestimates slightly; a budget counted with it keeps a
prompt within the model's window rather than over it.
"""

from __future__ import annotations


def estimate_tokens(text: str) -> int:
    """⌈len / 3.5⌉ in integers (0 for the empty text)."""
    return (len(text) * 2 + 6) // 7
