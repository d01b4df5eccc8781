"""The spec's `security:` section: how the cluster's nodes authenticate each other.

```yaml
security:
  tls:
    ca: /etc/ninefold/shop/ca.crt   # the cluster CA's certificate (ninefold init writes it)
```

With `tls` set, every etcd port and every agent API speaks mutual TLS with
certificates from that CA (docs/security.md); without it, everything is plain.
A relative `ca` is relative to the spec file's directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


def _path(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a file path, not empty")
    if "\0" in value:
        raise ValueError("must not contain a NUL character")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TlsSpec(_Model):
    ca: Annotated[str, AfterValidator(_path)]
    """The cluster CA's certificate (PEM) on the machine reading the spec."""

    def ca_path(self, spec_dir: Path | None = None) -> Path:
        """`ca`, relative to `spec_dir` when it is relative."""
        path = Path(self.ca).expanduser()
        if not path.is_absolute() and spec_dir is not None:
            path = spec_dir / path
        return path


class SecuritySpec(_Model):
    tls: TlsSpec | None = None
    """Mutual TLS between nodes and towards etcd; None: plain connections."""
