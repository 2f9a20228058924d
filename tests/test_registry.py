"""Backends by registration (rag/registry.py): a new LLM backend is one class and one registration, chosen by
name like the built-ins; a registry imports a backend registered by path only when it is first asked for."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from rag.errors import ConfigError
from rag.llm.adapter import MixtralInstructLLM
from rag.llm.backends.base import BackendConfig
from rag.llm.factory import LLM_BACKENDS, infer_backend
from rag.registry import Registry
from tests.fakes import ScriptedBackend


class EchoBackend(ScriptedBackend):
    """A user's own runtime: built from the config like every backend, it writes a fixed answer."""

    name = "echo-test"

    def __init__(self, config: BackendConfig) -> None:
        super().__init__("registered backend answers", context_window=config.n_ctx)


def test_an_llm_backend_is_one_registration() -> None:
    with pytest.raises(ConfigError, match=r"RAG_LLM_BACKEND='echo-test' is not a backend: use auto, llama_cpp"):
        infer_backend("model", backend="echo-test")
    LLM_BACKENDS.register("echo-test", "tests.test_registry:EchoBackend")
    try:
        llm = MixtralInstructLLM(model="anything", backend="echo-test", n_ctx=1024, max_tokens=16, temperature=0.0)
        assert llm.invoke("Hello") == "registered backend answers"
        assert isinstance(llm.backend_instance, EchoBackend)
    finally:
        LLM_BACKENDS.unregister("echo-test")
    assert "echo-test" not in LLM_BACKENDS and {"llama_cpp", "openai", "transformers"} <= set(LLM_BACKENDS.names())


def test_a_backend_registered_by_path_is_imported_at_first_use() -> None:
    registry: Registry[Any] = Registry("widget", "RAG_WIDGET", {"hsv": "colorsys:rgb_to_hsv"})
    sys.modules.pop("colorsys", None)  # a small module with no classes: importing it again harms nothing
    assert "colorsys" not in sys.modules  # registering imported nothing
    assert registry.get("hsv")(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    assert "colorsys" in sys.modules
    with pytest.raises(ConfigError, match=r"RAG_WIDGET='gadget' is not a widget: choose among hsv"):
        registry.get("gadget")
