"""The libcloud provider against a real EC2 API: moto in server mode, started
here on a free loopback port (`python -m moto.server`), spoken to by libcloud's
EC2 driver through the provider, and read back with boto3 as a second client.

Quotas: moto enforces none, so the one test of a quota refusal points the
provider at a small in-process server on loopback that answers every request
the way EC2 does when an account's instance limit is reached.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]  # moto[server] brings it (the test extra)
import httpx
import pytest

from ninefold.pools.libcloud_provider import (
    Credentials,
    LibcloudProvider,
    LibcloudSettings,
    load_credentials,
)
from ninefold.pools.provider import (
    CLUSTER_TAG,
    NODE_TAG,
    POOL_TAG,
    Machine,
    MachineRequest,
    ProviderError,
)

REGION = "us-east-1"
KEY = "AKIANINEFOLDTEST0001"
SECRET = "nf-test-secret-" + uuid.uuid4().hex
ENV = {"NINEFOLD_CLOUD_KEY": KEY, "NINEFOLD_CLOUD_SECRET": SECRET}
USER_DATA = "#!/bin/sh\n# one-use token: ninefold-join-{token}\nexec ninefold join\n"


# --- servers -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    """A moto server (EC2 and the rest) on loopback, that checks images and
    instance types as EC2 does; its URL."""
    port = free_port()
    env = {
        **os.environ,
        "MOTO_ENABLE_AMI_VALIDATION": "true",
        "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "true",
    }
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    pytest.fail(f"moto server exited: {log.read().decode()[-2000:]}")
                try:
                    if httpx.get(f"{url}/moto-api/config", timeout=1).status_code < 500:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "moto server did not answer within 60 s"
                time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def ec2(moto: str) -> Any:
    """A second client of the same EC2 API, to check what the provider did."""
    return boto3.client(
        "ec2",
        endpoint_url=moto,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def image(ec2: Any) -> str:
    image_id: str = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    return image_id


@pytest.fixture
def provider(moto: str) -> LibcloudProvider:
    return LibcloudProvider({"driver": "ec2", "region": REGION, "endpoint": moto}, ENV)


@pytest.fixture
def cluster() -> str:
    return "c" + uuid.uuid4().hex[:10]


class FakeEC2Refusal(ThreadingHTTPServer):
    """Answers every request with one EC2 error (status, code, message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message>"
            "</Error></Errors><RequestID>5d1c5e51-8d5b-4f0a-a5b6-0c1b8d0e4c7d</RequestID>"
            "</Response>"
        ).encode()
        self.requests: list[str] = []
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.path)
                self.send_response(status)
                self.send_header("Content-Type", "text/xml;charset=UTF-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def refusing() -> Iterator[Callable[[int, str, str], FakeEC2Refusal]]:
    servers: list[FakeEC2Refusal] = []

    def start(status: int, code: str, message: str) -> FakeEC2Refusal:
        server = FakeEC2Refusal(status, code, message)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# --- helpers ------------------------------------------------------------------------


def request(
    cluster: str,
    image: str,
    name: str,
    zone: str = "us-east-1a",
    pool: str = "web",
    **template: Any,
) -> MachineRequest:
    return MachineRequest(
        name=name,
        zone=zone,
        template={"image": image, "size": "t3.micro", **template},
        tags={CLUSTER_TAG: cluster, POOL_TAG: pool, NODE_TAG: name},
        user_data=USER_DATA.format(token=name),
    )


def refusal(call: Callable[[], object]) -> str:
    """The message of the ProviderError `call` raises: one line, no secret."""
    with pytest.raises(ProviderError) as caught:
        call()
    message = str(caught.value)
    for shown in (message, repr(caught.value)):
        assert SECRET not in shown
        assert KEY not in shown
    assert "\n" not in message
    assert caught.value.__cause__ is None
    return message


def ids(machines: list[Machine]) -> set[str]:
    return {m.id for m in machines}


def instance(ec2: Any, machine_id: str) -> dict[str, Any]:
    found: dict[str, Any] = ec2.describe_instances(InstanceIds=[machine_id])["Reservations"][0][
        "Instances"
    ][0]
    return found


# --- against moto's EC2 ----------------------------------------------------------------


@pytest.mark.process
def test_zones_are_the_regions_availability_zones(provider: LibcloudProvider, ec2: Any) -> None:
    zones = provider.zones()
    listed = ec2.describe_availability_zones()["AvailabilityZones"]
    assert zones == sorted(z["ZoneName"] for z in listed if z["RegionName"] == REGION)
    assert "us-east-1a" in zones


@pytest.mark.process
def test_create_boots_a_tagged_machine_with_its_user_data_in_its_zone(
    provider: LibcloudProvider, ec2: Any, image: str, cluster: str
) -> None:
    wanted = request(cluster, image, "web-1", zone="us-east-1b")
    machine = provider.create(wanted)

    assert machine.id.startswith("i-")
    assert machine.name == "web-1"
    assert machine.zone == "us-east-1b"
    assert machine.state in ("pending", "running")
    assert dict(wanted.tags).items() <= dict(machine.tags).items()
    assert machine.address.count(".") == 3

    seen = instance(ec2, machine.id)
    assert seen["Placement"]["AvailabilityZone"] == "us-east-1b"
    assert seen["ImageId"] == image
    assert seen["InstanceType"] == "t3.micro"
    assert seen["PrivateIpAddress"] == machine.address
    assert {t["Key"]: t["Value"] for t in seen["Tags"]} == {**wanted.tags, "Name": "web-1"}
    attribute = ec2.describe_instance_attribute(InstanceId=machine.id, Attribute="userData")
    assert base64.b64decode(attribute["UserData"]["Value"]).decode() == wanted.user_data


@pytest.mark.process
def test_create_passes_key_security_groups_and_subnet(
    provider: LibcloudProvider, ec2: Any, image: str, cluster: str
) -> None:
    ec2.create_key_pair(KeyName=f"{cluster}-key")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24", AvailabilityZone="us-east-1c")
    subnet_id = subnet["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=f"{cluster}-sg", Description="ninefold", VpcId=vpc)

    machine = provider.create(
        request(
            cluster,
            image,
            "web-2",
            zone="us-east-1c",
            key_name=f"{cluster}-key",
            security_groups=[group["GroupId"]],
            subnet=subnet_id,
        )
    )

    seen = instance(ec2, machine.id)
    assert seen["KeyName"] == f"{cluster}-key"
    assert seen["SubnetId"] == subnet_id
    assert [g["GroupId"] for g in seen["SecurityGroups"]] == [group["GroupId"]]
    assert machine.address.startswith("10.42.1.")


@pytest.mark.process
def test_list_finds_every_machine_of_the_cluster_and_nothing_else(
    provider: LibcloudProvider, ec2: Any, image: str, cluster: str
) -> None:
    web = provider.create(request(cluster, image, "web-1", zone="us-east-1a"))
    db = provider.create(request(cluster, image, "db-1", zone="us-east-1d", pool="db"))
    other = provider.create(request(cluster + "x", image, "web-1"))
    untagged = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]

    listed = provider.list({CLUSTER_TAG: cluster})
    assert ids(listed) == {web.id, db.id}
    assert {(m.name, m.zone) for m in listed} == {("web-1", "us-east-1a"), ("db-1", "us-east-1d")}
    assert all(m.tags[CLUSTER_TAG] == cluster for m in listed)
    assert ids(provider.list({CLUSTER_TAG: cluster, POOL_TAG: "db"})) == {db.id}
    assert other.id not in ids(listed) and untagged["InstanceId"] not in ids(listed)
    assert provider.list({CLUSTER_TAG: "c-nobody"}) == []


@pytest.mark.process
def test_power_off_stops_the_machine_and_stopped_or_gone_is_no_error(
    provider: LibcloudProvider, ec2: Any, image: str, cluster: str
) -> None:
    machine = provider.create(request(cluster, image, "web-1"))

    provider.power_off(machine.id)

    assert instance(ec2, machine.id)["State"]["Name"] == "stopped"
    (listed,) = provider.list({CLUSTER_TAG: cluster})
    assert (listed.id, listed.state) == (machine.id, "stopped")
    provider.power_off(machine.id)
    provider.power_off("i-0123456789abcdef0")
    assert instance(ec2, machine.id)["State"]["Name"] == "stopped"


@pytest.mark.process
def test_destroy_terminates_the_machine_and_gone_is_no_error(
    provider: LibcloudProvider, ec2: Any, image: str, cluster: str
) -> None:
    kept = provider.create(request(cluster, image, "web-1"))
    doomed = provider.create(request(cluster, image, "web-2"))

    provider.destroy(doomed.id)

    assert ids(provider.list({CLUSTER_TAG: cluster})) == {kept.id}
    assert instance(ec2, doomed.id)["State"]["Name"] == "terminated"
    provider.destroy(doomed.id)
    provider.power_off(doomed.id)
    provider.destroy("i-0123456789abcdef0")
    assert ids(provider.list({CLUSTER_TAG: cluster})) == {kept.id}


@pytest.mark.process
def test_an_unknown_image_is_refused_by_name_and_creates_nothing(
    provider: LibcloudProvider, cluster: str
) -> None:
    message = refusal(lambda: provider.create(request(cluster, "ami-0badc0ffee0000000", "web-4")))
    assert message == (
        "ec2 create web-4 in us-east-1a: unknown image ami-0badc0ffee0000000 "
        "(InvalidAMIID.NotFound)"
    )
    assert provider.list({CLUSTER_TAG: cluster}) == []


@pytest.mark.process
def test_an_unknown_size_or_zone_is_refused_by_name(
    provider: LibcloudProvider, image: str, cluster: str
) -> None:
    size = refusal(lambda: provider.create(request(cluster, image, "web-5", size="t9.colossal")))
    assert size.startswith("ec2 create web-5 in us-east-1a: unknown size t9.colossal (")
    zone = refusal(lambda: provider.create(request(cluster, image, "web-6", zone="eu-west-1a")))
    assert zone.startswith("ec2 create web-6 in eu-west-1a: unknown zone eu-west-1a (")
    assert provider.list({CLUSTER_TAG: cluster}) == []


@pytest.mark.process
def test_a_template_key_the_provider_does_not_know_is_refused(
    provider: LibcloudProvider, image: str, cluster: str
) -> None:
    message = refusal(lambda: provider.create(request(cluster, image, "web-7", flavour="big")))
    assert message.startswith("ec2 create web-7 in us-east-1a: unknown template key 'flavour'")
    missing = MachineRequest("web-8", "us-east-1a", {"size": "t3.micro"}, {}, "")
    assert refusal(lambda: provider.create(missing)).endswith("the template has no image")


@pytest.mark.process
def test_credentials_the_api_refuses_are_said_so_without_showing_them(
    provider: LibcloudProvider, moto: str
) -> None:
    # moto checks credentials once told to; its IAM has never heard of ours.
    httpx.post(f"{moto}/moto-api/reset-auth", content=b"0").raise_for_status()
    try:
        message = refusal(provider.zones)
        fence = refusal(lambda: provider.power_off("i-0123456789abcdef0"))
    finally:
        httpx.post(f"{moto}/moto-api/reset-auth", content=b"inf").raise_for_status()
    assert message.startswith("ec2 zones in us-east-1: credentials refused: ")
    assert message.endswith("(AuthFailure)")
    assert fence.startswith("ec2 power off i-0123456789abcdef0: credentials refused: ")


@pytest.mark.process
def test_credentials_from_a_file_reach_the_api(moto: str, tmp_path: Path) -> None:
    path = tmp_path / "cloud"
    path.write_text(f"# ninefold's EC2 user\nkey: {KEY}\nsecret: '{SECRET}'\n")
    path.chmod(0o600)
    provider = LibcloudProvider(
        {"driver": "ec2", "region": REGION, "endpoint": moto, "credentials_file": str(path)}, {}
    )
    assert "us-east-1a" in provider.zones()
    assert str(path) in repr(provider)


# --- refusals no local EC2 can produce --------------------------------------------------


def test_a_quota_refusal_names_the_quota(
    refusing: Callable[[int, str, str], FakeEC2Refusal],
) -> None:
    server = refusing(
        400,
        "InstanceLimitExceeded",
        "Your quota allows for 0 more running instance(s). You requested at least 1",
    )
    provider = LibcloudProvider({"driver": "ec2", "region": REGION, "endpoint": server.url}, ENV)
    machine = request("shop", "ami-0abc", "web-3", zone="us-east-1c")
    message = refusal(lambda: provider.create(machine))
    assert message == (
        "ec2 create web-3 in us-east-1c: quota exceeded: Your quota allows for 0 more running "
        "instance(s). You requested at least 1 (InstanceLimitExceeded)"
    )
    assert [p.split("?")[0] for p in server.requests] == ["/"]


def test_a_secret_the_api_echoes_back_is_not_repeated(
    refusing: Callable[[int, str, str], FakeEC2Refusal],
) -> None:
    server = refusing(400, "InvalidParameterValue", f"bad value {SECRET} for key {KEY}")
    provider = LibcloudProvider({"driver": "ec2", "region": REGION, "endpoint": server.url}, ENV)
    message = refusal(provider.zones)
    assert message == "ec2 zones in us-east-1: bad value *** for key *** (InvalidParameterValue)"


def test_an_unreachable_api_is_one_line() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    provider = LibcloudProvider(
        {"driver": "ec2", "region": REGION, "endpoint": endpoint, "timeout": "2s"}, ENV
    )
    message = refusal(lambda: provider.list({CLUSTER_TAG: "shop"}))
    assert message == f"ec2 list in us-east-1: cannot reach {endpoint}: Connection refused"


# --- settings and credentials --------------------------------------------------------------


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_credentials_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "cloud", f"key: {KEY}\nsecret: {SECRET}\n", 0o644)
    settings = {"driver": "ec2", "credentials_file": str(path)}
    message = refusal(lambda: load_credentials(settings, ENV))
    assert message == (
        f"libcloud provider: credentials file {path} may be read or changed by others than "
        f"its owner (mode 0644): chmod 600 {path}"
    )
    path.chmod(0o620)
    assert "(mode 0620)" in refusal(lambda: LibcloudProvider(settings, ENV))


