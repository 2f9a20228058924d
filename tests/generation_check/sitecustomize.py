"""Loaded by every Python subprocess of a test run that checks generated-text independence (see perturb.py)."""

import perturb

perturb.install()
