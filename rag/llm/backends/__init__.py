"""Generation backends of :class:`rag.llm.adapter.MixtralInstructLLM`: llama.cpp, OpenAI-compatible server,
transformers; each imports its heavy dependency lazily and brings its own tokenizer.
:func:`rag.llm.factory.make_backend` picks one by name."""
