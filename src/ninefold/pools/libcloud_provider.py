"""The `libcloud` provider: machines in a cloud through Apache Libcloud's
compute drivers (EC2, OpenStack, GCE, Azure and the rest), docs/pools.md.

Settings (a pool's `settings:`) say which driver, region and endpoint; the
credentials come from a file or the environment (`load_credentials`), never
from the spec or the store. No secret appears in an error, a repr or a log.

Every call may block on the cloud's API: the agent runs them in a thread, and
this provider sends one request at a time through its driver.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import stat
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from ninefold.pools.provider import Machine, MachineRequest, MachineState, ProviderError
from ninefold.spec.duration import parse_duration

KEY_ENV = "NINEFOLD_CLOUD_KEY"
SECRET_ENV = "NINEFOLD_CLOUD_SECRET"
TOKEN_ENV = "NINEFOLD_CLOUD_TOKEN"
"""The environment variables any driver's credentials may come from."""

STANDARD_ENV: Mapping[str, tuple[str, str, str | None]] = MappingProxyType(
    {
        "ec2": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
        "openstack": ("OS_USERNAME", "OS_PASSWORD", None),
    }
)
"""A driver's own conventional variables (key, secret, token), read after ninefold's."""

DEFAULT_TIMEOUT = 30.0
"""How long one API request may take (settings `timeout`)."""
DEFAULT_STOP_TIMEOUT = 180.0
"""How long `power_off` waits for the provider to report the machine stopped
(settings `stop_timeout`): a fence is confirmed only then."""
STOP_POLL_INTERVAL = 1.0

SETTINGS_KEYS = (
    "driver",
    "region",
    "endpoint",
    "credentials_file",
    "options",
    "timeout",
    "stop_timeout",
)
TEMPLATE_KEYS = ("image", "size", "key_name", "security_groups", "subnet", "extra")
CREDENTIAL_FIELDS = ("key", "secret", "token")

_LOOKS_SECRET = re.compile(
    r"(^|_)(key|secret|password|passwd|token|credentials?|access_key|api_key)$", re.I
)
_USER_DATA_METADATA = "user-data"
"""Where user-data goes on a driver without a user-data argument (GCE's cloud-init
reads this metadata key). Never shown as a tag: it holds the one-use join token."""

_STATES: Mapping[str, MachineState] = MappingProxyType(
    {
        "running": "running",
        "rebooting": "running",
        "migrating": "running",
        "reconfiguring": "running",
        "updating": "running",
        "normal": "running",
        "pending": "pending",
        "starting": "pending",
        "stopped": "stopped",
        "suspended": "stopped",
        "paused": "stopped",
        "terminated": "terminated",
    }
)
"""libcloud's NodeState values -> ours; anything else (stopping, error) is unknown."""

_AUTH_CODES = frozenset(
    {
        "AuthFailure",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "OptInRequired",
        "UnrecognizedClientException",
        "InvalidAccessKeyId",
        "ExpiredToken",
        "RequestExpired",
    }
)
_QUOTA_CODES = frozenset(
    {
        "InstanceLimitExceeded",
        "VcpuLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "ResourceLimitExceeded",
        "VolumeLimitExceeded",
        "AddressLimitExceeded",
    }
)
_GONE_CODES = frozenset({"InvalidInstanceID.NotFound", "itemNotFound"})


# --- settings and credentials -------------------------------------------------


