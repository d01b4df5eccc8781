"""Backups through ninefold's restic driver against plain restic: a full and an
incremental backup of a 200 MB tree of 10,000 files, and its restore.

No cluster: this measures the driver (`ninefold.backup.restic.Restic` on a
local `Repository`) against the restic program run by hand, on the same
repository type, the same data and restic's default flags.

Each round:

- builds the tree in a temporary directory (--dir): --files files of random
  bytes (seeded: every round and every run gets the same tree), --size-mb in
  all, sizes drawn from a log-normal law (a few bytes to a few MB, most of
  the bytes in the larger files), spread over 6 directories of 4
  subdirectories each and a few at the top;
- makes two fresh local repositories (untimed), one per contender, with the
  same password file;
- full backup, both ways: `Restic.backup(["."], cwd=tree, tags=["bench"],
  host="bench")` (which runs `restic backup --json --tag bench --host bench --
  .`), and `restic -r REPO backup --host bench .` run in the tree, with
  RESTIC_PASSWORD_FILE;
- changes about 1% of the files: 1% rewritten in place (4 kB at a random
  offset, or the whole file when smaller), 0.2% added, 0.2% deleted (100, 20
  and 20 of 10,000); then an incremental backup, both ways;
- restores the latest snapshot, `Restic.restore("latest", DIR)` and `restic
  -r REPO restore latest --target DIR`, each into an empty directory, and
  checks that the restored tree holds the same files as the source with the
  same SHA-256.

Before each timed step the bench calls sync(2), so that no step pays for the
previous one's writeback. Nothing is deleted before the end (each round has
its own tree, repositories and restores; about 5 x --size-mb per round): on
this machine's ext4, a restore into space just freed by deleting a restored
tree took 5 s instead of 2 s (4 s more system time, still so 90 s after the
deletion; not on tmpfs), which made the restore times swing from 2 to 11 s
depending on what had been deleted just before. The order of the two contenders alternates from
round to round; the figures are medians of --rounds rounds. Timed: the wall
clock around the call; the CPU of the restic process (getrusage
RUSAGE_CHILDREN before and after: restic is waited for, so its CPU is
counted there once it exits), and the driver's own CPU in this process
(RUSAGE_SELF: starting restic, reading its JSON). Both restics get the same
environment (restic's cache in the work directory through XDG_CACHE_HOME);
the driver adds RESTIC_PROGRESS_FPS=1 and `--json`, as it always does. Data
added per backup is restic's own summary ("data_added" in the driver's JSON,
"Added to the repository" in plain restic's text), and the repository's
growth on disk.

Not measured here: the RTO of the disaster test (`ninefold restore cluster`
onto new data directories and ports), which tests/cluster/test_disaster.py
prints (11.0 s on 2026-12-03). Results go to bench/results/backup_restore.json.

    .venv/bin/python bench/backup_restore.py [--size-mb 200] [--files 10000]
        [--rounds 3] [--seed 15] [--dir DIR] [--quick] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # src, tests
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _cluster

from _cluster import table, write_result

from ninefold.backup.repository import Repository
from ninefold.backup.restic import Restic

T = TypeVar("T")

NINEFOLD = "ninefold"
PLAIN = "plain"
HOST = "bench"
TAGS = ["bench"]
GOAL_RATIO = 1.2
SIGMA = 1.6
"""Spread of the log-normal file sizes: with 10,000 files, from about ten
bytes to about 140 times the mean."""
PATCH = 4096
"""Bytes rewritten in a modified file."""
_ADDED = re.compile(r"Added to the repo(?:sitory)?:\s*([\d.]+)\s*([KMGT]?i?B)")
_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


# -- the tree -----------------------------------------------------------------------------
def _sizes(rng: random.Random, count: int, total: int) -> list[int]:
    """`count` log-normal sizes (at least 1 byte) adding up to `total`."""
    weights = [rng.lognormvariate(0.0, SIGMA) for _ in range(count)]
    scale = total / sum(weights)
    sizes = [max(1, int(w * scale)) for w in weights]
    biggest = max(range(count), key=sizes.__getitem__)
    sizes[biggest] = max(1, sizes[biggest] + total - sum(sizes))
    return sizes


def _place(i: int, prefix: str = "f") -> str:
    """Where file i goes: a few at the top, the rest in d0..d5/s0..s3."""
    if i % 97 == 0:
        return f"{prefix}{i:05d}.bin"
    return f"d{i % 6}/s{(i // 6) % 4}/{prefix}{i:05d}.bin"


def build_tree(root: Path, files: int, total: int, seed: int) -> None:
    rng = random.Random(seed)
    for i, size in enumerate(_sizes(rng, files, total)):
        path = root / _place(i)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))


@dataclass
class Change:
    modified: int
    added: int
    deleted: int
    bytes_written: int


def change_tree(root: Path, files: int, total: int, seed: int) -> Change:
    """Rewrite 1% of the files in place (PATCH bytes at a random offset), add
    0.2% and delete 0.2% (at least one of each)."""
    rng = random.Random(seed + 1)
    n_mod = max(1, round(files * 0.01))
    n_new = n_del = max(1, round(files * 0.002))
    picked = rng.sample(range(files), n_mod + n_del)
    written = 0
    for i in picked[:n_mod]:
        path = root / _place(i)
        size = path.stat().st_size
        length = min(size, PATCH)
        offset = rng.randrange(size - length + 1)
        with path.open("r+b") as f:
            f.seek(offset)
            f.write(rng.randbytes(length))
        written += length
    for i in picked[n_mod:]:
        (root / _place(i)).unlink()
    for j, size in enumerate(_sizes(rng, n_new, max(n_new, total * n_new // files))):
        path = root / _place(files + j, prefix="new-")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        written += size
    return Change(n_mod, n_new, n_del, written)


def hash_tree(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every regular file under root."""
    found: dict[str, str] = {}
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = Path(directory, name)
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
            found[str(path.relative_to(root))] = digest.hexdigest()
    return found


