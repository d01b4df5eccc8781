"""Renders this node's `templates:` (docs/templates.md): on start, on every
change a template can see (debounced by its `wait`), and at every resync;
writes a file only when its bytes differ, atomically, and then runs its
reload command.

A template that does not render, a file that cannot be written and a command
that fails are each one log line and one event (`template-failed`,
`template-command-failed`); the file keeps its previous contents, the loop
goes on. A render failure is reported once until it changes or heals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ninefold import defaults
from ninefold.agent.changes import STEP_RETRY, ChangeSignal
from ninefold.agent.journal import EventJournal
from ninefold.decide.templates import Debounce, TemplateView, render_template, template_view
from ninefold.spec import ClusterSpec, NodeSpec
from ninefold.spec.templates import TemplateSpec
from ninefold.state.keys import (
    DRAIN,
    EXTERNAL,
    KV,
    NODES,
    SPEC_KEY,
    STATUS,
    external_key,
    last_segment,
)
from ninefold.state.reads import read_spec
from ninefold.state.records import ExternalReport, InstanceStatus
from ninefold.store.base import Store, StoreError
from ninefold.supervisor.process import run_hook
from ninefold.templating import TemplateError

log = logging.getLogger("ninefold.templates")

WATCHED = (SPEC_KEY, STATUS, NODES, DRAIN, KV, EXTERNAL)
"""What templates can see. Watched only while this node renders a template;
otherwise only the spec is (a template may be added by `apply`)."""
DEFAULT_MODE = 0o644


async def read_template_view(store: Store, spec: ClusterSpec, node: str) -> TemplateView:
    statuses = await store.list(STATUS)
    nodes = await store.list(NODES)
    drained = await store.list(DRAIN)
    kv = await store.list(KV)
    external = None
    if any(s.is_external for s in spec.services.values()):
        external = await store.get(external_key(node))
    return template_view(
        spec,
        [InstanceStatus.decode(i.value) for i in statuses.items],
        [last_segment(i.key) for i in nodes.items],
        [last_segment(i.key) for i in drained.items],
        {i.key[len(KV) :]: i.value.decode(errors="replace") for i in kv.items},
        ExternalReport.decode(external.value).endpoints if external is not None else (),
    )


@dataclass
class _Template:
    """This node's state of one template."""

    spec: TemplateSpec
    debounce: Debounce
    seen: TemplateView | None = None
    """The view of the last step (a different one restarts the debounce)."""
    rendered_at: float = -math.inf
    failure: str | None = None
    """The render failure last reported (reported again only when it changes)."""
    renders: int = 0


