"""A client of the cluster's REST API (docs/api.md), as the CLI uses it.

`ClusterClient` knows every node of a spec and talks to the first agent that
answers, trying the others in the spec's order; it remembers the one that
answered. Errors come back typed:

| exception | when |
|---|---|
| `Unreachable` | no agent answered (names the addresses tried) |
| `StoreUnavailable` | agents answered, but none had a store with quorum (503) |
| `NotFound` | unknown service, instance, node or key (404) |
| `Conflict` | compare-and-swap lost, target node not usable, ... (409) |
| `Invalid` | malformed body or spec (422); spec problems are in `issues` |
| `Unauthorized` | no valid token (401) |
| `Forbidden` | the token lacks the role the request needs (403) |
| `ApiError` | anything else the API refused, and the base of all the above |
"""

from __future__ import annotations

import json
import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import httpx

from ninefold.spec import ClusterSpec, NodeSpec

DEFAULT_TIMEOUT = 10.0
"""Seconds to wait for one answer."""
CONNECT_TIMEOUT = 2.0
"""Seconds to wait for one node to accept a connection before trying the next."""


class ApiError(Exception):
    """The API answered with an error, or could not be reached."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        issues: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.issues = issues or []


class Unreachable(ApiError):
    """No agent answered."""


class StoreUnavailable(ApiError):
    """Agents answered, but their store has no quorum."""


class NotFound(ApiError):
    """No such service, instance, node or key."""


class Conflict(ApiError):
    """The change cannot be made in the cluster's current state."""


class Invalid(ApiError):
    """The request or the spec it carries is malformed; `issues` lists spec problems."""


class Unauthorized(ApiError):
    """No token, or one the cluster does not accept."""


class Forbidden(ApiError):
    """The token's role does not allow the request."""


_BY_CODE: dict[str, type[ApiError]] = {
    "not_found": NotFound,
    "conflict": Conflict,
    "invalid": Invalid,
    "store_unavailable": StoreUnavailable,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
}

TOKEN_FILE = Path("~/.config/ninefold/token")
"""Where the CLI looks for its token when neither NINEFOLD_TOKEN nor
NINEFOLD_TOKEN_FILE says otherwise."""


def configured_token() -> str | None:
    """The API token: NINEFOLD_TOKEN, else the file NINEFOLD_TOKEN_FILE names,
    else ~/.config/ninefold/token if it exists; None without one."""
    text = os.environ.get("NINEFOLD_TOKEN", "").strip()
    if text:
        return text
    named = os.environ.get("NINEFOLD_TOKEN_FILE", "").strip()
    path = Path(named).expanduser() if named else TOKEN_FILE.expanduser()
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        if named:
            raise ApiError(f"NINEFOLD_TOKEN_FILE names {named}, which does not exist") from None
        return None
    except OSError as exc:
        raise ApiError(f"cannot read the token file {path}: {exc.strerror}") from None


def _auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def node_url(node: NodeSpec, scheme: str = "http") -> str:
    """Base URL of a node's API, e.g. `http://127.0.0.1:7070`."""
    return f"{scheme}://{node.host_port(node.ports.api)}"


# --- TLS (docs/security.md) ---------------------------------------------------------

CLIENT_CERT_ENV = "NINEFOLD_CLIENT_CERT"
CLIENT_KEY_ENV = "NINEFOLD_CLIENT_KEY"


def api_scheme(spec: ClusterSpec) -> str:
    """`https` when the spec has `security.tls`, else `http`."""
    return "https" if spec.security.tls is not None else "http"


