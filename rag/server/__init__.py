"""The HTTP edge: `rag serve`, an OpenAI-compatible API (:mod:`rag.server.app`)."""
