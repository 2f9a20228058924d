"""Finds the tests that run a real language model, and makes that model write something else.

What a model writes differs between CPUs and llama.cpp builds, so a test that asserts on generated text (its words,
its citations, its length or its stop) passes on one machine and fails on the next. Two environment variables turn
this module on, in the pytest process and, through ``sitecustomize`` in this folder, in every Python subprocess a
test starts (``rag serve``, ``rag ui``, llama.cpp's server):

``RAG_TEST_GENERATION_LOG=FILE``
    Every generation appends the node id of the test running at that moment to FILE (the test process keeps that
    id in the file named by ``RAG_TEST_CURRENT``, so a server started by an earlier test still names the right one).
``RAG_TEST_PERTURB_SEED=N``
    Generation no longer decodes greedily as the tests ask: it samples among the model's best tokens but never its
    first choice, and opens ``[n]`` citation markers more often (:data:`PERTURBED_SAMPLING`, :func:`_steer`), with a
    seed derived from N and the prompt (the same prompt is perturbed the same way, as one other CPU would answer it
    the same way twice). The model writes another text, cites or does not, and stops elsewhere; a test that still
    passes did not depend on what was written.

``.ci/run`` uses both: the README's test command logs the generating tests, then those tests run again perturbed.
Only llama.cpp (``llama_cpp.Llama.generate``) and transformers (``GenerationMixin.generate``) are patched: the two
engines that run models in this project. The patch is applied when those modules are imported, never earlier, so
a subprocess that never loads a model pays nothing.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.abc
import importlib.machinery
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOG_ENV = "RAG_TEST_GENERATION_LOG"
SEED_ENV = "RAG_TEST_PERTURB_SEED"
CURRENT_ENV = "RAG_TEST_CURRENT"
#: How a perturbed generation samples: nearly uniformly among the model's best tokens but its first choice (see
#: :func:`_steer`). Each pick is one the model itself ranked near the top, the kind of choice that flips between
#: CPUs when two tokens are close, so the text stays the model's own while its words, citations and stop change.
PERTURBED_SAMPLING: dict[str, Any] = {
    "temp": float(os.environ.get("RAG_TEST_PERTURB_TEMP", "10")),
    "top_k": int(os.environ.get("RAG_TEST_PERTURB_TOP_K", "3")),
    "top_p": 1.0,
    "min_p": 0.0,
}
#: Added to the logits of the tokens that open a citation marker (``[``): see :func:`_steer`.
CITATION_BIAS = float(os.environ.get("RAG_TEST_PERTURB_CITATION_BIAS", "14"))


#: Tokens written before the citation marker is made likelier.
_WORDS_BEFORE_MARKER = 4


def active() -> bool:
    return bool(os.environ.get(LOG_ENV) or os.environ.get(SEED_ENV))


def current_test() -> str:
    """The node id of the test running now in the pytest process ('' when unknown)."""
    current = os.environ.get(CURRENT_ENV)
    if current:
        try:
            return Path(current).read_text(encoding="utf-8").strip()
        except OSError:
            pass
    return os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]


def record_generation() -> None:
    """Append the running test's node id to the generation log (one line per generation; readers dedupe)."""
    log, test = os.environ.get(LOG_ENV), current_test()
    if log and test:
        with open(log, "a", encoding="utf-8") as handle:  # one short append: atomic enough across processes
            handle.write(test + "\n")


