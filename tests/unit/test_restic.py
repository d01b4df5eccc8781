"""The restic driver (ninefold.backup) against real repositories on loopback:
a local path, SFTP through a real OpenSSH sshd started here, and S3 through
moto in server mode. The environment builder, the redaction and the reading
of restic's error lines are also tested on their own, without processes.

Every repository is opened with a password that must never show up: not in
an error message, not on restic's or ssh's command line."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from ninefold.backup.repository import (
    Repository,
    RepositoryConfigError,
    parse_credentials,
    redact,
    restic_environment,
    sftp_destination,
)
from ninefold.backup.restic import (
    ErrorKind,
    KeepPolicy,
    Progress,
    Restic,
    ResticError,
    classify,
)
from tests.helpers import eventually, free_port, port_open, wait_for

RESTIC = shutil.which("restic")
SSHD = "/usr/sbin/sshd"
BUCKET = "ninefold-backups"
S3_KEY_ID = "AKIDNINEFOLDTEST"
S3_SECRET = "s3secret-" + secrets.token_hex(12)

needs_restic = pytest.mark.skipif(
    RESTIC is None, reason="restic is not installed (apt-get install restic)"
)
process = pytest.mark.process


def new_password() -> str:
    return "pw-" + secrets.token_hex(12)


# --- servers on loopback (one of each per session) ----------------------------------------


@dataclass(frozen=True)
class SshServer:
    port: int
    user: str
    identity: Path
    known_hosts: Path
    root: Path  # a directory to put repositories in

    def ssh_command(self, identity: Path | None = None) -> tuple[str, ...]:
        """ssh with this server's key pinned, our identity, and no prompt."""
        return (
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(identity or self.identity),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
        )

    def url(self, path: Path, port: int | None = None) -> str:
        # restic's form with a port: sftp://user@host:port//absolute/path
        return f"sftp://{self.user}@127.0.0.1:{port or self.port}/{path}"


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    if RESTIC is None:
        pytest.skip("restic is not installed (apt-get install restic)")
    if not os.access(SSHD, os.X_OK) or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH's sshd is not installed (apt-get install openssh-server)")
    home = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key", "stranger_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / name)],
            check=True,
            capture_output=True,
        )
    (home / "authorized_keys").write_text((home / "client_key.pub").read_text())
    port = free_port()
    host_key = (home / "host_key.pub").read_text().split()
    (home / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    config = home / "sshd_config"
    config.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {home / 'host_key'}\n"
        "PidFile none\n"
        f"AuthorizedKeysFile {home / 'authorized_keys'}\n"
        "StrictModes no\n"
        "UsePAM no\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        "Subsystem sftp internal-sftp\n"
        "LogLevel ERROR\n"
    )
    if os.geteuid() == 0:
        # sshd's privilege separation directory (a package install leaves it
        # to systemd's tmpfiles, which a container may not run).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = (home / "sshd.log").open("wb")
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for(
            lambda: proc.poll() is not None or port_open("127.0.0.1", port),
            15,
            "sshd to listen",
        )
        if proc.poll() is not None:
            pytest.skip(f"sshd did not start: {(home / 'sshd.log').read_text().strip()}")
        root = home / "repos"
        root.mkdir()
        yield SshServer(
            port=port,
            user=getpass.getuser(),
            identity=home / "client_key",
            known_hosts=home / "known_hosts",
            root=root,
        )
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    credentials: Path  # KEY=VALUE lines

    def url(self, prefix: str) -> str:
        return f"s3:{self.endpoint}/{BUCKET}/{prefix}"


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    if RESTIC is None:
        pytest.skip("restic is not installed (apt-get install restic)")
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    home = tmp_path_factory.mktemp("moto")
    port = free_port()
    log = (home / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: proc.poll() is not None or port_open("127.0.0.1", port),
            30,
            "moto to listen",
        )
        assert proc.poll() is None, (home / "moto.log").read_text()
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=S3_KEY_ID,
            aws_secret_access_key=S3_SECRET,
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=BUCKET)
        credentials = home / "credentials"
        credentials.write_text(
            f"# moto accepts any key\nAWS_ACCESS_KEY_ID={S3_KEY_ID}\n"
            f"export AWS_SECRET_ACCESS_KEY='{S3_SECRET}'\n"
        )
        yield S3Server(endpoint=endpoint, credentials=credentials)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("restic-cache")


