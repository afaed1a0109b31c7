"""The jinja sandbox chat templates run in, bounded in time and in the size of everything they build.

Chat templates come from model repositories, so they are untrusted code. They run in jinja's
`ImmutableSandboxedEnvironment` with no loader (`{% include %}` / `{% import %}` / `{% extends %}` cannot read
files), containers the template cannot mutate, and every access to an unsafe attribute raising at once.

On top of that every render has a budget (`RenderBudget`): a deadline (`RENDER_SECONDS`, default 5 s) checked on
every loop iteration, call, filter and output chunk, and a size bound (`MAX_OUTPUT_CHARS`, default 8,000,000
characters, or items for lists) checked *before* anything that could build a larger value is built: `*`, `**`,
`+`, `%` and `~`, string padding and replacement (`center`, `indent`, `replace`, `join`, format widths, ...), list
repetition and the rendered output itself. Exceeding either raises `TemplateLimitError`, which the caller turns into
a `ChatTemplateError` naming the template. Change the module constants (or pass `max_seconds` / `max_chars` to
`render_chat`) to allow more.
"""

from __future__ import annotations

import contextvars
import functools
import json
import math
import re
import string
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, NoReturn

import jinja2
import jinja2.ext
import jinja2.utils
from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment

from .template_parts import BudgetCodeGenerator, TemplateDict, TemplateNamespace, strftime_now

RENDER_SECONDS = 5.0  # wall-clock limit of one render
MAX_OUTPUT_CHARS = 8_000_000  # the longest string (or list) a template may build, and its longest output
MAX_INT_BITS = 100_000  # the largest integer (in bits) `*` / `**` may compute
MAX_TEMPLATE_CHARS = 1_000_000  # the longest template source compiled


class ChatTemplateError(ValueError):
    """A chat template failed to compile or render, raised on purpose, ran past a limit, or tried to leave the
    sandbox; the message names the template."""


class TemplateRaised(TemplateError):
    """What `raise_exception(...)` inside a template raises; carries the template's own message."""


class TemplateLimitError(TemplateError):
    """A template ran past its time limit or tried to build something larger than the size limit."""


class RenderBudget:
    """The deadline and size bound of one render (see the module docstring)."""

    def __init__(self, max_seconds: float | None = None, max_chars: int | None = None) -> None:
        self.seconds = _module.RENDER_SECONDS if max_seconds is None else max_seconds
        self.max_chars = _module.MAX_OUTPUT_CHARS if max_chars is None else max_chars
        if not (isinstance(self.seconds, (int, float)) and math.isfinite(self.seconds) and self.seconds > 0):
            raise ValueError(f"max_seconds={self.seconds!r} must be a positive number of seconds, e.g. 5.0")
        if not (isinstance(self.max_chars, int) and self.max_chars > 0):
            raise ValueError(f"max_chars={self.max_chars!r} must be a positive int, e.g. 8_000_000")
        self.deadline = time.monotonic() + self.seconds

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(
                f"ran longer than its time limit of {self.seconds:g} s (phikit.tokenizer.template_sandbox."
                "RENDER_SECONDS); it probably loops without end")

    def size(self, n: int, what: str) -> None:
        if n > self.max_chars:
            raise TemplateLimitError(
                f"would build (or walk) {what} of length {n}, over the limit of {self.max_chars} "
                "(phikit.tokenizer.template_sandbox.MAX_OUTPUT_CHARS)")


_module = sys.modules[__name__]  # limits are read at call time, so setting the module constants takes effect
_CURRENT: contextvars.ContextVar[RenderBudget | None] = contextvars.ContextVar("chat_template_budget", default=None)
_UNBOUNDED_TIME = float("inf")


def current_budget() -> RenderBudget:
    """The budget of the render in progress; outside `bounded(...)`, a size-only budget with the default bound."""
    budget = _CURRENT.get()
    if budget is None:
        budget = RenderBudget()
        budget.deadline = _UNBOUNDED_TIME
    return budget


def bounded_render(template: jinja2.Template, budget: RenderBudget, variables: dict[str, Any]) -> str:
    """Render `template` with `variables` under `budget`; raises what the template raised (a `TemplateLimitError`
    when it ran past a limit)."""
    token = _CURRENT.set(budget)
    try:
        parts, total = [], 0
        for chunk in template.generate(**variables):
            total += len(chunk)
            budget.size(total, "an output")
            budget.tick()
            parts.append(chunk)
        return "".join(parts)
    finally:
        _CURRENT.reset(token)


