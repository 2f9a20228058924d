"""The check that catches tests depending on generated text (tests/generation_check/perturb.py) really catches one.

Two pytest runs in subprocesses over a test module written here: the first logs which tests generated; the second
reruns exactly those with the model perturbed. A test that pins what SmolLM2 wrote fails the second run; a test
that asserts only the shape of the answer passes both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.generation_check import perturb

REPO = Path(__file__).resolve().parents[1]

PINNED_TESTS = """
from pathlib import Path

from llama_cpp import Llama

from rag.models import bundled_model_path

SEEN = Path(__file__).with_name("seen.txt")


def write() -> str:
    llm = Llama(str(bundled_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")), n_ctx=256, n_threads=1, verbose=False)
    out = llm.create_completion("Once upon a time, in a city by a river,", max_tokens=24, temperature=0.0, seed=0)
    return out["choices"][0]["text"]


def test_pins_what_the_model_wrote() -> None:
    text = write()
    if not SEEN.exists():
        SEEN.write_text(text, encoding="utf-8")
    assert text == SEEN.read_text(encoding="utf-8")


def test_asserts_the_shape_only() -> None:
    assert isinstance(write(), str)


def test_generates_nothing() -> None:
    assert True
"""


def run_pytest(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q", "-p", "no:cacheprovider",
         f"--rootdir={folder}", *args, str(folder / "test_pinned.py")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_test_that_pins_generated_text_fails_the_perturbed_rerun(tmp_path: Path) -> None:
    folder = tmp_path / "suite"
    folder.mkdir()
    (folder / "test_pinned.py").write_text(PINNED_TESTS, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_TEST_") and k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO)
    log = tmp_path / "generation.log"

    first = run_pytest(folder, {**env, perturb.LOG_ENV: str(log)})
    assert first.returncode == 0, first.stdout + first.stderr
    logged = set(log.read_text(encoding="utf-8").split())
    generating = {name.rsplit("::", 1)[1] for name in logged}
    assert generating == {"test_pins_what_the_model_wrote", "test_asserts_the_shape_only"}

    again = run_pytest(folder, {**env, perturb.SEED_ENV: "1"}, "--only-tests-in", str(log))
    assert again.returncode == 1, again.stdout + again.stderr
    assert "1 failed, 1 passed, 1 deselected" in again.stdout, again.stdout
    assert "FAILED" in again.stdout and "test_pins_what_the_model_wrote" in again.stdout


def test_no_test_hides_its_subprocesses_from_the_check() -> None:
    """The check reaches a server a test starts through PYTHONPATH (conftest.py sets it): a test that replaced the
    variable would run its server's model unperturbed, and a dependence on its text would pass unseen."""
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in sorted((REPO / "tests").rglob("*.py"))
        if path.name != "conftest.py" and "generation_check" not in path.parts and path.name != Path(__file__).name
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if "PYTHONPATH" in line
    ]
    assert not offenders, f"pass os.environ on as it is (conftest.py sets PYTHONPATH): {offenders}"