def api_verify(spec: ClusterSpec, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext | bool:
    """What httpx verifies the agents' API with: with `security.tls`, a context
    trusting only the cluster CA (presenting `cert`, else the certificate in
    $NINEFOLD_CLIENT_CERT and $NINEFOLD_CLIENT_KEY if set); True otherwise.
    ApiError when the files cannot be read."""
    tls = spec.security.tls
    if tls is None:
        return True
    if cert is None and os.environ.get(CLIENT_CERT_ENV):
        cert_file = Path(os.environ[CLIENT_CERT_ENV])
        cert = (cert_file, Path(os.environ.get(CLIENT_KEY_ENV) or cert_file))
    from ninefold.security.files import TlsError
    from ninefold.security.tls import client_context

    try:
        return client_context(tls.ca_path(), *(cert or (None, None)))
    except TlsError as exc:
        raise ApiError(str(exc)) from None


def error_of(response: httpx.Response) -> ApiError:
    """The typed exception for an error answer (`{"error": {"code", "message"}}`)."""
    request = response.request
    where = f"{request.method} {request.url.path}"
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or "")
        message = str(error.get("message") or f"{where} failed ({response.status_code})")
        issues = [str(i) for i in error.get("issues") or []]
        kind = _BY_CODE.get(code, ApiError)
        return kind(message, status=response.status_code, code=code, issues=issues)
    # Not the API's own error shape: a route this agent does not have, or a body
    # the framework refused before the API saw it.
    detail = body.get("detail") if isinstance(body, dict) else None
    if response.status_code == 404:
        return ApiError(
            f"{response.url.host}:{response.url.port} does not serve {where} "
            "(is the agent older than this client?)",
            status=404,
        )
    if response.status_code == 422:
        return Invalid(f"{where}: invalid request: {detail}", status=422, code="invalid")
    text = str(detail) if detail else (response.text.strip()[:200] or response.reason_phrase)
    return ApiError(f"{where} failed ({response.status_code}): {text}", status=response.status_code)


