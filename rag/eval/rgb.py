"""RGB's fixed passage sets (Chen et al. 2023, evalue.py's ``processdata``): what the model is shown in each test.

Pure functions of a question and a seed. RGB seeds Python's ``random`` with 2333 before each question and then
takes passages in the order the dataset lists them (the search results' order): the first positives and negatives
for noise robustness and negative rejection, one passage of each answer element's group first for information
integration (``*_int``), a seeded sample of the counterfactual passages for ``*_fact``; the set is then shuffled.
The same calls on ``random.Random(seed)`` are made here, so with seed 2333 the sets (and their order) are RGB's.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from rag.eval.metrics import EvalQuestion

__all__ = ["RGB_SEED", "counterfactual_passages", "negative_passages", "noise_count", "noise_passages"]

#: The seed RGB's evalue.py sets before each question.
RGB_SEED = 2333


def noise_count(ratio: float, count: int = 5) -> int:
    """Negatives among ``count`` passages at noise ``ratio``: ``round(count * ratio)``. (RGB's code takes the
    ceiling of the float product: the same for 0, 0.2, 0.4, 0.8 and 1, but 4 of 5 at 0.6, where 5 * 0.6 is
    3.0000000000000004.)"""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"noise ratio {ratio}: give a number from 0 to 1")
    return round(count * ratio)


def _one_per_group(groups: Sequence[Sequence[str]], wanted: int, rng: random.Random) -> list[str]:
    """RGB's integration set: each group shuffled, its first passage taken (every group, however few are wanted),
    then the groups' next passages in turn up to ``wanted``."""
    shuffled = []
    for group in groups:
        passages = list(group)
        rng.shuffle(passages)
        shuffled.append(passages)
    chosen = [passages[0] for passages in shuffled if passages]
    depth = 1
    while len(chosen) < wanted and any(len(passages) > depth for passages in shuffled):
        for passages in shuffled:
            if len(passages) > depth and len(chosen) < wanted:
                chosen.append(passages[depth])
        depth += 1
    return chosen


def noise_passages(question: EvalQuestion, ratio: float, *, seed: int = RGB_SEED, count: int = 5) -> list[str]:
    """``count`` passages at noise ``ratio`` (RGB's noise robustness): :func:`noise_count` negatives, the rest
    positives; fewer of one kind where the question has too few, more of the other (RGB's rule). ``*_int``: one
    positive of each answer element's group at least, negatives fill the rest. ``*_fact``: the true positives."""
    rng = random.Random(seed)
    negatives = noise_count(ratio, count)
    if question.grouped:
        chosen = _one_per_group(question.positives, count - negatives, rng)
        chosen += question.negatives[: max(0, count - len(chosen))]
    else:
        positives = question.positives[0] if question.positives else ()
        if negatives < count:  # RGB keeps a negatives-only set as it is, however few
            if negatives > len(question.negatives):
                negatives = len(question.negatives)
            elif count - negatives > len(positives):
                negatives = count - len(positives)
        chosen = [*positives[: count - negatives], *question.negatives[:negatives]]
    rng.shuffle(chosen)
    return chosen


def negative_passages(question: EvalQuestion, *, seed: int = RGB_SEED, count: int = 5) -> list[str]:
    """Negatives only (RGB's negative rejection, noise ratio 1): the first ``count``, in a seeded order."""
    chosen = list(question.negatives[:count])
    random.Random(seed).shuffle(chosen)
    return chosen


def counterfactual_passages(question: EvalQuestion, *, seed: int = RGB_SEED, count: int = 5) -> list[str]:
    """RGB's counterfactual robustness (``*_fact``, noise 0): a seeded sample of up to ``count`` of the positives,
    each given as its counterfactual version (``positive_wrong``), in a seeded order."""
    rng = random.Random(seed)
    indexes = list(range(min(len(question.counterfactuals), len(question.positives[0]) if question.positives else 0)))
    chosen = [question.counterfactuals[i] for i in rng.sample(indexes, min(len(indexes), count))]
    rng.shuffle(chosen)
    return chosen
