"""The rerank stage with a real cross-encoder: a tiny BERT with random weights, built here (no cross-encoder ships in
a package; see ../shared/ENVIRONMENT.md), run by sentence-transformers in process, and the same model behind a rerank
server in both shapes servers speak (text-embeddings-inference's ``/rerank``; ``/v1/rerank`` of vLLM, Jina,
infinity, llama.cpp). Random weights make the order arbitrary but fixed: each test asserts that the stage follows
the model's own scores, never what a trained model would prefer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document

from rag.app.root import Components
from rag.errors import ConfigError, RagError
from rag.models import resolve_snapshot
from rag.retrieval.rerankers import IdentityReranker, Reranker, RerankerSpec, make_reranker, register_reranker
from rag.retrieval.rerankers.cross_encoder import CrossEncoderReranker
from rag.retrieval.rerankers.registry import RERANKERS
from rag.retrieval.rerankers.server import RerankServerReranker
from rag.settings import Settings
from tests.conftest import BUNDLED_EMBEDDER, free_port

QUERY = "员工每年有几天年假？"
TEXTS = [
    "员工每年享有十五天带薪年假，需提前两周申请。",
    "长江全长约6300公里，是中国第一长河。",
    "大熊猫主要以竹子为食。",
    "Passwords must be at least 14 characters long.",
    "病假期间工资按基本工资的80%发放。",
]


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT sequence classifier (one label) with the bundled MiniLM's tokenizer: a real cross-encoder
    folder sentence-transformers loads like bge-reranker's."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_snapshot(BUNDLED_EMBEDDER, setting="test")))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=1, initializer_range=0.5,
    )  # type: ignore[call-arg]  # fmt: skip
    torch.manual_seed(7)
    folder = tmp_path_factory.mktemp("tiny-cross-encoder")
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_scores(tiny_cross_encoder: Path) -> list[float]:
    """The model's own scores of (QUERY, text), straight from sentence-transformers."""
    from sentence_transformers import CrossEncoder

    return [float(s) for s in CrossEncoder(str(tiny_cross_encoder)).predict([(QUERY, t) for t in TEXTS])]


def documents() -> list[Document]:
    return [
        Document(page_content=text, metadata={"chunk_id": f"c{i}", "score": 1.0 - i / 10}, id=f"c{i}")
        for i, text in enumerate(TEXTS)
    ]


# -- in process ------------------------------------------------------------------------------------------------------
def test_a_cross_encoder_orders_candidates_by_its_own_scores(
    tiny_cross_encoder: Path, model_scores: list[float]
) -> None:
    reranker = make_reranker(RerankerSpec(model=str(tiny_cross_encoder)))
    assert isinstance(reranker, CrossEncoderReranker) and reranker._client is None  # built, not loaded
    assert len(set(model_scores)) == len(TEXTS)  # distinct: the order below is the model's, not a tie-break
    assert reranker.score(QUERY, TEXTS) == pytest.approx(model_scores, abs=1e-6)
    reranked = reranker.rerank([QUERY], documents())
    expected = sorted(range(len(TEXTS)), key=lambda i: -model_scores[i])
    assert [d.id for d in reranked] == [f"c{i}" for i in expected]
    assert expected != list(range(len(TEXTS)))  # the stage changed retrieval's order
    for document in reranked:
        i = int(str(document.id)[1:])
        assert (
            document.metadata["rerank_score"] == document.metadata["score"] == pytest.approx(model_scores[i], abs=1e-5)
        )
        assert document.metadata["retrieval_score"] == pytest.approx(1.0 - i / 10)
    assert [d.id for d in reranker.rerank([QUERY], documents(), top_n=2)] == [f"c{i}" for i in expected[:2]]
    assert reranker.rerank([QUERY], []) == []
    assert [d.metadata["score"] for d in documents()] == [1.0, 0.9, 0.8, 0.7, 0.6]  # the inputs are not changed


