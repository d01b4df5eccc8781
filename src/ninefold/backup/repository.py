"""Where backups go, and the environment that tells restic so.

A `Repository` names restic's repository string (a local path, `sftp:...`,
`s3:...`, or any other backend restic knows), where its password comes from,
and any credentials the backend needs. `restic_environment` turns it into the
environment of a restic process.

The password reaches restic only through that environment:
RESTIC_PASSWORD_FILE, or RESTIC_PASSWORD copied from a variable of the agent's
own environment. It is never on a command line, which any user of the machine
can read in /proc, and never in a log line or an exception: `redact` takes it
(and every credential value) out of any text restic or ssh wrote before that
text goes anywhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "BACKENDS",
    "Repository",
    "RepositoryConfigError",
    "ResticEnvironment",
    "parse_credentials",
    "redact",
    "restic_environment",
]

#: The repository prefixes restic 0.14 knows; a string without one is a local path.
BACKENDS = frozenset({"local", "sftp", "s3", "rest", "b2", "azure", "gs", "swift", "rclone"})

#: Variables that only `restic_environment` sets: a credentials file or
#: variable naming one of them would change which repository or password is used.
RESERVED = frozenset(
    {
        "RESTIC_REPOSITORY",
        "RESTIC_REPOSITORY_FILE",
        "RESTIC_PASSWORD",
        "RESTIC_PASSWORD_FILE",
        "RESTIC_PASSWORD_COMMAND",
    }
)

REDACTED = "***"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PREFIX = re.compile(r"([a-z0-9]+):")
# The password of a URL's userinfo (rest:https://user:secret@host/): group 1 is kept.
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)([^@/\s]+)@")
# An ssh argument that restic's sftp.command splitting keeps whole without quotes.
_PLAIN_WORD = re.compile(r"[^\s'\"\\]+\Z")


class RepositoryConfigError(ValueError):
    """The repository cannot be used as described here: its password file
    cannot be read, a variable it names is not set, its credentials file is
    malformed. The message is one line and holds no secret."""


@dataclass(frozen=True)
class Repository:
    """A restic repository and how to open it.

    - ``url``: restic's repository string: ``/srv/backup``,
      ``sftp:user@host:/srv/restic`` (or ``sftp://user@host:2222//srv/restic``
      for another port), ``s3:http://127.0.0.1:9000/bucket/prefix``.
    - ``password_file`` or ``password_env`` (exactly one): a file holding the
      password, or the name of a variable of the agent's environment holding it.
    - ``credentials_file``: ``KEY=VALUE`` lines added to restic's environment
      (``AWS_ACCESS_KEY_ID=...``, ``AWS_SECRET_ACCESS_KEY=...``);
      ``credentials_env``: names of variables of the agent's environment that
      must be set and are passed on. Their values are treated as secrets.
    - ``ssh_command`` (sftp only): the ssh program and its options, without
      the destination, e.g. ``("ssh", "-i", "/etc/ninefold/backup_key", "-o",
      "BatchMode=yes")``; default plain ``ssh``. The user, host and port are
      taken from ``url`` and appended (with ``-s sftp``); the whole goes to
      restic as ``-o sftp.command=...``.
    """

    url: str
    password_file: Path | None = None
    password_env: str | None = None
    credentials_file: Path | None = None
    credentials_env: tuple[str, ...] = ()
    ssh_command: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Lists given for the tuples would make the description unhashable.
        object.__setattr__(self, "credentials_env", tuple(self.credentials_env))
        object.__setattr__(self, "ssh_command", tuple(self.ssh_command))
        if not self.url.strip() or any(c in self.url for c in "\r\n\0"):
            raise ValueError("a repository needs a url on one line")
        if (self.password_file is None) == (self.password_env is None):
            raise ValueError("a repository needs exactly one of password_file and password_env")
        if self.password_env is not None:
            _check_name(self.password_env, "password_env")
            if self.password_env in RESERVED:
                raise ValueError(f"password_env cannot be {self.password_env}")
        for name in self.credentials_env:
            _check_name(name, "credentials_env")
            if name in RESERVED:
                raise ValueError(
                    f"credentials_env cannot name {name}: it is set from the repository"
                )
        if self.ssh_command and self.backend != "sftp":
            raise ValueError(f"ssh_command is for sftp repositories, not {self.backend}")
        if self.backend == "sftp":
            self.sftp_command()  # raises on a url without a host, or unsplittable arguments

    @property
    def backend(self) -> str:
        """``local``, ``sftp``, ``s3``, ... (restic's prefix of ``url``)."""
        match = _PREFIX.match(self.url)
        if match and match.group(1) in BACKENDS:
            return match.group(1)
        return "local"

    @property
    def display_url(self) -> str:
        """``url`` fit for messages: a password inside it (``user:secret@``) redacted."""
        return _URL_PASSWORD.sub(rf"\1{REDACTED}@", self.url)

    def sftp_command(self, ssh_log: str | None = None) -> str | None:
        """The value of restic's ``sftp.command`` option (None but for sftp).
        ``ssh_log``: a file ssh writes its messages to (``-E``) instead of its
        stderr, which restic 0.14 sometimes exits without passing on."""
        if self.backend != "sftp":
            return None
        user, host, port = sftp_destination(self.url)
        argv = list(self.ssh_command or ("ssh",))
        if ssh_log:
            argv += ["-E", ssh_log]
        if port:
            argv += ["-p", port]
        if user:
            argv += ["-l", user]
        argv += [host, "-s", "sftp"]
        return " ".join(_restic_shell_word(arg) for arg in argv)

    def options(self, ssh_log: str | None = None) -> list[str]:
        """restic's extended options (``-o KEY=VALUE`` pairs) for this repository."""
        command = self.sftp_command(ssh_log)
        if command is None:
            return []
        # restic reads every -o value as a line of CSV (a comma would split it,
        # a bare double quote is an error): quote it as one CSV field.
        return ["-o", _csv_field(f"sftp.command={command}")]


def sftp_destination(url: str) -> tuple[str | None, str, str | None]:
    """The (user, host, port) restic connects to for an ``sftp:`` url, read
    the way restic 0.14 reads it: ``sftp:[user@]host:path`` or
    ``sftp://[user@]host[:port]/path``."""
    if not url.startswith("sftp:"):
        raise ValueError(f"not an sftp repository: {url}")
    rest = url[len("sftp:") :]
    if rest.startswith("//"):
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"bad port in sftp repository {url}") from None
        user, port_text = parts.username or None, str(port) if port else None
    else:
        # restic: the host is what comes before the first ':', after an '@'.
        if rest.startswith("[") or "@[" in rest:
            head, sep, tail = rest.partition("]")
            if not sep or not tail.startswith(":"):
                raise ValueError(f"sftp repository needs [user@]host:path: {url}")
            user_part, _, host = head.partition("[")
            user = user_part.removesuffix("@") or None
        else:
            head, sep, _ = rest.partition(":")
            if not sep:
                raise ValueError(f"sftp repository needs [user@]host:path: {url}")
            user_text, at, host = head.rpartition("@")
            user = user_text if at else None
        port_text = None
    if not host:
        raise ValueError(f"sftp repository without a host: {url}")
    return user, host, port_text