def _budget_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    budget = current_budget()
    for n, item in enumerate(iterable):
        budget.tick()
        if n >= budget.max_chars:
            budget.size(n + 1, "a sequence")
        yield item


_CONTAINERS = (list, tuple, dict, set, frozenset)


def check_text_size(value: Any, what: str = "the text of a value") -> None:
    """Refuse a container whose text (`str(value)`, also what comparing it walks) would be over the size bound:
    `[l] * 100000` holds one list 100000 times, and its text is 100000 copies of it."""
    if not isinstance(value, _CONTAINERS):
        return
    budget = current_budget()
    total, stack, steps = 0, [value], 0
    while stack:
        x = stack.pop()
        steps += 1
        if steps % 4096 == 0:
            budget.tick()
        if isinstance(x, str):
            total += len(x) + 2
        elif isinstance(x, dict):
            total += 2 + 4 * len(x)
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, _CONTAINERS):
            total += 2 + 2 * len(x)
            stack.extend(x)
        else:
            total += x.bit_length() // 3 + 2 if isinstance(x, int) else 8
        if total > budget.max_chars:
            budget.size(total, what)


def _check_args(args: Iterable[Any], what: str) -> None:
    for arg in args:
        check_text_size(arg, what)


def _length(x: Any) -> int:
    return len(x) if isinstance(x, (str, bytes, list, tuple, dict)) else 0


def _check_int_product(a: int, b: int) -> None:
    if a.bit_length() + b.bit_length() > MAX_INT_BITS:
        raise TemplateLimitError(f"would compute an integer of about {a.bit_length() + b.bit_length()} bits, over "
                                 f"the limit of {MAX_INT_BITS} (phikit.tokenizer.template_sandbox.MAX_INT_BITS)")


def _is_int(x: Any) -> bool:
    return isinstance(x, int)


def _check_binop(op: str, left: Any, right: Any) -> None:
    budget = current_budget()
    budget.tick()
    if op == "*":
        if _is_int(left) and _is_int(right):
            _check_int_product(left, right)
        elif _is_int(right) and _length(left) or _is_int(left) and _length(right):
            seq, n = (left, right) if _is_int(right) else (right, left)
            budget.size(len(seq) * max(n, 0), f"a {type(seq).__name__} repeated {n} times")
    elif op == "**" and _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
        if right * left.bit_length() > MAX_INT_BITS:
            raise TemplateLimitError(f"would compute {left} ** {right}, an integer of about "
                                     f"{right * left.bit_length()} bits, over the limit of {MAX_INT_BITS} "
                                     "(phikit.tokenizer.template_sandbox.MAX_INT_BITS)")
    elif op == "+" and _length(left) and _length(right):
        budget.size(_length(left) + _length(right), f"a {type(left).__name__}")
    elif op == "%" and isinstance(left, str):
        args = right if isinstance(right, tuple) else (right,)
        _check_percent_format(left, args)
        _check_args(args, "the text of a %-formatted value")


_PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


def _check_width(width: Any, what: str) -> None:
    if isinstance(width, int):
        current_budget().size(width, what)
    elif isinstance(width, str):
        for run in _DIGITS.findall(width):
            current_budget().size(int(run) if len(run) < 12 else 10 ** 12, what)


def _check_percent_format(fmt: str, args: tuple) -> None:
    starred = False
    for width, precision in _PERCENT_FIELD.findall(fmt):
        for part in (width, precision):
            if part == "*":
                starred = True
            elif part:
                _check_width(part, "a %-formatted field")
    if starred:
        for arg in args:
            _check_width(arg if isinstance(arg, int) else 0, "a %-formatted field")


def _check_format_string(fmt: str, args: tuple, kwargs: dict) -> None:
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format raises the same ValueError itself
    for _, _, spec, _ in fields:
        if spec:
            _check_width(spec, "a formatted field")
            if "{" in spec:  # a nested width: check the arguments it could take
                for arg in (*args, *kwargs.values()):
                    _check_width(arg if isinstance(arg, int) else 0, "a formatted field")