def password_file(directory: Path, password: str) -> Path:
    path = directory / "password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def make_repository(
    kind: str, tmp_path: Path, password: str, request: pytest.FixtureRequest
) -> tuple[Repository, Path | None]:
    """A fresh, empty repository description of `kind`, and the local
    directory that holds its files when there is one (not for S3)."""
    name = f"repo-{secrets.token_hex(4)}"
    pw = password_file(tmp_path, password)
    if kind == "local":
        return Repository(str(tmp_path / name), password_file=pw), tmp_path / name
    if kind == "sftp":
        server: SshServer = request.getfixturevalue("sshd")
        where = server.root / name
        repo = Repository(server.url(where), password_file=pw, ssh_command=server.ssh_command())
        return repo, where
    server_s3: S3Server = request.getfixturevalue("s3")
    repo = Repository(server_s3.url(name), password_file=pw, credentials_file=server_s3.credentials)
    return repo, None


def write_tree(root: Path) -> dict[str, bytes]:
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "a.bin": os.urandom(1_000_000),
        "b.bin": os.urandom(300_000),
        "c.txt": b"".join(b"line %d of the third file\n" % i for i in range(800)),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


def restic_processes() -> list[psutil.Process]:
    """Live restic processes started by this test process."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.name() == "restic" and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            pass
    return found


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# --- the environment, without processes ---------------------------------------------------


def test_environment_gives_the_password_to_restic_only_through_its_environment(
    tmp_path: Path,
) -> None:
    password = new_password()
    pw = password_file(tmp_path, password)
    base = {"PATH": "/usr/bin", "RESTIC_PASSWORD_COMMAND": "echo x", "RESTIC_REPOSITORY": "/x"}
    env = restic_environment(Repository("/srv/backup", password_file=pw), base)
    assert env.variables["RESTIC_REPOSITORY"] == "/srv/backup"
    assert env.variables["RESTIC_PASSWORD_FILE"] == str(pw)
    assert "RESTIC_PASSWORD" not in env.variables
    assert "RESTIC_PASSWORD_COMMAND" not in env.variables  # stray RESTIC_* left out
    assert password in env.secrets
    assert env.redact(f"the key {password} leaked") == "the key *** leaked"

    creds = tmp_path / "creds"
    creds.write_text(f'# s3\nAWS_ACCESS_KEY_ID=AKID\nexport AWS_SECRET_ACCESS_KEY="{S3_SECRET}"\n')
    repo = Repository(
        "s3:http://127.0.0.1:9/b/p",
        password_env="BACKUP_PW",
        credentials_file=creds,
        credentials_env=("B2_ACCOUNT_KEY",),
    )
    env = restic_environment(repo, {"BACKUP_PW": password, "B2_ACCOUNT_KEY": "b2secret"})
    assert env.variables["RESTIC_PASSWORD"] == password
    assert "RESTIC_PASSWORD_FILE" not in env.variables
    assert env.variables["AWS_SECRET_ACCESS_KEY"] == S3_SECRET
    assert env.variables["B2_ACCOUNT_KEY"] == "b2secret"
    assert {password, S3_SECRET, "b2secret"} <= env.secrets


def test_environment_errors_say_what_is_missing_without_secrets(tmp_path: Path) -> None:
    with pytest.raises(RepositoryConfigError, match=r"BACKUP_PW.*not set"):
        restic_environment(Repository("/r", password_env="BACKUP_PW"), {})
    with pytest.raises(RepositoryConfigError, match=r"password file.*cannot be read"):
        restic_environment(Repository("/r", password_file=tmp_path / "none"), {})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(RepositoryConfigError, match="is empty"):
        restic_environment(Repository("/r", password_file=tmp_path / "empty"), {})
    with pytest.raises(RepositoryConfigError, match="line 2: expected KEY=VALUE") as caught:
        parse_credentials(f"A=1\n{S3_SECRET}\n")
    assert S3_SECRET not in str(caught.value)
    with pytest.raises(RepositoryConfigError, match="RESTIC_PASSWORD cannot be set"):
        parse_credentials("RESTIC_PASSWORD=x")


def test_repository_descriptions_are_checked() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Repository("/r")
    with pytest.raises(ValueError, match="exactly one"):
        Repository("/r", password_file=Path("/p"), password_env="P")
    with pytest.raises(ValueError, match="sftp"):
        Repository("/r", password_env="P", ssh_command=("ssh",))
    with pytest.raises(ValueError, match="both kinds of quotes"):
        Repository("sftp:h:/r", password_env="P", ssh_command=("ssh", "-i", "a'b\"c"))
    assert Repository("/r", password_env="P").backend == "local"
    assert Repository("s3:http://h/b", password_env="P").backend == "s3"
    assert Repository("rest:https://u:hunter22@h/", password_env="P").display_url == (
        "rest:https://u:***@h/"
    )
    assert redact("at rest:https://u:hunter22@h/ x", ()) == "at rest:https://u:***@h/ x"


def test_sftp_command_carries_the_destination_and_survives_restics_splitting() -> None:
    assert sftp_destination("sftp:backup@store:/srv/r") == ("backup", "store", None)
    assert sftp_destination("sftp:store:r") == (None, "store", None)
    assert sftp_destination("sftp://backup@store:2222//srv/r") == ("backup", "store", "2222")
    repo = Repository(
        "sftp://backup@store:2222//srv/r",
        password_env="P",
        ssh_command=("ssh", "-i", "/keys/my key", "-o", "Ciphers=aes128-ctr,aes256-ctr"),
    )
    # one CSV field (restic reads -o values as CSV), shell words quoted for
    # restic's own splitter, and the destination from the url.
    assert repo.options() == [
        "-o",
        "\"sftp.command=ssh -i '/keys/my key' -o Ciphers=aes128-ctr,aes256-ctr"
        ' -p 2222 -l backup store -s sftp"',
    ]


def test_restic_error_lines_are_classified() -> None:
    cases = {
        ("Fatal: wrong password or no key found",): ErrorKind.WRONG_PASSWORD,
        (
            "Fatal: unable to open config file: stat /x/config: no such file or directory",
            "Is there a repository at the following location?",
            "/x",
        ): ErrorKind.NO_REPOSITORY,
        (
            "Fatal: unable to open config file: Stat: The specified bucket does not exist",
        ): ErrorKind.NO_REPOSITORY,
        (
            'Fatal: unable to open config file: Stat: Get "http://127.0.0.1:1/b/?location=":'
            " dial tcp 127.0.0.1:1: connect: connection refused",
        ): ErrorKind.UNREACHABLE,
        (
            "subprocess ssh: ssh: connect to host 127.0.0.1 port 2298: Connection refused",
            "Fatal: unable to open repository at sftp:h:/r: unable to start the sftp session,"
            " error: EOF",
        ): ErrorKind.UNREACHABLE,
        (
            "unable to create lock in backend: repository is already locked by PID 1 on vm",
        ): ErrorKind.LOCKED,
        ('invalid id "deadbeef": no matching ID found for prefix "deadbeef"',): ErrorKind.NOT_FOUND,
        ("Fatal: something else",): ErrorKind.FAILED,
    }
    for lines, kind in cases.items():
        assert classify(lines)[0] is kind, lines
    kind, detail = classify(
        [
            "subprocess ssh: ssh: connect to host 127.0.0.1 port 2298: Connection refused",
            "Fatal: unable to open repository at sftp:h:/r: unable to start the sftp session",
        ]
    )
    assert detail == "connect to host 127.0.0.1 port 2298: Connection refused"


def test_keep_policy() -> None:
    assert KeepPolicy(last=1, daily=7, monthly=12).args() == [
        "--keep-last",
        "1",
        "--keep-daily",
        "7",
        "--keep-monthly",
        "12",
    ]
    with pytest.raises(ValueError, match="at least one rule"):
        KeepPolicy()
    with pytest.raises(ValueError, match="at least 1"):
        KeepPolicy(weekly=0)


# --- a fake restic: what the driver puts on the command line and in the environment -------

FAKE_STATUS = {
    "message_type": "status",
    "percent_done": 0.5,
    "total_files": 2,
    "files_done": 1,
    "total_bytes": 10,
    "bytes_done": 5,
}
FAKE_ERROR = {
    "message_type": "error",
    "error": {"message": "open /d/x: permission denied"},
    "during": "archival",
    "item": "/d/x",
}
FAKE_SUMMARY = {
    "message_type": "summary",
    "files_new": 1,
    "files_changed": 0,
    "files_unmodified": 0,
    "dirs_new": 1,
    "dirs_changed": 0,
    "dirs_unmodified": 0,
    "data_blobs": 1,
    "tree_blobs": 1,
    "data_added": 10,
    "total_files_processed": 1,
    "total_bytes_processed": 5,
    "total_duration": 0.1,
    "snapshot_id": "0123abcd",
}
# Records its argv and environment; a backup that could not read one file
# (exit code 3), anything else a wrong password that echoes the password.
FAKE_RESTIC = f"""#!/bin/sh
printf '%s\\n' "$@" > "$FAKE_DIR/argv"
env > "$FAKE_DIR/env"
case " $* " in
  *" backup "*)
    echo '{json.dumps(FAKE_STATUS)}'
    echo '{json.dumps(FAKE_ERROR)}'
    echo '{json.dumps(FAKE_SUMMARY)}'
    exit 3 ;;
  *)
    echo "Fatal: wrong password or no key found (it was $RESTIC_PASSWORD)" >&2
    exit 1 ;;
