"""The torture suite, crowds: 20 sessions asking at once through the real Gradio app (real queue, real Chroma and
BM25, the bundled embedder), each its own ``gradio_client.Client``, while another session uploads a file.

The model is scripted (it quotes the first sentence of passage [1], citing it), so every answer is known: each
session asks about its own document, and its answer and its source list must name that document and no other.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from rag.settings import Settings
from tests.conftest import BUNDLED_EMBEDDER, free_port
from tests.fakes import ScriptedBackend, quote_first_passage
from tests.test_faults import components

SESSIONS = 20
#: One made-up word per document: nothing else in the collection shares it, so retrieval must find that document.
TOPICS = [
    "quokka", "narwhal", "axolotl", "pangolin", "capybara", "okapi", "tapir", "wombat", "ibis", "kinkajou",
    "fossa", "dugong", "gharial", "jerboa", "numbat", "saola", "tarsier", "vaquita", "zorilla", "binturong",
]  # fmt: skip
LATE = "marmoset"  # uploaded while the others ask


def document(topic: str) -> str:
    return f"The {topic} enclosure opens at {len(topic)} o'clock. Keepers feed the {topic} at noon.\n"


@pytest.fixture(scope="module")
def served(embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The UI on a free port of 127.0.0.1 over a collection of the 20 documents, as ``rag ui`` serves it."""
    from ui.app import build_ui, create_handlers, launch

    root = tmp_path_factory.mktemp("crowd")
    folder, data = root / "docs", root / "data"
    folder.mkdir()
    for topic in TOPICS:
        (folder / f"{topic}.txt").write_text(document(topic), encoding="utf-8")
    assert not components(data, embedder).ingest_pipeline().run([folder]).files_failed
    settings = Settings(data_dir=data, embedding_model=BUNDLED_EMBEDDER, llm_n_ctx=2048, llm_max_tokens=64)
    backend = ScriptedBackend(quote_first_passage, context_window=2048, delay=0.005)  # a model that streams
    from rag.llm.adapter import MixtralInstructLLM

    handlers = create_handlers(settings, llm=MixtralInstructLLM(client=backend, model="scripted", max_tokens=64))
    handlers.assistant.components.share_embedder(embedder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(data / "uploads" / ".incoming"))  # as `rag ui` does
        demo = build_ui(handlers)
        port = free_port()
        launch(demo, settings, port=port, prevent_thread_lock=True, quiet=True)
        try:
            yield {"url": f"http://127.0.0.1:{port}/", "root": root, "backend": backend}
        finally:
            demo.close()


def answer_text(chat: Any) -> str:
    """The last assistant message of the Chatbot's value (Gradio 6 gives its content as text parts)."""
    content = [message for message in chat if message["role"] == "assistant"][-1]["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def ask(url: str, topic: str, start: threading.Barrier) -> dict[str, Any]:
    from gradio_client import Client

    client = Client(url, verbose=False)  # its own session: its own gr.State
    start.wait()  # every session asks at the same moment
    began = time.monotonic()
    chat, sources, _figures, _box = client.predict(f"When does the {topic} enclosure open?", api_name="/respond")
    return {"topic": topic, "answer": answer_text(chat), "sources": sources, "seconds": time.monotonic() - began}


@pytest.mark.slow
def test_twenty_sessions_at_once_each_get_their_own_answer_and_sources(served: dict[str, Any]) -> None:
    from gradio_client import Client, handle_file

    late = served["root"] / "upload" / f"{LATE}.txt"
    late.parent.mkdir()
    late.write_text(document(LATE), encoding="utf-8")
    uploader = Client(served["url"], verbose=False)
    start = threading.Barrier(SESSIONS + 1)
    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=SESSIONS + 1) as pool:
        asked = [pool.submit(ask, served["url"], topic, start) for topic in TOPICS]
        start.wait()
        uploaded = pool.submit(uploader.predict, [handle_file(str(late))], api_name="/ingest_uploads")
        results = [future.result(timeout=240) for future in asked]
        upload_report = uploaded.result(timeout=240)
    wall = time.monotonic() - began

    assert "1 added" in upload_report and "0 failed" in upload_report, upload_report
    for result in results:
        topic, answer = result["topic"], result["answer"]
        # the answer is the first sentence of its own document, cited: no other session's text
        # (the UI links the marker to its source card)
        cited = '<a href="#rag-source-1" class="rag-cite">[1]</a>'
        assert answer == f"The {topic} enclosure opens at {len(topic)} o'clock. {cited}", (topic, answer)
        first = re.search(r"\[1\] ([^<]+)</b>", result["sources"])
        assert first is not None and first.group(1) == f"{topic}.txt", (topic, result["sources"][:300])
        others = [t for t in TOPICS if t != topic and t in answer]
        assert not others, (topic, others)
    assert len(served["backend"].prompts) >= SESSIONS  # every session reached the (one, queued) model
    # the upload landed while they asked: a new session finds it
    after = ask(served["url"], LATE, threading.Barrier(1))
    assert after["answer"].startswith(f"The {LATE} enclosure"), after
    slowest = max(result["seconds"] for result in results)
    print(f"\n{SESSIONS} sessions + 1 upload: {wall:.1f} s wall, slowest answer {slowest:.1f} s")
