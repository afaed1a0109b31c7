"""The jinja pieces of the chat sandbox that hold no budget: the code generator that routes `{% for %}` iterables,
`~` and comparisons through the environment's checks, and the `namespace` / `dict` / `strftime_now` helpers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import jinja2.utils
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, operators
from jinja2.exceptions import SecurityError


class BudgetCodeGenerator(CodeGenerator):
    """Writes every `{% for %}` iterable (marked by `ChatSandbox._generate`) wrapped in `environment.budget_iter`,
    and `~` concatenation through `environment.checked_join`."""

    def visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> Any:
        if not getattr(node, "phikit_budgeted", False):
            return super().visit(node, *args, **kwargs)
        self.write("environment.budget_iter(")
        super().visit(node, *args, **kwargs)
        self.write(")")
        return None

    def _output_child_to_const(self, node: nodes.Expr, frame: Any, finalize: Any) -> str:
        # jinja folds constant output expressions while compiling, outside any budget: only fold literals
        if not isinstance(node, (nodes.TemplateData, nodes.Const)):
            raise nodes.Impossible()
        return super()._output_child_to_const(node, frame, finalize)

    def visit_Compare(self, node: nodes.Compare, frame: Any) -> None:
        # comparing (or `in`) walks containers: their size is checked first, as their text would be
        self.write("(environment.compare_arg(")
        self.visit(node.expr, frame)
        self.write(")")
        for op in node.ops:
            self.visit(op, frame)
        self.write(")")

    def visit_Operand(self, node: nodes.Operand, frame: Any) -> None:
        self.write(f" {operators[node.op]} environment.compare_arg(")
        self.visit(node.expr, frame)
        self.write(")")

    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:
        self.write("environment.checked_join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class TemplateNamespace(jinja2.utils.Namespace):
    """jinja's `namespace()`, refusing underscore-prefixed names so a template cannot plant dunder attributes."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # same signature trick as jinja's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            TemplateNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        TemplateNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"chat templates cannot store the underscore-prefixed attribute {name!r} on a namespace")


class TemplateDict:
    """`dict(...)` / `dict.fromkeys(...)` for templates, without exposing the `dict` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


def strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


__all__ = ["BudgetCodeGenerator", "TemplateDict", "TemplateNamespace", "strftime_now"]
