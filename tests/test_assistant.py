"""The answer service (rag/app/assistant.py) that every surface uses: the same events sync and async, one admission
for both, a stop that frees the slot, the model alone. The model is scripted (the service's logic is the subject;
the real models answer through it in tests/test_ui_handlers.py and tests/test_serve.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rag.app.assistant import AnswerEvent, AskOptions, Assistant
from rag.app.root import Components
from rag.errors import BusyError
from rag.settings import Settings
from tests.conftest import BUNDLED_EMBEDDER
from tests.fakes import ScriptedBackend, scripted_llm

POLICY = "# Leave\n\nEmployees get fifteen days of paid leave each year. Requests go to the manager two weeks ahead.\n"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Path:
    data = tmp_path_factory.mktemp("assistant-data")
    docs = tmp_path_factory.mktemp("assistant-docs")
    (docs / "leave.md").write_text(POLICY, encoding="utf-8")
    components = Components(Settings(data_dir=data, embedding_model=BUNDLED_EMBEDDER), use_llm=False)
    components.share_embedder(embedder)
    components.ingest_pipeline().run([docs])
    return data


def assistant_over(data: Path, embedder: Any, *, delay: float = 0.0, **fields: Any) -> Assistant:
    llm = scripted_llm(max_tokens=64, context_window=2048, delay=delay)
    components = Components(Settings(data_dir=data, embedding_model=BUNDLED_EMBEDDER), llm=llm)
    components.share_embedder(embedder)
    return Assistant(components, **fields)


def test_the_same_events_sync_and_async(data_dir: Path, embedder: Any) -> None:
    assistant = assistant_over(data_dir, embedder)
    sync = list(assistant.ask("How many days of leave?"))

    async def collect() -> list[AnswerEvent]:
        return [event async for event in assistant.astream("How many days of leave?")]

    for events in (sync, asyncio.run(collect())):
        kinds = [event.kind for event in events]
        assert kinds[0] == "passages" and kinds[-1] == "done" and "delta" in kinds
        assert set(kinds[1:-1]) <= {"reading", "delta"}
        passages, done = events[0], events[-1]
        assert passages.passages and passages.passages[0].source_abs.endswith("leave.md")
        assert [p.n for p in passages.passages] == [s["n"] for s in passages.sources]
        assert done.text == "".join(event.text for event in events if event.kind == "delta")
        assert "fifteen days" in done.text  # the scripted model quotes passage [1]
        assert any(source.get("cited") for source in done.sources)
        assert done.stats.answer_tokens > 0 and done.stats.prompt_tokens > 0 and done.stats.first_token_ms
    assert assistant.admission.running == 0


def test_one_admission_for_the_sync_and_the_async_surfaces(data_dir: Path, embedder: Any) -> None:
    # slow pieces: the answer is still being written when the UI closes it, however loaded the machine
    assistant = assistant_over(data_dir, embedder, delay=0.5, slots=1, queue=0)
    ui = assistant.ask("How many days of leave?")
    assert next(ui).kind == "passages"  # the UI's asker holds the only slot
    assert assistant.admission.running == 1

    async def from_the_server() -> None:
        async for _ in assistant.astream("How many days of leave?"):
            pass

    with pytest.raises(BusyError, match="busy"):  # no queue: the server's asker is refused at once
        asyncio.run(from_the_server())
    backend = assistant.components.llm().client  # type: ignore[union-attr]
    assert isinstance(backend, ScriptedBackend)
    deadline = time.monotonic() + 30  # the UI's answer is being written (a loaded machine reads the prompt slowly)
    while not backend.prompts and time.monotonic() < deadline:
        time.sleep(0.02)
    assert backend.prompts
    ui.close()  # a stop button: the slot comes back, the generation stops
    deadline = time.monotonic() + 5
    while assistant.admission.running and time.monotonic() < deadline:
        time.sleep(0.02)
    assert assistant.admission.running == 0
    deadline = time.monotonic() + 5  # the worker thread records its end after the slot is back (later under load)
    while not backend.finishes and time.monotonic() < deadline:
        time.sleep(0.02)
    assert backend.finishes[-1:] == ["cancelled"]
    asyncio.run(from_the_server())  # and the next one is served


def test_askers_in_threads_wait_their_turn(data_dir: Path, embedder: Any) -> None:
    assistant = assistant_over(data_dir, embedder, delay=0.01)
    most = 0
    lock = threading.Lock()
    answers: list[str] = []

    def ask() -> None:
        nonlocal most
        for event in assistant.ask("How many days of leave?"):
            with lock:
                most = max(most, assistant.admission.running)
            if event.kind == "done":
                answers.append(event.text)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == 3 and most == 1 and assistant.admission.running == 0


def test_the_model_alone_answers_the_conversation(data_dir: Path, embedder: Any) -> None:
    assistant = assistant_over(data_dir, embedder)
    options = AskOptions(use_documents=False, max_tokens=8)
    events = list(assistant.ask("Say hello.", [("user", "Hi"), ("assistant", "Hello!")], options, system="Be brief."))
    assert events[0].kind == "passages" and events[0].sources == [] and events[0].passages == []
    done = events[-1]
    assert done.kind == "done" and done.text and done.stats.answer_tokens <= 8 and done.stats.prompt_tokens > 0
    backend = assistant.components.llm().client  # type: ignore[union-attr]
    assert "Be brief." in backend.prompts[-1] and "Hello!" in backend.prompts[-1]