def differences(want: dict[str, str], got: dict[str, str]) -> str:
    """'' when the trees match, else what differs, in a few words."""
    missing = want.keys() - got.keys()
    extra = got.keys() - want.keys()
    wrong = [p for p in want.keys() & got.keys() if want[p] != got[p]]
    if not (missing or extra or wrong):
        return ""
    parts = []
    for what, paths in (("missing", missing), ("extra", extra), ("different", wrong)):
        if paths:
            parts.append(f"{len(paths)} {what} (e.g. {sorted(paths)[0]})")
    return ", ".join(parts)


def disk_bytes(root: Path) -> int:
    total = 0
    for directory, _dirs, names in os.walk(root):
        for name in names:
            total += os.lstat(os.path.join(directory, name)).st_size
    return total


def mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB"


# -- timing -------------------------------------------------------------------------------
@dataclass
class Step:
    round: int
    what: str  # full, incremental, restore
    who: str  # ninefold, plain
    wall_s: float
    restic_cpu_s: float
    """The restic process's user + system seconds."""
    driver_cpu_s: float
    """This process's own (the driver's; ~0 for plain restic)."""
    data_added: int | None = None
    """Bytes, as restic's summary says (backups)."""
    repo_growth: int | None = None
    """Bytes the repository grew on disk (backups)."""
    verified: str | None = None
    """Restores: '' when the tree matched, else what differs."""


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


async def timed(run: Callable[[], Awaitable[T]]) -> tuple[T, float, float, float]:
    """run()'s value, wall seconds, children's CPU and own CPU seconds."""
    await asyncio.to_thread(os.sync)
    kids, own = _cpu(resource.RUSAGE_CHILDREN), _cpu(resource.RUSAGE_SELF)
    started = time.perf_counter()
    value = await run()
    wall = time.perf_counter() - started
    return (
        value,
        wall,
        _cpu(resource.RUSAGE_CHILDREN) - kids,
        _cpu(resource.RUSAGE_SELF) - own,
    )


