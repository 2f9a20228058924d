"""Interface text in Chinese and English, and choosing one from the browser's ``Accept-Language``.

The language is chosen per browser session on the server (from the request's ``Accept-Language`` when the page
loads, then by the toggle) and every label is re-sent: one mechanism for both, and messages written by handlers
(ingest reports, errors, figures) follow it too. ``gr.I18n`` translates only in the browser, from
``navigator.language``, with no way to switch at run time.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["LANGUAGES", "Language", "has_text", "language_from_header", "text"]

Language = Literal["zh", "en"]
LANGUAGES: dict[Language, str] = {"zh": "中文", "en": "English"}

_STRINGS: dict[str, dict[Language, str]] = {
    "title": {"zh": "# 文档问答", "en": "# Ask your documents"},
    "subtitle": {
        "zh": "在本机回答关于你的文档的问题，并注明出处。",
        "en": "Answers from your own documents, on this machine, with their sources.",
    },
    "language": {"zh": "界面语言", "en": "Language"},
    "banner_model": {
        "zh": "语言模型：`{model}`（第一次提问时加载）",
        "en": "Language model: `{model}` (loads at the first question)",
    },
    "banner_no_model": {
        "zh": "**未加载语言模型：仅检索模式。** 回答处显示找到的原文段落，不生成回答。"
        "要生成回答，请用 `rag ui --llm-model ...` 启动。",
        "en": "**No language model: retrieval-only mode.** You get the passages found in your documents, not a "
        "written answer. Start `rag ui --llm-model ...` to get answers.",
    },
    "tab_chat": {"zh": "对话", "en": "Chat"},
    "tab_documents": {"zh": "文档", "en": "Documents"},
    "tab_settings": {"zh": "设置", "en": "Settings"},
    "chat": {"zh": "对话", "en": "Conversation"},
    "question": {"zh": "问题", "en": "Question"},
    "question_placeholder": {"zh": "例如：年假有几天？", "en": "e.g. How many days of leave do I get?"},
    "send": {"zh": "发送", "en": "Send"},
    "stop": {"zh": "停止", "en": "Stop"},
    "clear": {"zh": "清空对话", "en": "Clear"},
    "sources": {"zh": "引用的段落", "en": "Cited passages"},
    "reading": {
        "zh": "模型正在阅读提示：约 {read}/{total} 个词元，还需约 {left} 秒",
        "en": "the model is reading the prompt: about {read} of {total} tokens, about {left} s left",
    },
    "reading_unknown": {
        "zh": "模型正在阅读 {total} 个词元的提示（首次测量阅读速度）",
        "en": "the model is reading a prompt of {total} tokens (measuring how fast it reads here)",
    },
    "passages_found": {"zh": "找到的段落（最相关的在前）", "en": "Passages found (best first)"},
    "passages_given": {"zh": "交给模型的段落", "en": "Passages given to the model"},
    "score": {"zh": "相关度 {score}", "en": "score {score}"},
    "sources_none": {"zh": "（没有找到相关段落）", "en": "(no passages found)"},
    "sources_uncited": {
        "zh": "回答未引用任何段落；以下是最相关的段落。",
        "en": "The answer cites no passage; the closest ones:",
    },
    "sources_attributed": {
        "zh": "回答没有标注出处；以下段落含有回答中的词语。",
        "en": "The answer names no passage; these passages hold its words:",
    },
    "page": {"zh": "第 {page} 页", "en": "p. {page}"},
    "open_page": {"zh": "查看原页", "en": "Open page"},
    "open_passage": {"zh": "查看上下文", "en": "Open in text"},
    "page_of": {"zh": "[{n}] {file} · 第 {page} 页，共 {pages} 页", "en": "[{n}] {file} · page {page} of {pages}"},
    "passage_in_text": {"zh": "[{n}] {file} · 段落及其上下文", "en": "[{n}] {file} · the passage in its text"},
    "page_view_hint": {
        "zh": "点击来源上的“查看原页”，在此查看引用的原页（段落已高亮）。",
        "en": "Press “Open page” on a source to see its page here, the passage highlighted.",
    },
    "previous_page": {"zh": "◀ 上一页", "en": "◀ Previous page"},
    "next_page": {"zh": "下一页 ▶", "en": "Next page ▶"},
    "not_cited": {"zh": "未引用", "en": "not cited"},
    "ocr": {"zh": "扫描件识别", "en": "read by OCR"},
    "ocr_low": {"zh": "扫描件识别，可信度低", "en": "read by OCR, low confidence"},
    "figures": {
        "zh": "检索 {retrieval_ms} 毫秒 · 上下文 {context_tokens} 个词元 · 首词元 {first_token} · {tokens_per_s}",
        "en": "retrieval {retrieval_ms} ms · context {context_tokens} tokens · first token {first_token} · "
        "{tokens_per_s}",
    },
    "figures_retrieval": {
        "zh": "检索 {retrieval_ms} 毫秒 · 上下文 {context_tokens} 个词元",
        "en": "retrieval {retrieval_ms} ms · context {context_tokens} tokens",
    },
    "figures_rewrite": {"zh": " · 改写追问 {rewrite_ms} 毫秒", "en": " · follow-up rewrite {rewrite_ms} ms"},
    # The chain's notes (rag/answer/notes.py) in other languages than their own English, which is shown as it is.
    "note_history_trimmed": {"zh": "为放进上下文窗口，删去了对话中最早的 {dropped:,} 轮"},
    "note_wait_limited": {
        "zh": "证据 {cap:,}/{room:,} 个词元：受首个词元前最长等待 {max_wait_s:g} 秒所限"
        "（本机每秒约读 {tokens_per_s:,.0f} 个提示词元）；在设置中调高 max_wait_s（RAG_MAX_WAIT_S）可放入更多证据",
    },
    "note_conversation_restarted": {"zh": "上下文窗口已满：本轮对话的证据重新开始"},
    "figures_reused": {
        "zh": " · 追问沿用上一轮的 {reused_tokens} 个提示词元（无需重读）",
        "en": " · follow-up: {reused_tokens} prompt tokens of the previous turn reused (not read again)",
    },
    "tokens_per_s": {"zh": "每秒 {value} 个词元", "en": "{value} tokens/s"},
    "seconds": {"zh": "{value} 秒", "en": "{value} s"},
    "not_applicable": {"zh": "—", "en": "—"},
    "retrieval_only_answer": {
        "zh": "（仅检索模式：不生成回答。下面是为这个问题找到的 {count} 个段落。）",
        "en": "(Retrieval-only mode: no answer is written. Below are the {count} passages found for this question.)",
    },
    "error": {"zh": "出错了：{message}", "en": "Error: {message}"},
    "model_hint": {
        "zh": "可在“设置”中打开“仅检索模式”，不用语言模型也能查找段落。",
        "en": "Switch on retrieval-only mode in Settings to search without a language model.",
    },
    "stopped": {"zh": "（已停止）", "en": "(stopped)"},
    "upload": {"zh": "上传文件（或 zip）", "en": "Upload files (or a zip)"},
    "ingest": {"zh": "收录到当前集合", "en": "Ingest into the current collection"},
    "ingest_result": {"zh": "收录结果", "en": "Result"},
    "ingest_progress": {
        "zh": "{files_done}/{files_total} 个文件 · {chunks} 个片段 · {current}",
        "en": "{files_done}/{files_total} files · {chunks} chunks · {current}",
    },
    "ingest_saving": {"zh": "正在保存上传的文件", "en": "Saving the uploaded files"},
    "ingest_done": {
        "zh": "已收录到集合 `{collection}`：新增 {added}，更新 {updated}，未变 {unchanged}，失败 {failed}；"
        "片段 +{chunks_added}，共 {chunks_total}。用时 {seconds} 秒。",
        "en": "Ingested into collection `{collection}`: {added} added, {updated} updated, {unchanged} unchanged, "
        "{failed} failed; +{chunks_added} chunks, {chunks_total} in all. {seconds} s.",
    },
    "ingest_nothing": {"zh": "没有可收录的文件。", "en": "Nothing to ingest."},
    "no_files": {"zh": "请先选择要上传的文件。", "en": "Choose files to upload first."},
    "problem": {"zh": "❌ `{file}`：{reason}", "en": "❌ `{file}`: {reason}"},
    "note": {"zh": "ℹ️ {note}", "en": "ℹ️ {note}"},
    "collections": {"zh": "集合", "en": "Collections"},
    "collection_headers": {"zh": "集合|片段数|嵌入模型", "en": "collection|chunks|embedding model"},
    "documents": {"zh": "当前集合中的文档", "en": "Documents in the current collection"},
    "document_headers": {"zh": "文件|片段数|位置", "en": "file|chunks|location"},
    "delete_pick": {"zh": "要删除的文档", "en": "Document to delete"},
    "delete": {"zh": "删除文档", "en": "Delete document"},
    "deleted": {
        "zh": "已从集合 `{collection}` 删除 `{file}`（{chunks} 个片段）。",
        "en": "Deleted `{file}` ({chunks} chunks) from collection `{collection}`.",
    },
    "pick_document": {"zh": "请先选择一个文档。", "en": "Pick a document first."},
    "reingest_pick": {"zh": "重新收录的文件夹", "en": "Folder to re-ingest"},
    "reingest": {"zh": "重新收录文件夹", "en": "Re-ingest folder"},
    "pick_folder": {"zh": "请先选择一个文件夹。", "en": "Pick a folder first."},
    "refresh": {"zh": "刷新", "en": "Refresh"},
    "collection": {"zh": "集合", "en": "Collection"},
    "collection_info": {
        "zh": "提问和上传都使用这个集合；输入新名称即可新建。",
        "en": "Questions and uploads use this collection; type a new name to create one.",
    },
    "k": {
        "zh": "最相关的 k 个命中（扩展成段落，预算内再补充其余）",
        "en": "Best hits first expanded into passages (k); the budget is then filled with more",
    },
    "budget": {"zh": "上下文预算（词元，0 为自动）", "en": "Context budget (tokens, 0: automatic)"},
    "temperature": {"zh": "温度", "en": "Temperature"},
    "retrieval_only": {"zh": "仅检索模式（不用语言模型）", "en": "Retrieval-only mode (no language model)"},
    "settings_note": {
        "zh": "设置只对这个浏览器会话有效，不影响其他用户。",
        "en": "Settings apply to this browser session only; other users are not affected.",
    },
}


def has_text(key: str, language: str) -> bool:
    """Whether the UI has the string named ``key`` in ``language``."""
    return language in _STRINGS.get(key, {})


def text(language: str, key: str, **values: object) -> str:
    """The string ``key`` in ``language`` (English when the language is unknown), formatted with ``values``."""
    entry = _STRINGS[key]
    template = entry[language] if language in entry else entry["en"]
    return template.format(**values) if values else template


def language_from_header(accept_language: str | None) -> Language:
    """``zh`` when the browser prefers Chinese over English (``Accept-Language``), else ``en``."""
    best: tuple[float, Language] | None = None
    for position, item in enumerate((accept_language or "").split(",")):
        tag, _, parameters = item.strip().partition(";")
        primary = tag.strip().lower().split("-")[0]
        if primary not in ("zh", "en"):
            continue
        quality = 1.0
        if parameters.strip().startswith("q="):
            try:
                quality = float(parameters.strip()[2:])
            except ValueError:
                quality = 0.0
        rank = quality - position * 1e-3  # equal weights: the earlier tag wins
        if best is None or rank > best[0]:
            best = (rank, "zh" if primary == "zh" else "en")
    return best[1] if best else "en"
