"""Citation markers checked against the passages of the context (pure functions, exhaustive)."""

from __future__ import annotations

import random

import pytest

from rag.answer.citations import CitationStreamFilter, attribute_answer, check_citations, select_sources

ANSWER = "年假五天 [1]。病假需证明【2】。两者都有 [1,2]，也见[2、1]。编造的 [7]。混合 [2][9]。范围 [1-2]。"


def test_markers_pointing_nowhere_are_removed_and_the_rest_normalised() -> None:
    checked = check_citations(ANSWER, {1, 2})
    assert checked.text == "年假五天 [1]。病假需证明[2]。两者都有 [1][2]，也见[2][1]。编造的。混合 [2]。范围 [1][2]。"
    assert checked.cited == [1, 2]
    assert checked.invalid == [7, 9]


def test_no_valid_passages_removes_every_marker() -> None:
    checked = check_citations("Remote work is allowed [1][2] three days [3].", set())
    assert checked.text == "Remote work is allowed three days."
    assert checked.cited == [] and checked.invalid == [1, 2, 3]


@pytest.mark.parametrize("text", ["[abc] stays", "a list [x, y]", "数组 a[0] 不是引用吗", "2024 [年]"])
def test_brackets_that_are_not_markers_stay(text: str) -> None:
    # a[0] points at passage 0, which never exists: it is a marker pointing nowhere only when 0 is not valid
    checked = check_citations(text, {0, 1})
    assert checked.text == text


def test_stream_filter_equals_the_whole_check_for_any_split() -> None:
    valid = {1, 2}
    expected = check_citations(ANSWER, valid).text
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(ANSWER)), rng.randint(1, 12)))
        pieces = [ANSWER[a:b] for a, b in zip([0, *cuts], [*cuts, len(ANSWER)], strict=True)]
        stream = CitationStreamFilter(valid)
        shown = "".join(stream.feed(piece) for piece in pieces) + stream.flush()
        assert shown == expected, pieces


def test_stream_filter_releases_text_that_is_not_a_marker() -> None:
    stream = CitationStreamFilter({1})
    assert stream.feed("see [") == "see"
    assert stream.feed("note] and ") == " [note] and"
    assert stream.flush() == " "


def test_sources_hold_what_was_cited_or_the_top_passages_marked_uncited() -> None:
    passages = [{"n": 1, "score": 0.2}, {"n": 2, "score": 0.9}, {"n": 3, "score": 0.5}, {"n": 4, "score": 0.1}]
    cited = select_sources(passages, [3, 1, 3])
    assert [(s["n"], s["cited"]) for s in cited] == [(1, True), (3, True)]
    fallback = select_sources(passages, [], top_uncited=2)
    assert [(s["n"], s["cited"]) for s in fallback] == [(2, False), (3, False)]
    assert select_sources(passages, [8]) == select_sources(passages, [])


def test_removing_a_marker_never_makes_another() -> None:
    """``[6[80]]`` less the invalid ``[80]`` reads ``[6]``: found by the generation check (a perturbed SmolLM2 wrote
    ``The document [2[25],[14],[3[7]], [6[80...``); neither the whole answer nor its stream may show such a marker."""
    answer = "The document [2[25],[14],[3[7]], [6[80]]. Done [1]."
    checked = check_citations(answer, {1, 2, 3, 4})
    assert checked.text == "The document [2,,[3],. Done [1]." and checked.cited == [3, 1]
    assert sorted(checked.invalid) == [6, 7, 14, 25, 80]
    pieces = ["The", " document", " [", "2", "[", "25", "],", "[", "1", "4", "],[", "3", "[", "7", "]],", " [", "6",
              "[", "8", "0", "]]", ".", " Done", " [", "1", "]."]  # fmt: skip
    assert "".join(pieces) == answer
    stream = CitationStreamFilter({1, 2, 3, 4})
    shown = [stream.feed(piece) for piece in pieces] + [stream.flush()]
    assert "".join(shown) == checked.text


def test_an_answer_without_markers_is_matched_to_the_passages_that_hold_its_words() -> None:
    rivers = [
        {"n": 1, "text": "长江全长约6300公里，是中国第一长河。", "score": 0.9},
        {"n": 2, "text": "黄河全长约5464公里，是中国第二长河。", "score": 0.8},
    ]
    assert attribute_answer("根据文档片段，长江全长约6300公里。", "长江有多长？", rivers) == [1]  # lead-in ignored
    assert attribute_answer("根据黄河的资料，长江全长约6300公里。", "长江有多长？", rivers) == [1]  # where it says, too
    assert attribute_answer("黄河约5464公里。长江约6300公里。", "两条河各有多长？", rivers) == [2, 1]  # per sentence
    assert attribute_answer("珠江是华南最大的河流。", "长江有多长？", rivers) == []  # its words are in no passage
    assert attribute_answer("长江", "长江有多长？", rivers) == []  # nothing the question did not already say
    same = [{"n": 1, "text": "第一季度营收6300万元。"}, {"n": 2, "text": "全年营收6300万元。"}]
    assert attribute_answer("6300万元", "营收多少？", same) == [1]  # equals: the better-ranked passage
    handbook = [
        {"n": 1, "text": "Passwords rotate every 180 days."},
        {"n": 2, "text": "Employees may work remotely up to three days per week."},
    ]
    question = "How many days per week may employees work remotely?"
    assert attribute_answer("According to the passages, up to three days.", question, handbook) == [2]