esac
"""


@process
async def test_the_password_is_never_on_the_command_line(tmp_path: Path) -> None:
    fake = tmp_path / "restic"
    fake.write_text(FAKE_RESTIC)
    fake.chmod(0o755)
    password = new_password()
    environ = {"PATH": os.environ["PATH"], "FAKE_DIR": str(tmp_path), "BACKUP_PW": password}
    restic = Restic(
        Repository("/srv/backup", password_env="BACKUP_PW"), binary=str(fake), environ=environ
    )
    seen: list[Progress] = []

    async def progress(p: Progress) -> None:
        seen.append(p)

    result = await restic.backup([tmp_path], tags=["vol"], host="n1", progress=progress)
    argv = (tmp_path / "argv").read_text()
    assert password not in argv
    assert argv.splitlines()[:3] == ["backup", "--json", "--tag"]
    assert f"RESTIC_PASSWORD={password}" in (tmp_path / "env").read_text().splitlines()
    # exit code 3: the snapshot exists, but a file could not be read
    assert not result.complete
    assert result.snapshot_id == "0123abcd"
    assert result.errors == ("/d/x: open /d/x: permission denied (during archival)",)
    assert seen == [Progress(0.5, 5, 10, 1, 2)]

    # restic (or ssh) writing the password on stderr: redacted from the error
    with pytest.raises(ResticError) as caught:
        await restic.snapshots()
    assert caught.value.kind is ErrorKind.WRONG_PASSWORD
    assert password not in str(caught.value)

    pw = password_file(tmp_path, password)
    restic = Restic(Repository("/srv/backup", password_file=pw), binary=str(fake), environ=environ)
    await restic.backup([tmp_path])
    assert password not in (tmp_path / "argv").read_text()
    assert f"RESTIC_PASSWORD_FILE={pw}" in (tmp_path / "env").read_text().splitlines()


@process
async def test_a_missing_restic_says_how_to_install_it(tmp_path: Path) -> None:
    repo = Repository(str(tmp_path / "repo"), password_file=password_file(tmp_path, "x" * 12))
    for binary in (str(tmp_path / "no" / "restic"), "no-such-restic-binary"):
        with pytest.raises(ResticError) as caught:
            await Restic(repo, binary=binary).init()
        assert caught.value.kind is ErrorKind.NOT_INSTALLED
        assert "apt-get install restic" in str(caught.value)
        assert binary in str(caught.value)


# --- real repositories ----------------------------------------------------------------------


@process
@needs_restic
@pytest.mark.parametrize("kind", ["local", "sftp", "s3"])
async def test_backup_lifecycle(
    kind: str, tmp_path: Path, cache_dir: Path, request: pytest.FixtureRequest
) -> None:
    password = new_password()
    repo, _ = make_repository(kind, tmp_path, password, request)
    restic = Restic(repo, cache_dir=cache_dir, timeout=120)

    assert await restic.init() is True
    assert await restic.init() is False  # there already, and opens with the password

    data = tmp_path / "data"
    original = write_tree(data)
    first = await restic.backup(["."], cwd=data, tags=["ninefold", "vol-db"], host="node-1")
    assert (first.files_new, first.files_changed, first.files_unmodified) == (3, 0, 0)
    assert first.data_added >= sum(len(b) for b in original.values())
    assert first.complete and not first.errors

    with (data / "c.txt").open("ab") as f:
        f.write(b"one more line\n")
    second = await restic.backup(["."], cwd=data, tags=["ninefold", "vol-db"], host="node-1")
    assert (second.files_new, second.files_changed, second.files_unmodified) == (0, 1, 2)
    assert second.data_added < 64 * 1024 < first.data_added  # only the change went
    assert second.total_bytes_processed == first.total_bytes_processed + 14

    listed = await restic.snapshots(tags=["vol-db"])
    assert [s.short_id for s in listed] == [first.snapshot_id, second.snapshot_id]
    assert all(s.tags == ("ninefold", "vol-db") and s.hostname == "node-1" for s in listed)
    assert listed[0].paths == (str(data),)

    stats = await restic.stats(first.snapshot_id)
    assert (stats.total_file_count, stats.total_size) == (3, sum(map(len, original.values())))

    target = tmp_path / "restored"
    await restic.restore(first.snapshot_id, target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == original

    forgot = await restic.forget(KeepPolicy(last=1), tags=["vol-db"], prune=True)
    assert forgot.kept == (listed[1].id,)
    assert forgot.removed == (listed[0].id,)
    assert [s.id for s in await restic.snapshots()] == [listed[1].id]

    checked = await restic.check(read_data_subset="1/1")
    assert checked.ok, checked.errors


@pytest.fixture(scope="module")
def local_repo(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> tuple[Repository, str, Path]:
    """An initialised local repository with one snapshot: (repository, its
    password, its directory). For tests that leave it as it was."""
    if RESTIC is None:
        pytest.skip("restic is not installed (apt-get install restic)")
    home = tmp_path_factory.mktemp("local-repo")
    password = new_password()
    repo = Repository(str(home / "repo"), password_file=password_file(home, password))
    write_tree(home / "data")

    async def setup() -> None:
        restic = Restic(repo, cache_dir=cache_dir)
        await restic.init()
        await restic.backup([home / "data"], tags=["base"])

    asyncio.run(setup())
    return repo, password, home / "repo"


@process
@needs_restic
async def test_a_wrong_password_is_one_clear_line_without_the_password(
    local_repo: tuple[Repository, str, Path], tmp_path: Path
) -> None:
    repo, right, _ = local_repo
    wrong = new_password()
    wrong_repo = Repository(repo.url, password_env="BACKUP_PW")
    restic = Restic(wrong_repo, environ={**os.environ, "BACKUP_PW": wrong})
    for call in (restic.snapshots(), restic.init()):
        with pytest.raises(ResticError) as caught:
            await call
        error = caught.value
        assert error.kind is ErrorKind.WRONG_PASSWORD
        assert str(error) == (
            f"the password of repository {repo.url} is wrong:"
            " no key in the repository opens with it"
        )
        assert wrong not in str(error) and right not in str(error)


@process
@needs_restic
async def test_no_repository_at_the_path(tmp_path: Path) -> None:
    repo = Repository(str(tmp_path / "nothing"), password_file=password_file(tmp_path, "x" * 12))
    with pytest.raises(ResticError) as caught:
        await Restic(repo).snapshots()
    assert caught.value.kind is ErrorKind.NO_REPOSITORY
    assert str(caught.value).startswith(f"there is no restic repository at {repo.url}")
    with pytest.raises(ResticError) as caught:
        await Restic(repo).stats("deadbeef")
    assert caught.value.kind is ErrorKind.NO_REPOSITORY


@process
@needs_restic
async def test_unreachable_s3_endpoint(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.write_text(f"AWS_ACCESS_KEY_ID={S3_KEY_ID}\nAWS_SECRET_ACCESS_KEY={S3_SECRET}\n")
    url = f"s3:http://127.0.0.1:{free_port()}/{BUCKET}/x"
    password = new_password()
    repo = Repository(url, password_file=password_file(tmp_path, password), credentials_file=creds)
    for call in (Restic(repo).init(), Restic(repo).snapshots()):
        with pytest.raises(ResticError) as caught:
            await call
        assert caught.value.kind is ErrorKind.UNREACHABLE
        message = str(caught.value)
        assert message.startswith(f"repository {url} cannot be reached:")
        assert "connection refused" in message
        assert S3_SECRET not in message and password not in message


@process
@needs_restic
async def test_unreachable_sftp_server(sshd: SshServer, tmp_path: Path) -> None:
    pw = password_file(tmp_path, new_password())
    closed = Repository(
        sshd.url(sshd.root / "r", port=free_port()),
        password_file=pw,
        ssh_command=sshd.ssh_command(),
    )
    with pytest.raises(ResticError) as caught:
        await Restic(closed).init()
    assert caught.value.kind is ErrorKind.UNREACHABLE
    assert str(caught.value).endswith("Connection refused")

    stranger = sshd.identity.with_name("stranger_key")
    refused = Repository(
        sshd.url(sshd.root / "r"), password_file=pw, ssh_command=sshd.ssh_command(stranger)
    )
    with pytest.raises(ResticError) as caught:
        await Restic(refused).snapshots()
    assert caught.value.kind is ErrorKind.UNREACHABLE
    assert "Permission denied (publickey)" in str(caught.value)


@process
@needs_restic
async def test_check_reports_a_damaged_repository(tmp_path: Path, cache_dir: Path) -> None:
    repo = Repository(str(tmp_path / "repo"), password_file=password_file(tmp_path, "p" * 16))
    restic = Restic(repo, cache_dir=cache_dir)
    await restic.init()
    write_tree(tmp_path / "data")
    await restic.backup([tmp_path / "data"])
    packs = sorted((tmp_path / "repo" / "data").rglob("*"), key=lambda p: p.stat().st_size)
    biggest = packs[-1]
    biggest.chmod(0o600)
    with biggest.open("r+b") as f:
        f.seek(100)
        f.write(b"damage")
    checked = await restic.check(read_data_subset="1/1")
    assert not checked.ok
    assert any(biggest.name in line for line in checked.errors), checked.errors


def slow_source(tmp_path: Path) -> Path:
    """Random data that takes long to upload under a bandwidth limit."""
    source = tmp_path / "slow"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(4_000_000))
    return source


@process
@needs_restic
async def test_a_locked_repository_and_unlock(
    local_repo: tuple[Repository, str, Path], tmp_path: Path, cache_dir: Path
) -> None:
    repo, _, directory = local_repo
    locks = directory / "locks"
    slow = Restic(repo, cache_dir=cache_dir, limit_upload=64)
    started = asyncio.Event()
    backup = asyncio.create_task(
        slow.backup([slow_source(tmp_path)], progress=lambda _: started.set())
    )
    await asyncio.wait_for(started.wait(), 30)
    live = await eventually(
        lambda: asyncio.to_thread(lambda: list(locks.iterdir())), 10, "the backup's lock"
    )
    restic = Restic(repo, cache_dir=cache_dir)
    with pytest.raises(ResticError) as caught:
        await restic.forget(KeepPolicy(last=5))  # needs an exclusive lock
    assert caught.value.kind is ErrorKind.LOCKED
    assert "is locked" in str(caught.value) and "unlock" in str(caught.value)

    # a restic that dies without cleaning up leaves its lock: keep a copy
    stale = {path.name: path.read_bytes() for path in live}
    backup.cancel()
    with pytest.raises(asyncio.CancelledError):
        await backup
    assert list(locks.iterdir()) == []  # a cancelled restic removed its lock (SIGINT)
    assert restic_processes() == []

    for name, data in stale.items():
        (locks / name).write_bytes(data)
    with pytest.raises(ResticError) as caught:
        await restic.forget(KeepPolicy(last=5))
    assert caught.value.kind is ErrorKind.LOCKED
    await restic.unlock()  # its process is gone: a stale lock
    assert list(locks.iterdir()) == []
    result = await restic.forget(KeepPolicy(last=5))
    assert len(result.kept) == 1 and result.removed == ()


@process
@needs_restic
async def test_a_call_that_times_out_stops_restic(
    local_repo: tuple[Repository, str, Path], tmp_path: Path, cache_dir: Path
) -> None:
    repo, _, directory = local_repo
    slow = Restic(repo, cache_dir=cache_dir, limit_upload=64)
    with pytest.raises(ResticError) as caught:
        await slow.backup([slow_source(tmp_path)], timeout=2.0)
    assert caught.value.kind is ErrorKind.TIMEOUT
    assert str(caught.value) == (
        f"restic backup on {repo.url} did not finish within 2 s and was stopped"
    )
    assert restic_processes() == []
    assert list((directory / "locks").iterdir()) == []


@process
@needs_restic
async def test_cancelling_an_sftp_backup_ends_restic_and_its_ssh(
    sshd: SshServer, tmp_path: Path, cache_dir: Path
) -> None:
    password = new_password()
    where = sshd.root / f"cancel-{secrets.token_hex(4)}"
    repo = Repository(
        sshd.url(where),
        password_file=password_file(tmp_path, password),
        ssh_command=sshd.ssh_command(),
    )
    await Restic(repo, cache_dir=cache_dir).init()
    slow = Restic(repo, cache_dir=cache_dir, limit_upload=64)
    started = asyncio.Event()
    backup = asyncio.create_task(
        slow.backup([slow_source(tmp_path)], progress=lambda _: started.set())
    )
    await asyncio.wait_for(started.wait(), 30)
    (restic,) = restic_processes()
    (ssh,) = [p for p in restic.children(recursive=True) if p.name() == "ssh"]
    for proc in (restic, ssh):
        assert password not in " ".join(proc.cmdline())

    backup.cancel()
    with pytest.raises(asyncio.CancelledError):
        await backup
    assert not alive(restic)
    assert not alive(ssh)
    assert list((where / "locks").iterdir()) == []
    assert await Restic(repo, cache_dir=cache_dir).snapshots() == []
