"""An answer as the chat shows it: links are text, never live.

A person's documents are not all written by friends: a passage may carry a link (or a shell command) and tell the
model to print it, and a small model often does (docs/reliability.md, "Instructions hidden in documents"). The chat
renders Markdown, which would make such a link one click away. Here every link of an answer is shown as code text:
readable and copyable, not clickable, whatever its form (a Markdown link or image, an autolink, a bare URL, an HTML
tag). Code the answer already quotes is left as it is.
"""

from __future__ import annotations

import re

__all__ = ["inert_links", "linked_markers"]

#: Code the answer already quotes: ```blocks``` and `spans` (the longest first).
_CODE = re.compile(r"(```.*?```|`[^`\n]+`)", re.DOTALL)
#: [text](target) and ![alt](target).
_MARKDOWN_LINK = re.compile(r"!?\[([^\]\n]*)\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^\"']*[\"'])?\s*\)")
#: <https://...> autolinks and <www...>.
_AUTOLINK = re.compile(r"<((?:[a-zA-Z][a-zA-Z0-9+.-]{1,31}:|www\.)[^>\s]+)>")
#: Bare URLs (scheme or www.; CJK text may touch them, so no \b), up to whitespace, a CJK character or closing
#: punctuation.
_URL = re.compile(
    r"(?:(?<![A-Za-z0-9+.-])(?:https?|ftp|file|javascript|data):[^\s<>`\"'\u3000-\u303f\u3400-\u9fff\uff00-\uffef]+"
    r"|(?<![A-Za-z0-9.-])www\.[^\s<>`\"'\u3000-\u303f\u3400-\u9fff\uff00-\uffef]+)",
    re.IGNORECASE,
)
#: Raw HTML tags (an <a href>, an <img src>): their angle brackets are escaped, so they show as text.
_TAG = re.compile(r"<(/?[a-zA-Z][^>\n]*)>")


def _code(text: str) -> str:
    return f"`{text}`" if "`" not in text else f"`` {text} ``"


def _url_as_code(match: re.Match[str]) -> str:
    url = core = match.group(0)
    # the sentence's own punctuation stays outside; a bracket the URL opened is its own
    while core and core[-1] in ".,;:!?)]":
        closing = core[-1]
        if closing in ")]" and core.count("(" if closing == ")" else "[") >= core.count(closing):
            break
        core = core[:-1]
    return _code(core) + url[len(core) :]


def _inert(prose: str) -> str:
    prose = _MARKDOWN_LINK.sub(lambda m: f"{m.group(1)} ({_code(m.group(2))})" if m.group(1) else _code(m.group(2)),
                               prose)  # fmt: skip
    prose = _AUTOLINK.sub(lambda m: _code(m.group(1)), prose)
    parts = _CODE.split(prose)  # the links just made code stay as they are
    for i in range(0, len(parts), 2):
        parts[i] = _TAG.sub(lambda m: f"&lt;{m.group(1)}&gt;", _URL.sub(_url_as_code, parts[i]))
    return "".join(parts)


def inert_links(answer: str) -> str:
    """``answer`` with every link shown as code text (see the module docstring)."""
    parts = _CODE.split(answer)
    return "".join(part if i % 2 else _inert(part) for i, part in enumerate(parts))


#: An answer's citation marker, ``[n]`` (not a Markdown link's text: that is followed by ``(``).
_MARKER = re.compile(r"\[(\d{1,3})\](?!\()")


def linked_markers(answer: str, numbers: set[int]) -> str:
    """``answer`` (already made inert) with each ``[n]`` of a source shown linked to that source's card
    (``#rag-source-n`` in the sources panel); markers inside code and numbers of no source stay text."""
    parts = _CODE.split(answer)
    for i in range(0, len(parts), 2):
        parts[i] = _MARKER.sub(
            lambda m: (
                f'<a href="#rag-source-{m.group(1)}" class="rag-cite">[{m.group(1)}]</a>'
                if int(m.group(1)) in numbers
                else m.group(0)
            ),
            parts[i],
        )
    return "".join(parts)
