"""Replicated volumes: the active's copy mirrored to the nodes that may take
over (docs/volumes.md)."""
