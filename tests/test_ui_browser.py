"""The browser UI in a real headless Chromium (Debian's ``chromium``, driven by playwright), served in-process on
127.0.0.1 with the real chain: bundled embedder, real Chroma and BM25, SmolLM2 through llama.cpp.

Without Chromium these tests are skipped, unless ``RAG_REQUIRE_BROWSER=1`` (CI) makes that a failure. A screenshot
of the answered page is written to ``test-artifacts/ui-answer.png``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rag.settings import Settings
from tests.conftest import BUNDLED_EMBEDDER, free_port
from tests.fakes import scripted_llm

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
TIMEOUT_MS = 120_000
HANDBOOK = (
    "# Employee handbook\n\n## Remote work\n\nEmployees may work remotely up to three days per week. Managers "
    "approve remote days in advance.\n\n## Leave\n\nEmployees get 25 days of paid leave per year.\n"
)
# Records every text the last answer bubble shows while it streams (a poll could miss short-lived states).
WATCH_ANSWER = """() => {
  window.__seen = [];
  const chat = document.querySelector('#chatbot');
  const record = () => {
    const bots = chat.querySelectorAll('[data-testid="bot"]');
    if (bots.length) window.__seen.push(bots[bots.length - 1].innerText.trim());
  };
  new MutationObserver(record).observe(chat, {subtree: true, childList: true, characterData: true});
}"""


def chromium_executable() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if found is None:
        reason = "Chromium is not installed (apt-get install chromium)"
        if os.environ.get("RAG_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}, and RAG_REQUIRE_BROWSER=1 requires the browser tests")
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def served(embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The UI on a free port of 127.0.0.1 over an empty data dir, as ``rag ui`` starts it."""
    from ui.app import build_ui, create_handlers, launch

    root = tmp_path_factory.mktemp("ui-browser")
    data = root / "data"
    settings = Settings(
        data_dir=data,
        embedding_model=BUNDLED_EMBEDDER,
        llm_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        llm_n_ctx=2048,
        llm_max_tokens=48,
        llm_temperature=0.0,
        llm_seed=0,
        llm_n_threads=1,  # two threads on two busy cores wait on each other: one is steadier
        ui_max_upload_mb=1,
    )
    # The page is the subject, not the model: a scripted model quotes the first passage (SmolLM2's answers and
    # citations differ between CPUs; tests/llm and test_chain cover the real model path)
    llm = scripted_llm(max_tokens=48, context_window=2048, delay=0.03)
    handlers = create_handlers(settings, llm=llm)
    handlers.assistant.components.share_embedder(embedder)
    with pytest.MonkeyPatch.context() as patch:
        # as `rag ui` does: Gradio's own copies of uploads stay under the data dir too (read at each upload)
        patch.setenv("GRADIO_TEMP_DIR", str(data / "uploads" / ".incoming"))
        demo = build_ui(handlers)
        port = free_port()
        launch(demo, settings, port=port, prevent_thread_lock=True, quiet=True)
        try:
            yield {"url": f"http://127.0.0.1:{port}/", "root": root, "data": data, "handlers": handlers}
        finally:
            demo.close()


def headless_chromium() -> Iterator[Any]:
    """Debian's Chromium through playwright, closed at the end (a module fixture's body)."""
    from playwright.sync_api import sync_playwright

    executable = chromium_executable()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def browser(served: dict[str, Any]) -> Iterator[Any]:
    yield from headless_chromium()


def open_page(browser: Any, url: str, locale: str) -> Any:
    context = browser.new_context(locale=locale, viewport={"width": 1280, "height": 1100})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#question textarea")
    return page


def upload(page: Any, files: list[Any]) -> str:
    """Upload ``files`` (paths or playwright payloads) on the Documents tab, ingest, return the report text."""
    page.get_by_role("tab").nth(1).click()
    page.locator("#upload input[type=file]").set_input_files(files)
    page.wait_for_function(
        "n => document.querySelectorAll('#upload .file-name, #upload tr.file, #upload tbody tr').length >= n",
        arg=len(files),
    )
    before = page.locator("#ingest-result").inner_text()
    page.locator("#ingest").click()
    page.wait_for_function(
        "before => { const t = document.querySelector('#ingest-result').innerText; "
        "return t !== before && /(ingested|已收录|Nothing|没有|Error|出错)/i.test(t); }",
        arg=before,
    )
    return str(page.locator("#ingest-result").inner_text())


