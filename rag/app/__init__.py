"""The application: the one composition root (settings -> objects, the shared embedder and model), the assistant
that answers with figures, the document library, and uploads."""
