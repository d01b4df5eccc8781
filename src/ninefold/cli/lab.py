"""`ninefold lab ...`: a cluster in network namespaces on this machine, and
faults to inject into it. Everything but --help needs root (docs/lab.md).

Exit codes as in the rest of the CLI: 0 ok, 1 the operation failed (an agent
did not start, netem missing, ...), 2 usage error (not root, unknown node,
zone or lab, a spec the lab cannot build); `exec` passes its command's code.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from ninefold.cli.common import LogFormatOption, checked_log_format
from ninefold.cli.console import EXIT_USAGE, err, fail, out, progress, say
from ninefold.spec import SpecError, parse_duration

lab_app = typer.Typer(
    name="lab",
    help="A cluster in network namespaces on this machine, and faults to inject (needs root).",
    no_args_is_help=True,
)


LabOption = Annotated[
    str | None,
    typer.Option(
        "--lab",
        envvar="NINEFOLD_LAB",
        help="Which lab (its id, nfXXXX), when several run. Also NINEFOLD_LAB.",
        show_default=False,
    ),
]
NodeArgument = Annotated[str, typer.Argument(help="A node of the lab.", show_default=False)]


@contextlib.contextmanager
def lab_errors() -> Iterator[None]:
    """Turn lab errors into one line on stderr and the exit code they mean."""
    from ninefold.lab import LabError, NotRoot, UnknownName, UnsuitableSpec

    try:
        yield
    except (NotRoot, UnknownName, UnsuitableSpec) as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except SpecError as exc:
        for issue in exc.issues:
            err.print(str(issue), highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(EXIT_USAGE) from None
    except LabError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(
            f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        ) from None


def require_root() -> None:
    from ninefold.lab.lab import require_root as check

    check()


def current(lab_id: str | None) -> Any:
    """The lab to act on (root checked first)."""
    from ninefold.lab import Lab

    return Lab.load(lab_id)


def parse_groups(words: list[str]) -> list[list[str]]:
    """`n1,n2 / n3` (one or several words) -> [[n1, n2], [n3]]. Without any
    `/`, each word is one group: `n1,n2 n3` means the same."""
    text = " ".join(words)
    parts = text.split("/") if "/" in text else words
    groups = [[name for name in part.replace(",", " ").split() if name] for part in parts]
    if any(not group for group in groups) or len(groups) < 2:
        raise fail(
            f"cannot read groups from {text!r}: give at least two groups of nodes, names "
            'separated by commas, groups by "/", like "n1,n2 / n3"',
            EXIT_USAGE,
        )
    return groups


# --- up / down / status -------------------------------------------------------------------


@lab_app.command()
def up(
    spec: Annotated[Path, typer.Argument(help="The cluster spec (YAML).", show_default=False)],
    wait: Annotated[
        float,
        typer.Option("--wait", min=0, help="Seconds to wait for the cluster to be up (0: none)."),
    ] = 90.0,
    log_format: LogFormatOption = "text",
) -> None:
    """Build a lab for SPEC: a namespace per node, a router, a client; start the agents."""
    from ninefold.lab import Lab, StartFailed

    log_format = checked_log_format(log_format)
    with lab_errors():
        require_root()
        with progress(f"building a lab for {spec}") as report:
            try:
                lab = Lab.up(
                    spec, progress=report, wait=wait, keep_on_failure=True, log_format=log_format
                )
            except StartFailed as exc:
                raise fail(f"{exc}; the lab is left up to look at: ninefold lab down") from None
    show(lab, f"lab {lab.id} is up (cluster {lab.spec.cluster})")
    say(
        f"client {lab.address('client')} in {lab.namespace('client')}; try: "
        f"ninefold lab exec client -- curl -s {lab.api_url(lab.nodes[0])}/v1/status"
    )
    say(f"agent logs: {lab.state_dir}/<node>/agent.log; remove it with: ninefold lab down")


@lab_app.command()
def down(
    all_: Annotated[
        bool,
        typer.Option(
            "--all", help="Remove every lab namespace and state directory (after a crash)."
        ),
    ] = False,
    lab_id: LabOption = None,
) -> None:
    """Remove the lab: kill its processes, delete its namespaces and its state."""
    from ninefold.lab import down_all, running_labs

    with lab_errors():
        if all_:
            removed = down_all()
            for item in removed:
                say(f"removed {item}")
            if not removed:
                say("no lab namespace or state directory to remove")
            return
        require_root()
        if lab_id is None and not running_labs():
            say("no lab is running (leftovers after a crash: ninefold lab down --all)")
            return
        lab = current(lab_id)
        lab.down()
        say(f"lab {lab.id} removed")


def show(lab: Any, title: str) -> None:
    table = Table(title=title, title_justify="left")
    for col in ("NODE", "NAMESPACE", "ADDRESS", "ZONE", "AGENT", "ADDRESSES HELD"):
        table.add_column(col)
    for node in lab.nodes:
        pid = lab.agent_pid(node)
        state = lab.agent_state(node)
        colour = {"running": "green", "frozen": "yellow", "stopped": "red"}[state]
        agent = Text(f"{pid} {state}" if pid else state, style=colour)
        held = ", ".join(sorted(lab.addresses(node))) or "-"
        table.add_row(node, lab.namespace(node), lab.address(node), lab.zone(node), agent, held)
    out.print(table)


@lab_app.command()
def status(
    lab_id: LabOption = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json")] = "table",
) -> None:
    """The lab's nodes: namespace, address, zone, agent, addresses held; and its faults."""
    if output not in ("table", "json"):
        raise fail(f"--output must be table or json, not {output!r}", EXIT_USAGE)
    with lab_errors():
        lab = current(lab_id)
        if output == "json":
            data = {
                "id": lab.id,
                "spec": str(lab.spec_path),
                "state_dir": str(lab.state_dir),
                "nodes": [
                    {
                        "name": n,
                        "namespace": lab.namespace(n),
                        "address": lab.address(n),
                        "zone": lab.zone(n),
                        "agent_pid": lab.agent_pid(n),
                        "agent": lab.agent_state(n),
                        "addresses": sorted(lab.addresses(n)),
                    }
                    for n in lab.nodes
                ],
                "client": {"namespace": lab.namespace("client"), "address": lab.address("client")},
                "router": {"namespace": lab.namespace("router")},
                "fault": lab.fault,
                "slow": lab.delays,
            }
            print(json.dumps(data, indent=2), flush=True)
            return
        show(lab, f"lab {lab.id} (cluster {lab.spec.cluster}, {lab.spec_path})")
        say(f"client {lab.address('client')} in {lab.namespace('client')}; "
            f"router {lab.namespace('router')}")  # fmt: skip
        fault = lab.fault
        if fault is None:
            say("network: whole")
        elif "partition" in fault:
            say("network: partitioned " + " / ".join(",".join(g) for g in fault["partition"]))
        else:
            say(f"network: zone {fault['isolate']} isolated")
        for node, delay in lab.delays.items():
            say(f"{node}: packets delayed by {delay * 1000:g}ms")


