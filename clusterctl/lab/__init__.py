"""The local lab (see lab.py)."""
