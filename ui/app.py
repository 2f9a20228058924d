"""The browser UI: layout and wiring only. Behaviour lives in :mod:`ui.handlers`, the work in :mod:`rag.app.assistant`
and :mod:`rag.app.library`.

>>> demo = build_ui(create_handlers(Settings.load(), folder_roots=["./docs"]))
>>> launch(demo, Settings.load())          # http://127.0.0.1:7860
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import gradio as gr

from rag.app.application import Application
from rag.settings import Settings
from ui.handlers import ChatTurn, PageView, PageViewShown, SessionSettings, UiHandlers
from ui.i18n import LANGUAGES, text

__all__ = ["build_ui", "create_handlers", "launch"]

#: Questions waiting beyond this many are refused with "queue full" instead of piling up without end.
QUEUE_SIZE = 64

_CSS = """
.rag-sources details { border: 1px solid var(--border-color-primary); border-radius: 6px; margin: 4px 0;
  padding: 4px 8px; }
.rag-sources summary { cursor: pointer; }
.rag-passage { margin-top: 6px; font-size: 0.92em; }
.rag-open { margin-left: 8px; padding: 0 8px; border: 1px solid var(--border-color-primary); border-radius: 4px;
  font-size: 0.85em; cursor: pointer; }
.rag-passage-view mark { background: #ffe066; }
"""
#: A source card's "Open page" button opens its page view: the sources panel reports which card, as a select event.
_OPEN_SOURCE_JS = """
element.addEventListener('click', (event) => {
  const opener = event.target.closest('[data-source-n]');
  if (!opener) return;
  event.preventDefault();
  event.stopPropagation();
  trigger('select', {index: Number(opener.dataset.sourceN), value: opener.dataset.sourceN, selected: true});
});
"""


def create_handlers(
    settings: Settings,
    *,
    use_llm: bool = True,
    llm: Any = None,
    folder_roots: Sequence[str | os.PathLike[str]] = (),
    max_tokens: int | None = None,
) -> UiHandlers:
    """The shared objects behind every session: one composition root (one model, one embedder per name), the
    assistant and the document library over it; models load at the first question or upload."""
    application = Application.build(settings, llm=llm, use_llm=use_llm, folder_roots=folder_roots)
    library = application.library
    # Open the store once before serving: chromadb builds its per-path client system lazily and two sessions
    # opening it at the same moment can see it half-built ("'RustBindingsAPI' object has no attribute 'bindings'").
    library.collections()
    return UiHandlers(application.assistant, library, max_tokens=max_tokens)


def build_ui(handlers: UiHandlers) -> gr.Blocks:
    settings = handlers.assistant.settings
    start = handlers.new_session()
    use_llm = handlers.assistant.use_llm
    # (component, {property: text key}): re-sent in the session's language on load and on the toggle
    texts: list[tuple[Any, dict[str, str]]] = []

    def labelled(component: Any, **keys: str) -> Any:
        texts.append((component, keys))
        return component

    def t(key: str) -> str:
        return text(start.language, key)

    with gr.Blocks(title="chinese-mixtral-rag", delete_cache=(3600, 3600)) as demo:
        session = gr.State(start)
        conversation = gr.State([])
        with gr.Row(equal_height=True):
            with gr.Column(scale=4):
                labelled(gr.Markdown(t("title"), elem_id="title"), value="title")
                labelled(gr.Markdown(t("subtitle")), value="subtitle")
            language = gr.Radio(
                choices=[(name, code) for code, name in LANGUAGES.items()],
                value=start.language,
                label=t("language"),
                elem_id="language",
                scale=1,
            )
            labelled(language, label="language")
        banner = gr.Markdown(handlers.banner(start.language), elem_id="banner")

        with gr.Tabs():
            with gr.Tab(t("tab_chat"), id="chat", elem_id="tab-chat") as chat_tab:
                labelled(chat_tab, label="tab_chat")
                chatbot = labelled(gr.Chatbot(label=t("chat"), elem_id="chatbot", height=380), label="chat")
                question = labelled(
                    gr.Textbox(label=t("question"), placeholder=t("question_placeholder"), elem_id="question"),
                    label="question",
                    placeholder="question_placeholder",
                )
                with gr.Row():
                    send = labelled(gr.Button(t("send"), variant="primary", elem_id="send"), value="send")
                    stop = labelled(gr.Button(t("stop"), variant="stop", elem_id="stop"), value="stop")
                    clear = labelled(gr.Button(t("clear"), elem_id="clear"), value="clear")
                figures = gr.Markdown(elem_id="figures")
                sources = gr.HTML(elem_id="sources", js_on_load=_OPEN_SOURCE_JS)
                openable = gr.State([])  # this session's sources, as the page view opens them
                page_view = gr.State(None)  # the page this session looks at
                with gr.Group(elem_id="page-view"):
                    page_caption = labelled(gr.Markdown(t("page_view_hint"), elem_id="page-caption"),
                                            value="page_view_hint")  # fmt: skip
                    page_image = gr.Image(
                        type="pil",
                        format="png",
                        interactive=False,
                        show_label=False,
                        elem_id="page-image",
                        visible=False,
                    )
                    passage_view = gr.HTML(elem_id="passage-view", visible=False)
                    with gr.Row():
                        previous_page = labelled(
                            gr.Button(t("previous_page"), size="sm", elem_id="page-previous", visible=False),
                            value="previous_page",
                        )
                        next_page = labelled(
                            gr.Button(t("next_page"), size="sm", elem_id="page-next", visible=False), value="next_page"
                        )

            with gr.Tab(t("tab_documents"), id="documents", elem_id="tab-documents") as documents_tab:
                labelled(documents_tab, label="tab_documents")
                upload = labelled(
                    gr.File(label=t("upload"), file_count="multiple", type="filepath", elem_id="upload"),
                    label="upload",
                )
                ingest = labelled(gr.Button(t("ingest"), variant="primary", elem_id="ingest"), value="ingest")
                ingest_result = labelled(
                    gr.Markdown(elem_id="ingest-result", label=t("ingest_result")), label="ingest_result"
                )
                refresh = labelled(gr.Button(t("refresh"), size="sm", elem_id="refresh"), value="refresh")
                collections_table = labelled(
                    gr.Dataframe(label=t("collections"), interactive=False, elem_id="collections"),
                    label="collections",
                )
                documents_table = labelled(
                    gr.Dataframe(label=t("documents"), interactive=False, elem_id="documents"), label="documents"
                )
                with gr.Row(equal_height=True):
                    delete_pick = labelled(
                        gr.Dropdown(label=t("delete_pick"), choices=[], elem_id="delete-pick", scale=3),
                        label="delete_pick",
                    )
                    delete = labelled(gr.Button(t("delete"), variant="stop", elem_id="delete"), value="delete")
                with gr.Row(equal_height=True):
                    folder_pick = labelled(
                        gr.Dropdown(label=t("reingest_pick"), choices=[], elem_id="folder-pick", scale=3),
                        label="reingest_pick",
                    )
                    reingest = labelled(gr.Button(t("reingest"), elem_id="reingest"), value="reingest")

            with gr.Tab(t("tab_settings"), id="settings", elem_id="tab-settings") as settings_tab:
                labelled(settings_tab, label="tab_settings")
                labelled(gr.Markdown(t("settings_note")), value="settings_note")
                collection = labelled(
                    gr.Dropdown(
                        label=t("collection"),
                        info=t("collection_info"),
                        choices=[settings.collection],
                        value=settings.collection,
                        allow_custom_value=True,
                        elem_id="collection",
                    ),
                    label="collection",
                    info="collection_info",
                )
                k = labelled(gr.Slider(1, 20, value=start.k, step=1, label=t("k"), elem_id="k"), label="k")
                budget = labelled(
                    gr.Number(value=0, precision=0, minimum=0, label=t("budget"), elem_id="budget"), label="budget"
                )
                temperature = labelled(
                    gr.Slider(0.0, 2.0, value=start.temperature, step=0.05, label=t("temperature"), elem_id="temp"),
                    label="temperature",
                )
                retrieval_only = labelled(
                    gr.Checkbox(
                        value=start.retrieval_only,
                        interactive=use_llm,
                        label=t("retrieval_only"),
                        elem_id="retrieval-only",
                    ),
                    label="retrieval_only",
                )

        # -- chat: one generation at a time across all sessions (llama.cpp is not thread-safe); others queue
        def respond(
            message: str, history: list[ChatTurn], state: SessionSettings
        ) -> Iterator[tuple[Any, list[ChatTurn], str, str, str, list[dict[str, Any]]]]:
            # closing() hands a stop (Gradio closes this generator) on to the model at once
            with contextlib.closing(handlers.respond_with_sources(message, history, state)) as events:
                for shown, kept, sources_html, figures_md, opened in events:
                    yield shown, kept, sources_html, figures_md, "", opened

        chat_inputs = [question, conversation, session]
        chat_outputs = [chatbot, conversation, sources, figures, question, openable]
        asked = question.submit(respond, chat_inputs, chat_outputs, concurrency_limit=1, concurrency_id="model")
        clicked = send.click(respond, chat_inputs, chat_outputs, concurrency_limit=1, concurrency_id="model")
        stop.click(None, None, None, cancels=[asked, clicked])
        cleared = [chatbot, conversation, sources, figures, question]
        clear.click(handlers.clear, None, cleared, cancels=[asked, clicked])
        chatbot.clear(handlers.clear, None, cleared, cancels=[asked, clicked])  # the chat's own trash button

        # -- page views: a source card's button opens its page; previous and next turn it
        page_outputs = [page_view, page_caption, page_image, passage_view, previous_page, next_page]

        def shown_page(shown: PageViewShown) -> list[Any]:
            paged = shown.image is not None
            return [
                shown.view,
                shown.caption,
                gr.update(value=shown.image, visible=paged),
                gr.update(value=shown.passage_html, visible=bool(shown.passage_html)),
                gr.update(visible=paged, interactive=paged and shown.view is not None and shown.view.page > 1),
                gr.update(
                    visible=paged,
                    interactive=paged and shown.view is not None and shown.view.page < shown.view.pages,
                ),
            ]

        def open_source(opened: list[dict[str, Any]], state: SessionSettings, event: gr.SelectData) -> list[Any]:
            return shown_page(handlers.open_source(int(event.index), opened, state))

        def turn(step: int) -> Any:
            def turned(view: PageView | None, state: SessionSettings) -> list[Any]:
                return shown_page(handlers.show_page(view, step, state))

            return turned

        sources.select(open_source, [openable, session], page_outputs, concurrency_id="io")
        previous_page.click(turn(-1), [page_view, session], page_outputs, concurrency_id="io")
        next_page.click(turn(1), [page_view, session], page_outputs, concurrency_id="io")

        # -- documents
        def documents_view(state: SessionSettings) -> tuple[Any, ...]:
            view = handlers.documents_view(state)
            return (
                {"headers": text(state.language, "collection_headers").split("|"), "data": view.collections},
                {"headers": text(state.language, "document_headers").split("|"), "data": view.documents},
                gr.update(choices=view.document_choices, value=None),
                gr.update(choices=view.folder_choices, value=None),
                gr.update(choices=view.collection_names),
            )

        view_outputs = [collections_table, documents_table, delete_pick, folder_pick, collection]

        def ingest_uploads(
            files: list[str] | None,
            state: SessionSettings,
            progress: gr.Progress = gr.Progress(),  # noqa: B008 (how Gradio injects a progress bar)
        ) -> str:
            return handlers.upload_and_ingest(files, state, progress=lambda done, what: progress(done, desc=what))

        def reingest_folder(
            folder: str | None,
            state: SessionSettings,
            progress: gr.Progress = gr.Progress(),  # noqa: B008 (how Gradio injects a progress bar)
        ) -> str:
            return handlers.reingest(folder, state, progress=lambda done, what: progress(done, desc=what))

        (
            ingest.click(ingest_uploads, [upload, session], [ingest_result], concurrency_limit=1, concurrency_id="io")
            .then(documents_view, [session], view_outputs)
            .then(lambda: None, None, [upload])
        )
        reingest.click(
            reingest_folder, [folder_pick, session], [ingest_result], concurrency_limit=1, concurrency_id="io"
        ).then(documents_view, [session], view_outputs)
        delete.click(
            handlers.delete_document, [delete_pick, session], [ingest_result], concurrency_limit=1, concurrency_id="io"
        ).then(documents_view, [session], view_outputs)
        refresh.click(documents_view, [session], view_outputs)

        # -- settings: each change makes a new SessionSettings for this session only
        controls = [collection, k, budget, temperature, retrieval_only]
        for control in controls:
            changed = control.input if control is not collection else control.change
            changed(handlers.apply_settings, [session, *controls], [session], queue=False)
        collection.change(documents_view, [session], view_outputs)

        # -- language: from the browser's Accept-Language on load, then the toggle
        text_outputs = [component for component, _ in texts]

        def relabel(state: SessionSettings) -> list[Any]:
            return [gr.update(**_texts(state.language, keys)) for _, keys in texts] + [handlers.banner(state.language)]

        def on_load(state: SessionSettings, request: gr.Request) -> list[Any]:
            header = request.headers.get("accept-language") if request is not None else None
            state = handlers.set_language(state, handlers.new_session(header).language)
            return [state, state.language, *relabel(state), *documents_view(state)]

        def on_language(state: SessionSettings, language_code: str) -> list[Any]:
            state = handlers.set_language(state, language_code)
            return [state, *relabel(state), *documents_view(state)]

        demo.load(on_load, [session], [session, language, *text_outputs, banner, *view_outputs])
        language.input(on_language, [session, language], [session, *text_outputs, banner, *view_outputs])
    return demo


def _texts(language: str, keys: dict[str, str]) -> dict[str, Any]:
    return {prop: text(language, key) for prop, key in keys.items()}


def launch(
    demo: gr.Blocks,
    settings: Settings,
    *,
    port: int | None = None,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
) -> Any:
    """Serve ``demo`` on ``settings.ui_host`` (127.0.0.1 unless told otherwise), with the login of
    ``settings.ui_auth`` and uploads held to ``settings.ui_max_upload_mb``; requests beyond the concurrency limits
    wait in the queue."""
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=2)
    return demo.launch(
        server_name=settings.ui_host,
        server_port=port if port is not None else settings.ui_port,
        auth=settings.ui_credentials,
        max_file_size=int(settings.ui_max_upload_mb * 2**20),
        prevent_thread_lock=prevent_thread_lock,
        show_error=True,
        quiet=quiet,
        css=_CSS,
        footer_links=[],
        ssr_mode=False,
    )