# --- processes ---------------------------------------------------------------------------


@lab_app.command()
def kill(node: NodeArgument, lab_id: LabOption = None) -> None:
    """SIGKILL every process of a node (agent, etcd, services): a machine losing power."""
    with lab_errors():
        current(lab_id).kill(node)
    say(f"{node}: every process killed; start it again with: ninefold lab start {node}")


@lab_app.command()
def stop(
    node: NodeArgument,
    lab_id: LabOption = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0, help="Seconds to wait before killing what is left.")
    ] = 30.0,
) -> None:
    """Stop a node's agent gracefully (SIGTERM) and wait until all its processes are gone."""
    with lab_errors():
        current(lab_id).stop(node, timeout=timeout)
    say(f"{node}: stopped")


@lab_app.command()
def start(
    node: NodeArgument,
    lab_id: LabOption = None,
    wait: Annotated[
        float,
        typer.Option("--wait", min=0, help="Seconds to wait for the node to be up (0: none)."),
    ] = 60.0,
) -> None:
    """Start a node's agent again (after kill or stop); nothing if it runs."""
    with lab_errors():
        lab = current(lab_id)
        before = lab.agent_pid(node)
        pid = lab.start(node)
        if before is not None:
            say(f"{node}: agent already running (pid {pid})")
            return
        if wait > 0:
            with progress(f"waiting for {node}") as report:
                lab.wait_up(wait, report, nodes=[node])
    say(f"{node}: agent started (pid {pid})")


@lab_app.command()
def freeze(node: NodeArgument, lab_id: LabOption = None) -> None:
    """SIGSTOP every process of a node: a hung machine (thaw resumes it)."""
    with lab_errors():
        current(lab_id).freeze(node)
    say(f"{node}: frozen; resume it with: ninefold lab thaw {node}")


@lab_app.command()
def thaw(node: NodeArgument, lab_id: LabOption = None) -> None:
    """SIGCONT every process of a frozen node."""
    with lab_errors():
        current(lab_id).thaw(node)
    say(f"{node}: running again")


# --- network -------------------------------------------------------------------------------


