"""Keep unstructured's text partitioners offline.

unstructured 0.27 calls ``spacy.load("en_core_web_sm")`` inside every text partitioner and, when the model is
missing, downloads a wheel at run time (which fails without network). Its heuristics only need sentence
boundaries, so we hand it a blank multilingual pipeline with a rule-based sentencizer instead. This replaces the
private ``unstructured.nlp.tokenize._get_nlp``: the version is pinned in pyproject.toml and
``tests/test_load.py`` fails loudly if the hook disappears.
"""

from __future__ import annotations

import os
import threading
from typing import Any

_lock = threading.Lock()
_installed = False


def install_offline_nlp() -> None:
    """Point unstructured at a blank spaCy pipeline (idempotent, thread-safe)."""
    global _installed  # a process-wide patch of a third-party module is inherently global
    if _installed:
        return
    with _lock:
        if _installed:
            return
        os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
        import spacy
        import unstructured.nlp.tokenize as tokenize

        if not hasattr(tokenize, "_get_nlp"):
            raise RuntimeError(
                "unstructured changed: unstructured.nlp.tokenize._get_nlp is gone. "
                "Install the pinned version: pip install 'unstructured==0.27.35'"
            )
        nlp = spacy.blank("xx")
        nlp.add_pipe("sentencizer")

        def _blank_nlp() -> Any:
            return nlp

        tokenize._get_nlp = _blank_nlp  # type: ignore[assignment]
        _installed = True
