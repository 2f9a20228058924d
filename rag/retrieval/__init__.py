"""Retrieval: embedders, the Chroma store, the local lexical index (rows + BM25), and the hybrid retriever that
fuses them."""