@lab_app.command()
def partition(
    groups: Annotated[
        list[str],
        typer.Argument(
            help='Groups of nodes: names separated by commas, groups by "/", e.g. "n1,n2 / n3".',
            show_default=False,
        ),
    ],
    lab_id: LabOption = None,
) -> None:
    """Cut the network between groups of nodes, both ways (nftables), until heal.

    Each grouped node drops packets from and to the nodes of the other groups;
    nodes in no group and the client keep reaching everybody."""
    parsed = parse_groups(groups)
    with lab_errors():
        current(lab_id).partition(parsed)
    say("partitioned " + " / ".join(",".join(g) for g in parsed) + "; undo with: ninefold lab heal")


@lab_app.command()
def heal(lab_id: LabOption = None) -> None:
    """Undo partitions, isolation and delays: the network is whole again."""
    with lab_errors():
        current(lab_id).heal()
    say("network whole again")


@lab_app.command()
def isolate(
    zone: Annotated[str, typer.Argument(help="A zone of the lab.", show_default=False)],
    lab_id: LabOption = None,
) -> None:
    """Cut a zone off: its nodes reach each other, nobody else (nodes, client)."""
    with lab_errors():
        lab = current(lab_id)
        lab.isolate(zone)
    say(f"zone {zone} isolated; undo with: ninefold lab heal")


@lab_app.command()
def slow(
    node: NodeArgument,
    delay: Annotated[
        str, typer.Option("--delay", help="Delay of every packet the node sends (0: none).")
    ] = "100ms",
    lab_id: LabOption = None,
) -> None:
    """Delay a node's packets (netem); needs a kernel with netem."""
    try:
        seconds = parse_duration(delay)
    except ValueError as exc:
        raise fail(f"--delay: {exc}", EXIT_USAGE) from None
    with lab_errors():
        current(lab_id).slow(node, seconds)
    say(f"{node}: packets delayed by {delay}" if seconds > 0 else f"{node}: no delay")


@lab_app.command(
    name="exec",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)
def exec_(
    where: Annotated[str, typer.Argument(help="A node, client or router.", show_default=False)],
    command: Annotated[
        list[str],
        typer.Argument(help="The command and its arguments (after --).", show_default=False),
    ],
    lab_id: LabOption = None,
) -> None:
    """Run a command in the namespace of a node, the client or the router; its exit code.

    Options (--lab) go before WHERE: everything after it is the command."""
    with lab_errors():
        lab = current(lab_id)
        lab.namespace(where)
    if command[:1] == ["--"]:  # options end at WHERE, so click passes the `--` on
        command = command[1:]
    if not command:
        raise fail("no command given: ninefold lab exec WHERE -- COMMAND [ARGS]...", EXIT_USAGE)
    try:
        code = lab.run(where, command, check=False).returncode
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)


# --- drills ------------------------------------------------------------------------------


@lab_app.command()
def drill(
    scenario: Annotated[
        str,
        typer.Argument(
            help="S1 a server down, S2 a site down, S3 a zone down, S4 a zone isolated then "
            "healed, S5 a compromised server.",
            show_default=False,
        ),
    ],
    lab_id: LabOption = None,
    zone: Annotated[
        str | None,
        typer.Option(
            "--zone",
            help="The zone to fault (S2-S4), or whose pool machine to kill (S1). Default: "
            "the first that holds a pool machine and a store member.",
            show_default=False,
        ),
    ] = None,
    pool: Annotated[
        str | None,
        typer.Option("--pool", help="Which pool, when the spec has several.", show_default=False),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", min=1, help="Seconds a replacement has to serve after the fault."
        ),
    ] = 120.0,
    restore: Annotated[
        bool,
        typer.Option(
            "--restore", help="Afterwards heal the network, start the killed nodes, wait."
        ),
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="The report as JSON.")] = False,
) -> None:
    """Run one of Hydra's scenarios on a lab with a pool, traffic on, and report on it.

    Exit 1 when an expectation fails (a replacement not serving in time, a
    victim not fenced, a duplicate machine, two VIP holders, the pool not
    back at its count); failed requests are reported, not a failure."""
    from ninefold.lab.drill import SCENARIOS, DrillError, format_report
    from ninefold.lab.drill import run as run_drill

    scenario = scenario.upper()
    if scenario not in SCENARIOS:
        known = ", ".join(f"{k} {v}" for k, v in SCENARIOS.items())
        raise fail(f"no scenario {scenario!r}: {known}", EXIT_USAGE)
    with lab_errors():
        lab = current(lab_id)
        try:
            with progress(f"drill {scenario} on lab {lab.id}") as report_progress:
                report = run_drill(
                    lab, scenario, zone=zone, pool=pool, timeout=timeout,
                    restore_after=restore, progress=report_progress,
                )  # fmt: skip
        except DrillError as exc:
            raise fail(str(exc), EXIT_USAGE) from None
    if json_:
        print(json.dumps(report.to_json(), indent=2), flush=True)
    else:
        for line in format_report(report):
            say(line)
    if not report.ok:
        raise typer.Exit(1)
