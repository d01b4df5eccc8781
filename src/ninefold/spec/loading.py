"""Reading a spec file: YAML to models, and every problem to `FILE:LINE path: message`.

PyYAML composes the node tree (which knows lines); the same loader then builds
plain data from it for pydantic. Problems come back as locations (`Loc`), and the
node tree turns each into the line of its value, or of the nearest parent present.
"""

from __future__ import annotations

import difflib
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from .duration import HUMAN_DURATIONS
from .errors import Loc, Problem, SpecError, SpecIssue, describe, format_loc
from .models import DEFER_CONTEXT, ClusterSpec, NodeSpec, ServiceSpec, StoreSpec, cluster_problems
from .routing import GatewaySpec
from .security import SecuritySpec

_MERGE_TAG = "tag:yaml.org,2002:merge"


def load_spec(path: str | Path) -> ClusterSpec:
    """Read and validate the spec file at `path`; SpecError lists every problem."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([SpecIssue(name, None, "", "file not found")]) from None
    except IsADirectoryError:
        raise SpecError([SpecIssue(name, None, "", "is a directory, not a file")]) from None
    except UnicodeDecodeError:
        raise SpecError([SpecIssue(name, None, "", "is not UTF-8 text")]) from None
    except OSError as exc:
        raise SpecError([SpecIssue(name, None, "", exc.strerror or str(exc))]) from None
    return parse_spec(text, name)


def parse_spec(text: str, filename: str = "<spec>") -> ClusterSpec:
    """Validate spec YAML `text`; `filename` only names it in messages."""
    doc = _compose(text, filename)
    if doc.root is None:
        raise SpecError([SpecIssue(filename, 1, "", "file is empty")])
    if not isinstance(doc.data, dict):
        message = f"expected a mapping (cluster:, nodes:, services:), got {describe(doc.data)}"
        raise SpecError([SpecIssue(filename, _line(doc.root), "", message)])
    located = list(doc.duplicates)
    try:
        spec = ClusterSpec.model_validate(doc.data, context=DEFER_CONTEXT)
    except ValidationError as exc:
        errors = exc.errors()
        for error in errors:
            loc, message, at_key = _explain(error)
            located.append((doc.line_of(loc, at_key=at_key), loc, message))
        problems = _problems_of_valid_parts(doc.data, errors)
    else:
        problems = spec.problems()
    located += [(doc.line_of(p.loc), p.loc, p.message) for p in problems]
    if located:
        issues = {
            SpecIssue(filename, line, format_loc(loc), msg): None for line, loc, msg in located
        }
        raise SpecError(sorted(issues, key=lambda issue: issue.line or 0))
    return spec


def dump_spec(spec: ClusterSpec) -> str:
    """YAML for `spec`, leaving out defaults; `parse_spec` reads it back to an equal spec."""
    data = spec.model_dump(mode="json", exclude_defaults=True, context={HUMAN_DURATIONS: True})
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


# --- YAML ------------------------------------------------------------------------


@dataclass
class _Document:
    root: yaml.Node | None
    data: Any
    duplicates: list[tuple[int, Loc, str]]

    def line_of(self, loc: Loc, *, at_key: bool = False) -> int:
        """Line of the value at `loc` (of its key if `at_key`), else of the nearest parent.

        A block mapping or list is reported at its key, where it visibly begins.
        """
        assert self.root is not None
        node, line = self.root, _line(self.root)
        for i, part in enumerate(loc):
            if isinstance(node, yaml.MappingNode):
                pair = next(((k, v) for k, v in node.value if _key_is(k, part)), None)
                if pair is None:
                    break
                key, node = pair
                if at_key and i == len(loc) - 1:
                    return _line(key)
                block = isinstance(node, yaml.CollectionNode) and not node.flow_style
                line = _line(key) if block else _line(node)
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if not 0 <= part < len(node.value):
                    break
                node = node.value[part]
                line = _line(node)
            else:
                break
        return line


def _compose(text: str, filename: str) -> _Document:
    try:
        loader = yaml.SafeLoader(text)  # its reader already rejects control characters
    except yaml.YAMLError as exc:
        message = " ".join(str(exc).split())
        raise SpecError([SpecIssue(filename, 1, "", f"invalid YAML: {message}")]) from None
    try:
        root = loader.get_single_node()
        if root is None:
            return _Document(None, None, [])
        duplicates = _duplicate_keys(root, (), set())
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        raise SpecError([_yaml_issue(exc, filename)]) from None
    except yaml.YAMLError as exc:
        raise SpecError([SpecIssue(filename, None, "", f"invalid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    return _Document(root, data, duplicates)


def _yaml_issue(exc: yaml.MarkedYAMLError, filename: str) -> SpecIssue:
    mark = exc.problem_mark or exc.context_mark
    message = exc.problem or exc.context or "cannot be read"
    if exc.problem and exc.context and exc.context_mark:
        if exc.problem.startswith("but "):  # "expected a single document ... but found ..."
            message = f"{exc.context}, {exc.problem}"
        else:
            message += f" ({exc.context} on line {exc.context_mark.line + 1})"
    return SpecIssue(filename, mark.line + 1 if mark else None, "", f"invalid YAML: {message}")


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _key_value(node: yaml.Node) -> Any:
    """The Python value of a scalar key node, or a unique sentinel if it has none."""
    if isinstance(node, yaml.ScalarNode) and node.tag != _MERGE_TAG:
        try:
            return yaml.constructor.SafeConstructor().construct_object(node)
        except yaml.YAMLError:
            pass
    return object()


def _key_is(node: yaml.Node, part: str | int) -> bool:
    value = _key_value(node)
    return bool(value == part) or str(value) == str(part)


def _duplicate_keys(node: yaml.Node, loc: Loc, seen: set[int]) -> list[tuple[int, Loc, str]]:
    """PyYAML silently keeps the last of two equal keys; a spec must not say things twice."""
    if id(node) in seen:  # an alias to a node already walked
        return []
    seen.add(id(node))
    out: list[tuple[int, Loc, str]] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[type, Any], int] = {}  # typed, so `1` and `true` differ
        for key_node, value_node in node.value:
            key = _key_value(key_node)
            typed = (type(key), key)
            if typed in first:
                message = f"duplicate key '{key}' (first on line {first[typed]})"
                out.append((_line(key_node), (*loc, key), message))
            else:
                first[typed] = _line(key_node)
            out += _duplicate_keys(value_node, (*loc, key), seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out += _duplicate_keys(item, (*loc, i), seen)
    return out


# --- pydantic errors -------------------------------------------------------------

_EXPECTED = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _explain(error: ErrorDetails) -> tuple[Loc, str, bool]:
    """(location, short message, whether the key rather than the value is at fault)."""
    loc: Loc = tuple(error["loc"])
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    at_key = bool(loc) and loc[-1] == "[key]"
    if at_key:
        loc = loc[:-1]
    if kind == "missing":
        return loc, "required, but missing", False
    if kind == "extra_forbidden":
        return loc, _unknown_key(loc), True
    if kind == "invalid_key":
        return loc, f"keys must be strings, got {describe(value)}", True
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return loc, str(ctx["error"]), at_key
    if kind in _EXPECTED:
        return loc, f"expected {_EXPECTED[kind]}, got {describe(value)}", at_key
    if kind == "literal_error":
        return loc, f"expected {ctx['expected']}, got {describe(value)}", at_key
    if kind == "greater_than_equal":
        return loc, f"must be at least {ctx['ge']}, got {describe(value)}", at_key
    if kind == "too_short" and ctx.get("min_length") == 1:
        return loc, "must not be empty", at_key
    return loc, error["msg"], at_key


def _unknown_key(loc: Loc) -> str:
    key = loc[-1]
    message = f"unknown key '{key}'"
    model = _model_at(loc[:-1])
    if model is not None and isinstance(key, str):
        near = difflib.get_close_matches(key, list(model.model_fields), n=1)
        if near:
            message += f" (did you mean '{near[0]}'?)"
    return message


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model class that validates the mapping at `loc`, by walking field types."""
    tp: Any = ClusterSpec
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            tp = field.annotation
        elif get_origin(tp) is list and isinstance(part, int):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _problems_of_valid_parts(data: dict[str, Any], errors: list[ErrorDetails]) -> list[Problem]:
    """Cross checks over the parts that did validate, so one bad field does not hide them."""
    locs = [tuple(e["loc"]) for e in errors]
    tops = {loc[:1] for loc in locs}
    store = None if ("store",) in tops else _valid(StoreSpec, data.get("store", {}))
    nodes = None
    if ("nodes",) not in tops and "nodes" in data:
        nodes = _valid(list[NodeSpec], data["nodes"])
    services: dict[str, ServiceSpec] = {}
    dropped: dict[str, set[str]] = {}
    raw_services = data.get("services")
    if isinstance(raw_services, dict) and ("services",) not in locs:
        for name, raw in raw_services.items():
            bad = [loc[2:] for loc in locs if loc[:2] == ("services", name)]
            service, dropped[name] = _valid_service_part(raw, bad)
            if service is not None:
                services[name] = service
    gateway = None if ("gateway",) in tops else _valid(GatewaySpec, data.get("gateway", {}))
    security = None if ("security",) in tops else _valid(SecuritySpec, data.get("security", {}))
    problems = cluster_problems(store, nodes, services, gateway, security)
    return [p for p in problems if not _under_dropped(p.loc, dropped)]