class TemplateRenderer:
    def __init__(
        self,
        store: Store,
        node: NodeSpec,
        journal: EventJournal,
        spec: ClusterSpec,
        log_dir: Path,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._node = node
        self._journal = journal
        self._spec = spec
        self._log_dir = log_dir
        self._clock = clock
        self._templates: dict[int, _Template] = {}
        """By the template's index in the spec."""

    async def run(self) -> None:
        watching = False
        signal = ChangeSignal(self._store, SPEC_KEY)
        signal.start()
        timeout = 0.0
        try:
            while True:
                await signal.wait(timeout)
                try:
                    timeout = await self.step()
                except StoreError as exc:
                    log.debug("templates: %s", exc)
                    timeout = defaults.RESYNC_INTERVAL
                except Exception:
                    log.exception("templates failed; trying again")
                    timeout = STEP_RETRY
                if bool(self._templates) != watching:
                    watching = not watching
                    await signal.stop()
                    signal = ChangeSignal(self._store, *(WATCHED if watching else (SPEC_KEY,)))
                    signal.start()
        finally:
            await signal.stop()

    async def step(self) -> float:
        """Render what is due; seconds until something may be due again."""
        self._spec = await read_spec(self._store, self._spec)
        with contextlib.suppress(KeyError):
            self._node = self._spec.node(self._node.name)
        mine = {i: t for i, t in enumerate(self._spec.templates) if t.selects(self._node)}
        for gone in [i for i in self._templates if i not in mine]:
            del self._templates[gone]
        if not mine:
            return defaults.RESYNC_INTERVAL
        view = await read_template_view(self._store, self._spec, self._node.name)
        now = self._clock()
        wake = now + defaults.RESYNC_INTERVAL
        for i, spec in mine.items():
            state = self._templates.get(i)
            if state is None or state.spec != spec:
                state = _Template(spec, Debounce(spec.wait.min, spec.wait.longest))
                self._templates[i] = state
            elif state.seen != view:
                state.debounce.changed(now)
            state.seen = view
            due = state.debounce.due_at()
            first = state.renders == 0
            if (
                first
                or (due is not None and due <= now)
                or (now - state.rendered_at >= defaults.RESYNC_INTERVAL)
            ):
                state.debounce.rendered()
                state.rendered_at, state.renders = now, state.renders + 1
                await self._render(state, view)
                due = None
            wake = min(wake, state.rendered_at + defaults.RESYNC_INTERVAL)
            if due is not None:
                wake = min(wake, due)
        return max(0.0, wake - self._clock())

    async def _render(self, state: _Template, view: TemplateView) -> None:
        spec, node = state.spec, self._node.name
        destination = Path(spec.destination_for(node))
        subject = spec.name or str(destination)
        try:
            source = spec.contents
            if source is None:
                assert spec.source is not None
                source = await asyncio.to_thread(Path(spec.source).read_text, encoding="utf-8")
            data = await asyncio.to_thread(render_template, spec, source, view, node)
        except (OSError, UnicodeDecodeError) as exc:
            await self._failed(state, f"cannot read its source {spec.source}: {_why(exc)}")
            return
        except TemplateError as exc:
            await self._failed(state, str(exc))
            return
        try:
            changed = await asyncio.to_thread(write_if_changed, destination, data, spec.file_mode)
        except OSError as exc:
            await self._failed(state, f"cannot write {destination}: {_why(exc)}")
            return
        if state.failure is not None:
            log.info("template %s renders again", subject)
            state.failure = None
        if not changed:
            return
        log.info("template %s: wrote %s (%d bytes)", subject, destination, len(data))
        argv = spec.command_for(node)
        if argv is None:
            await self._journal.record(
                "template-rendered", subject, f"wrote {destination}", bytes=len(data), node=node
            )
            return
        started = time.monotonic()
        env = {
            "NINEFOLD_TEMPLATE": subject,
            "NINEFOLD_DESTINATION": str(destination),
            "NINEFOLD_NODE": node,
        }
        code = await run_hook(
            argv, env, str(destination.parent), spec.timeout, self._log_dir / "templates.log"
        )
        took = time.monotonic() - started
        if code == 0:
            log.info("template %s: %s ran in %.2fs", subject, argv[0], took)
            await self._journal.record(
                "template-rendered", subject, f"wrote {destination}, ran {argv[0]}",
                bytes=len(data), node=node,
            )  # fmt: skip
            return
        what = "timed out" if code == 124 else f"exited {code}"
        message = (
            f"template {subject}: wrote {destination}, but its command {argv[0]} {what} "
            f"(output in {self._log_dir / 'templates.log'})"
        )
        log.error("%s", message)
        await self._journal.record(
            "template-command-failed", subject, message, code=code, node=node
        )

    async def _failed(self, state: _Template, message: str) -> None:
        """Report a failed render once (until it changes), keeping the file."""
        if message == state.failure:
            return
        state.failure = message
        where = f"{state.spec.destination_for(self._node.name)} left as it was"
        log.error("%s (%s)", message, where)
        subject = state.spec.name or state.spec.destination_for(self._node.name)
        await self._journal.record(
            "template-failed", subject, f"{message} ({where})", node=self._node.name
        )


def write_if_changed(path: Path, data: bytes, mode: int | None) -> bool:
    """Write `data` to `path` unless it holds that already; atomically (a
    temporary file in the same directory, renamed over it), with `mode`, else
    the existing file's mode and owner, else 0644. Whether it wrote."""
    try:
        current = path.read_bytes()
        before = path.stat()
    except FileNotFoundError:
        current, before = None, None
    want = mode if mode is not None else (before.st_mode & 0o7777 if before else DEFAULT_MODE)
    if current == data:
        if before is not None and before.st_mode & 0o7777 != want:
            os.chmod(path, want)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), want)
            owner = (before.st_uid, before.st_gid) if before is not None else None
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(out.fileno(), *owner)
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)
