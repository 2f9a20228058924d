"""Generation backends of :class:`rag.llm.MixtralInstructLLM`: llama.cpp, OpenAI-compatible server,
transformers.

Each module imports its heavy dependency lazily; :func:`rag.llm.make_backend` picks one by name.
"""
