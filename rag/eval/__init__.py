"""Evaluation: datasets (RGB, CMRC 2018), retrieval and answer metrics, what ``rag eval`` reports."""
