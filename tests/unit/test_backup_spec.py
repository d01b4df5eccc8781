"""`backups:` and a volume's `backup:` in the spec (spec/backups.py): the
design parses; every mistake is one line naming its place; a password is
refused without being repeated; a spec without backups is written (and
hashed into its services' generations) exactly as before."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import TypeAdapter

from ninefold.spec import ClusterSpec, SpecError, dump_spec, load_spec, parse_spec
from ninefold.spec.backups import KeepSpec, RepositorySpec, next_cron
from ninefold.spec.models import Volume, VolumeSpec

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))

# Four lines of a valid cluster with two repositories; a test's lines start on line 13.
HEAD = """\
cluster: c
nodes:
  - {name: n1, address: 10.0.0.1, store: true}
  - {name: n2, address: 10.0.0.2}
backups:
  repositories:
    offsite:
      url: s3:http://127.0.0.1:9000/bucket/ninefold
      password_file: /etc/ninefold/restic.pass
      credentials_env: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY]
    vault: {url: /mnt/vault, password_env: VAULT_PW}
"""

DESIGN = """\
cluster: c
nodes:
  - {name: n1, address: 10.0.0.1, store: true}
  - {name: n2, address: 10.0.0.2}
backups:
  repositories:
    offsite:
      url: s3:http://127.0.0.1:9000/bucket/ninefold
      password_file: /etc/ninefold/restic.pass
      credentials_file: /etc/ninefold/s3.env
      check: {every: 24h, read_data_subset: "5%"}
    vault: {url: /mnt/vault, password_env: VAULT_PW}
    backup-host:
      url: "sftp:backup@10.0.0.9:/srv/restic"
      password_env: RESTIC_PW
      ssh_command: [ssh, -p, 2222, -o, BatchMode=yes]
  cluster:
    repository: offsite
    every: 6h
    keep: {last: 7, hourly: 24, daily: 7, weekly: 4, monthly: 12}
    ca_key: vault
services:
  db:
    mode: active-passive
    replicas: 2
    command: run {volume.data} {volume.plain} {volume.logs}
    volumes:
      data:
        replicate: continuous
        backup: {repository: offsite, every: 1h, keep: {last: 24, daily: 7}}
      plain: {backup: {repository: backup-host, cron: "0 3 * * *", keep: {daily: 7}}}
      logs: {path: /var/log/db, backup: {repository: vault, cron: "@daily", keep: {last: 3}}}
