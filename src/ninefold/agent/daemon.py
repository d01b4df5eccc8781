"""The node agent: wires the store, the lease, the leader and the reconciler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from ninefold import __version__, defaults
from ninefold.agent.addresses import FloatingAddresses
from ninefold.agent.backups import BackupRunner, BackupScheduler, SnapshotHook
from ninefold.agent.gateway_feed import GatewayFeed, make_engine
from ninefold.agent.gateway_vip import GatewayVipKeeper
from ninefold.agent.healer import Healer
from ninefold.agent.instance import NodeContext
from ninefold.agent.journal import EventJournal
from ninefold.agent.leader import LeaderLoop
from ninefold.agent.membership import LeaseKeeper
from ninefold.agent.quorum import wait_for_quorum
from ninefold.agent.readiness import ServiceNotifier
from ninefold.agent.reconciler import Reconciler
from ninefold.agent.restores import RestoreRunner
from ninefold.agent.revocations import RevocationFollower
from ninefold.agent.store_join import follow_store_members, promote_when_caught_up
from ninefold.gateway.engine import Engine, GatewaySettings
from ninefold.logs.syslog import start_forwarding
from ninefold.security.ca import ca_key_path
from ninefold.security.files import NodeTlsFiles
from ninefold.spec import ClusterSpec
from ninefold.spec.loading import dump_spec
from ninefold.state.keys import SPEC_KEY, node_key
from ninefold.state.records import NodeRecord
from ninefold.store.base import Compare, Put, Store, StoreError
from ninefold.store.cluster import open_store
from ninefold.store.embedded import StoreJoin, member_argv
from ninefold.store.etcd import EtcdStore
from ninefold.store.etcd_binary import find_etcd
from ninefold.store.etcd_versions import etcd_warnings
from ninefold.supervisor import LeftoverRegistry, ProcessSpec, RestartPolicy, SupervisedProcess
from ninefold.supervisor.process import hide_from_children
from ninefold.tasks import cancel_and_wait
from ninefold.volumes.mirror import parse_volume_id
from ninefold.volumes.transport import VolumeListener

log = logging.getLogger("ninefold.agent")


class Agent:
    def __init__(self, spec: ClusterSpec, node: str, data_dir: Path | None = None) -> None:
        self.spec = spec
        self.node = spec.node(node)
        self.data_dir = data_dir or defaults.data_dir(spec.cluster, node)
        self.registry = LeftoverRegistry(self.data_dir / "run")
        self.tls = NodeTlsFiles.of_data_dir(self.data_dir) if spec.security.tls else None
        """This node's certificate files when the spec asks for mutual TLS."""
        self.etcd: SupervisedProcess | None = None
        self.store: Store | None = None
        self.notifier = ServiceNotifier()
        """READY/STATUS/STOPPING for a systemd `Type=notify` unit (a no-op otherwise)."""
        self._stop = asyncio.Event()

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT; TlsError (before anything starts) when the
        spec asks for TLS and this node has no certificate files."""
        if self.tls is not None:
            self.tls.check(self.node.name)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        forwarding = None
        if self.spec.logging.syslog is not None:  # docs/logs.md#forwarding-to-syslog
            forwarding = start_forwarding(
                self.spec.logging.syslog, self.node.name, self.data_dir / "logs"
            )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        killed = await self.registry.cleanup()
        if killed:
            log.warning("stopped leftovers of a previous agent: %s", ", ".join(killed))
        else:
            log.info("leftovers: none")
        joined = None
        if self.spec.store.mode == "embedded" and self.node.store:
            joined = StoreJoin.read(self.data_dir)
            await self._start_etcd(joined)
        self.store = open_store(self.spec, self.node, self.tls)
        membership: list[asyncio.Task[object]] = []
        if self.spec.store.mode == "embedded" and isinstance(self.store, EtcdStore):
            # Not for an external store: its members' advertised URLs may not
            # be the ones this machine reaches it by.
            membership.append(asyncio.create_task(follow_store_members(self.store)))
            if joined is not None:
                promote = promote_when_caught_up(self.store, joined, self.node.name)
                membership.append(asyncio.create_task(promote, name="store-join"))
        try:
            await self._serve(self.store)
        finally:
            await cancel_and_wait(*membership, ignore_errors=True)
            await self.store.close()
            if self.etcd is not None:
                await self.etcd.stop()
            if forwarding is not None:
                await forwarding.stop()

    async def _start_etcd(self, joined: StoreJoin | None) -> None:
        etcd = await asyncio.to_thread(find_etcd)
        log.info("store member %s runs %s", self.node.name, etcd.describe())
        for warning in etcd_warnings(etcd.version):
            log.warning("%s", warning)
        argv = member_argv(
            self.spec, self.node, self.data_dir / "etcd", etcd.path, self.tls, joined
        )
        spec = ProcessSpec(
            name="etcd",
            argv=argv,
            env={},
            cwd=str(self.data_dir),
            stop_signal=int(signal.SIGTERM),
            stop_timeout=10.0,
            log_dir=self.data_dir / "logs",
        )
        self.etcd = SupervisedProcess(
            spec,
            RestartPolicy(backoff=0.5, backoff_max=5.0, limit=1000, window=60.0),
            self.registry,
        )
        await self.etcd.start()
        log.info("store member %s started (pid %s)", self.node.name, self.etcd.pid)

    async def _serve(self, store: Store) -> None:
        def waiting(message: str) -> None:
            log.warning("%s", message)
            self.notifier.status(message)

        self.notifier.status("waiting for the store")
        waiter = asyncio.create_task(wait_for_quorum(store, self.spec, waiting))
        stopper = asyncio.create_task(self._stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if self._stop.is_set():
            waiter.cancel()
            return
        stopper.cancel()
        await self._bootstrap_spec(store)

        journal = EventJournal(store, self.node.name)
        lease = LeaseKeeper(store)
        addresses = FloatingAddresses(journal)
        ctx = NodeContext(
            store=store,
            node=self.node,
            lease=lease,
            journal=journal,
            data_dir=self.data_dir,
            registry=self.registry,
            addresses=addresses,
            volume_port=self.node.ports.volumes,
            tls_dir=self.tls.directory if self.tls is not None else None,
        )
        reconciler = Reconciler(ctx, self.spec)
        leader = LeaderLoop(store, self.node.name, lease, journal, self.spec)

        async def register() -> None:
            record = NodeRecord(
                name=self.node.name,
                address=self.node.address,
                zone=self.node.zone,
                region=self.node.region,
                api_port=self.node.ports.api,
                volume_port=self.node.ports.volumes if self._keeps_copies else 0,
                pid=os.getpid(),
                version=__version__,
            )
            await store.put(node_key(self.node.name), record.encode(), lease.lease)
            reconciler.republish()
            reconciler.poke()
            leader.poke()

        async def drop_addresses() -> None:
            await addresses.drop_all("lease at risk")

        lease.on_acquired.append(register)
        lease.on_at_risk.append(drop_addresses)  # first: the cheapest fence there is
        lease.on_at_risk.append(reconciler.fence)
        lease.on_renewed.append(addresses.renewed)

        async def recovered() -> None:
            reconciler.republish()
            reconciler.poke()
            leader.poke()

        lease.on_recovered.append(recovered)
        await lease.start()
        log.info(
            "agent %s up (cluster %s, data %s)", self.node.name, self.spec.cluster, self.data_dir
        )
        # Imported here: the CLI imports this module to run an agent, and most
        # commands never do, so they need not load the web server.
        from ninefold.agent.history import History
        from ninefold.agent.node_metrics import render as render_node
        from ninefold.api import ApiServer, create_app
        from ninefold.gateway.metrics import render

        engine: Engine | None = None
        from ninefold.agent.agent_metrics import AgentMetrics
        from ninefold.agent.store_status import StoreMemberStatus

        member = None  # this node's etcd member: docs/operations.md#metrics
        if self.spec.store.mode == "embedded" and self.node.store and isinstance(store, EtcdStore):
            member = StoreMemberStatus(store)
        own = AgentMetrics(self.node.name, lease, leader, reconciler, addresses, member)

        def metrics() -> bytes:
            gateway = render(self.node.name, engine.snapshot) if engine is not None else b""
            statuses = lambda: [r.status() for r in reconciler.runners.values()]  # noqa: E731
            return gateway + render_node(self.node.name, self.data_dir, statuses) + own.render()

        history = History(self.node.name, metrics)  # docs/observability.md#history
        api = ApiServer(
            create_app(
                store,
                self.spec,
                self.node.name,
                metrics,
                self.data_dir / "logs",
                self._ca_files,
                history=history.window,
            ),
            self.node.address,
            self.node.ports.api,
            tls=self.tls,
        )
        if await api.start():
            scheme = "https" if self.tls is not None else "http"
            log.info("API on %s://%s/v1/", scheme, self.node.host_port(self.node.ports.api))
        volumes = await self._start_volume_listener(reconciler)
        try:
            engine, feed_task = await self._start_gateway(store, lease)
        except BaseException:
            await api.stop()
            if volumes is not None:
                await volumes.stop()
            raise
        tasks = [
            asyncio.create_task(reconciler.run(), name="reconciler"),
            asyncio.create_task(leader.run(), name="leader"),
            asyncio.create_task(history.run(), name="history"),
        ]
        healer = Healer(store, journal, leader, self.tls.ca if self.tls is not None else None)
        tasks.append(asyncio.create_task(healer.run(), name="healer"))
        from ninefold.agent.alerts import AlertEvaluator, NodeFactsReporter  # docs/alerts.md

        ui = f"{'https' if self.tls else 'http'}://{self.node.host_port(self.node.ports.api)}/ui/"
        tasks += [
            asyncio.create_task(AlertEvaluator(store, journal, leader, ui).run(), name="alerts"),
            asyncio.create_task(NodeFactsReporter(
                store, lease, self.node.name, self.data_dir,
                self.tls.cert if self.tls is not None else None,
            ).run(), name="alert-facts"),
        ]  # fmt: skip
        hide_from_children(  # an SMTP password is the agent's alone
            c.email.password_env for c in self.spec.alerts.channels.values()
            if c.email is not None and c.email.password_env
        )  # fmt: skip
        hide_from_children(  # the restic passwords and credentials are the agent's alone
            name
            for repository in self.spec.backups.repositories.values()
            for name in [repository.password_env or "", *(repository.credentials_env or [])]
            if name
        )
        backups = BackupRunner(
            store, journal, self.node.name, self.spec, self.data_dir,
            self._snapshot_hook(reconciler), self._ca_files,
        )  # fmt: skip
        restores = RestoreRunner(
            store, journal, self.node.name, self.spec, self.data_dir,
            lambda service: any(r.service == service for r in reconciler.runners.values()),
        )  # fmt: skip
        tasks += [
            asyncio.create_task(BackupScheduler(store, journal, leader).run(), name="backups"),
            asyncio.create_task(backups.run(), name="backup-runner"),
            asyncio.create_task(restores.run(), name="restores"),
        ]
        if engine is not None:  # what clients see through this gateway: docs/availability.md
            from ninefold.agent.probes import RouteProbes

            probes = RouteProbes(
                store, self.node.name, self.spec, lambda: lease.valid, engine.snapshot
            )
            tasks.append(asyncio.create_task(probes.run(), name="route-probes"))
        if not self.node.witness:  # checked from the nodes whose gateways route to them
            from ninefold.agent.external_checks import ExternalChecks  # docs/spec.md

            external = ExternalChecks(store, self.node.name, lease, journal, self.spec)
            lease.on_acquired.append(external.republish)
            tasks.append(asyncio.create_task(external.run(), name="external-checks"))
        if member is not None:
            tasks.append(asyncio.create_task(member.run(), name="store-member-status"))
        if self.tls is not None:
            follower = RevocationFollower(store, self.node.name, self.tls)
            tasks.append(asyncio.create_task(follower.run(), name="revocations"))
        from ninefold.agent.templates import TemplateRenderer  # docs/templates.md

        renderer = TemplateRenderer(store, self.node, journal, self.spec, self.data_dir / "logs")
        tasks.append(asyncio.create_task(renderer.run(), name="templates"))
        gateway_vip = None
        if self._runs_gateway:
            gateway_vip = GatewayVipKeeper(store, self.node, lease, journal, addresses, self.spec)
            tasks.append(asyncio.create_task(gateway_vip.run(), name="gateway-vip"))
        self.notifier.ready(
            f"node {self.node.name} serving (API {self.node.host_port(self.node.ports.api)}, "
            f"gateway {'on' if engine is not None else 'off'})"
        )
        try:
            stopper = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and task.exception():
                    log.error("%s died: %r", task.get_name(), task.exception())
        finally:
            log.info("agent %s shutting down", self.node.name)
            self.notifier.stopping("draining and stopping this node's services")
            if gateway_vip is not None:
                await gateway_vip.stop()  # another gateway takes the VIP now
            await cancel_and_wait(*tasks, ignore_errors=True)
            await reconciler.stop_all()  # drains through the gateways, ours included
            await addresses.drop_all("agent stopping")
            await cancel_and_wait(feed_task, ignore_errors=True)
            if engine is not None:
                await engine.stop()
            await api.stop()
            if volumes is not None:
                await volumes.stop()
            await lease.stop(revoke=True)

    @property
    def _runs_gateway(self) -> bool:
        """A witness (seed 001's quorum node) runs no gateway: it takes no
        traffic and never holds the gateway VIP. Its role is the one this agent
        started with, like the rest of the gateway's settings."""
        return self.spec.gateway.enabled and not self.node.witness

    @property
    def _keeps_copies(self) -> bool:
        """Whether this node receives replicated volumes (a witness runs no
        instance, so it never holds a copy)."""
        return self.spec.replicates_volumes and not self.node.witness

    async def _start_volume_listener(self, reconciler: Reconciler) -> VolumeListener | None:
        """Where the other nodes' actives push replicated volumes to this node
        (only when the spec replicates a volume, and never on a witness): into
        the directory of this node's standby instance of that service, never
        into an active's."""
        if not self._keeps_copies:
            return None

        def resolve(volume_id: str) -> Path | None:
            parsed = parse_volume_id(volume_id)
            if parsed is None:
                return None
            service, volume, token = parsed
            for runner in reconciler.runners.values():
                if runner.service == service:
                    return runner.receives(volume, token)
            return None

        nodes = {node.address for node in self.spec.nodes}
        listener = VolumeListener(
            self.node.address,
            self.node.ports.volumes,
            tls=self.tls,
            resolve=resolve,
            # Without TLS, at least only the spec's nodes (a join adds to the
            # stored spec; such a node pushes once this agent restarts).
            allow_peer=None if self.tls is not None else nodes.__contains__,
        )
        try:
            await listener.start()
        except OSError as exc:
            # Like the gateway: the node goes on without it; its standbys'
            # copies fall behind, which the actives' events say.
            log.error(
                "volume transfers cannot listen on %s: %s (ports.volumes; `ninefold doctor`)",
                self.node.host_port(self.node.ports.volumes),
                exc.strerror or exc,
            )
            return None
        log.info("volume transfers on %s", self.node.host_port(self.node.ports.volumes))

        def abort(service: str) -> int:
            return listener.abort(
                lambda volume_id: volume_id.startswith(f"{service}/"),
                "this node's instance became the active",
            )

        reconciler.ctx.abort_transfers = abort
        return listener

    @staticmethod
    def _snapshot_hook(reconciler: Reconciler) -> SnapshotHook:
        """A volume's `snapshot` hook as this node's instance of its service
        runs it (None when none runs here, or the volume has none)."""

        def hook(service: str, volume: str) -> Callable[[], Awaitable[int]] | None:
            for runner in reconciler.runners.values():
                if runner.service == service:
                    return runner.volumes.snapshot_hook(volume)
            return None

        return hook

    def _ca_files(self) -> tuple[Path, Path | None] | None:
        """(CA certificate, CA key if this machine has one) for `GET /v1/ca` and
        `POST /v1/join`; None without TLS. The key: $NINEFOLD_CA_KEY, else next
        to the spec's CA certificate when that path is absolute."""
        tls = self.spec.security.tls
        if tls is None:
            return None
        ca = NodeTlsFiles.of_data_dir(self.data_dir).ca
        named = os.environ.get("NINEFOLD_CA_KEY")
        if named:
            return ca, Path(named)
        spec_ca = tls.ca_path()
        return ca, ca_key_path(spec_ca) if spec_ca.is_absolute() else None

    async def _start_gateway(
        self, store: Store, lease: LeaseKeeper
    ) -> tuple[Engine | None, asyncio.Task[None] | None]:
        if not self._runs_gateway:
            return None, None
        # gateway.tls may serve the node's certificate even without security.tls.
        files = NodeTlsFiles.of_data_dir(self.data_dir)
        settings = GatewaySettings(
            node=self.node.name,
            address=self.node.address,
            http_port=self.node.ports.gateway_http,
            run_dir=self.data_dir / "gateway",
            log_dir=self.data_dir / "logs",
            vips=(self.spec.gateway.vip.ip,) if self.spec.gateway.vip else (),
            node_cert=files.cert,
            node_key=files.key,
            node_tls=self.tls if self.spec.mesh_listens else None,
            mesh_port=self.node.ports.mesh if self.spec.mesh_listens else None,
        )
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(self.spec, settings, self.registry)
        try:
            await engine.start()
        except (RuntimeError, OSError, ValueError) as exc:
            # The control plane goes on without this node's gateway: the
            # cluster's other gateways still route to its instances.
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.error("gateway (%s) could not start: %s", engine.name, first)
            with contextlib.suppress(Exception):
                await engine.stop()
            return None, None
        log.info("gateway (%s) on %s:%s", engine.name, settings.address, settings.http_port)
        if self.spec.gateway.tls is not None:
            log.info("gateway TLS on %s:%s", settings.address, self.spec.gateway.tls.port)
        if settings.mesh_port is not None:
            log.info("gateway mesh (mTLS) on %s:%s", settings.address, settings.mesh_port)
        feed = GatewayFeed(store, self.node.name, lease, engine, self.spec)
        return engine, asyncio.create_task(feed.run(), name="gateway")

    async def _bootstrap_spec(self, store: Store) -> None:
        """The first agent up puts its spec in the store; later ones keep what is there."""
        text = dump_spec(self.spec).encode()
        for _ in range(20):
            try:
                await store.txn([Compare(SPEC_KEY, "create", "==", 0)], [Put(SPEC_KEY, text)])
                return
            except StoreError as exc:
                log.debug("spec bootstrap: %s", exc)
                await asyncio.sleep(0.2)


def run_agent(spec: ClusterSpec, node: str, data_dir: Path | None) -> None:
    runner: Callable[[Coroutine[Any, Any, None]], None]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    runner(Agent(spec, node, data_dir).run())