def test_with_several_queries_a_candidate_counts_its_best_score(tiny_cross_encoder: Path) -> None:
    reranker = CrossEncoderReranker(str(tiny_cross_encoder))
    other = "长江有多长？"
    first, second = reranker.score(QUERY, TEXTS), reranker.score(other, TEXTS)
    best = [max(a, b) for a, b in zip(first, second, strict=True)]
    reranked = reranker.rerank([QUERY, other], documents())
    assert [d.metadata["rerank_score"] for d in reranked] == pytest.approx(sorted(best, reverse=True), abs=1e-5)


def test_the_identity_stage_and_the_registry() -> None:
    identity = make_reranker(RerankerSpec())
    assert isinstance(identity, IdentityReranker) and not identity.reorders
    assert identity.rerank([QUERY], documents(), top_n=3) == documents()[:3]
    assert isinstance(make_reranker(RerankerSpec(model="m", base_url="http://127.0.0.1:1/v1")), RerankServerReranker)
    with pytest.raises(ConfigError, match=r"RAG_RERANK_BACKEND='nope' is not a rerank backend.*cross-encoder"):
        make_reranker(RerankerSpec(), "nope")
    with pytest.raises(ConfigError, match="RAG_RERANK_MODEL"):
        make_reranker(RerankerSpec(), "cross-encoder")
    with pytest.raises(ConfigError, match="not a server address"):
        make_reranker(RerankerSpec(base_url="localhost:8080"))
    # a new backend is one registration, by object or by "module:function"
    register_reranker("reversed-test", "tests.test_rerank:_reversed")
    try:
        reranker = make_reranker(RerankerSpec(), "reversed-test")
        assert [d.id for d in reranker.rerank([QUERY], documents())] == ["c4", "c3", "c2", "c1", "c0"]
    finally:
        RERANKERS.unregister("reversed-test")


class _Reversed(Reranker):
    """Scores the later texts higher: a backend written by a user."""

    def score(self, query: str, texts: Any) -> list[float]:
        return [float(i) for i in range(len(texts))]


def _reversed(spec: RerankerSpec) -> _Reversed:
    return _Reversed()


# -- behind a rerank server --------------------------------------------------------------------------------------------
class _RerankHandler(BaseHTTPRequestHandler):
    """TEI's ``POST /rerank`` and the ``POST /v1/rerank`` shape, scored by the real tiny cross-encoder; answers 503 to
    the first request of each test (``busy``), and records the batch sizes it was sent."""

    model: CrossEncoderReranker
    busy = 0
    batches: list[int] = []  # noqa: RUF012 -- reset by each test

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if type(self).busy:
            type(self).busy -= 1
            return self._send(503, b"", {"Retry-After": "0"})
        if self.path == "/rerank":
            texts = body["texts"]
            scores = self.model.score(body["query"], texts)
            answer: Any = sorted(({"index": i, "score": s} for i, s in enumerate(scores)), key=lambda r: -r["score"])
        elif self.path == "/v1/rerank":
            texts = body["documents"]
            scores = self.model.score(body["query"], texts)
            results = [{"index": i, "relevance_score": s} for i, s in enumerate(scores)]
            answer = {"model": body.get("model"), "results": sorted(results, key=lambda r: -r["relevance_score"])}
        elif self.path == "/v1/broken/rerank":
            answer, texts = {"data": []}, []
        else:
            return self._send(404, b"not found", {})
        type(self).batches.append(len(texts))
        self._send(200, json.dumps(answer).encode(), {"Content-Type": "application/json"})

    def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(payload))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def rerank_server(tiny_cross_encoder: Path) -> Iterator[str]:
    _RerankHandler.model = CrossEncoderReranker(str(tiny_cross_encoder))
    _RerankHandler.busy, _RerankHandler.batches = 0, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RerankHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("path", ["", "/v1"], ids=["tei", "v1-rerank"])
