"""The agent's side of certificate revocation (security/revocation.py):
it tells the cluster which certificate it uses (`certs/<node>`, what a
quarantine revokes), and it keeps its node's `tls/crl.pem` equal to the
cluster's list (`security/crl`), so that its API, mesh, volume listener and
etcd member refuse a revoked certificate from the next handshake on."""

from __future__ import annotations

import asyncio
import logging

from cryptography import x509

from ninefold.agent.changes import ChangeSignal, run_level_triggered
from ninefold.security.files import NodeTlsFiles, TlsError, write_public
from ninefold.security.revocation import cert_serial, check_crl
from ninefold.security.tls import files_stamp
from ninefold.state.keys import CRL_KEY, cert_key
from ninefold.state.records import CertSerials
from ninefold.store.base import Compare, Put, Store

log = logging.getLogger("ninefold.revocations")

FOLLOW_EVERY = 30.0
"""Seconds between two full looks when nothing changed (the watch wakes it sooner)."""


async def record_serial(store: Store, node: str, cert_pem: bytes) -> bool:
    """Add the certificate's serial to `certs/<node>` unless it is there; True
    if it was added. Guarded by the record's revision (a join and the agent
    may write at once)."""
    serial = format(cert_serial(cert_pem), "x")
    for _ in range(5):
        item = await store.get(cert_key(node))
        record = CertSerials.decode(item.value) if item is not None else CertSerials(node=node)
        if serial in record.serials:
            return False
        record.serials.append(serial)
        guard = Compare(cert_key(node), "mod", "==", item.mod_revision if item else 0)
        if (await store.txn([guard], [Put(cert_key(node), record.encode())])).succeeded:
            return True
    return False


class RevocationFollower:
    def __init__(self, store: Store, node: str, files: NodeTlsFiles) -> None:
        self._store = store
        self._node = node
        self._files = files
        self._stamp: tuple[int, ...] = ()
        self.written = 0
        """How many times the list was written (tests)."""

    async def run(self) -> None:
        signal = ChangeSignal(self._store, CRL_KEY)
        await run_level_triggered(signal, self.step, "revocations", every=FOLLOW_EVERY)

    async def step(self) -> None:
        stamp = await asyncio.to_thread(files_stamp, self._files)
        if stamp != self._stamp:
            pem = await asyncio.to_thread(self._files.cert.read_bytes)
            if await record_serial(self._store, self._node, pem):
                log.info("certificate %s recorded", format(cert_serial(pem), "x"))
            self._stamp = stamp
        item = await self._store.get(CRL_KEY)
        if item is not None:
            await asyncio.to_thread(self._write, item.value)

    def _write(self, pem: bytes) -> None:
        """Blocking: compare, check the signature, replace the file."""
        try:
            if self._files.crl.read_bytes() == pem:
                return
        except OSError:
            pass
        try:
            ca = x509.load_pem_x509_certificate(self._files.ca.read_bytes())
            check_crl(pem, ca)
        except (OSError, ValueError, TlsError) as exc:
            log.error("the cluster's revocation list is not used: %s", exc)
            return
        write_public(self._files.crl, pem)
        self.written += 1
        log.warning("revocation list updated in %s", self._files.crl)