def test_a_credentials_file_is_read_and_never_shown(tmp_path: Path) -> None:
    path = write(tmp_path / "cloud", f'key: {KEY}\n\n# comment\nsecret: "{SECRET}"\n')
    credentials = load_credentials({"driver": "ec2", "credentials_file": str(path)}, ENV)
    assert (credentials.key, credentials.secret, credentials.token) == (KEY, SECRET, None)
    for shown in (repr(credentials), str(credentials)):
        assert SECRET not in shown and KEY not in shown
        assert str(path) in shown
    provider = LibcloudProvider({"driver": "ec2", "region": REGION}, credentials=credentials)
    assert SECRET not in repr(provider) and KEY not in repr(provider)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"key: {KEY}\n", "has no secret line"),
        ("", "has no key and no secret line"),
        (f"key: {KEY}\nsecret = {SECRET}\n", "line 2: expected `key: ...`"),
        (f"key: {KEY}\npassword: {SECRET}\n", "line 2: expected `key: ...`"),
        (f"key: {KEY}\nsecret:\n", "line 2: secret is empty"),
        (f"key: {KEY}\nsecret: {SECRET}\nsecret: {SECRET}\n", "line 3: secret given twice"),
    ],
)
def test_a_malformed_credentials_file_says_where_not_what(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path / "cloud", text)
    message = refusal(lambda: load_credentials({"driver": "ec2", "credentials_file": str(path)}))
    assert message.startswith(f"libcloud provider: credentials file {path}")
    assert expected in message