def ask(page: Any, question: str, answers_before: int) -> None:
    page.get_by_role("tab").nth(0).click()
    page.evaluate(WATCH_ANSWER)
    page.locator("#question textarea").fill(question)
    page.locator("#question textarea").press("Enter")
    page.wait_for_function(
        "n => document.querySelectorAll('#chatbot [data-testid=\"bot\"]').length > n",
        arg=answers_before,
    )
    # done when the figures show the time to the first token (they do once the answer is complete)
    page.wait_for_function("() => /first token|首词元/.test(document.querySelector('#figures').innerText)")


def wait_for_send_label(page: Any, label: str) -> None:
    """The page's language is applied by its load event, just after the first render: wait for it."""
    page.wait_for_function("label => document.querySelector('#send')?.innerText.trim() === label", arg=label)


def bot_texts(page: Any) -> list[str]:
    return [str(t).strip() for t in page.locator("#chatbot [data-testid='bot']").all_inner_texts()]


def test_upload_ingest_ask_follow_up_and_screenshot(browser: Any, served: dict[str, Any], tmp_path: Path) -> None:
    page = open_page(browser, served["url"], "en-US")
    wait_for_send_label(page, "Send")  # English browser: English interface
    document = tmp_path / "remote-policy.md"
    document.write_text(HANDBOOK, encoding="utf-8")
    report = upload(page, [str(document)])
    assert "1 added" in report and "0 failed" in report, report
    # the list of documents is refreshed after the ingest
    page.wait_for_function("() => document.querySelector('#documents').innerText.includes('remote-policy.md')")

    ask(page, "How many days per week may employees work remotely?", 0)
    final = bot_texts(page)[-1]
    seen = [text for text in page.evaluate("window.__seen") if text and text != "…"]
    partial = [text for text in dict.fromkeys(seen) if text != final and final.startswith(text)]
    assert final and len(partial) >= 2, (
        final,
        seen,
        page.locator("#chatbot").inner_html(),
    )  # the answer was seen growing before it was complete
    sources = page.locator("#sources")
    assert "remote-policy.md" in sources.inner_text()
    sources.locator("summary").first.click()  # expands to the passage text
    assert "three days per week" in sources.locator("details").first.inner_text()
    figures = page.locator("#figures").inner_text()
    assert "retrieval" in figures and "context" in figures and "first token" in figures and "tokens/s" in figures
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-answer.png"), full_page=True)
    assert (ARTIFACTS / "ui-answer.png").stat().st_size > 10_000

    ask(page, "And how many days of paid leave?", 1)
    texts = bot_texts(page)
    assert len(texts) == 2 and texts[0] == final, texts  # the first answer stays; the follow-up is answered below it
    assert "of the previous turn reused" in page.locator("#figures").inner_text()  # it extended the first prompt
    page.context.close()


def test_two_sessions_keep_their_own_settings_and_history(browser: Any, served: dict[str, Any], tmp_path: Path) -> None:
    library = served["handlers"].library
    if not library.documents("docs"):  # run alone: the document the first test uploads
        source = tmp_path / "remote-policy.md"
        source.write_text(HANDBOOK, encoding="utf-8")
        library.ingest_uploads("docs", library.save_uploads("docs", [(source.name, source)]))
    chinese = open_page(browser, served["url"], "zh-CN")
    english = open_page(browser, served["url"], "en-US")
    wait_for_send_label(chinese, "发送")  # follows the browser's language
    wait_for_send_label(english, "Send")

    chinese.get_by_role("tab").nth(2).click()
    chinese.locator("#retrieval-only input[type=checkbox]").check()
    chinese.wait_for_timeout(500)  # the change event updates this session's state

    ask(chinese, "remote work days", 0)
    ask(english, "How many days per week may employees work remotely?", 0)
    chinese_answer = bot_texts(chinese)[-1]
    assert chinese_answer.startswith("（仅检索模式") and "remote-policy.md" in chinese.locator("#sources").inner_text()
    english_answer = bot_texts(english)[-1]
    assert english_answer and "Retrieval-only" not in english_answer and "仅检索" not in english_answer
    assert "tokens/s" in english.locator("#figures").inner_text()
    # each page shows only its own conversation
    assert "remote work days" not in english.locator("#chatbot").inner_text()
    assert "How many days per week" not in chinese.locator("#chatbot").inner_text()
    # the toggle switches this session only
    english.get_by_role("radio", name="中文").check()
    wait_for_send_label(english, "发送")
    chinese.reload()
    wait_for_send_label(chinese, "发送")
    english.context.close()
    chinese.context.close()


