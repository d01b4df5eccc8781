"""The keyspace: every key, every record stored under it, and the reads that
take a snapshot of the cluster from the store. One home, so a key is spelled
once (`keys`), a record type is defined once (`records`), and a reader of the
store finds what it reads in `reads`, `view` and `tokens`.

This file imports nothing: `keys` and `records` stay importable by the pure
deciders without pulling in the store.
"""