def test_a_missing_credentials_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere"
    message = refusal(lambda: load_credentials({"driver": "ec2", "credentials_file": str(path)}))
    assert message == f"libcloud provider: credentials file {path} does not exist"


def test_credentials_from_the_environment() -> None:
    ours = load_credentials({"driver": "ec2"}, {**ENV, "AWS_ACCESS_KEY_ID": "other"})
    assert (ours.key, ours.secret) == (KEY, SECRET)
    assert ours.source == "$NINEFOLD_CLOUD_KEY and $NINEFOLD_CLOUD_SECRET"

    aws = {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": "tok3n"}
    theirs = load_credentials({"driver": "ec2"}, aws)
    assert (theirs.key, theirs.secret, theirs.token) == (KEY, SECRET, "tok3n")
    openstack = load_credentials(
        {"driver": "openstack"}, {"OS_USERNAME": "ninefold", "OS_PASSWORD": SECRET}
    )
    assert (openstack.key, openstack.secret) == ("ninefold", SECRET)

    none = refusal(lambda: load_credentials({"driver": "gce"}, aws))
    assert none == (
        "libcloud provider (gce): no credentials: set the pool's settings.credentials_file, "
        "or $NINEFOLD_CLOUD_KEY and $NINEFOLD_CLOUD_SECRET in the agent's environment"
    )
    half = refusal(lambda: load_credentials({"driver": "ec2"}, {"NINEFOLD_CLOUD_KEY": KEY}))
    assert half == (
        "libcloud provider (ec2): $NINEFOLD_CLOUD_KEY is set but $NINEFOLD_CLOUD_SECRET is not: "
        "set both"
    )


@pytest.mark.parametrize(
    "settings",
    [
        {"driver": "ec2", "secret": SECRET},
        {"driver": "ec2", "key": KEY},
        {"driver": "ec2", "aws_secret_access_key": SECRET},
        {"driver": "openstack", "options": {"ex_force_auth_token": SECRET}},
        {"driver": "openstack", "options": {"password": SECRET}},
    ],
)
def test_credentials_in_the_spec_are_refused(settings: dict[str, Any]) -> None:
    message = refusal(lambda: LibcloudProvider(settings, ENV))
    assert "credentials never go in the spec" in message


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, "settings.driver is required"),
        ({"driver": "ec2", "zone": "a"}, "unknown setting 'zone'"),
        ({"driver": "no-such-cloud"}, "'no-such-cloud' is not a libcloud compute driver"),
        ({"driver": "ec2", "endpoint": "127.0.0.1:5000"}, "is not a URL like"),
        ({"driver": "ec2", "timeout": "soon"}, "settings.timeout: 'soon' is not a duration"),
        ({"driver": "ec2", "region": "moon-1"}, "cannot set up driver 'ec2': Invalid region"),
    ],
)
def test_bad_settings_are_one_clear_line(settings: dict[str, Any], expected: str) -> None:
    assert expected in refusal(lambda: LibcloudProvider(settings, ENV))