def _restic_shell_word(arg: str) -> str:
    """`arg` written so that restic's splitting of sftp.command gives it back
    whole. That splitter knows single and double quotes but no escapes (a
    backslash splits words outside quotes and keeps a closing quote from
    ending them inside)."""
    if not arg:
        raise ValueError("ssh_command has an empty argument")
    if "\\" in arg or any(c in arg for c in "\r\n\0"):
        raise ValueError(f"ssh_command argument cannot hold a backslash or newline: {arg!r}")
    if _PLAIN_WORD.match(arg):
        return arg
    for quote in ("'", '"'):
        if quote not in arg:
            return f"{quote}{arg}{quote}"
    raise ValueError(f"ssh_command argument cannot hold both kinds of quotes: {arg!r}")


def _csv_field(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"{what}: {name!r} is not an environment variable name")


# --- the environment of a restic process ------------------------------------------------


@dataclass(frozen=True)
class ResticEnvironment:
    """The complete environment of a restic child, and the secret values in it
    (the password, credential values), which `redact` takes out of text."""

    variables: Mapping[str, str]
    secrets: frozenset[str]

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)


def restic_environment(
    repository: Repository, environ: Mapping[str, str] | None = None
) -> ResticEnvironment:
    """The environment restic runs with for `repository`.

    It is `environ` (default: this process's) without any ``RESTIC_*``
    variable, so a stray RESTIC_PASSWORD_COMMAND or RESTIC_REPOSITORY cannot
    change what is opened, plus RESTIC_REPOSITORY, RESTIC_PASSWORD_FILE (an
    absolute path) or RESTIC_PASSWORD (from ``password_env``), and the
    credentials. Reads the password and credentials files (small, local): call
    it off the event loop. Raises RepositoryConfigError."""
    base = os.environ if environ is None else environ
    where = repository.display_url
    variables = {k: v for k, v in base.items() if not k.startswith("RESTIC_")}
    secrets: set[str] = set()
    variables["RESTIC_REPOSITORY"] = repository.url
    match = _URL_PASSWORD.search(repository.url)
    if match:
        secrets.add(match.group(2))
    if repository.password_file is not None:
        path = Path(os.path.abspath(repository.password_file))
        text = _read(path, f"the password file of repository {where}")
        # restic strips surrounding white space from a password file.
        password = text.strip()
        if not password:
            raise RepositoryConfigError(f"the password file {path} of repository {where} is empty")
        secrets.update({password, text.rstrip("\r\n")})
        variables["RESTIC_PASSWORD_FILE"] = str(path)
    elif repository.password_env is not None:
        value = base.get(repository.password_env, "")
        if not value:
            raise RepositoryConfigError(
                f"the variable {repository.password_env}, which holds the password of"
                f" repository {where}, is not set"
            )
        secrets.add(value)
        variables["RESTIC_PASSWORD"] = value
    if repository.credentials_file is not None:
        path = Path(os.path.abspath(repository.credentials_file))
        text = _read(path, f"the credentials file of repository {where}")
        credentials = parse_credentials(text, source=f"credentials file {path}")
        variables.update(credentials)
        secrets.update(credentials.values())
    for name in repository.credentials_env:
        credential = base.get(name)
        if credential is None:
            raise RepositoryConfigError(
                f"the variable {name}, a credential of repository {where}, is not set"
            )
        variables[name] = credential
        secrets.add(credential)
    secrets.discard("")
    return ResticEnvironment(variables=variables, secrets=frozenset(secrets))


def parse_credentials(text: str, *, source: str = "credentials") -> dict[str, str]:
    """``KEY=VALUE`` lines (blank lines, ``#`` comments, an ``export`` prefix
    and quotes around the value allowed). Errors name the line, never its
    content, which may be a secret."""
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _NAME.match(key):
            raise RepositoryConfigError(f"{source}, line {number}: expected KEY=VALUE")
        if key in RESERVED:
            raise RepositoryConfigError(
                f"{source}, line {number}: {key} cannot be set there (it comes from the repository)"
            )
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[key] = value
    return found


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret, and any URL's password, replaced by ``***``."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise RepositoryConfigError(
            f"{what} ({path}) cannot be read: {exc.strerror or type(exc).__name__}"
        ) from None