@dataclass(frozen=True)
class LibcloudSettings:
    """A pool's `settings:` for the libcloud provider, checked."""

    driver: str
    """A libcloud compute driver name: ec2, openstack, gce, azure_arm..."""
    region: str | None = None
    endpoint: str | None = None
    """An API URL instead of the driver's own (an EC2-compatible endpoint)."""
    credentials_file: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    """Further keyword arguments of the driver's constructor (never credentials)."""
    timeout: float = DEFAULT_TIMEOUT
    stop_timeout: float = DEFAULT_STOP_TIMEOUT

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> LibcloudSettings:
        """Check a pool's settings; ProviderError naming the offending key (never its value)."""
        for name in raw:
            if name in CREDENTIAL_FIELDS or _LOOKS_SECRET.search(str(name)):
                raise ProviderError(
                    f"libcloud provider: settings.{name}: credentials never go in the spec; "
                    f"use settings.credentials_file or ${KEY_ENV} and ${SECRET_ENV}"
                )
            if name not in SETTINGS_KEYS:
                raise ProviderError(
                    f"libcloud provider: unknown setting {name!r} "
                    f"(known: {', '.join(SETTINGS_KEYS)})"
                )
        driver = raw.get("driver")
        if not isinstance(driver, str) or not driver.strip():
            raise ProviderError(
                "libcloud provider: settings.driver is required: a libcloud compute driver "
                "name such as ec2, openstack or gce"
            )
        texts: dict[str, str | None] = {}
        for name in ("region", "endpoint", "credentials_file"):
            value = raw.get(name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ProviderError(f"libcloud provider: settings.{name} must be a non-empty text")
            texts[name] = value
        if texts["endpoint"] is not None:
            _split_endpoint(texts["endpoint"])
        options = raw.get("options", {})
        if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
            raise ProviderError(
                "libcloud provider: settings.options must map driver argument names to values"
            )
        for name in options:
            if name in CREDENTIAL_FIELDS or _LOOKS_SECRET.search(name):
                raise ProviderError(
                    f"libcloud provider: settings.options.{name}: credentials never go in the "
                    "spec; use settings.credentials_file or the environment"
                )
        durations = {}
        for name, default in (("timeout", DEFAULT_TIMEOUT), ("stop_timeout", DEFAULT_STOP_TIMEOUT)):
            try:
                seconds = parse_duration(raw.get(name, default))
            except ValueError as exc:
                raise ProviderError(f"libcloud provider: settings.{name}: {exc}") from None
            if seconds <= 0:
                raise ProviderError(f"libcloud provider: settings.{name} must be more than 0")
            durations[name] = seconds
        return cls(
            driver=driver.strip().lower(),
            region=texts["region"],
            endpoint=texts["endpoint"],
            credentials_file=texts["credentials_file"],
            options=MappingProxyType(dict(options)),
            timeout=durations["timeout"],
            stop_timeout=durations["stop_timeout"],
        )


def _split_endpoint(endpoint: str) -> tuple[str, int | None, bool, str]:
    """(host, port, secure, path) of an endpoint URL such as http://127.0.0.1:5000."""
    parts = urlsplit(endpoint.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
        raise ProviderError(
            f"libcloud provider: settings.endpoint {endpoint!r} is not a URL like "
            "https://ec2.example.net or http://127.0.0.1:5000"
        )
    return parts.hostname, port, parts.scheme == "https", parts.path


@dataclass(frozen=True)
class Credentials:
    """A driver's key and secret (and session token). Its repr shows where they
    came from, never what they are."""

    key: str = field(repr=False)
    """The access key id, user name or service account (libcloud's `key`)."""
    secret: str = field(repr=False)
    """The secret key, password, or key file path (libcloud's `secret`)."""
    token: str | None = field(default=None, repr=False)
    """A session token (EC2's temporary credentials), when there is one."""
    source: str = ""
    """Where they came from: a file path or environment variable names."""

    def __str__(self) -> str:
        return f"credentials from {self.source}"

    def redact(self, text: str) -> str:
        """`text` with every credential value in it replaced by ***."""
        for value in sorted((self.key, self.secret, self.token or ""), key=len, reverse=True):
            if len(value) >= 4:
                text = text.replace(value, "***")
        return text


def load_credentials(
    settings: LibcloudSettings | Mapping[str, Any], environ: Mapping[str, str] = os.environ
) -> Credentials:
    """The credentials for a pool's driver, from the first of:

    1. the file `settings.credentials_file` (when set, only there);
    2. $NINEFOLD_CLOUD_KEY and $NINEFOLD_CLOUD_SECRET (and $NINEFOLD_CLOUD_TOKEN);
    3. the driver's conventional variables: ec2 $AWS_ACCESS_KEY_ID,
       $AWS_SECRET_ACCESS_KEY (and $AWS_SESSION_TOKEN); openstack $OS_USERNAME,
       $OS_PASSWORD.

    The file has lines `key: ...`, `secret: ...` and optionally `token: ...`
    (`#` starts a comment); its owner alone may read it (chmod 600), as with
    ssh keys. ProviderError says what is wrong, never a value.
    """
    if not isinstance(settings, LibcloudSettings):
        settings = LibcloudSettings.parse(settings)
    if settings.credentials_file is not None:
        return _credentials_from_file(Path(settings.credentials_file).expanduser())
    pairs: list[tuple[str, str, str | None]] = [(KEY_ENV, SECRET_ENV, TOKEN_ENV)]
    if settings.driver in STANDARD_ENV:
        pairs.append(STANDARD_ENV[settings.driver])
    for key_name, secret_name, token_name in pairs:
        key, secret = environ.get(key_name, ""), environ.get(secret_name, "")
        if key and secret:
            token = environ.get(token_name) or None if token_name else None
            return Credentials(key, secret, token, source=f"${key_name} and ${secret_name}")
        if key or secret:
            missing, present = (secret_name, key_name) if key else (key_name, secret_name)
            raise ProviderError(
                f"libcloud provider ({settings.driver}): ${present} is set but ${missing} "
                "is not: set both"
            )
    tried = " or ".join(f"${k} and ${s}" for k, s, _ in pairs)
    raise ProviderError(
        f"libcloud provider ({settings.driver}): no credentials: set the pool's "
        f"settings.credentials_file, or {tried} in the agent's environment"
    )


def _credentials_from_file(path: Path) -> Credentials:
    where = f"credentials file {path}"
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ProviderError(f"libcloud provider: {where} does not exist") from None
    except OSError as exc:
        raise ProviderError(f"libcloud provider: {where}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ProviderError(f"libcloud provider: {where} is not a regular file")
    if info.st_mode & 0o077:
        raise ProviderError(
            f"libcloud provider: {where} may be read or changed by others than its owner "
            f"(mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 {path}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ProviderError(f"libcloud provider: {where}: {reason}") from None
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or name not in CREDENTIAL_FIELDS:
            raise ProviderError(
                f"libcloud provider: {where}, line {number}: expected `key: ...`, "
                "`secret: ...` or `token: ...`"
            )
        if name in found:
            raise ProviderError(f"libcloud provider: {where}, line {number}: {name} given twice")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if not value:
            raise ProviderError(f"libcloud provider: {where}, line {number}: {name} is empty")
        found[name] = value
    missing = [name for name in ("key", "secret") if name not in found]
    if missing:
        raise ProviderError(f"libcloud provider: {where} has no {' and no '.join(missing)} line")
    return Credentials(found["key"], found["secret"], found.get("token"), source=str(path))


# --- EC2 answers ----------------------------------------------------------------


def _ec2_response_class() -> Any:
    """libcloud's EC2 response parser, tolerant of EC2-compatible endpoints that
    spell the XML namespace without its trailing slash (moto 5.1 and later, so
    LocalStack) or add elements to an error (moto's `<Type>`), which libcloud
    3.9 reads as empty answers and as crashes."""
    from libcloud.common.types import InvalidCredsError
    from libcloud.compute.drivers.ec2 import NAMESPACE, EC2Response

    bare = NAMESPACE.rstrip("/")

    class TolerantEC2Response(EC2Response):
        def parse_body(self) -> Any:
            if isinstance(self.body, str) and f'"{bare}"' in self.body:
                self.body = self.body.replace(f'xmlns="{bare}"', f'xmlns="{NAMESPACE}"')
            return super().parse_body()  # type: ignore[no-untyped-call]

        def parse_error(self) -> str:
            errors = []
            body = self.body if isinstance(self.body, str | bytes) else ""
            try:
                root = ET.XML(body)
            except (ET.ParseError, TypeError, ValueError):
                return "an answer that is not EC2's XML"
            for element in root.iter():
                if _local(element.tag) != "Error":
                    continue
                code = message = ""
                for child in element:
                    if _local(child.tag) == "Code":
                        code = (child.text or "").strip()
                    elif _local(child.tag) == "Message":
                        message = (child.text or "").strip()
                if code:
                    if code in _AUTH_CODES:
                        raise InvalidCredsError(f"{code}: {message}")
                    errors.append(f"{code}: {message}")
            return "\n".join(errors) or "an error without a code"

    return TolerantEC2Response


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


# --- the provider -----------------------------------------------------------------


@dataclass(frozen=True)
class _Ref:
    """What a driver wants where it takes an object and reads its id or name
    (an EC2 subnet, an OpenStack network or security group)."""

    id: str
    name: str


class LibcloudProvider:
    """A pool's machines in a cloud, through one libcloud compute driver."""

    def __init__(
        self,
        settings: LibcloudSettings | Mapping[str, Any],
        environ: Mapping[str, str] = os.environ,
        *,
        credentials: Credentials | None = None,
    ) -> None:
        self.settings = (
            settings if isinstance(settings, LibcloudSettings) else LibcloudSettings.parse(settings)
        )
        self.name = self.settings.driver
        self._credentials = credentials or load_credentials(self.settings, environ)
        self._lock = threading.Lock()
        self._driver = self._make_driver()
        from libcloud.compute.drivers.ec2 import BaseEC2NodeDriver

        self._ec2 = isinstance(self._driver, BaseEC2NodeDriver)
        if self._ec2:
            self._driver.connection.responseCls = _ec2_response_class()
        self._region = self.settings.region or str(getattr(self._driver, "region_name", "") or "")

    def __repr__(self) -> str:
        where = f", endpoint={self.settings.endpoint!r}" if self.settings.endpoint else ""
        return (
            f"LibcloudProvider(driver={self.name!r}, region={self.settings.region!r}{where}, "
            f"{self._credentials})"
        )

    def _make_driver(self) -> Any:
        try:
            from libcloud.compute.providers import get_driver
        except ImportError:
            raise ProviderError(
                "libcloud provider: apache-libcloud is not installed "
                "(pip install 'ninefold[cloud]')"
            ) from None
        s = self.settings
        try:
            driver_class: Any = get_driver(s.driver)
        except AttributeError:
            raise ProviderError(
                f"libcloud provider: {s.driver!r} is not a libcloud compute driver "
                "(ec2, openstack, gce, azure_arm...)"
            ) from None
        except Exception as exc:  # a driver libcloud no longer supports
            raise ProviderError(
                f"libcloud provider: driver {s.driver!r}: {_one_line(exc)}"
            ) from None
        from libcloud.compute.drivers.ec2 import EC2NodeDriver

        kwargs: dict[str, Any] = dict(s.options)
        if s.endpoint and s.driver == "openstack":
            # OpenStack finds its compute API in the identity service's catalogue.
            kwargs.setdefault("ex_force_auth_url", s.endpoint)
        elif s.endpoint:
            host, port, secure, _path = _split_endpoint(s.endpoint)
            kwargs.update(host=host, secure=secure)
            if port is not None:
                kwargs["port"] = port
        if s.region:
            kwargs.setdefault("region", s.region)
            if s.driver == "openstack":
                kwargs.setdefault("ex_force_service_region", s.region)
        if isinstance(driver_class, type) and issubclass(driver_class, EC2NodeDriver):
            # Signature version 4: every region takes it, it keeps the access key
            # out of the URL, and EC2-compatible endpoints route by it.
            kwargs.setdefault("signature_version", "4")
        if self._credentials.token:
            if "token" not in inspect.signature(driver_class).parameters:
                raise ProviderError(
                    f"libcloud provider: driver {s.driver!r} takes no session token "
                    f"(from {self._credentials.source})"
                )
            kwargs["token"] = self._credentials.token
        kwargs["timeout"] = s.timeout
        try:
            return driver_class(self._credentials.key, self._credentials.secret, **kwargs)
        except Exception as exc:
            raise ProviderError(
                f"libcloud provider: cannot set up driver {s.driver!r}: {self._why(exc)}"
            ) from None

    # --- the Provider interface ---

    def zones(self) -> list[str]:
        with self._calling(f"zones in {self._region or 'the default region'}"):
            if self.name == "openstack":
                answer = self._driver.connection.request("/os-availability-zone").object
                return sorted(
                    zone["zoneName"]
                    for zone in answer.get("availabilityZoneInfo", [])
                    if zone.get("zoneState", {}).get("available", True)
                )
            names = [location.name for location in self._driver.list_locations()]
        if self.name == "gce" and self._region:
            names = [name for name in names if name.startswith(f"{self._region}-")]
        return [str(name) for name in names if name]

    def create(self, request: MachineRequest) -> Machine:
        what = f"create {request.name} in {request.zone}"
        template = dict(request.template)
        unknown = sorted(set(template) - set(TEMPLATE_KEYS))
        if unknown:
            raise ProviderError(
                f"{self.name} {what}: unknown template key {unknown[0]!r} "
                f"(known: {', '.join(TEMPLATE_KEYS)})"
            )
        image, size = template.get("image"), template.get("size")
        for name, value in (("image", image), ("size", size)):
            if not isinstance(value, str) or not value:
                raise ProviderError(f"{self.name} {what}: the template has no {name}")
        assert isinstance(image, str) and isinstance(size, str)
        params = set(inspect.signature(self._driver.create_node).parameters)
        kwargs = self._create_arguments(request, template, params, what)
        with self._calling(what, image=image, size=size, zone=request.zone):
            from libcloud.compute.base import NodeImage, NodeSize

            kwargs["image"] = NodeImage(id=image, name=image, driver=self._driver)
            kwargs["size"] = NodeSize(
                id=size, name=size, ram=0, disk=0, bandwidth=None, price=0.0, driver=self._driver
            )
            kwargs.update(self._placement(request.zone, params, what))
            node = self._driver.create_node(name=request.name, **kwargs)
        machine = self._machine(node)
        return Machine(
            id=machine.id,
            name=request.name,
            zone=machine.zone or request.zone,
            state=machine.state,
            tags={**machine.tags, **request.tags},
            address=machine.address,
        )

    def list(self, tags: Mapping[str, str]) -> list[Machine]:
        with self._calling(f"list in {self._region or 'the default region'}"):
            if self._ec2:
                nodes = self._driver.list_nodes(
                    ex_filters={f"tag:{key}": value for key, value in tags.items()}
                )
            else:
                nodes = self._driver.list_nodes()
        machines = []
        for node in nodes:
            machine = self._machine(node)
            if machine.state == "terminated":
                continue
            if all(machine.tags.get(key) == value for key, value in tags.items()):
                machines.append(machine)
        return sorted(machines, key=lambda m: (m.name, m.id))

    def power_off(self, machine_id: str) -> None:
        what = f"power off {machine_id}"
        state = self._state(machine_id, what)
        if state in (None, "stopped", "terminated"):
            return
        try:
            with self._calling(what):
                if self._ec2:
                    # A forced stop: no orderly shutdown, no flush. A fence.
                    self._driver.connection.request(
                        self._driver.path,
                        params={
                            "Action": "StopInstances",
                            "InstanceId.1": machine_id,
                            "Force": "true",
                        },
                    )
                else:
                    self._driver.stop_node(self._node(machine_id))
        except ProviderError:
            if self._state(machine_id, what) in (None, "stopped", "terminated"):
                return  # gone or stopped meanwhile
            raise
        deadline = time.monotonic() + self.settings.stop_timeout
        while True:
            state = self._state(machine_id, what)
            if state in (None, "stopped", "terminated"):
                return
            if time.monotonic() >= deadline:
                raise ProviderError(
                    f"{self.name} {what}: still {state} {self.settings.stop_timeout:g} s "
                    "after the stop: not fenced"
                )
            time.sleep(STOP_POLL_INTERVAL)

    def destroy(self, machine_id: str) -> None:
        what = f"destroy {machine_id}"
        with self._calling(what, gone_ok=True):
            self._driver.destroy_node(self._node(machine_id))

    # --- helpers ---

    def _create_arguments(
        self, request: MachineRequest, template: Mapping[str, Any], params: set[str], what: str
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        metadata = dict(request.tags)
        if "ex_userdata" in params:
            kwargs["ex_userdata"] = request.user_data
        elif "ex_metadata" in params:
            metadata[_USER_DATA_METADATA] = request.user_data
        else:
            raise ProviderError(f"{self.name} {what}: the driver cannot pass user-data")
        if "ex_metadata" not in params:
            raise ProviderError(f"{self.name} {what}: the driver cannot tag machines")
        kwargs["ex_metadata"] = metadata

        def needs(param: str, key: str) -> None:
            if param not in params:
                raise ProviderError(
                    f"{self.name} {what}: template key {key!r} is not supported by this driver"
                )

        key_name = template.get("key_name")
        if key_name is not None:
            needs("ex_keyname", "key_name")
            kwargs["ex_keyname"] = str(key_name)
        groups = template.get("security_groups")
        if groups is not None:
            names = [groups] if isinstance(groups, str) else [str(g) for g in groups]
            needs("ex_security_groups", "security_groups")
            if self._ec2:
                ids = [g for g in names if g.startswith("sg-")]
                if ids and len(ids) != len(names):
                    raise ProviderError(
                        f"{self.name} {what}: security_groups mixes ids (sg-...) and names"
                    )
                kwargs["ex_security_group_ids" if ids else "ex_security_groups"] = names
            else:
                kwargs["ex_security_groups"] = [_Ref(g, g) for g in names]
        subnet = template.get("subnet")
        if subnet is not None:
            if "ex_subnet" in params:
                kwargs["ex_subnet"] = _Ref(str(subnet), str(subnet))
            elif "networks" in params:
                kwargs["networks"] = [_Ref(str(subnet), str(subnet))]
            elif "ex_subnetwork" in params:
                kwargs["ex_subnetwork"] = str(subnet)
            else:
                needs("ex_subnet", "subnet")
        extra = template.get("extra", {})
        if not isinstance(extra, Mapping):
            raise ProviderError(f"{self.name} {what}: template extra must be a mapping")
        for name, value in extra.items():
            if name not in params or name in ("name", "image", "size", "location"):
                raise ProviderError(
                    f"{self.name} {what}: template extra.{name} is not an argument of the "
                    "driver's create_node"
                )
            if name in kwargs:
                raise ProviderError(f"{self.name} {what}: template extra.{name} is set twice")
            kwargs[name] = value
        return kwargs

    def _placement(self, zone: str, params: set[str], what: str) -> dict[str, Any]:
        if self._ec2:
            from libcloud.compute.drivers.ec2 import EC2NodeLocation, ExEC2AvailabilityZone

            region = self._driver.region_name
            az = ExEC2AvailabilityZone(  # type: ignore[no-untyped-call]
                name=zone, zone_state="available", region_name=region
            )
            location = EC2NodeLocation(zone, zone, "", self._driver, az)  # type: ignore[no-untyped-call]
            return {"location": location}
        if "ex_availability_zone" in params:
            return {"ex_availability_zone": zone}
        locations = {location.name: location for location in self._driver.list_locations()}
        if zone not in locations:
            known = ", ".join(sorted(str(name) for name in locations if name)) or "none"
            raise ProviderError(f"{self.name} {what}: unknown zone {zone} (zones: {known})")
        return {"location": locations[zone]}

    def _node(self, machine_id: str) -> Any:
        from libcloud.compute.base import Node
        from libcloud.compute.types import NodeState

        return Node(
            id=machine_id,
            name=machine_id,
            state=NodeState.UNKNOWN,
            public_ips=[],
            private_ips=[],
            driver=self._driver,
        )

    def _state(self, machine_id: str, what: str) -> MachineState | None:
        """The machine's state, None when the provider does not know it."""
        found: list[Any] = []
        with self._calling(what, gone_ok=True):
            if self._ec2:
                found = self._driver.list_nodes(ex_node_ids=[machine_id])
            else:
                found = [n for n in self._driver.list_nodes() if n.id == machine_id]
        if not found:
            return None
        return self._machine(found[0]).state

    def _machine(self, node: Any) -> Machine:
        extra = node.extra if isinstance(getattr(node, "extra", None), dict) else {}
        tags = extra.get("tags")
        if not isinstance(tags, dict):
            tags = extra.get("metadata")
            if isinstance(tags, dict) and isinstance(tags.get("items"), list):  # GCE
                tags = {i.get("key"): i.get("value") for i in tags["items"] if isinstance(i, dict)}
        carried = {
            str(k): str(v)
            for k, v in (tags or {}).items()
            if k != _USER_DATA_METADATA and v is not None
        }
        zone: Any = (
            extra.get("availability")
            or extra.get("availability_zone")
            or extra.get("zone")
            or extra.get("location")
            or ""
        )
        zone = getattr(zone, "name", zone)
        private = [ip for ip in (node.private_ips or []) if ip]
        return Machine(
            id=str(node.id),
            name=str(node.name or node.id),
            zone=str(zone or ""),
            state=_STATES.get(str(getattr(node.state, "value", node.state)), "unknown"),
            tags=carried,
            address=str(private[0]) if private else "",
        )

    @contextmanager
    def _calling(
        self,
        what: str,
        *,
        image: str | None = None,
        size: str | None = None,
        zone: str | None = None,
        gone_ok: bool = False,
    ) -> Iterator[None]:
        """One request (or a few) to the API, alone; any exception becomes a
        ProviderError saying `<driver> <what>: <why>`, without a secret."""
        with self._lock:
            try:
                yield
            except ProviderError:
                raise
            except Exception as exc:
                if gone_ok and _is_gone(exc):
                    return
                why = self._why(exc, image=image, size=size, zone=zone)
                raise ProviderError(f"{self.name} {what}: {why}") from None

    def _why(
        self,
        exc: BaseException,
        *,
        image: str | None = None,
        size: str | None = None,
        zone: str | None = None,
    ) -> str:
        return self._credentials.redact(
            _explain(exc, image=image, size=size, zone=zone, endpoint=self._endpoint_text())
        )

    def _endpoint_text(self) -> str:
        if self.settings.endpoint:
            return self.settings.endpoint
        connection = getattr(self._driver, "connection", None) if hasattr(self, "_driver") else None
        host = getattr(connection, "host", None)
        return f"https://{host}" if host else f"the {self.name} API"


# --- errors -----------------------------------------------------------------------------

_CODE_MESSAGE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z0-9]+)*):\s*(.*)$", re.S)
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\"()\]]+)")


def _one_line(exc: BaseException | str, limit: int = 240) -> str:
    text = str(exc) if not isinstance(exc, str) else exc
    text = re.sub(r"\?\S*", "", text)  # query strings: signatures, access key ids
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _code_and_message(exc: BaseException) -> tuple[str, str, int | None]:
    """(provider error code, message, HTTP status) of a libcloud exception."""
    status = getattr(exc, "code", None)
    status = status if isinstance(status, int) else getattr(exc, "http_code", None)
    text = str(getattr(exc, "message", None) or getattr(exc, "value", None) or exc)
    first = text.strip().splitlines()[0] if text.strip() else ""
    match = _CODE_MESSAGE.match(first)
    if match and not match.group(1).isdigit():
        return match.group(1), match.group(2), status if isinstance(status, int) else None
    try:  # OpenStack: {"itemNotFound": {"message": "...", "code": 404}}
        body = json.loads(text)
    except (ValueError, TypeError):
        body = None
    if isinstance(body, dict) and len(body) == 1:
        ((code, detail),) = body.items()
        if isinstance(detail, dict) and "message" in detail:
            return str(code), str(detail["message"]), status if isinstance(status, int) else None
    return "", first, status if isinstance(status, int) else None


def _is_gone(exc: BaseException) -> bool:
    code, message, status = _code_and_message(exc)
    return code in _GONE_CODES or status == 404 or "could not be found" in message


def _explain(
    exc: BaseException,
    *,
    image: str | None = None,
    size: str | None = None,
    zone: str | None = None,
    endpoint: str = "the API",
) -> str:
    """One line: why a call failed, in the user's terms, the provider's code last."""
    import requests
    from libcloud.common.types import InvalidCredsError, MalformedResponseError
    from libcloud.compute.types import KeyPairDoesNotExistError

    if isinstance(exc, KeyPairDoesNotExistError):
        return f"unknown key pair {exc.name} (InvalidKeyPair.NotFound)"
    if isinstance(exc, MalformedResponseError):
        return f"an answer from {endpoint} that is not the API's ({exc.value})"
    if isinstance(exc, requests.exceptions.Timeout | TimeoutError):
        return f"no answer from {endpoint} in time ({type(exc).__name__})"
    if isinstance(exc, requests.exceptions.ConnectionError | ConnectionError):
        reason = _ERRNO.search(str(exc))
        detail = reason.group(1).strip() if reason else type(exc).__name__
        return f"cannot reach {endpoint}: {detail}"
    if isinstance(exc, OSError) and not isinstance(exc, requests.exceptions.RequestException):
        return f"cannot reach {endpoint}: {exc.strerror or type(exc).__name__}"
    code, message, status = _code_and_message(exc)
    message = _one_line(message)
    if message.startswith("<"):  # an HTML error page
        message = f"an error page from {endpoint}"
    tail = f" ({code})" if code else (f" (HTTP {status})" if status else "")
    if isinstance(exc, InvalidCredsError) or code in _AUTH_CODES or status in (401,):
        return f"credentials refused: {message}{tail}"
    lower = message.lower()
    missing = any(words in lower for words in ("not found", "not find", "does not exist"))
    if code.startswith("InvalidAMIID") or (missing and "image" in lower):
        return f"unknown image {image}{tail}"
    if (
        code.startswith("InvalidInstanceType")
        or (code == "InvalidParameterValue" and "instancetype" in lower.replace(" ", ""))
        or (missing and "flavor" in lower)
    ):
        return f"unknown size {size}{tail}"
    if code in ("InvalidAvailabilityZone",) or (
        code in ("InvalidParameterValue", "InvalidInput") and "availability zone" in lower
    ):
        return f"unknown zone {zone}{tail}"
    if code in _QUOTA_CODES or "quota" in lower:
        return f"quota exceeded: {message}{tail}"
    if code == "InsufficientInstanceCapacity":
        return f"no capacity for {size} in {zone} now: {message}{tail}"
    if code in ("RequestLimitExceeded", "Throttling") or status == 429:
        return f"rate limited: {message}{tail}"
    if code == "UnauthorizedOperation" or status == 403:
        return f"not allowed: {_one_line(message, 120)}{tail}"
    if not message:
        message = type(exc).__name__
    return f"{message}{tail}"