class ClusterClient:
    """The cluster's API through whichever node answers first.

    `spec` gives the nodes (their address and `ports.api`); they are tried in
    the spec's order, starting with the last one that answered."""

    def __init__(
        self,
        spec: ClusterSpec,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        transport: httpx.BaseTransport | None = None,
        cert: tuple[Path, Path] | None = None,
        token: str | None = None,
    ) -> None:
        """`token`: the API token to send; by default `configured_token()`."""
        self.spec = spec
        self.scheme = api_scheme(spec)
        self.urls = [node_url(n, self.scheme) for n in spec.nodes]
        self.timeout = timeout
        self._current: str | None = None
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout)),
            transport=transport,
            trust_env=False,
            verify=api_verify(spec, cert),
            headers=_auth_headers(token if token is not None else configured_token()),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str | None:
        """The node that answered last, if any."""
        return self._current

    def node_url(self, node: str) -> str:
        """Base URL of the named node's API (KeyError if the spec has no such node)."""
        return node_url(self.spec.node(node), self.scheme)

    def _order(self) -> list[str]:
        if self._current is None:
            return list(self.urls)
        return [self._current] + [u for u in self.urls if u != self._current]

    def _addresses(self, urls: list[str]) -> str:
        return ", ".join(u.split("://", 1)[-1] for u in urls)

    # -- transport ----------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        idempotent: bool | None = None,
    ) -> httpx.Response:
        """Send one request to the first node that answers; raise the typed error."""
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "PUT", "DELETE")
        params = {k: v for k, v in (params or {}).items() if v is not None}
        tried: list[str] = []
        unavailable: ApiError | None = None
        for base in self._order():
            tried.append(base)
            try:
                response = self._http.request(method, base + path, params=params, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                continue  # never sent: the next node may answer
            except (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                if idempotent:
                    continue
                raise ApiError(
                    f"{base.removeprefix('http://')} did not answer {method} {path} "
                    f"({type(exc).__name__}); the change may or may not have been made"
                ) from None
            except httpx.HTTPError as exc:
                raise ApiError(f"{method} {path}: {exc}") from None
            if response.status_code == 503:
                # Its store has no quorum: nothing was done; another node may do better.
                unavailable = error_of(response)
                if not isinstance(unavailable, StoreUnavailable):
                    unavailable = StoreUnavailable(unavailable.message, status=503)
                continue
            self._current = base
            if response.status_code >= 400:
                raise error_of(response)
            return response
        if unavailable is not None:
            raise StoreUnavailable(
                f"cluster {self.spec.cluster}: {unavailable.message} "
                f"(asked {self._addresses(tried)})",
                status=503,
                code="store_unavailable",
            )
        raise Unreachable(
            f"cluster {self.spec.cluster} unreachable: no agent answers at {self._addresses(tried)}"
        )

    def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The answer's JSON object (its shape is the API's to keep)."""
        return cast("dict[str, Any]", self.request(method, path, **kwargs).json())

    def _objects(self, method: str, path: str, **kwargs: Any) -> list[dict[str, Any]]:
        """The answer's JSON array of objects."""
        return cast("list[dict[str, Any]]", self.request(method, path, **kwargs).json())

    # -- reading ------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._object("GET", "/v1/health")

    def status(self) -> dict[str, Any]:
        return self._object("GET", "/v1/status")

    def nodes(self) -> list[dict[str, Any]]:
        return self._objects("GET", "/v1/nodes")

    def node(self, name: str) -> dict[str, Any]:
        return self._object("GET", f"/v1/nodes/{_seg(name)}")

    def services(self) -> list[dict[str, Any]]:
        return self._objects("GET", "/v1/services")

    def service(self, name: str) -> dict[str, Any]:
        return self._object("GET", f"/v1/services/{_seg(name)}")

    def instances(self) -> list[dict[str, Any]]:
        return self._objects("GET", "/v1/instances")

    def instance(self, name: str) -> dict[str, Any]:
        return self._object("GET", f"/v1/instances/{_seg(name)}")

    def volumes(self, service: str | None = None) -> dict[str, Any]:
        """`{"time", "volumes": [...]}`: the replicated volumes' copies (of
        `service` only, if given; NotFound if the cluster has no such service)."""
        return self._object("GET", "/v1/volumes", params={"service": service})

    def instance_log(self, node_url: str, instance: str, lines: int = 100) -> list[str]:
        """The last `lines` lines of an instance's log, from the agent at `node_url`
        (only the agent of the node running the instance has it)."""
        path = f"/v1/instances/{_seg(instance)}/log"
        try:
            response = self._http.get(node_url + path, params={"lines": lines})
        except httpx.HTTPError as exc:
            raise Unreachable(
                f"{node_url.removeprefix('http://')} unreachable ({type(exc).__name__})"
            ) from None
        if response.status_code >= 400:
            raise error_of(response)
        return response.text.splitlines()

    def spec_text(self) -> dict[str, Any]:
        """`{"yaml": ..., "revision": n}`: the cluster's current spec."""
        return self._object("GET", "/v1/spec")

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._objects("GET", "/v1/events", params={"limit": limit})

    def stream_events(self, resume: bool = True) -> Iterator[dict[str, Any]]:
        """New events as they happen (server-sent events), until closed.

        When the node streaming them goes away, the stream continues from
        another node; with `resume`, events written meanwhile are fetched and
        yielded first. Raises Unreachable when no node answers any more."""
        last: tuple[Any, ...] | None = None
        while True:
            response = self._open_stream()
            try:
                if resume and last is not None:
                    for event in self.events(limit=200):
                        if _event_key(event) > last:
                            last = _event_key(event)
                            yield event
                for event in _sse(response):
                    key = _event_key(event)
                    if last is not None and key <= last:
                        continue
                    last = key
                    yield event
            except (httpx.TransportError, httpx.StreamError):
                pass
            finally:
                response.close()
            self._rotate()
            time.sleep(0.2)

    def _rotate(self) -> None:
        """After a broken stream, start with the next node."""
        if self._current is not None:
            i = self.urls.index(self._current)
            self._current = self.urls[(i + 1) % len(self.urls)]

    def _open_stream(self) -> httpx.Response:
        tried: list[str] = []
        timeout = httpx.Timeout(self.timeout, connect=min(CONNECT_TIMEOUT, self.timeout), read=None)
        for base in self._order():
            tried.append(base)
            request = self._http.build_request("GET", base + "/v1/events/stream", timeout=timeout)
            try:
                response = self._http.send(request, stream=True)
            except httpx.TransportError:
                continue
            if response.status_code == 503:
                response.close()
                continue
            if response.status_code >= 400:
                response.read()
                raise error_of(response)
            self._current = base
            return response
        raise Unreachable(
            f"cluster {self.spec.cluster} unreachable: no agent answers at {self._addresses(tried)}"
        )

    # -- changing -----------------------------------------------------------------
    def put_spec(self, yaml_text: str, dry_run: bool = False) -> dict[str, Any]:
        """Validate (and unless `dry_run`, apply) a spec: `{"diff", "applied", "revision"}`."""
        return self._object(
            "PUT",
            "/v1/spec",
            params={"dry_run": "true" if dry_run else "false"},
            body={"yaml": yaml_text},
        )

    def scale(self, service: str, replicas: int) -> dict[str, Any]:
        return self._object(
            "POST", f"/v1/services/{_seg(service)}/scale", body={"replicas": replicas}
        )

    def restart(self, service: str) -> dict[str, Any]:
        return self._object("POST", f"/v1/services/{_seg(service)}/restart")

    def move(self, instance: str, node: str) -> dict[str, Any]:
        return self._object("POST", f"/v1/instances/{_seg(instance)}/move", body={"node": node})

    def switchover(self, service: str, to: str | None = None) -> dict[str, Any]:
        body = {"to": to} if to else {}
        return self._object("POST", f"/v1/services/{_seg(service)}/switchover", body=body)

    def drain(self, node: str) -> dict[str, Any]:
        return self._object("POST", f"/v1/nodes/{_seg(node)}/drain")

    def undrain(self, node: str) -> dict[str, Any]:
        return self._object("POST", f"/v1/nodes/{_seg(node)}/undrain")

    # -- backups ------------------------------------------------------------------
    def backups(self) -> dict[str, Any]:
        return self._object("GET", "/v1/backups")

    def backup_run(self, target: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        body = {"target": target, "dry_run": dry_run}
        return self._object("POST", "/v1/backups/run", body=body)

    def backup_check(self, repository: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        body = {"repository": repository, "dry_run": dry_run}
        return self._object("POST", "/v1/backups/check", body=body)

    def backup_snapshots(self, repository: str, target: str | None = None) -> list[dict[str, Any]]:
        params = {"repository": repository, "target": target}
        return self._objects("GET", "/v1/backups/snapshots", params=params)

    def restore(
        self, service: str, volume: str, snapshot: str, dry_run: bool = False
    ) -> dict[str, Any]:
        body = {"service": service, "volume": volume, "snapshot": snapshot, "dry_run": dry_run}
        return self._object("POST", "/v1/restores", body=body)

    def restores(self) -> list[dict[str, Any]]:
        return self._objects("GET", "/v1/restores")

    def cancel_restore(self, service: str) -> dict[str, Any]:
        return self._object("DELETE", f"/v1/restores/{_seg(service)}")

    def quarantine(self, node: str, reason: str = "") -> dict[str, Any]:
        return self._object("POST", f"/v1/nodes/{_seg(node)}/quarantine", body={"reason": reason})

    # -- key-value ------------------------------------------------------------------
    def kv_get(self, key: str) -> dict[str, Any]:
        return self._object("GET", f"/v1/kv/{_key(key)}")

    def kv_list(self, prefix: str = "") -> list[dict[str, Any]]:
        return self._objects("GET", "/v1/kv", params={"prefix": prefix})

    def kv_put(self, key: str, value: str, cas: int | None = None) -> dict[str, Any]:
        return self._object(
            "PUT", f"/v1/kv/{_key(key)}", params={"cas": cas}, body={"value": value}
        )

    def kv_delete(self, key: str, cas: int | None = None) -> dict[str, Any] | None:
        response = self.request("DELETE", f"/v1/kv/{_key(key)}", params={"cas": cas})
        if not response.content:
            return None
        try:
            return cast("dict[str, Any]", response.json())
        except ValueError:
            return None

    # -- tokens
    def bootstrap_token(self) -> dict[str, Any]:
        return self._object("POST", "/v1/bootstrap")

    def create_token(
        self,
        role: str = "read",
        name: str = "",
        kind: str = "api",
        ttl: float | None = None,
        uses: int | None = None,
    ) -> dict[str, Any]:
        body = {"role": role, "name": name, "kind": kind, "ttl": ttl, "uses": uses}
        return self._object("POST", "/v1/tokens", body=body)

    def tokens(self) -> list[dict[str, Any]]:
        return self._objects("GET", "/v1/tokens")

    def revoke_token(self, ident: str) -> None:
        self.request("DELETE", f"/v1/tokens/{_seg(ident)}")

    # -- logs (docs/logs.md) --------------------------------------------------------
    def node_log(
        self,
        node_url: str,
        instance: str | None = None,
        *,
        lines: int = 100,
        since: str | None = None,
        grep: str | None = None,
    ) -> dict[str, Any]:
        """`{"node", "source", "lines": [{"time", "text"}]}`: the agent log of the
        node at `node_url`, or the log of `instance` (which that node runs)."""
        path = "/v1/logs/agent" if instance is None else f"/v1/logs/instances/{_seg(instance)}"
        params = {k: v for k, v in {"lines": lines, "since": since, "grep": grep}.items() if v}
        try:
            response = self._http.get(node_url + path, params=params)
        except httpx.HTTPError as exc:
            raise Unreachable(
                f"{node_url.split('://', 1)[-1]} unreachable ({type(exc).__name__})"
            ) from None
        if response.status_code >= 400:
            raise error_of(response)
        return cast("dict[str, Any]", response.json())

    # -- availability (docs/availability.md) -------------------------------------------
    def availability(self, service: str | None = None) -> dict[str, Any]:
        """`{"time", "services": [{"service", "windows", "incidents", "observers"}]}`."""
        path = "/v1/availability" + (f"/{_seg(service)}" if service else "")
        return self._object("GET", path)

    # -- alerts (docs/alerts.md) -------------------------------------------------------
    def alerts(self, resolved: bool = False) -> list[dict[str, Any]]:
        params = {"resolved": "true"} if resolved else None
        return self._objects("GET", "/v1/alerts", params=params)

    def ack_alert(
        self, alert: str, expires: str = "24h", comment: str = "", by: str = ""
    ) -> dict[str, Any]:
        body = {"expires": expires, "comment": comment, "by": by}
        return self._object("POST", f"/v1/alerts/{_seg(alert)}/ack", body=body)

    def silence(
        self, matchers: dict[str, str], expires: str, comment: str = "", by: str = ""
    ) -> dict[str, Any]:
        body = {"matchers": matchers, "expires": expires, "comment": comment, "by": by}
        return self._object("POST", "/v1/silences", body=body)

    def silences(self) -> list[dict[str, Any]]:
        return self._objects("GET", "/v1/silences")

    def unsilence(self, ident: str) -> dict[str, Any]:
        return self._object("DELETE", f"/v1/silences/{_seg(ident)}")


def _seg(name: str) -> str:
    """One path segment."""
    return quote(name, safe="")


def _key(key: str) -> str:
    """A key in a path: its slashes stay slashes."""
    return quote(key, safe="/")


def _event_key(event: dict[str, Any]) -> tuple[Any, ...]:
    return (
        float(event.get("time") or 0),
        str(event.get("node") or ""),
        str(event.get("kind") or ""),
        str(event.get("subject") or ""),
    )


def _sse(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream's `data:` fields."""
    data: list[str] = []
    for line in response.iter_lines():
        if not line:
            if data:
                text = "\n".join(data)
                data = []
                try:
                    event = json.loads(text)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    yield event
            continue
        if line.startswith(":"):
            continue  # a comment: keep-alive
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value.removeprefix(" "))
