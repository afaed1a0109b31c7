"""The layout's rules, read from the source: the import graph has no cycles (imports inside functions included),
the reference model imports no backend, kernel, weight format or loader, `ops` imports nothing of phikit's above
it, and no source file passes 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "phikit"
MAX_LINES = 500
# What each layer may import from phikit (prefixes of module names). Imports only go down:
#   errors, ops, cpu  <-  config (config, config_files, config_checks, rope_config, arch)  <-  model  <-  formats  <-  backends
#   <-  weights  <-  generation  <-  hf  <-  pipelines, training, CLIs.  tokenizer needs only errors and the hub.
# The model is device-agnostic reference PyTorch: it reaches kernels only through the ops table a backend binds;
# backends are found by name (`ops/backends.py`), so nothing below them imports one.
CONFIG = ("phikit.config", "phikit.config_files", "phikit.config_checks", "phikit.rope_config", "phikit.arch",
          "phikit.errors")
MAY_IMPORT = {
    "phikit.errors": (),
    "phikit.ops": ("phikit.ops",),
    "phikit.cpu": ("phikit.cpu",),
    **{name: CONFIG + ("phikit.ops",) for name in CONFIG},
    "phikit.model": ("phikit.model", "phikit.ops", "phikit.arch", "phikit.errors"),
    "phikit.formats": ("phikit.formats", "phikit.cpu", "phikit.errors"),
    "phikit.backends": ("phikit.backends", "phikit.cpu", "phikit.ops", "phikit.model", "phikit.formats"),
    "phikit.tokenizer": ("phikit.tokenizer", "phikit.hub", "phikit.errors"),
    # tensor parallelism: the sharding plan over the reference model's modules, the collectives
    "phikit.parallel": ("phikit.parallel", "phikit.model", "phikit.ops", "phikit.errors"),
    "phikit.weights": ("phikit.weights", "phikit.cpu", "phikit.ops", "phikit.formats", "phikit.hub",
                       "phikit.generation_config", "phikit.parallel") + CONFIG,
    # constrained decoding on llguidance: self-contained (it reads a tokenizer through its public methods)
    "phikit.structured": ("phikit.structured", "phikit.tokenizer"),
    # tool calling: the templates phikit ships and the call parser (it reads a tokenizer through its public methods)
    "phikit.tool_calls": ("phikit.tool_calls",),
    "phikit.generation": ("phikit.generation", "phikit.model", "phikit.generation_config", "phikit.outputs",
                          "phikit.structured"),
    # the serving engine: no HTTP, no loading; it drives a built model through its forward and cache seams (and asks
    # the device's backend, through `ops.backends`, how many rows a decode forward should hold)
    "phikit.engine": ("phikit.engine", "phikit.generation", "phikit.generation_config", "phikit.structured",
                      "phikit.ops"),
    # the HTTP server: over the engine, the tokenizer, and the model classes and weight formats it loads with
    # (ray_serve.py: the bundled model's path)
    "phikit.server": ("phikit.server", "phikit.engine", "phikit.structured", "phikit.tool_calls", "phikit.tokenizer",
                      "phikit.hf", "phikit.parallel", "phikit.bundled",
                      "phikit.formats",
                      "phikit.generation_config", "phikit.errors"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_nodes(tree: ast.AST):
    """Every node of `tree` but those under `if TYPE_CHECKING:` (imports for annotations only, never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *runtime_nodes(child)])
            continue
        yield node
        yield from runtime_nodes(node)


def imports(path: Path) -> set[str]:
    """Every phikit module `path` imports, at any depth of its code (functions included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "phikit")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "phikit":
                target = node.module
            else:
                continue
            found.add(target)
            for alias in node.names:  # `from . import x` may name a module
                if (PACKAGE.parent / (target.replace(".", "/") + "/" + alias.name + ".py")).exists() or (
                        PACKAGE.parent / target.replace(".", "/") / alias.name / "__init__.py").exists():
                    found.add(f"{target}.{alias.name}")
    return {m for m in found if m != name}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        # importing a.b.c runs a/__init__ and a/b/__init__ too: an edge to each package on the way
        targets = set()
        for target in imports(path):
            parts = target.split(".")
            targets.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
        edges[name] = {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    found = cycles(graph())
    assert not found, "import cycles (in-function imports count): " + "; ".join(" <-> ".join(c) for c in found)


def test_each_layer_imports_only_what_it_may() -> None:
    wrong = []
    for name, targets in graph().items():
        for layer, allowed in MAY_IMPORT.items():
            if name == layer or name.startswith(layer + ".") and layer not in CONFIG:
                wrong += [f"{name} imports {t}" for t in sorted(targets)
                          if t != "phikit" and not any(t == a or t.startswith(a + ".") for a in allowed)]
    assert not wrong, "\n".join(wrong)


def test_no_source_file_over_500_lines() -> None:
    long = [f"{p.relative_to(PACKAGE.parent)}: {n}" for p in sorted(PACKAGE.rglob("*"))
            if p.suffix in (".py", ".c", ".h") and (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"files over {MAX_LINES} lines: {long}"