def _valid(tp: Any, value: Any) -> Any:
    try:
        return TypeAdapter(tp).validate_python(value, context=DEFER_CONTEXT)
    except ValidationError:
        return None


def _valid_service_part(raw: Any, bad: list[Loc]) -> tuple[ServiceSpec | None, set[str]]:
    """The service without its invalid keys, if what remains can be checked honestly.

    Dropped keys fall back to their defaults, so checks that depend on them would
    judge values the user never wrote; those keys are returned to filter such checks.
    """
    dropped = {str(loc[0]) for loc in bad if loc}
    whole = any(loc in ((), ("[key]",)) for loc in bad)  # the service itself, or its name
    if whole or not isinstance(raw, dict) or dropped & {"ports", "volumes"}:
        return None, dropped
    trimmed = {key: value for key, value in raw.items() if key not in dropped}
    if "command" in dropped:
        trimmed["command"] = ["-"]
    if "placement" in dropped:
        dropped.add("replicas")
    if "replicas" in dropped:
        dropped.add("placement")
    if "external" in dropped:  # not "command is missing": the endpoints are wrong
        dropped.add("command")
    return _valid(ServiceSpec, trimmed), dropped


def _under_dropped(loc: Loc, dropped: dict[str, set[str]]) -> bool:
    return len(loc) >= 3 and loc[0] == "services" and loc[2] in dropped.get(str(loc[1]), ())
