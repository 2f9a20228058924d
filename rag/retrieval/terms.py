"""The terms BM25 counts: how a text (a chunk, a question) becomes the words the lexical index matches.

Chinese runs go through jieba's search mode, everything else is split into lower-cased words; a chunk is indexed
as its tokens joined by spaces (:func:`index_body`), and a question asks for its tokens less the function words
that match nearly every passage (:func:`query_terms`). :data:`TOKENIZER_VERSION` names this tokenisation: an
index that records another one is refilled.

jieba runs as jieba-rs (``rjieba``): the same dictionary and HMM give the same words, 9-16x faster than the Python
jieba, whose search mode was more than half of ingest's work besides the encoder.
"""

from __future__ import annotations

import re

__all__ = ["STOPWORDS", "TOKENIZER_VERSION", "index_body", "query_terms", "tokenize"]

#: How BM25 bodies are tokenised, stored in the index: an index of another tokenisation is refilled from the store.
#: 2: jieba-rs, which keeps a word with an underscore whole ("formula_9") and a run of CJK extension A characters
#: together, where the Python jieba split them (10 of 94,674 runs of the eval corpora differ; the rest are equal).
TOKENIZER_VERSION = "jieba-search-2"
#: Function words that match nearly every Chinese passage: they only slow the query down.
STOPWORDS = frozenset(
    "的 了 是 在 和 与 及 或 也 都 就 而 被 把 对 为 以 于 之 其 这 那 有 个 中 上 下 吗 呢 吧 啊 什么 哪 哪些 哪个 "
    "谁 多少 怎么 如何 为什么 a an the of to in on for and or is are was were be what which who how".split()
)

_WORD = re.compile(r"[\w\u3400-\u9fff]+", re.UNICODE)
_CJK = re.compile(r"[\u3400-\u9fff]")


def tokenize(text: str) -> list[str]:
    """Lower-cased tokens: jieba's search-mode words for Chinese runs (大熊猫 -> 熊猫, 大熊猫), whole words else.

    Search mode also emits the shorter words inside long ones, so a question that says 熊猫 finds 大熊猫; on
    RGB zh_refine it lifts BM25's MRR@10 from 0.820 to 0.846 (docs/benchmarks.md).
    """
    import rjieba  # its dictionary loads once, thread-safely, on the first call

    tokens: list[str] = []
    for run in _WORD.findall(text.lower()):
        if _CJK.search(run):
            tokens.extend(piece for piece in rjieba.cut_for_search(run, True) if piece.strip())
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
