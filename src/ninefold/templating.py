"""The template engine of `templates:`: Jinja2 in its immutable sandbox.

Templates are written by whoever writes the spec, but they are rendered inside
every selected agent, from data that users put in the KV store. The sandbox
keeps them to the values they are given: no attribute starting with `_` (so no
way from a value to its class, its module or the agent), no method that
changes a list or a dict, ranges bounded, and no big `*`/`**` results. An
undefined name is an error (StrictUndefined), never an empty string in a
config file.

Every error is a `TemplateError` with one line naming the template and the
line of the template it happened on. Nothing here does I/O.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_OUTPUT = 16 * 1024 * 1024
"""The most characters a `*` may make, and the most a template may render."""
MAX_POWER = 4096
"""The largest exponent `**` takes."""


class TemplateError(Exception):
    """A template that does not compile or render: `template NAME line N: what`."""

    def __init__(self, name: str, line: int | None, message: str) -> None:
        self.name = name
        self.line = line
        self.message = " ".join(message.split()) or "failed"
        where = f"template '{name}'" + (f" line {line}" if line is not None else "")
        super().__init__(f"{where}: {self.message}")


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with `*` and `**` bounded (a `'x' * 10**12`
    would otherwise take the agent's memory)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "**":
            if isinstance(right, int | float) and abs(right) > MAX_POWER:
                raise SecurityError(f"exponent {right} is larger than {MAX_POWER}")
            return operator.pow(left, right)
        if operator_ == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if sized and len(seq) * times > MAX_OUTPUT:
                    raise SecurityError(f"a repetition longer than {MAX_OUTPUT} items")
            return operator.mul(left, right)
        return super().call_binop(context, operator_, left, right)


@functools.cache
def environment() -> jinja2.Environment:
    """The one environment every template compiles in (its settings are part
    of the language users write: docs/templates.md#syntax)."""
    return _Sandbox(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _filename(name: str) -> str:
    """The code filename a template's frames carry, to find its lines in a traceback."""
    return f"<ninefold template {name}>"


@functools.lru_cache(maxsize=64)
def compile_template(source: str, name: str) -> Any:
    """The compiled code of `source`; TemplateError for a syntax error, an
    unknown filter or test. Cached: agents render the same text again and again."""
    try:
        return environment().compile(source, name=name, filename=_filename(name))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(name, exc.lineno, exc.message or str(exc)) from None


def render(source: str, name: str, context: Mapping[str, Any]) -> str:
    """`source` rendered with `context` as its globals; TemplateError (one
    line, with the template's line) for anything that goes wrong."""
    code = compile_template(source, name)
    env = environment()
    try:
        template = env.template_class.from_code(env, code, env.make_globals(dict(context)), None)
        out = template.render()
    except TemplateError:
        raise
    except Exception as exc:
        raise TemplateError(name, _line_in(exc.__traceback__, name), _message(exc)) from None
    if len(out) > MAX_OUTPUT:
        raise TemplateError(name, None, f"renders more than {MAX_OUTPUT} characters")
    return out


def fail(message: str) -> Any:
    """`{{ fail("why") }}` in a template: stop rendering with this message
    (the file keeps its previous contents)."""
    raise TemplateFailure(message)


class TemplateFailure(Exception):
    """Raised by a template (`fail()`) or by a function given to it (an
    unknown service, a missing key): its text is the whole message."""


def _line_in(tb: TracebackType | None, name: str) -> int | None:
    """The template line of the innermost template frame in `tb` (Jinja
    rewrites tracebacks so template frames carry template lines)."""
    filename, line = _filename(name), None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _message(exc: BaseException) -> str:
    if isinstance(exc, TemplateFailure | jinja2.UndefinedError | SecurityError):
        return str(exc)
    if isinstance(exc, RecursionError):
        return "recursion too deep"
    return f"{type(exc).__name__}: {exc}"