# -- plain restic -------------------------------------------------------------------------
def plain_restic(env: dict[str, str], repo: Path, *args: str, cwd: Path | None = None) -> str:
    """Run `restic -r REPO ARGS` and return its stdout; raise on failure."""
    argv = ["restic", "-r", str(repo), *args]
    done = subprocess.run(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def added_by(text: str) -> int | None:
    """Bytes of plain restic's "Added to the repository: 1.234 MiB" line."""
    match = _ADDED.search(text)
    if match is None:
        return None
    return round(float(match.group(1)) * _UNITS.get(match.group(2), 1))


# -- one round ----------------------------------------------------------------------------
@dataclass
class Round:
    number: int
    work: Path
    env: dict[str, str]
    password: Path
    order: list[str]

    @property
    def tree(self) -> Path:
        return self.work / f"tree-{self.number}"

    def repo(self, who: str) -> Path:
        return self.work / f"repo-{who}-{self.number}"


async def run_round(r: Round, args: argparse.Namespace, say: Callable[[str], None]) -> list[Step]:
    total = int(args.size_mb * 1e6)
    started = time.perf_counter()
    await asyncio.to_thread(build_tree, r.tree, args.files, total, args.seed)
    say(
        f"round {r.number}: tree of {args.files} files, {mb(total)} built in "
        f"{time.perf_counter() - started:.1f} s; order {' then '.join(r.order)}"
    )
    restic = Restic(
        Repository(str(r.repo(NINEFOLD)), password_file=r.password),
        environ=r.env,
    )
    await restic.init()
    await asyncio.to_thread(plain_restic, r.env, r.repo(PLAIN), "init")
    steps: list[Step] = []

    async def backup(what: str, who: str) -> None:
        before = await asyncio.to_thread(disk_bytes, r.repo(who))
        added: int | None
        if who == NINEFOLD:

            async def go_ninefold() -> int:
                result = await restic.backup(["."], cwd=r.tree, tags=TAGS, host=HOST)
                if not result.complete:
                    raise SystemExit(f"ninefold backup incomplete: {result.errors}")
                return result.data_added

            added, wall, kids, own = await timed(go_ninefold)
        else:

            async def go_plain() -> int | None:
                out = await asyncio.to_thread(
                    plain_restic, r.env, r.repo(PLAIN), "backup", "--host", HOST, ".", cwd=r.tree
                )
                return added_by(out)

            added, wall, kids, own = await timed(go_plain)
        growth = await asyncio.to_thread(disk_bytes, r.repo(who)) - before
        steps.append(Step(r.number, what, who, wall, kids, own, added, growth))
        say(
            f"round {r.number}: {what} backup, {who}: {wall:.2f} s, restic CPU {kids:.2f} s, "
            f"driver CPU {own:.3f} s, added {mb(added)} (repository +{mb(growth)})"
        )

    for who in r.order:
        await backup("full", who)

    change = await asyncio.to_thread(change_tree, r.tree, args.files, total, args.seed)
    say(
        f"round {r.number}: changed the tree: {change.modified} files modified, "
        f"{change.added} added, {change.deleted} deleted ({mb(change.bytes_written)} written)"
    )
    for who in r.order:
        await backup("incremental", who)

    source = await asyncio.to_thread(hash_tree, r.tree)
    for who in r.order:
        target = r.work / f"restore-{who}-{r.number}"
        target.mkdir()
        if who == NINEFOLD:

            async def go_restore_ninefold(target: Path = target) -> None:
                await restic.restore("latest", target)

            _, wall, kids, own = await timed(go_restore_ninefold)
        else:

            async def go_restore_plain(target: Path = target) -> None:
                await asyncio.to_thread(
                    plain_restic, r.env, r.repo(PLAIN), "restore", "latest", "--target", str(target)
                )

            _, wall, kids, own = await timed(go_restore_plain)
        diff = differences(source, await asyncio.to_thread(hash_tree, target))
        steps.append(Step(r.number, "restore", who, wall, kids, own, verified=diff))
        say(
            f"round {r.number}: restore, {who}: {wall:.2f} s, restic CPU {kids:.2f} s, "
            f"driver CPU {own:.3f} s; {len(source)} files "
            + ("match byte for byte" if not diff else f"DIFFER: {diff}")
        )
    return steps


# -- the report ---------------------------------------------------------------------------
WHAT = {
    "full": "full backup",
    "incremental": "incremental backup (~1% changed)",
    "restore": "restore of the latest snapshot",
}


def median_of(steps: list[Step], what: str, who: str, field: str) -> float | None:
    values = [getattr(s, field) for s in steps if s.what == what and s.who == who]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(steps: list[Step]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for what in WHAT:
        entry: dict[str, Any] = {}
        for who in (NINEFOLD, PLAIN):
            mine = [s for s in steps if s.what == what and s.who == who]
            entry[who] = {
                "wall_s": round(median_of(steps, what, who, "wall_s") or 0.0, 3),
                "restic_cpu_s": round(median_of(steps, what, who, "restic_cpu_s") or 0.0, 3),
                "driver_cpu_s": round(median_of(steps, what, who, "driver_cpu_s") or 0.0, 3),
                "runs_wall_s": [round(s.wall_s, 3) for s in mine],
            }
            if what != "restore":
                entry[who]["data_added"] = median_of(steps, what, who, "data_added")
                entry[who]["repo_growth"] = median_of(steps, what, who, "repo_growth")
            else:
                entry[who]["verified"] = all(s.verified == "" for s in mine)
        plain = entry[PLAIN]["wall_s"]
        entry["ratio"] = round(entry[NINEFOLD]["wall_s"] / plain, 3) if plain else None
        plain_cpu = entry[PLAIN]["restic_cpu_s"]
        nf_cpu = entry[NINEFOLD]["restic_cpu_s"] + entry[NINEFOLD]["driver_cpu_s"]
        entry["cpu_ratio"] = round(nf_cpu / plain_cpu, 3) if plain_cpu else None
        entry["goal"] = f"<= {GOAL_RATIO}x" if what != "restore" else None
        entry["met"] = (
            entry["ratio"] is not None and entry["ratio"] <= GOAL_RATIO
            if what != "restore"
            else None
        )
        out[what] = entry
    return out


def report(summary: dict[str, Any], rounds: int) -> list[str]:
    tables = []
    rows = []
    for what, label in WHAT.items():
        e = summary[what]
        nf, pl = e[NINEFOLD], e[PLAIN]
        if e["goal"] is None:
            goal = "- (verified)" if nf["verified"] and pl["verified"] else "- (RESTORE DIFFERS)"
        else:
            goal = f"{e['goal']}: {'met' if e['met'] else 'NOT MET'}"
        rows.append([
            label,
            f"{nf['wall_s']:.2f}",
            f"{pl['wall_s']:.2f}",
            f"{e['ratio']:.2f}x",
            goal,
            " ".join(f"{w:.2f}" for w in nf["runs_wall_s"])
            + " | "
            + " ".join(f"{w:.2f}" for w in pl["runs_wall_s"]),
        ])  # fmt: skip
    tables.append(
        f"wall clock, median of {rounds} round(s):\n"
        + table(
            ["what", "ninefold s", "plain restic s", "ratio", "goal", "runs: ninefold | plain"],
            rows,
        )
    )
    rows = []
    for what in ("full", "incremental"):
        e = summary[what]
        rows.append([
            WHAT[what],
            mb(e[NINEFOLD]["data_added"]),
            mb(e[PLAIN]["data_added"]),
            mb(e[NINEFOLD]["repo_growth"]),
            mb(e[PLAIN]["repo_growth"]),
        ])  # fmt: skip
    tables.append(
        "data added per backup (restic's summary; the repository's growth on disk):\n"
        + table(["backup", "added: ninefold", "added: plain", "repo grew: ninefold", "plain"], rows)
    )
    rows = []
    for what, label in WHAT.items():
        e = summary[what]
        nf, pl = e[NINEFOLD], e[PLAIN]
        rows.append([
            label,
            f"{nf['restic_cpu_s']:.2f}",
            f"{nf['driver_cpu_s']:.3f}",
            f"{pl['restic_cpu_s']:.2f}",
            f"{e['cpu_ratio']:.2f}x" if e["cpu_ratio"] is not None else "-",
        ])  # fmt: skip
    tables.append(
        "CPU seconds, median (restic = the restic process; driver = ninefold's Python):\n"
        + table(["what", "ninefold restic", "driver", "plain restic", "ratio (all)"], rows)
    )
    return tables


def restic_version() -> str:
    try:
        done = subprocess.run(["restic", "version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"restic is needed (apt-get install restic): {exc}") from None
    return done.stdout.strip()


async def bench(args: argparse.Namespace, work: Path) -> list[Step]:
    password = work / "password"
    password.write_text("bench-password-not-a-secret\n")
    password.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env["RESTIC_PASSWORD_FILE"] = str(password)
    env["XDG_CACHE_HOME"] = str(work / "cache")
    steps: list[Step] = []
    for n in range(1, args.rounds + 1):
        order = [NINEFOLD, PLAIN] if n % 2 else [PLAIN, NINEFOLD]
        steps += await run_round(Round(n, work, env, password, order), args, print)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=None, help="size of the tree (200)")
    parser.add_argument("--files", type=int, default=None, help="files in the tree (10,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--seed", type=int, default=15, help="seed of the tree's content")
    parser.add_argument("--dir", default=None, help="where the work directory goes (TMPDIR)")
    parser.add_argument("--quick", action="store_true", help="20 MB in 1,000 files (~30 s)")
    parser.add_argument("--keep", action="store_true", help="leave the work directory")
    args = parser.parse_args()
    defaults = (
        {"size_mb": 20.0, "files": 1000} if args.quick else {"size_mb": 200.0, "files": 10_000}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:  # given values win over --quick's
            setattr(args, key, value)
    if args.files < 10 or args.size_mb <= 0 or args.rounds < 1:
        parser.error("need at least 10 files, a positive size and one round")

    version = restic_version()
    load0 = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="ninefold-backup-bench-", dir=args.dir))
    need = 5.5 * args.size_mb * 1e6 * args.rounds
    if shutil.disk_usage(work).free < need:
        shutil.rmtree(work)
        raise SystemExit(f"{work.parent} has less than the {mb(need)} this bench needs")
    print(f"{version}; work directory {work}; load average {load0:.1f}")
    started = time.monotonic()
    try:
        steps = asyncio.run(bench(args, work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    took = round(time.monotonic() - started, 1)
    summary = summarise(steps)
    print()
    print("\n\n".join(report(summary, args.rounds)))
    result = {
        "restic": version,
        "size_mb": args.size_mb,
        "files": args.files,
        "rounds": args.rounds,
        "seed": args.seed,
        "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "summary": summary,
        "steps": [asdict(s) for s in steps],
        "bench_s": took,
    }
    path = write_result("backup_restore", result)
    print(f"\nresult: {path}" + (f"; work directory kept: {work}" if args.keep else ""))
    full, incr, rest = (summary[w] for w in WHAT)
    print(
        f"full backup {full['ratio']:.2f}x plain restic, incremental {incr['ratio']:.2f}x "
        f"(goal {GOAL_RATIO}x each); restore {rest[NINEFOLD]['wall_s']:.2f} s vs "
        f"{rest[PLAIN]['wall_s']:.2f} s; bench took {took} s"
    )
    print(
        "not measured here: the RTO of the full disaster test (`ninefold restore cluster` "
        "onto new nodes, goal under 1 minute): tests/cluster/test_disaster.py prints it"
    )
    if not (rest[NINEFOLD]["verified"] and rest[PLAIN]["verified"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