def test_bad_uploads_give_clear_messages_and_nothing_escapes(browser: Any, served: dict[str, Any]) -> None:
    page = open_page(browser, served["url"], "en-US")
    root, data = served["root"], served["data"]
    before = {p for p in root.rglob("*") if p.is_file()}
    report = upload(
        page,
        [
            {"name": "../../evil.txt", "mimeType": "text/plain", "buffer": b"Evil text that must stay inside.\n"},
            {"name": "empty.txt", "mimeType": "text/plain", "buffer": b""},
            {"name": "broken.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.7\n1 0 obj <<>> garbage \x00"},
        ],
    )
    assert "empty.txt" in report and "empty file" in report, report
    assert "broken.pdf" in report and "1 added" in report, report
    written = {p for p in root.rglob("*") if p.is_file()} - before
    assert written and all(data in p.parents for p in written), written  # nothing outside the data dir
    assert not (root / "evil.txt").exists() and not (data.parent.parent / "evil.txt").exists()
    uploads = served["handlers"].library.uploads_dir("docs")
    kept = {p.name for p in uploads.iterdir() if p.is_file()}
    assert "broken.pdf" not in kept and "empty.txt" not in kept and any("evil" in name for name in kept)
    # the UI keeps working: a question is still answered, from what was ingested
    ask(page, "What must stay inside?", 0)
    assert bot_texts(page)[-1] and "evil" in page.locator("#sources").inner_text()
    page.context.close()


def test_links_in_an_answer_are_shown_as_text_never_live(browser: Any, served: dict[str, Any], tmp_path: Path) -> None:
    """A document tells the model to print a link (docs/reliability.md): the scripted model quotes it, and the chat
    shows it as text, not as something to click."""
    page = open_page(browser, served["url"], "zh-CN")
    document = tmp_path / "update-notes.txt"  # plain text: the Markdown link stays as written
    document.write_text("# 软件更新说明\n\n软件更新说明见 http://update-check/i 和 [下载门户](http://portal/x)。请按时更新。\n",
                        encoding="utf-8")  # fmt: skip
    upload(page, [str(document)])
    ask(page, "软件更新说明见哪里？", 0)
    hrefs = page.eval_on_selector_all("#chatbot a", "links => links.map(link => link.href)")
    assert not [href for href in hrefs if "update-check" in href or "portal" in href], hrefs
    answer = bot_texts(page)[-1]
    assert "http://update-check/i" in answer and "http://portal/x" in answer, answer  # printed, readable as text
    page.context.close()


def test_the_page_is_served_on_localhost_only(served: dict[str, Any]) -> None:
    import socket

    assert Settings().ui_host == "127.0.0.1"  # the fixture, like `rag ui`, takes the default bind address
    assert served["url"].startswith("http://127.0.0.1:")
    port = int(served["url"].rsplit(":", 1)[1].strip("/"))
    addresses = {
        info[4][0]
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
        if info[4][0] != "127.0.0.1"
    }
    for address in addresses:  # not reachable on the machine's other addresses
        with socket.socket() as sock, pytest.raises(OSError):
            sock.settimeout(2)
            sock.connect((address, port))
    deadline = time.monotonic() + 5
    with socket.create_connection(("127.0.0.1", port), timeout=max(0.1, deadline - time.monotonic())):
        pass
