"""Evaluation: datasets (RGB, CMRC 2018), retrieval and answer metrics, RGB's passage sets and answer records, what
``rag eval`` reports."""
