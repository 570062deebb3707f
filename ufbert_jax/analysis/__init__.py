"""Routing analysis of FFF checkpoints (docs/research.md)."""
