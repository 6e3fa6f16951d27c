"""Turning run results into what the operator reads: a per-host table, or JSON."""
