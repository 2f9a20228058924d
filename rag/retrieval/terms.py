"""The terms BM25 counts: how a text (a chunk, a question) becomes the words the lexical index matches.

Chinese runs go through jieba's search mode, everything else is split into lower-cased words; a chunk is indexed
as its tokens joined by spaces (:func:`index_body`), and a question asks for its tokens less the function words
that match nearly every passage (:func:`query_terms`). :data:`TOKENIZER_VERSION` names this tokenisation: an
index that records another one is refilled.
"""

from __future__ import annotations

import logging
import re
import threading

__all__ = ["STOPWORDS", "TOKENIZER_VERSION", "index_body", "query_terms", "tokenize"]

#: How BM25 bodies are tokenised, stored in the index: an index of another tokenisation is refilled from the store.
TOKENIZER_VERSION = "jieba-search-1"
#: Function words that match nearly every Chinese passage: they only slow the query down.
STOPWORDS = frozenset(
    "的 了 是 在 和 与 及 或 也 都 就 而 被 把 对 为 以 于 之 其 这 那 有 个 中 上 下 吗 呢 吧 啊 什么 哪 哪些 哪个 "
    "谁 多少 怎么 如何 为什么 a an the of to in on for and or is are was were be what which who how".split()
)

_WORD = re.compile(r"[\w\u3400-\u9fff]+", re.UNICODE)
_CJK = re.compile(r"[\u3400-\u9fff]")
_jieba_lock = threading.Lock()
_quiet_jieba: list[bool] = []


def tokenize(text: str) -> list[str]:
    """Lower-cased tokens: jieba's search-mode words for Chinese runs (大熊猫 -> 熊猫, 大熊猫), whole words else.

    Search mode also emits the shorter words inside long ones, so a question that says 熊猫 finds 大熊猫; on
    RGB zh_refine it lifts BM25's MRR@10 from 0.820 to 0.846 (docs/benchmarks.md).
    """
    import jieba

    if not _quiet_jieba:
        jieba.setLogLevel(logging.WARNING)  # it prints its dictionary loading to stderr otherwise
        _quiet_jieba.append(True)
    tokens: list[str] = []
    for run in _WORD.findall(text.lower()):
        if _CJK.search(run):
            with _jieba_lock:  # jieba's lazy dictionary load is not thread-safe
                pieces = jieba.lcut_for_search(run)
            tokens.extend(piece for piece in pieces if piece.strip())
        else:
            tokens.append(run)
    return tokens


def index_body(text: str) -> str:
    """What the index stores for a text: its tokens joined by spaces (the BM25 index splits on the spaces)."""
    return " ".join(tokenize(text))


def query_terms(query: str) -> list[str]:
    """The distinct terms a question asks the index for, in order: its tokens less :data:`STOPWORDS` (all of its
    tokens when nothing else is left, so a question made only of function words still finds something)."""
    tokens = tokenize(query)
    terms = list(dict.fromkeys(t for t in tokens if t not in STOPWORDS))
    return terms or list(dict.fromkeys(tokens))
