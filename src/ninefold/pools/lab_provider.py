"""The `lab` provider: the local cloud. A machine is a new namespace of the
running lab on its zone's bridge, booted the way a cloud boots a VM: it runs
the bootstrap script it was given as user-data (which joins the cluster and
starts the agent; nothing is installed, the code is already here). Power-off
kills every process in it; destroy deletes the namespace.

Which lab: settings `lab` (its id), else $NINEFOLD_LAB_ID, which the lab sets
for the agents it starts and the bootstrap script passes on."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ninefold.lab.errors import LabError
from ninefold.pools.bootstrap import Bootstrap
from ninefold.pools.provider import Machine, MachineRequest, MachineState, ProviderError

LAB_ID_ENV = "NINEFOLD_LAB_ID"


class LabProvider:
    name = "lab"

    def __init__(self, settings: Mapping[str, Any], environ: Mapping[str, str] = os.environ):
        lab_id = settings.get("lab") or environ.get(LAB_ID_ENV)
        if not lab_id:
            raise ProviderError(
                f"lab provider: which lab? set the pool's settings.lab or ${LAB_ID_ENV}"
            )
        self.lab_id = str(lab_id)

    def _lab(self) -> Any:
        from ninefold.lab.lab import Lab

        try:
            return Lab.load(self.lab_id)
        except LabError as exc:
            raise ProviderError(f"lab provider: {exc}") from None

    def bootstrap(self, boot: Bootstrap) -> Bootstrap:
        """The lab's machines have the code already: this Python runs ninefold,
        the data lives in the lab's state directory, and the machine's agent
        knows its lab (it may lead, and heal, later)."""
        env = {LAB_ID_ENV: self.lab_id}
        if os.environ.get("NINEFOLD_LAB_ROOT"):
            env["NINEFOLD_LAB_ROOT"] = os.environ["NINEFOLD_LAB_ROOT"]
        lab = self._lab()
        return replace(
            boot,
            ninefold=(sys.executable, "-m", "ninefold"),
            env={**boot.env, **env},
            data_dir=boot.data_dir or str(lab.state_dir / boot.node),
            install=None,
        )

    def zones(self) -> list[str]:
        return list(self._lab().state["zones"])

    def create(self, request: MachineRequest) -> Machine:
        lab = self._lab()
        try:
            address = lab.add_machine(request.name, request.zone, request.tags)
            lab.boot(request.name, request.user_data)
        except (LabError, OSError) as exc:
            raise ProviderError(f"lab create {request.name} in {request.zone}: {exc}") from None
        return Machine(request.name, request.name, request.zone, "running",
                       dict(request.tags), address)  # fmt: skip

    def list(self, tags: Mapping[str, str]) -> list[Machine]:
        out = []
        for name, machine in sorted(self._lab().machines().items()):
            carried = machine.get("tags", {})
            if all(carried.get(k) == v for k, v in tags.items()):
                state: MachineState = "running" if machine.get("powered") else "stopped"
                out.append(Machine(name, name, machine["zone"], state, carried,
                                   machine["address"]))  # fmt: skip
        return out

    def power_off(self, machine_id: str) -> None:
        try:
            self._lab().power_off(machine_id)
        except (LabError, OSError) as exc:
            raise ProviderError(f"lab power off {machine_id}: {exc}") from None

    def destroy(self, machine_id: str) -> None:
        try:
            self._lab().remove_machine(machine_id)
        except (LabError, OSError) as exc:
            raise ProviderError(f"lab destroy {machine_id}: {exc}") from None
