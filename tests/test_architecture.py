"""Issue 13's acceptance rules, checked on the source of ``src/tilecast`` (AST only: nothing is imported).

- no import circles between tilecast modules (module-level and deferred imports alike, ``TYPE_CHECKING`` imports
  aside; importing ``a.b.c`` also runs the package ``a.b``);
- no name beginning with ``_`` imported from another tilecast module, and no ``_attribute`` of another object read;
- no module over 450 lines, no function over 80 lines, no function outside ``tilecast/cli/`` with more than 12
  parameters (``self``/``cls`` not counted);
- no ``hasattr``/``getattr`` probing of runtimes, sources or sinks in ``runners/``, ``job.py`` and ``prediction.py``:
  optional abilities are declared on the base class or checked with a ``runtime_checkable`` protocol.

Each failure lists every offender with its file and line, so one run shows all the work left.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "tilecast"

MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
MAX_PARAMETERS = 12

# Folders/modules where getattr/hasattr must not probe runtimes, sources or sinks (paths relative to src/tilecast).
PROBE_SCOPE = ("runners/", "job.py", "prediction.py")
# Legitimate getattr/hasattr uses there, on objects that are not ours: (path, attribute name) -> why.
# Dunder attributes (``__qualname__``, ``__module__`` of user callables) are always allowed.
PROBE_ALLOWED = {
    ("runners/dask.py", "dashboard_link"): "distributed.Client: present only when a dashboard runs",
}
# Underscore attributes that are public API of the standard library (namedtuple's methods).
PRIVATE_ATTRIBUTES_ALLOWED = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    source: str
    tree: ast.Module
    type_checking: set[int] = field(default_factory=set)

    @property
    def rel(self) -> str:
        return self.path.relative_to(PACKAGE).as_posix()

    def where(self, node: ast.AST) -> str:
        return f"src/tilecast/{self.rel}:{node.lineno}"


def _load() -> dict[str, Module]:
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        source = path.read_text()
        tree = ast.parse(source, filename=str(path))
        mod = Module(".".join(parts), path, is_package, source, tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                for stmt in node.body:  # the else branch runs
                    mod.type_checking.update(id(n) for n in ast.walk(stmt))
        mods[mod.name] = mod
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


MODULES = _load()


def _resolve(mod: Module, node: ast.ImportFrom) -> str | None:
    if node.level == 0:
        return node.module
    base = mod.name.split(".")
    if not mod.is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(mod: Module):
    """``(target module, imported name or None, node)`` for every tilecast import outside ``TYPE_CHECKING``."""
    for node in ast.walk(mod.tree):
        if id(node) in mod.type_checking:
            continue
        if isinstance(node, ast.ImportFrom):
            target = _resolve(mod, node)
            if target and (target == "tilecast" or target.startswith("tilecast.")):
                for alias in node.names:
                    yield target, alias.name, node
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "tilecast" or alias.name.startswith("tilecast."):
                    yield alias.name, None, node


def import_graph() -> dict[str, dict[str, list[str]]]:
    """``{importer: {imported: [where, ...]}}``, with the packages each import runs."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for mod in MODULES.values():
        for target, name, node in _imports(mod):
            full = f"{target}.{name}" if name else target
            direct = full if full in MODULES else target
            hops = [(direct, mod.where(node))]
            # Importing a.b.c runs the packages a.b (and a) first, except the ones this module already lives in.
            parts = direct.split(".")
            for i in range(2, len(parts)):
                package = ".".join(parts[:i])
                if package in MODULES and not mod.name.startswith(package + "."):
                    hops.append((package, f"{mod.where(node)} (runs the package of {direct})"))
            for dest, where in hops:
                if dest != mod.name and dest in MODULES and where not in graph[mod.name][dest]:
                    graph[mod.name][dest].append(where)
    return graph