def test_a_rerank_server_scores_like_the_model_in_batches_with_retries(
    rerank_server: str, path: str, model_scores: list[float]
) -> None:
    served = make_reranker(RerankerSpec(model="tiny", base_url=rerank_server + path))
    assert isinstance(served, RerankServerReranker) and served.openai_style == (path == "/v1")
    served.batch_size = 2
    _RerankHandler.busy = 1  # the first request is refused (overloaded) and retried
    assert served.score(QUERY, TEXTS) == pytest.approx(model_scores, abs=1e-6)  # answers out of order, put back
    assert _RerankHandler.batches == [2, 2, 1]
    local = CrossEncoderReranker(str(Path(_RerankHandler.model.model_name)))
    assert [d.id for d in served.rerank([QUERY], documents())] == [d.id for d in local.rerank([QUERY], documents())]


def test_a_rerank_server_that_is_down_or_answers_something_else_is_named(rerank_server: str) -> None:
    with pytest.raises(RagError, match=r"rerank server at http://127\.0\.0\.1:\d+/v1/broken answered something"):
        RerankServerReranker("tiny", rerank_server + "/v1/broken").score(QUERY, TEXTS)
    down = RerankServerReranker("tiny", f"http://127.0.0.1:{free_port()}/v1", retries=1)
    with pytest.raises(
        ConfigError, match=r"cannot reach the rerank server at http://127\.0\.0\.1:\d+/v1.*RAG_RERANK_BASE_URL"
    ):
        down.score(QUERY, TEXTS)


# -- as a stage of the chain -------------------------------------------------------------------------------------------
def test_the_chain_packs_evidence_in_the_rerankers_order(
    tmp_path: Path, embedder: Any, tiny_cross_encoder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(TEXTS * 2):  # ten files: more candidates than the reranker is given below
        (docs / f"note{i}.txt").write_text(f"{text} 第{i}号。", encoding="utf-8")
    plain_settings = Settings(data_dir=tmp_path / "data", embedding_model=BUNDLED_EMBEDDER)
    plain = Components(plain_settings, use_llm=False)
    plain.share_embedder(embedder)
    plain.ingest_pipeline().run([docs])
    monkeypatch.setenv("RAG_RERANK_MODEL", str(tiny_cross_encoder))
    monkeypatch.setenv("RAG_RERANK_CANDIDATES", "6")
    reranking = Components(Settings.load(data_dir=tmp_path / "data"), use_llm=False)
    reranking.share_embedder(embedder)
    retrieved = plain.chain().retrieve([QUERY], budget=4000, k=5)
    chain = reranking.chain()
    assert isinstance(chain.evidence.reranker, CrossEncoderReranker) and chain.evidence.rerank_candidates == 6
    ranked = chain.retrieve([QUERY], budget=4000, k=5)
    head = ranked[:6]
    # the head: retrieval's best six, ordered by the cross-encoder's scores; then the rest in retrieval's order
    assert {d.id for d in head} == {d.id for d in retrieved[:6]}
    scores = chain.evidence.reranker.score(QUERY, [d.page_content for d in head])
    assert scores == sorted(scores, reverse=True) and [d.metadata["rerank_score"] for d in head] == pytest.approx(
        scores, abs=1e-5
    )
    assert [d.id for d in head] != [d.id for d in retrieved[:6]]
    assert [d.id for d in ranked[6:]] == [d.id for d in retrieved[6:]]
    prepared = chain.prepare(QUERY)
    best = max(prepared.packed.passages, key=lambda p: p.score)
    assert best.chunk_id == head[0].id and best.score == pytest.approx(head[0].metadata["rerank_score"], abs=1e-5)
    # top-n keeps only the scored hits
    chain.evidence.rerank_top_n = 2
    assert [d.id for d in chain.retrieve([QUERY], budget=4000, k=5)] == [d.id for d in head[:2]]
