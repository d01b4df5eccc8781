"""Pure deciders: every decision of ninefold as a function of a snapshot.

Nothing in this package does I/O: no asyncio, no store, no supervisor, no
subprocess, no socket (tests/unit/test_layering.py checks it). The agent reads
the state, calls a decider, and carries out what it returns.
"""