def perturbed_seed(prompt: object) -> int | None:
    """This prompt's seed, or None when perturbation is off: the same prompt is perturbed the same way (as one other
    CPU would answer it the same way twice), another prompt differently."""
    base = os.environ.get(SEED_ENV)
    if not base:
        return None
    digest = hashlib.sha256(f"{base}|{prompt}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _steer(llama: Any, prompt_length: int) -> Callable[[Any, Any], Any]:
    """A logits processor that moves a generation off the path greedy decoding takes: at every step the model's own
    first choice is ruled out (so every perturbed text differs from the greedy one, as it may from the first token
    on another CPU), and the tokens opening a ``[n]`` citation marker are made likelier (a small model rarely cites,
    and a test must hold whether the model cites, cites another passage, or cites none): the first marker only,
    closed once opened, so the answer cites one passage, as another CPU's answer might, not every passage at once."""

    def first_token(text: bytes) -> int | None:
        ids = llama.tokenize(text, add_bos=False, special=False)
        return ids[0] if ids else None

    opening = {token for text in (b"[", b" [") if (token := first_token(text)) is not None}
    digits = {token for n in range(10) if (token := first_token(str(n).encode())) is not None}
    closing = first_token(b"]")

    def steer(input_ids: Any, scores: Any) -> Any:
        scores = scores.copy()
        written = [int(token) for token in input_ids[prompt_length:]]
        if closing is not None and len(written) >= 2 and written[-1] in digits and written[-2] in opening | digits:
            # inside a marker ("[3"): close it, so the answer really cites a passage (its digit was not the model's
            # first choice: another passage than greedy decoding would cite)
            scores[closing] += 2 * CITATION_BIAS
            return scores
        scores[int(scores.argmax())] = -float("inf")
        # one marker made likelier, after a few words (as a model cites what it wrote, and not an answer that is
        # only a marker), not a flood of them citing everything
        if len(written) >= _WORDS_BEFORE_MARKER and not opening.intersection(written):
            scores[[token for token in opening if token < len(scores)]] += CITATION_BIAS
        return scores

    return steer


def _wrap_generate(owner: Any, perturb: Callable[[Any, tuple[Any, ...], dict[str, Any]], None]) -> None:
    """Replace ``owner.generate`` by one that logs the generation, lets ``perturb`` change its arguments (only when
    a seed is set), then generates. Patching twice (two imports of this module) changes nothing."""
    original = owner.generate
    if getattr(original, "_rag_perturbed", False):
        return

    @functools.wraps(original)
    def generate(self: Any, *args: Any, **kwargs: Any) -> Any:
        record_generation()
        perturb(self, args, kwargs)
        return original(self, *args, **kwargs)

    generate._rag_perturbed = True  # type: ignore[attr-defined]
    owner.generate = generate


def _perturb_llama_cpp(llama: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    tokens = args[0] if args else kwargs["tokens"]
    seed = perturbed_seed(list(tokens))
    # Not under a grammar (structured output): the grammar decides the shape, a grammar's only allowed token may be
    # the model's first choice, and any sampling rambles on inside a JSON string past LangChain's standard tests'
    # max_tokens, which we cannot change (seen with temperature 1).
    if seed is not None and kwargs.get("grammar") is None:
        kwargs.update(PERTURBED_SAMPLING)
        kwargs["logits_processor"] = [*(kwargs.get("logits_processor") or []), _steer(llama, len(tokens))]
        llama.set_seed(seed)  # the sampler llama.cpp builds next draws from this seed


def _perturb_transformers(_model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    inputs: Any = kwargs.get("input_ids", args[0] if args else None)
    seed = perturbed_seed(inputs.tolist() if hasattr(inputs, "tolist") else inputs)
    if seed is not None:
        import torch

        kwargs.update(do_sample=True, temperature=PERTURBED_SAMPLING["temp"], top_k=PERTURBED_SAMPLING["top_k"],
                      top_p=1.0)  # fmt: skip
        torch.manual_seed(seed)


#: Module name -> the patch applied right after that module is executed.
PATCHES: dict[str, Callable[[types.ModuleType], None]] = {
    "llama_cpp.llama": lambda module: _wrap_generate(module.Llama, _perturb_llama_cpp),
    "transformers.generation.utils": lambda module: _wrap_generate(module.GenerationMixin, _perturb_transformers),
}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Finds the patched modules through the other finders and patches each as soon as it has executed."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        patch = PATCHES.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                loader = spec.loader
                original_exec = loader.exec_module

                def exec_module(module: types.ModuleType, _exec: Any = original_exec, _patch: Any = patch) -> None:
                    _exec(module)
                    _patch(module)

                loader.exec_module = exec_module  # type: ignore[method-assign]
                return spec
        return None


def install() -> None:
    """Patch the model engines (now if already imported, else when they are): only when the variables are set."""
    if not active():
        return
    for name, patch in PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
    if not any(isinstance(finder, _PatchAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchAfterImport())
