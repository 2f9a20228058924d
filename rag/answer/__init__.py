"""Answering: context assembly within the exact token budget, the QA prompt, citation checks, and the chain that
runs them with the collaborators it is handed."""
