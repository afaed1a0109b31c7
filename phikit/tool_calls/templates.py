"""Chat templates phikit ships, and whether a template shows the model any tools."""

from __future__ import annotations

from importlib import resources

import jinja2
from jinja2 import meta, nodes

BUILTIN_TEMPLATES = {"phi4-mini-tools": "phi4_mini_tools.jinja"}


def builtin_template(name: str) -> str:
    """The text of a template phikit ships (`--chat-template phi4-mini-tools`)."""
    if name not in BUILTIN_TEMPLATES:
        raise ValueError(f"no built-in chat template {name!r}; phikit ships {sorted(BUILTIN_TEMPLATES)}")
    return (resources.files("phikit") / "chat_templates" / BUILTIN_TEMPLATES[name]).read_text(encoding="utf-8")


def template_reads_tools(template: str) -> bool:
    """True when the Jinja template reads the `tools` variable or a message's `tools` key (`message['tools']`,
    `message.tools`, `message.get('tools')`): a template that does neither never shows the model its tools.
    A template that does not compile raises jinja2.TemplateSyntaxError."""
    if not template:
        return False
    tree = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(template)
    if "tools" in meta.find_undeclared_variables(tree):
        return True
    for node in tree.find_all((nodes.Getitem, nodes.Getattr, nodes.Call)):
        if isinstance(node, nodes.Getitem):
            key = node.arg.value if isinstance(node.arg, nodes.Const) else None
        elif isinstance(node, nodes.Getattr):
            key = node.attr
        else:  # message.get('tools')
            getter = isinstance(node.node, nodes.Getattr) and node.node.attr == "get"
            key = node.args[0].value if getter and node.args and isinstance(node.args[0], nodes.Const) else None
        if key == "tools":
            return True
    return False