def test_settings_are_parsed_with_durations_and_options() -> None:
    settings = LibcloudSettings.parse(
        {
            "driver": "OpenStack",
            "region": "RegionOne",
            "endpoint": "https://keystone.example.net:5000",
            "options": {"ex_force_auth_version": "3.x_password", "ex_tenant_name": "ops"},
            "timeout": "10s",
            "stop_timeout": "2m",
        }
    )
    assert settings.driver == "openstack"
    assert (settings.timeout, settings.stop_timeout) == (10.0, 120.0)
    assert settings.options["ex_tenant_name"] == "ops"


def test_a_session_token_is_refused_by_a_driver_without_one() -> None:
    credentials = Credentials("user", SECRET, "tok3n", source="test")
    message = refusal(lambda: LibcloudProvider({"driver": "openstack"}, credentials=credentials))
    assert message == "libcloud provider: driver 'openstack' takes no session token (from test)"


def test_openstack_is_set_up_from_its_identity_endpoint() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    provider = LibcloudProvider(
        {
            "driver": "openstack",
            "region": "RegionOne",
            "endpoint": endpoint,
            "timeout": "2s",
            "options": {
                "api_version": "2.2",
                "ex_force_auth_version": "3.x_password",
                "ex_tenant_name": "shop",
                "ex_domain_name": "Default",
            },
        },
        {"OS_USERNAME": KEY, "OS_PASSWORD": SECRET},
    )
    message = refusal(provider.zones)
    assert message == f"openstack zones in RegionOne: cannot reach {endpoint}: Connection refused"