def _check_call(obj: Any, args: tuple, kwargs: dict) -> None:
    """Refuse str methods whose result would be over the size bound before they build it."""
    owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
    if not isinstance(owner, str):
        return
    budget = current_budget()
    if name in ("center", "ljust", "rjust", "zfill") and args:
        _check_width(args[0], f"str.{name}()")
    elif name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tab, int):
            budget.size(len(owner) + owner.count("\t") * tab, "str.expandtabs()")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        _check_replace(owner, args[0], args[1], args[2] if len(args) > 2 else -1)
    elif name == "translate" and args and isinstance(args[0], dict):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        budget.size(len(owner) * longest, "str.translate()")


def _check_replace(s: str, old: str, new: str, count: Any) -> None:
    hits = len(s) + 1 if old == "" else s.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    current_budget().size(len(s) + hits * max(len(new) - len(old), 0), "a replaced string")


def _checked_join(parts: Iterable[Any], sep: str = "") -> str:
    budget, items, total = current_budget(), [], 0
    for x in _budget_iter(parts):
        check_text_size(x, "a joined string")
        items.append(x if isinstance(x, str) else str(x))
        total += len(items[-1]) + len(sep)
        budget.size(total, "a joined string")
    return sep.join(items)


def _filter_checks(name: str, args: tuple, kwargs: dict) -> None:
    value = args[0] if args else None
    rest = args[1:]
    budget = current_budget()
    if name == "center":
        _check_width(rest[0] if rest else kwargs.get("width", 80), "the center filter")
    elif name == "indent" and isinstance(value, str):
        width = rest[0] if rest else kwargs.get("width", 4)
        pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        budget.size(len(value) + (value.count("\n") + 1) * max(pad, 0), "the indent filter's result")
    elif name == "replace" and isinstance(value, str) and len(rest) >= 2:
        if isinstance(rest[0], str) and isinstance(rest[1], str):
            _check_replace(value, rest[0], rest[1], rest[2] if len(rest) > 2 else kwargs.get("count", -1))
    elif name == "wordwrap" and isinstance(value, str):
        wrap = kwargs.get("wrapstring", rest[2] if len(rest) > 2 else None)
        width = rest[0] if rest else kwargs.get("width", 79)
        if isinstance(wrap, str) and isinstance(width, int):
            budget.size(len(value) + (len(value) // max(width, 1) + 1) * len(wrap), "the wordwrap filter's result")
    elif name == "format" and isinstance(value, str):
        _check_percent_format(value, rest or tuple(kwargs.values()))
    elif name == "join" and isinstance(value, list) and len(rest) < 2 and "attribute" not in kwargs:
        sep = rest[0] if rest else kwargs.get("d", "")
        if isinstance(sep, str):
            total = 0
            for x in value:
                check_text_size(x, "the join filter's result")
                total += (len(x) if isinstance(x, str) else len(str(x))) + len(sep)
                budget.size(total, "the join filter's result")
    elif name == "sum" and isinstance(value, list):
        start = rest[1] if len(rest) > 1 else kwargs.get("start", 0)
        if _length(start) or isinstance(start, (list, tuple, str)):
            budget.size(_length(start) + sum(_length(x) for x in value), "the sum filter's result")
    elif name == "truncate":
        _check_width(kwargs.get("end", rest[2] if len(rest) > 2 else ""), "the truncate filter's end")


def _bounded_filter(name: str, func: Any) -> Any:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        budget = current_budget()
        budget.tick()
        passed = args[1:] if getattr(func, "jinja_pass_arg", None) is not None else args
        if name in ("join", "sum") and passed and not isinstance(passed[0], str):
            items = list(_budget_iter(passed[0]))  # materialize once, to measure what it would build
            args, passed = (*args[: len(args) - len(passed)], items, *passed[1:]), (items, *passed[1:])
        _check_args((*passed, *kwargs.values()), f"a value given to the {name} filter")
        _filter_checks(name, passed, kwargs)
        result = func(*args, **kwargs)
        if isinstance(result, Iterator):
            return _budget_iter(result)
        if isinstance(result, (str, list, tuple, bytes)):
            budget.size(len(result), f"the result of the {name} filter")
        budget.tick()
        return result

    return wrapper


def _bounded_test(func: Any) -> Any:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        current_budget().tick()
        _check_args((*args, *kwargs.values()), "a tested value")
        return func(*args, **kwargs)

    return wrapper


def _finalize(value: Any) -> Any:
    """Every `{{ ... }}` value before it becomes text: refuse containers whose text would be over the bound."""
    check_text_size(value, "the text of an output value")
    return value


def _checked_range(*args: Any) -> range:
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise TemplateLimitError(f"called range() with {len(r)} items, over jinja's sandbox limit of {MAX_RANGE}")
    return r


def _checked_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    if isinstance(n, int) and isinstance(max, int):
        current_budget().size(n * max * 12, "lipsum() text")
    return jinja2.utils.generate_lorem_ipsum(n=n, html=html, min=min, max=max)


class ChatSandbox(ImmutableSandboxedEnvironment):
    """The sandbox: no template loading, unsafe attribute access fails at once, and every render is bounded."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = BudgetCodeGenerator

    @staticmethod
    def budget_iter(iterable: Iterable[Any]) -> Iterator[Any]:
        return _budget_iter(iterable)

    @staticmethod
    def compare_arg(value: Any) -> Any:
        check_text_size(value, "a compared value")
        return value

    @staticmethod
    def checked_join(parts: Iterable[Any]) -> str:
        return _checked_join(parts)

    @staticmethod
    def concat(parts: Iterable[Any]) -> str:  # macro bodies, `{% set %}` blocks and filter blocks
        return _checked_join(parts)

    def _generate(self, source: nodes.Template, name: str | None, filename: str | None,
                  defer_init: bool = False) -> str:
        for loop in source.find_all(nodes.For):
            loop.iter.phikit_budgeted = True
        return super()._generate(source, name, filename, defer_init=defer_init)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (jinja's names)
        current_budget().tick()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str) and getattr(__obj, "__name__", "") == "join" and len(args) == 1 and not kwargs:
            return _checked_join(args[0], owner)
        _check_call(__obj, args, kwargs)
        _check_args((owner, *args, *kwargs.values()), "a value passed to a call")
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt, is_map = value.__self__, value.__name__ == "format_map"

        @functools.wraps(wrapped)
        def checked(*args: Any, **kwargs: Any) -> str:
            _check_format_string(fmt, (), args[0] if is_map and args and isinstance(args[0], dict) else kwargs)
            _check_format_string(fmt, args, kwargs)
            _check_args((*args, *kwargs.values()), "the text of a formatted value")
            result = wrapped(*args, **kwargs)
            current_budget().size(len(result), "a formatted string")
            return result

        return checked

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        # jinja's default returns an Undefined that renders as "" until used further; raise now instead, so
        # `{{ ''.__class__ }}` is an error rather than silently empty output.
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe")

    def get_template(self, name: Any, *args: Any, **kwargs: Any) -> NoReturn:
        raise SecurityError(f"chat templates cannot load other templates or files (asked for {name!r})")

    select_template = get_or_select_template = get_template


def _raise_exception(message: str) -> NoReturn:
    check_text_size(message, "raise_exception's message")
    raise TemplateRaised(str(message)[:2000])


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | str | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # jinja's own tojson escapes <, >, & and ' for HTML; chat templates need the plain JSON transformers writes.
    if isinstance(indent, int) and indent > 64 or isinstance(indent, str) and len(indent) > 64:
        raise TemplateLimitError(f"tojson(indent={indent!r}) is over the limit of 64 spaces")
    text = json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    current_budget().size(len(text), "tojson output")
    return text


def new_sandbox() -> ChatSandbox:
    """A sandbox with transformers' chat-template helpers, every filter bounded."""
    # optimized=False: jinja's optimizer evaluates constant expressions while compiling, outside any budget
    env = ChatSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols], optimized=False)
    env.filters["tojson"] = _tojson
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}
    env.tests = {name: _bounded_test(f) for name, f in env.tests.items()}
    env.finalize = _finalize
    env.globals.update(raise_exception=_raise_exception, strftime_now=strftime_now, dict=TemplateDict(),
                       namespace=TemplateNamespace, range=_checked_range, lipsum=_checked_lipsum)
    return env


__all__ = ["MAX_INT_BITS", "MAX_OUTPUT_CHARS", "MAX_TEMPLATE_CHARS", "RENDER_SECONDS", "ChatSandbox",
           "ChatTemplateError", "RenderBudget", "TemplateLimitError", "TemplateRaised", "bounded_render",
           "new_sandbox"]
