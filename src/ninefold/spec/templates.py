"""`templates:` files every selected node renders from the cluster's state, and
the command that reloads whatever reads them (consul-template's job in seed
000; docs/templates.md).

```yaml
templates:
  - name: haproxy
    source: /etc/ninefold/haproxy.cfg.j2     # or contents: | (inline text)
    destination: /etc/haproxy/haproxy.cfg
    nodes: {role: balancer}                  # or [n1, n2]; default every node
    command: [systemctl, reload, haproxy]
    wait: {min: 500ms, max: 2s}
    mode: "0644"
```

A template compiles here, when the spec is validated: a syntax error is one
line naming the template and its line. Inline `contents` always are; a
`source` file is read on each rendering node when it renders, and checked here
only when the machine validating the spec has it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ninefold import defaults

from .backups import Command
from .duration import Duration
from .errors import Loc, Problem

if TYPE_CHECKING:
    from .models import NodeSpec

NODE_PLACEHOLDER = "{node}"
"""In `destination` and `command`: the rendering node's name."""
DESTINATION_PLACEHOLDER = "{destination}"
"""In `command`: the file just written."""

MAX_WAIT_FACTOR = 4
"""`wait.max` when not set is this many times `wait.min` (as consul-template)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _absolute(what: str) -> AfterValidator:
    def check(value: str) -> str:
        if "\0" in value:
            raise ValueError("must not contain a NUL character")
        if not value.startswith("/"):
            raise ValueError(f"{what} must be an absolute path, got {value!r}")
        return value

    return AfterValidator(check)


def _mode(value: Any) -> Any:
    """`"0644"` (quoted: YAML reads an unquoted 0644 as the number 420, and
    644 as six hundred and forty-four)."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f'write the mode quoted, in octal, e.g. "0644" (got {value})')
    if isinstance(value, str):
        if not re.fullmatch(r"0?[0-7]{3,4}", value.strip()) or int(value, 8) > 0o7777:
            raise ValueError(f'{value!r} is not a file mode (octal, e.g. "0644")')
        return value.strip()
    return value


def _wait_shortcut(value: Any) -> Any:
    """`wait: 1s` is `wait: {min: 1s}`."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return {"min": value}
    return value


class WaitSpec(_Model):
    """consul-template's `wait`: render once the state has been quiet for
    `min`, and at the latest `max` after the first change."""

    min: Duration = defaults.TEMPLATE_WAIT
    max: Duration | None = None
    """Default: 4 x min."""

    @model_validator(mode="after")
    def _max_not_below_min(self) -> Self:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max:g}s) is less than min ({self.min:g}s)")
        return self

    @property
    def longest(self) -> float:
        return self.max if self.max is not None else self.min * MAX_WAIT_FACTOR


NodeNames = Annotated[list[str], Field(min_length=1)]
Labels = Annotated[dict[str, str], Field(min_length=1)]


class TemplateSpec(_Model):
    name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    """How events and messages name it; default its destination."""
    destination: Annotated[str, _absolute("destination")]
    """The file written; `{node}` stands for the rendering node's name."""
    contents: str | None = None
    """The template itself, inline."""
    source: Annotated[str, _absolute("source")] | None = None
    """A template file, read on each rendering node."""
    nodes: NodeNames | Labels | None = None
    """Which nodes render it: a list of names, or labels they all carry
    (as `placement.constraints`); default every node."""
    command: Command | None = None
    """Run (not through a shell) after the file changed: `{node}` and
    `{destination}` are replaced in its words."""
    timeout: Annotated[Duration, Field(gt=0)] = defaults.TEMPLATE_COMMAND_TIMEOUT
    """How long the command may run before it is killed (and counted failed)."""
    wait: Annotated[WaitSpec, BeforeValidator(_wait_shortcut)] = Field(default_factory=WaitSpec)
    mode: Annotated[str, BeforeValidator(_mode)] | None = None
    """The file's mode, e.g. "0640"; default: the existing file's, else 0644."""

    @field_validator("contents")
    @classmethod
    def _compiles(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            _compile(value, _name_of(info.data))
        return value

    @field_validator("source")
    @classmethod
    def _file_compiles(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Checked when this machine has the file (see the module's docstring)."""
        if value is not None:
            try:
                text = Path(value).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                return value
            _compile(text, _name_of(info.data))
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.contents is None) == (self.source is None):
            raise ValueError("a template needs one of contents (inline text) or source (a file)")
        return self

    @property
    def label(self) -> str:
        """The name messages and events use."""
        return self.name or self.destination

    @property
    def file_mode(self) -> int | None:
        return int(self.mode, 8) if self.mode is not None else None

    def selects(self, node: NodeSpec) -> bool:
        """Whether `node` renders this template."""
        if self.nodes is None:
            return True
        if isinstance(self.nodes, list):
            return node.name in self.nodes
        return node.matches(self.nodes)

    def destination_for(self, node: str) -> str:
        return self.destination.replace(NODE_PLACEHOLDER, node)

    def command_for(self, node: str) -> list[str] | None:
        if self.command is None:
            return None
        destination = self.destination_for(node)
        return [
            word.replace(NODE_PLACEHOLDER, node).replace(DESTINATION_PLACEHOLDER, destination)
            for word in self.command
        ]


def _name_of(data: dict[str, Any]) -> str:
    return str(data.get("name") or data.get("destination") or "template")


def _compile(text: str, name: str) -> None:
    # Imported here: Jinja2 takes a while to load, and most specs have no template.
    from ninefold.templating import TemplateError, compile_template

    try:
        compile_template(text, name)
    except TemplateError as exc:
        raise ValueError(str(exc)) from None


def template_problems(
    templates: Sequence[TemplateSpec], nodes: Iterable[NodeSpec], planned: Iterable[NodeSpec] = ()
) -> list[Problem]:
    """Node selectors that name no node or match none; two templates with one
    name, or writing one file on one node. `planned`: the nodes pools will
    create, which labels may select."""
    nodes, planned = list(nodes), list(planned)
    names = [n.name for n in nodes]
    out: list[Problem] = []
    labels: dict[str, int] = {}
    written: dict[tuple[str, str], int] = {}
    for i, template in enumerate(templates):
        loc: Loc = ("templates", i)
        if template.name is not None:
            if template.name in labels:
                other = labels[template.name]
                message = f"another template is named '{template.name}' (templates[{other}])"
                out.append(Problem((*loc, "name"), message))
            labels.setdefault(template.name, i)
        if isinstance(template.nodes, list):
            for j, name in enumerate(template.nodes):
                if name not in names:
                    msg = f"no node named '{name}' (nodes: {', '.join(names)})"
                    out.append(Problem((*loc, "nodes", j), msg))
        elif template.nodes is not None and not any(
            n.matches(template.nodes) for n in [*nodes, *planned]
        ):
            shown = ", ".join(f"{k}: {v}" for k, v in template.nodes.items())
            out.append(Problem((*loc, "nodes"), f"no node has the labels {{{shown}}}"))
        for node in nodes:
            if not template.selects(node):
                continue
            key = (node.name, template.destination_for(node.name))
            if key in written:
                msg = (
                    f"templates[{written[key]}] also writes {key[1]} on node {node.name} "
                    f"(put {NODE_PLACEHOLDER} in the destination, or select other nodes)"
                )
                out.append(Problem((*loc, "destination"), msg))
                break
            written[key] = i
    return out
