"""The built-in gateway engine (asyncio + httptools, no install needed)."""

from ninefold.gateway.builtin.engine import BuiltinEngine

__all__ = ["BuiltinEngine"]
