"""The question-answering prompt: instructions, evidence, history, question — pure functions.

The order is fixed so consecutive questions share the longest possible token prefix (llama.cpp reuses the KV cache
of a common prefix): instructions first (constant per language), then the evidence, then the conversation so far,
then the question. With ``prompt_format="mixtral"`` the result is a complete Mixtral-Instruct prompt (``<s>[INST]
...``, rendered by :func:`rag.llm.prompt.render_instruct_prompt`); otherwise one plain-text instruction that the model's
own chat template wraps.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from rag.llm.prompt import ChatMessage, normalize_messages, render_instruct_prompt

__all__ = [
    "INSUFFICIENT_EN",
    "INSUFFICIENT_ZH",
    "clean_rewrite",
    "instructions_for",
    "is_chinese",
    "qa_messages",
    "render_qa_prompt",
    "render_rewrite_prompt",
]

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")

INSUFFICIENT_ZH = "信息不足：提供的文档中没有回答这个问题所需的信息。"
INSUFFICIENT_EN = "Not in the documents: the provided passages do not contain the information needed to answer."

_INSTRUCTIONS_ZH = (
    "你是一个严谨的问答助手，只根据下面编号的文档片段回答问题。\n"
    "规则：\n"
    "1. 只使用片段中的信息，不要编造，不要使用片段之外的知识。\n"
    "2. 每句话后面用方括号标注所依据片段的编号，例如 [1] 或 [2][3]；只能引用下面出现过的编号。\n"
    f"3. 如果片段不足以回答问题，直接回答：“{INSUFFICIENT_ZH}”\n"
    "4. 用中文回答，简洁准确。"
)
_INSTRUCTIONS_EN = (
    "You are a careful assistant that answers questions using only the numbered document passages below.\n"
    "Rules:\n"
    "1. Use only information from the passages; never invent facts or use outside knowledge.\n"
    "2. After each sentence cite the passages it relies on in square brackets, e.g. [1] or [2][3]; cite only "
    "numbers that appear below.\n"
    f'3. If the passages do not contain the answer, reply: "{INSUFFICIENT_EN}"\n'
    "4. Answer in English, concisely."
)


def is_chinese(text: str) -> bool:
    """Whether ``text`` is (mostly) Chinese: at least one CJK character per four non-space characters, or any
    CJK character in a short text."""
    compact = re.sub(r"\s+", "", text)
    found = len(_CJK.findall(compact))
    return found > 0 and (found * 4 >= len(compact) or len(compact) <= 12)


def instructions_for(question: str) -> str:
    """The instructions in the question's language."""
    return _INSTRUCTIONS_ZH if is_chinese(question) else _INSTRUCTIONS_EN


def _evidence_block(question: str, context: str) -> str:
    # the same text with and without evidence, so the empty prompt measures the cost of everything else
    return ("文档片段：\n\n" if is_chinese(question) else "Passages:\n\n") + context


def _alternates(history: Sequence[ChatMessage]) -> bool:
    return all(m.role == ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(history)) and (
        len(history) % 2 == 0
    )


def _transcript(history: Sequence[ChatMessage], chinese: bool) -> str:
    names = {"user": "用户", "assistant": "助手", "system": "系统"} if chinese else {}
    lines = [f"{names.get(m.role, m.role.capitalize())}: {m.content.strip()}" for m in history]
    heading = "之前的对话：" if chinese else "Conversation so far:"
    return heading + "\n" + "\n".join(lines)


def render_qa_prompt(
    question: str,
    context: str,
    history: Sequence[Any] = (),
    *,
    prompt_format: str = "mixtral",
    system: str = "",
) -> str:
    """The prompt for answering ``question`` from ``context`` after ``history`` (see the module docstring).

    ``system``: the caller's own instructions (a client's system message), put before ours."""
    if prompt_format == "mixtral":
        return render_instruct_prompt(qa_messages(question, context, history, system=system))
    chinese = is_chinese(question)
    system = _system_text(question, context, system)
    turns = [m for m in normalize_messages(history) if m.role != "system" and m.content.strip()]
    label = "问题：" if chinese else "Question: "
    parts = [system]
    if turns:
        parts.append(_transcript(turns, chinese))
    parts.append(label + question)
    return "\n\n".join(parts)


def _system_text(question: str, context: str, system: str) -> str:
    own = instructions_for(question) + "\n\n" + _evidence_block(question, context)
    return f"{system.strip()}\n\n{own}" if system.strip() else own


def qa_messages(question: str, context: str, history: Sequence[Any] = (), *, system: str = "") -> list[ChatMessage]:
    """The prompt of :func:`render_qa_prompt` as chat messages: the caller's ``system`` text, the instructions and
    the evidence as the system message, a conversation that alternates as real turns (else as a transcript in the
    system message), then the question. ``render_instruct_prompt`` of them is the ``mixtral`` prompt exactly."""
    chinese = is_chinese(question)
    system = _system_text(question, context, system)
    turns = [m for m in normalize_messages(history) if m.role != "system" and m.content.strip()]
    label = "问题：" if chinese else "Question: "
    if _alternates(turns):  # a real multi-turn conversation: evidence in the first instruction
        return [ChatMessage("system", system), *turns, ChatMessage("user", question)]
    if turns:
        return [
            ChatMessage("system", system + "\n\n" + _transcript(turns, chinese)),
            ChatMessage("user", label + question),
        ]
    return [ChatMessage("system", system), ChatMessage("user", label + question)]


def render_rewrite_prompt(question: str, history: Sequence[Any], *, prompt_format: str = "mixtral") -> str:
    """A short prompt asking for ``question`` rewritten as a standalone question, given ``history``."""
    chinese = is_chinese(question)
    turns = [m for m in normalize_messages(history) if m.role != "system" and m.content.strip()]
    if chinese:
        instruction = (
            "根据下面的对话，把最后的追问改写成一个不依赖上下文、可以单独理解的完整问题。只输出改写后的问题。\n\n"
            f"{_transcript(turns, True)}\n\n追问：{question}\n完整问题："
        )
    else:
        instruction = (
            "Rewrite the follow-up question as a standalone question that can be understood without the "
            "conversation. Output only the rewritten question.\n\n"
            f"{_transcript(turns, False)}\n\nFollow-up question: {question}\nStandalone question:"
        )
    if prompt_format == "mixtral":
        return render_instruct_prompt([ChatMessage("user", instruction)])
    return instruction


_PREFIX = re.compile(
    r"^\s*(?:standalone question|rewritten question|question|完整问题|改写后的问题|问题)\s*[:：]\s*", re.IGNORECASE
)


def clean_rewrite(rewritten: str, question: str) -> str:
    """The rewritten question, or ``question`` when the rewrite is empty or not a plausible question."""
    lines = [line.strip() for line in rewritten.strip().splitlines() if line.strip()]
    if not lines:
        return question
    text = _PREFIX.sub("", lines[0]).strip().strip("\"'“”「」").strip()
    if len(text) < 2 or len(text) > max(300, 4 * len(question)):
        return question
    if "[INST]" in text or "<|" in text or "</s>" in text:
        return question
    if not re.search(r"[\w\u3400-\u9fff]", text):
        return question
    if is_chinese(question) != is_chinese(text):  # answered in another language: not a rewrite of this question
        return question
    return text