def strongly_connected(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); the components of more than one module, sorted."""
    nodes = sorted(set(graph) | {b for targets in graph.values() for b in targets})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)

    for root in nodes:
        if root in index:
            continue
        visit(root)
        work = [(root, iter(sorted(graph.get(root, {}))))]
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    visit(w)
                    work.append((w, iter(sorted(graph.get(w, {})))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return sorted(out)


def _functions():
    for mod in MODULES.values():
        for node in ast.walk(mod.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield mod, node


def _fail(title: str, offenders: list[str]) -> None:
    if offenders:
        pytest.fail(f"{title} ({len(offenders)}):\n  " + "\n  ".join(offenders), pytrace=False)


# --- the checks --------------------------------------------------------------------------------------------------


def test_the_source_is_found():
    assert {"tilecast", "tilecast.model", "tilecast.plan", "tilecast.runners.local"} <= set(MODULES)


def test_no_import_cycles():
    graph = import_graph()
    offenders = []
    for comp in strongly_connected(graph):
        members = set(comp)
        edges = [f"    {a} -> {b}  ({'; '.join(graph[a][b])})" for a in comp for b in sorted(graph[a]) if b in members]
        offenders.append("cycle among " + ", ".join(comp) + ":\n" + "\n".join(edges))
    _fail("modules that import each other (directly or through others)", offenders)


def test_the_checks_can_fail():
    """The graph code can fail: a made-up circle is found, a chain is not; relative imports resolve."""
    circle = {"x.a": {"x.b": ["l1"]}, "x.b": {"x.c": ["l2"]}, "x.c": {"x.a": ["l3"]}, "x.d": {"x.a": ["l4"]}}
    assert strongly_connected(circle) == [["x.a", "x.b", "x.c"]]
    assert strongly_connected({"x.a": {"x.b": ["l1"]}, "x.b": {"x.c": ["l2"]}}) == []
    fake = Module("tilecast.a.b", PACKAGE / "a" / "b.py", False, "", ast.parse("from ..c import d"))
    assert _resolve(fake, fake.tree.body[0]) == "tilecast.c"
    package = Module("tilecast.a", PACKAGE / "a" / "__init__.py", True, "", ast.parse("from .b import c"))
    assert _resolve(package, package.tree.body[0]) == "tilecast.a.b"
    graph = import_graph()
    assert "tilecast.plan" in graph["tilecast.model"], "model.py imports plan.py: the graph must show it"
    assert not graph.get("tilecast.plan", {}).get("tilecast"), "plan.py does not import the package"


def test_no_private_names_imported_from_other_modules():
    offenders = []
    for mod in MODULES.values():
        for target, name, node in _imports(mod):
            if name is None or not name.startswith("_") or name.startswith("__"):
                continue
            if f"{target}.{name}" in MODULES:  # a private module (tilecast._extras) is package-internal
                continue
            offenders.append(f"{mod.where(node)}: {mod.name} imports {name} from {target}")
    _fail("private names imported from another tilecast module (make them public or move them)", sorted(offenders))


def test_no_private_attributes_of_other_objects():
    offenders = []
    for mod in MODULES.values():
        for node in ast.walk(mod.tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
                continue
            if node.attr in PRIVATE_ATTRIBUTES_ALLOWED:
                continue
            value = node.value
            if isinstance(value, ast.Name) and value.id in ("self", "cls"):
                continue
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super":
                continue
            offenders.append(f"{mod.where(node)}: {ast.unparse(node)}")
    _fail("private attributes read on another object (declare them in the object's contract)", sorted(offenders))


def test_no_long_modules():
    offenders = [
        f"src/tilecast/{m.rel}: {n} lines"
        for m in MODULES.values()
        if (n := len(m.source.splitlines())) > MAX_MODULE_LINES
    ]
    _fail(f"modules over {MAX_MODULE_LINES} lines", offenders)


def test_no_long_functions():
    offenders = [
        f"{mod.where(fn)}: {mod.name}.{fn.name}, {n} lines"
        for mod, fn in _functions()
        if (n := fn.end_lineno - fn.lineno + 1) > MAX_FUNCTION_LINES
    ]
    _fail(f"functions over {MAX_FUNCTION_LINES} lines", offenders)


def parameter_count(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names) + (a.vararg is not None) + (a.kwarg is not None)


def test_no_function_with_too_many_parameters():
    offenders = [
        f"{mod.where(fn)}: {mod.name}.{fn.name}, {n} parameters"
        for mod, fn in _functions()
        if not (mod.name == "tilecast.cli" or mod.name.startswith("tilecast.cli."))
        and (n := parameter_count(fn)) > MAX_PARAMETERS
    ]
    _fail(
        f"functions outside tilecast/cli/ with more than {MAX_PARAMETERS} parameters (pass a value object)", offenders
    )


def test_no_capability_probes_in_runners_job_and_prediction():
    offenders = []
    for mod in MODULES.values():
        if not mod.rel.startswith(PROBE_SCOPE):
            continue
        for node in ast.walk(mod.tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if node.func.id not in ("hasattr", "getattr") or len(node.args) < 2:
                continue
            attr = node.args[1]
            name = attr.value if isinstance(attr, ast.Constant) and isinstance(attr.value, str) else None
            if name and (name.startswith("__") or (mod.rel, name) in PROBE_ALLOWED):
                continue
            offenders.append(f"{mod.where(node)}: {ast.unparse(node)}")
    _fail(
        "getattr/hasattr probes (declare the ability on the base class with a default, or use a runtime_checkable "
        "Protocol; a use on a third-party object goes into PROBE_ALLOWED with the reason)",
        sorted(offenders),
    )