"""


def test_the_design_parses() -> None:
    spec = parse_spec(DESIGN)
    offsite = spec.backups.repositories["offsite"]
    assert offsite.kind == "s3" and offsite.password_source() == (
        "file",
        "/etc/ninefold/restic.pass",
    )
    assert offsite.check is not None and offsite.check.every == 86400.0
    assert offsite.check.read_data_subset == "5%"
    assert spec.backups.repositories["vault"].kind == "local"
    host = spec.backups.repositories["backup-host"]
    assert host.kind == "sftp"
    assert host.ssh_command == ["ssh", "-p", "2222", "-o", "BatchMode=yes"]
    cluster = spec.backups.cluster
    assert cluster is not None
    assert (cluster.repository, cluster.every, cluster.cron, cluster.ca_key) == (
        "offsite",
        21600.0,
        None,
        "vault",
    )
    assert cluster.keep.restic_args() == [
        "--keep-last", "7", "--keep-hourly", "24", "--keep-daily", "7",
        "--keep-weekly", "4", "--keep-monthly", "12",
    ]  # fmt: skip
    volumes = spec.services["db"].volumes
    data, plain, logs = volumes["data"], volumes["plain"], volumes["logs"]
    assert data.replicated and data.backup is not None and data.backup.every == 3600.0
    assert not plain.replicated and plain.backup is not None and plain.backup.cron == "0 3 * * *"
    assert logs.path == "/var/log/db" and logs.backup is not None
    assert logs.backup.keep.rules() == {"last": 3}


def test_the_design_round_trips() -> None:
    spec = parse_spec(DESIGN)
    assert parse_spec(dump_spec(spec)) == spec
    # the full dump (what `join` re-validates) too: a plain volume with a
    # backup leaves out the replication-only keys it cannot have
    assert ClusterSpec.model_validate(spec.model_dump(mode="json")) == spec
    assert spec.services["db"].volumes["plain"].model_dump() == {
        "path": None,
        "replicate": "none",
        "backup": {
            "repository": "backup-host",
            "every": None,
            "cron": "0 3 * * *",
            "keep": {"last": None, "hourly": None, "daily": 7, "weekly": None, "monthly": None},
        },
    }


def test_a_backup_keeps_a_plain_volume_out_of_its_short_form() -> None:
    plain = VolumeSpec.model_validate(
        {"path": "/srv/x", "backup": {"repository": "r", "every": "1h", "keep": {"last": 1}}}
    )
    dumped = plain.model_dump(exclude_defaults=True)
    assert dumped["path"] == "/srv/x" and dumped["backup"]["repository"] == "r"


def test_volumes_without_backup_serialize_as_before() -> None:
    """What services' generations are hashed from: a new key here would
    restart every instance of every service with a volume on upgrade."""
    volume = TypeAdapter(Volume)
    assert volume.validate_python(None).model_dump_json() == "null"
    assert volume.validate_python("/srv/b").model_dump_json() == '"/srv/b"'
    replicated = volume.validate_python({"replicate": "continuous", "exclude": ["*.tmp"]})
    assert replicated.model_dump_json() == (
        '{"path":null,"replicate":"continuous","exclude":["*.tmp"],"snapshot":null,"verify":3600.0}'
    )


def test_a_digest_can_leave_backups_out() -> None:
    """What an instance runs does not depend on when its volumes are backed
    up: leaving `backup` out gives the service as written without it."""
    spec = parse_spec(DESIGN)
    bare = DESIGN.replace(
        "        backup: {repository: offsite, every: 1h, keep: {last: 24, daily: 7}}\n", ""
    )
    bare = bare.replace(
        '{backup: {repository: backup-host, cron: "0 3 * * *", keep: {daily: 7}}}', "null"
    )
    bare = bare.replace(', backup: {repository: vault, cron: "@daily", keep: {last: 3}}', "")
    without = parse_spec(bare)
    assert all(v.backup is None for v in without.services["db"].volumes.values())
    no_backup = {"volumes": {"__all__": {"backup"}}}
    assert spec.services["db"].model_dump_json(exclude=no_backup) == (
        without.services["db"].model_dump_json()
    )


@pytest.mark.parametrize(
    "path", [p for p in EXAMPLES if "\nbackups:" not in p.read_text()], ids=lambda p: p.name
)
def test_specs_without_backups_dump_as_before(path: Path) -> None:
    spec = load_spec(path)
    dumped = dump_spec(spec)
    assert "backup" not in dumped
    for service in spec.services.values():
        assert "backup" not in service.model_dump_json()
    assert parse_spec(dumped) == spec


def _error(body: str) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(HEAD + body, "s.yaml")
    return str(caught.value)


def _cluster(line: str) -> str:
    return f"  cluster: {line}\n"


def _volume(backup: str) -> str:
    return f"services:\n  db:\n    command: x\n    volumes:\n      data: {{backup: {backup}}}\n"


BAD = [
    (
        "    r: {url: /b, password: hunter2}\n",
        "s.yaml:12 backups.repositories.r: key 'password' refused: the spec is stored and "
        "shown, so a password never goes in it; name a file (password_file) or a variable "
        "(password_env)",
    ),
    (
        "    r: {url: /b}\n",
        "s.yaml:12 backups.repositories.r: a repository needs exactly one of password_file, "
        "password_env",
    ),
    (
        "    r: {url: /b, password_file: /p, password_env: X}\n",
        "s.yaml:12 backups.repositories.r: a repository needs exactly one of password_file, "
        "password_env (got both)",
    ),
    (
        "    r: {url: /b, password_file: p}\n",
        "s.yaml:12 backups.repositories.r.password_file: expected an absolute path, got 'p'",
    ),
    (
        "    r: {url: 'ftp://h/x', password_env: X}\n",
        "s.yaml:12 backups.repositories.r.url: 'ftp://h/x' is not a restic repository this "
        "supports (an absolute path, sftp:user@host:/path or s3:http(s)://host/bucket/path)",
    ),
    (
        "    r: {url: 's3:https://ak:sk@h/b', password_env: X}\n",
        "s.yaml:12 backups.repositories.r.url: url holds a password; name it in "
        "credentials_file or credentials_env instead",
    ),
    (
        "    r: {url: /b, password_env: X, credentials_file: /c, credentials_env: [A]}\n",
        "s.yaml:12 backups.repositories.r: credentials_file and credentials_env: one or the other",
    ),
    (
        "    r: {url: /b, password_env: RESTIC_PASSWORD}\n",
        "s.yaml:12 backups.repositories.r.password_env: cannot be RESTIC_PASSWORD: it is set "
        "for restic from the repository",
    ),
    (
        "    r: {url: 's3:http://h/b', password_env: X, ssh_command: ssh -i /k}\n",
        "s.yaml:12 backups.repositories.r: ssh_command is for sftp repositories, not s3",
    ),
    (
        "    Off_site: {url: /b, password_env: X}\n",
        "s.yaml:12 backups.repositories.Off_site: 'Off_site' is not a valid repository name "
        "(lowercase letters, digits and '-', at most 63)",
    ),
    (
        "    r: {url: /b, password_env: X, check: {every: 1h, read_data_subset: 200%}}\n",
        "s.yaml:12 backups.repositories.r.check.read_data_subset: '200%' is not a subset "
        "restic reads (n/t like 1/5, a percentage like 5%, or a size like 500M)",
    ),
    (
        "    r: {url: /b, password_env: X, check: {read_data_subset: 1/5}}\n",
        "s.yaml:12 backups.repositories.r.check: a schedule needs exactly one of every, cron",
    ),
    (
        _cluster("{repository: offsite, cron: '61 * * * *', keep: {last: 1}}"),
        "s.yaml:12 backups.cluster.cron: '61 * * * *' is not a cron expression (five fields: "
        "minute hour day month weekday, e.g. '0 3 * * *', or @hourly, @daily, @weekly, "
        "@monthly, @yearly)",
    ),
    (
        _cluster("{repository: offsite, cron: '0 0 3 * * *', keep: {last: 1}}"),
        "s.yaml:12 backups.cluster.cron: '0 0 3 * * *' is not a cron expression (five fields: "
        "minute hour day month weekday, e.g. '0 3 * * *', or @hourly, @daily, @weekly, "
        "@monthly, @yearly)",
    ),
    (
        _cluster("{repository: offsite, cron: '@daily', every: 1h, keep: {last: 1}}"),
        "s.yaml:12 backups.cluster: a backup needs exactly one of every, cron (got both)",
    ),
    (
        _cluster("{repository: offsite, keep: {last: 1}}"),
        "s.yaml:12 backups.cluster: a backup needs exactly one of every, cron",
    ),
    (
        _cluster("{repository: offsite, every: 0s, keep: {last: 1}}"),
        "s.yaml:12 backups.cluster.every: must be greater than 0",
    ),
    (
        _cluster("{repository: offsite, every: daily, keep: {last: 1}}"),
        "s.yaml:12 backups.cluster.every: 'daily' is not a duration",
    ),
    (
        _cluster("{repository: offsite, every: 1h}"),
        "s.yaml:12 backups.cluster.keep: required, but missing",
    ),
    (
        _cluster("{repository: offsite, every: 1h, keep: {}}"),
        "s.yaml:12 backups.cluster.keep: needs at least one rule: last, hourly, daily, "
        "weekly, monthly",
    ),
    (
        _cluster("{repository: offsite, every: 1h, keep: {last: -1}}"),
        "s.yaml:12 backups.cluster.keep.last: must be at least 0, got -1",
    ),
    (
        _cluster("{repository: offsite, every: 1h, keep: {last: 0, daily: 0}}"),
        "s.yaml:12 backups.cluster.keep: would keep no snapshot at all (every rule is 0)",
    ),
    (
        _cluster("{repository: offsite, every: 1h, keep: {last: '3'}}"),
        "s.yaml:12 backups.cluster.keep.last: expected a whole number, got '3'",
    ),
    (
        _cluster("{repository: offsite, every: 1h, keep: {dayly: 3}}"),
        "s.yaml:12 backups.cluster.keep.dayly: unknown key 'dayly' (did you mean 'daily'?)",
    ),
    (
        _cluster("{repository: elsewhere, every: 1h, keep: {last: 1}}"),
        "s.yaml:12 backups.cluster.repository: no repository named 'elsewhere' "
        "(repositories: offsite, vault)",
    ),
    (
        _cluster("{repository: offsite, every: 1h, keep: {last: 1}, ca_key: offsite}"),
        "s.yaml:12 backups.cluster.ca_key: must be another repository than 'offsite' "
        "(the CA key needs one keyed separately)",
    ),
    (
        _cluster("{repository: offsite, every: 1h, keep: {last: 1}, ca_key: safe}"),
        "s.yaml:12 backups.cluster.ca_key: no repository named 'safe' "
        "(repositories: offsite, vault)",
    ),
    (
        "    twin: {url: /mnt/twin, password_file: /etc/ninefold/restic.pass}\n"
        + _cluster("{repository: offsite, every: 1h, keep: {last: 1}, ca_key: twin}"),
        "s.yaml:13 backups.cluster.ca_key: repository 'twin' has the same password as "
        "'offsite' (the CA key needs its own)",
    ),
    (
        "    twin: {url: /mnt/vault, password_env: OTHER}\n"
        + _cluster("{repository: vault, every: 1h, keep: {last: 1}, ca_key: twin}"),
        "s.yaml:13 backups.cluster.ca_key: repository 'twin' has the same url as 'vault'",
    ),
    (
        _volume("{repository: elsewhere, every: 1h, keep: {last: 1}}"),
        "s.yaml:16 services.db.volumes.data.backup.repository: no repository named "
        "'elsewhere' (repositories: offsite, vault)",
    ),
    (
        _volume("{repository: offsite, cron: nightly, keep: {last: 1}}"),
        "s.yaml:16 services.db.volumes.data.backup.cron: 'nightly' is not a cron expression "
        "(five fields: minute hour day month weekday, e.g. '0 3 * * *', or @hourly, @daily, "
        "@weekly, @monthly, @yearly)",
    ),
    (
        _volume("{repository: offsite, every: 1h, keep: {last: 1}, verify: 1h}"),
        "s.yaml:16 services.db.volumes.data.backup.verify: unknown key 'verify' "
        "(did you mean 'every'?)",
    ),
]


@pytest.mark.parametrize(("body", "expected"), BAD, ids=[line for _, line in BAD])
def test_each_mistake_is_one_clear_line(body: str, expected: str) -> None:
    assert _error(body) == expected


def test_an_unknown_repository_without_backups_says_so() -> None:
    text = "cluster: c\nnodes: [{name: n1, address: 10.0.0.1, store: true}]\n" + _volume(
        "{repository: offsite, every: 1h, keep: {last: 1}}"
    )
    with pytest.raises(SpecError) as caught:
        parse_spec(text, "s.yaml")
    assert str(caught.value) == (
        "s.yaml:7 services.db.volumes.data.backup.repository: no repository named 'offsite' "
        "(backups declares no repositories)"
    )


def test_a_password_is_never_repeated() -> None:
    message = _error("    r: {url: /b, password: hunter2-secret}\n")
    assert "hunter2" not in message
    with pytest.raises(ValueError) as caught:
        RepositorySpec.model_validate({"url": "/b", "password": "hunter2-secret"})
    assert "hunter2" not in str(caught.value)
    data = parse_spec(HEAD).model_dump(mode="json")
    data["backups"]["repositories"]["vault"]["password"] = "hunter2-secret"
    with pytest.raises(ValueError) as caught:
        ClusterSpec.model_validate(data)
    assert "key 'password' refused" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_direct_validation_checks_references() -> None:
    data = parse_spec(DESIGN).model_dump(mode="json")
    data["services"]["db"]["volumes"]["data"]["backup"]["repository"] = "gone"
    with pytest.raises(ValueError, match="no repository named 'gone'"):
        ClusterSpec.model_validate(data)


def test_keep_rules_and_cron_in_utc() -> None:
    assert KeepSpec(daily=7, last=2).restic_args() == ["--keep-last", "2", "--keep-daily", "7"]
    # 2024-03-31 00:30 UTC (a DST change in Europe): 03:00 UTC is 2.5 hours on
    assert next_cron("0 3 * * *", 1711845000.0) == 1711845000.0 + 9000.0
