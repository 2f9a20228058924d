"""The refusal decided at the answer's first token: a calibrated threshold instead of the model's argmax.

A small model given passages on the question's topic that do not hold its answer tends to answer from them anyway
(RGB's negative rejection): the refusal sentence its instructions name is often its second choice, not its first.
At the first generated step the backend reads the probability the model gives the refusal's first token; at or
above :attr:`RefusalGate.threshold` that token is forced and the model writes the refusal itself (greedy or
sampled, the rest is the model's). Below it nothing changes. The threshold is tuned on RGB's dev slices
(``docs/benchmarks.md``); without one the probability is only measured and reported (``refusal_probability`` in the
generation's info), which is what the tuning reads. Pure functions over logits, so every local backend applies the
same rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["RULED_OUT", "FirstStepGate", "RefusalGate", "first_tokens", "refusal_probability"]


@dataclass(frozen=True)
class RefusalGate:
    """What the backend needs to decide the refusal at the first token."""

    text: str
    """The refusal sentence the prompt's instructions name (its language's)."""
    threshold: float | None = None
    """Force the refusal when its first token gets at least this probability (None: only measure it)."""


def first_tokens(
    prompt_text: str, refusal: str, encode: Callable[[str], list[int]], decode: Callable[[int], bytes]
) -> list[int]:
    """The tokens that can start ``refusal`` right after ``prompt_text``, as the model's tokenizer cuts them: the
    sentence as written and after a space (SentencePiece models such as Mixtral start an answer with ``▁``). A token
    that is only the space is not one: its probability is every answer's that starts with a space."""
    base = encode(prompt_text)
    wanted = refusal.encode("utf-8")
    found: list[int] = []
    for text in (refusal, " " + refusal):
        ids = encode(prompt_text + text)
        shared = next((i for i, (a, b) in enumerate(zip(base, ids, strict=False)) if a != b), min(len(base), len(ids)))
        if shared >= len(ids) or ids[shared] in found:
            continue
        piece = decode(ids[shared]).strip()
        if piece and wanted.startswith(piece):
            found.append(ids[shared])
    return found


def refusal_probability(logits: np.ndarray, tokens: Sequence[int]) -> float:
    """The probability the softmax of ``logits`` gives the refusal's first tokens, together."""
    if not tokens:
        return 0.0
    shifted = np.asarray(logits, dtype=np.float64) - float(np.max(logits))
    weights = np.exp(shifted)
    return float(weights[list(tokens)].sum() / weights.sum())


#: The logit every other token gets when the refusal is forced: far below, not -inf, since a later processor may rule
#: the forced token out too, and a row of -inf has no distribution to sample from.
RULED_OUT = -1e30


class FirstStepGate:
    """One generation's decision, made at its first step: the refusal's probability read there and, at the
    threshold, the refusal's first token (the likelier of :func:`first_tokens`) the only one left. The backends
    adapt it to their logits processors; the later steps are the model's."""

    def __init__(self, tokens: Sequence[int], threshold: float | None) -> None:
        self.tokens = list(tokens)
        self.threshold = threshold
        self.probability: float | None = None
        self.forced = False

    def decide(self, logits: np.ndarray) -> int | None:
        """The token to force at this step, or None (always None after the first step)."""
        if self.probability is not None or not self.tokens:
            return None
        self.probability = refusal_probability(logits, self.tokens)
        if self.threshold is None or self.probability < self.threshold:
            return None
        self.forced = True
        return max(self.tokens, key=lambda token: float(logits[token]))

    def info(self) -> dict[str, Any]:
        """What the generation reports: the probability measured and whether the refusal was forced."""
        if self.probability is None:
            return {}
        return {"refusal_probability": self.probability, "refusal_forced": self.forced}
