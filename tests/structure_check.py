"""Static structure checks for a package laid out like tlkit (root package + `<root>.tasks` registry).

Everything is read from the source with `ast`; nothing under the package is imported. Every import
statement counts, wherever it is (module level, inside functions and methods, under `if TYPE_CHECKING`),
and so do `importlib.import_module("...")` / `__import__("...")` calls with a constant name.

How an import is resolved (the thing it imports):
  import a.b.c                  -> a.b.c
  from X import y               -> X.y when X.y is a module or package (a .py file or a directory), else X
                                   (y is then a name taken from X: a function, a class, a re-export)
  from . import y / from ..m    -> resolved against the importing module first
For import cycles, a `from X import submodule` also counts as importing X (the package's __init__ runs
first), exactly as the project's stop hook (shared/hooks/structure.py) counts it; a cycle is a strongly
connected component of more than one module in that graph.

Task packages: `<root>.tasks.<name>` and everything below it, for every <name> except `base`;
`<root>.tasks` itself is the registry and `<root>.tasks.base` the base task class. Generic modules are
everything outside `<root>.tasks`.

Rules (see `report`):
  cycles                  import cycles between modules of the package
  generic_imports_task    a generic module importing a task package
  task_imports_task       a task package importing another task package
  long_functions          functions, methods and nested functions longer than MAX_FUNCTION_LINES
                          (counted from the `def` line to the last line, as the stop hook counts)
  task_name_comparisons   ==, !=, in, not in, is, <, ... or a `case` pattern against a task name,
                          outside `<root>.tasks`; the operand may be a literal, a tuple/list/set/dict
                          literal, set()/frozenset()/tuple() of one, or a name assigned such a literal
  private_imports         `from pkg.a import _x` (or `a._x` through an imported module) in another
                          module, and a private module `pkg.p._m` imported from outside `pkg.p`
  keras_src_imports       anything from keras.src (or another private keras module such as keras._tf_keras),
                          imported or reached as an attribute of keras
  layer_violations        an import pointing up the layers in LAYERS (direct imports only)
  unresolved_imports      an import of a module of the package that does not exist, or of a name its module
                          does not bind at top level (skipped for a module with __getattr__ or a star import)

Run `python tests/structure_check.py [PKG_DIR]` for the report on a tree.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

MAX_FUNCTION_LINES = 80
TASKS = "tasks"
BASE = "base"
# Task names checked even when the registry does not list them (yet); a superset of the stop hook's list.
FIXED_TASK_NAMES = frozenset({"classification", "segmentation", "multilabel", "multi_label", "detection"})
# The arrows point down only: a module may import its own layer or any layer below it, never one above.
# Keys are the first component below the root package; modules not named here are not constrained.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"cli"}),
    frozenset({"train", "exporting", "evaluation", "prediction", "report", "inspection", "extraction"}),
    frozenset({TASKS}),
    frozenset({"data", "models"}),
    frozenset({"recipe", "runs", "errors"}),
)
_DYNAMIC_IMPORTERS = {"import_module", "__import__"}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@dataclass(frozen=True)
class Import:
    importer: str  # the module whose source holds the statement
    module: str  # absolute name of the module it imports (see the module docstring)
    name: str | None  # the attribute taken from `module` by `from module import name`; None for a module
    kind: str  # "import" | "from" | "package" (the package a from-import of a submodule runs) | "dynamic"
    where: str  # "tlkit/train.py:133 (_train)"
    text: str  # the statement, as written


@dataclass(frozen=True)
class Function:
    path: str
    qualname: str
    line: int
    length: int

    def __str__(self) -> str:
        return f"{self.path}:{self.qualname}:{self.length}"


@dataclass(frozen=True)
class Comparison:
    module: str
    where: str
    strings: frozenset[str]  # the string constants on either side (or in the case pattern)
    text: str


@dataclass(frozen=True)
class Attribute:
    """`alias.attr...` where `alias` is bound to a module by an import: the module and the attribute reached."""

    importer: str
    module: str
    attr: str
    where: str
    text: str


@dataclass
class SourceModule:
    name: str
    path: Path
    rel: str  # path relative to the root package's parent, for reports
    is_package: bool
    tree: ast.Module


@dataclass(repr=False)
class Analysis:
    root_dir: Path
    root: str = ""
    modules: dict[str, SourceModule] = field(default_factory=dict)
    namespaces: set[str] = field(default_factory=set)  # directories without __init__.py
    imports: list[Import] = field(default_factory=list)
    functions: list[Function] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    attributes: list[Attribute] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # files that do not parse

    def __repr__(self) -> str:
        return f"Analysis({self.root_dir}: {len(self.modules)} modules, {len(self.imports)} imports)"

    # ------------------------------------------------------------------ names

    def known(self, name: str) -> bool:
        return name in self.modules or name in self.namespaces

    def is_internal(self, name: str) -> bool:
        return name == self.root or name.startswith(self.root + ".")

    def in_tasks(self, name: str) -> bool:
        reg = f"{self.root}.{TASKS}"
        return name == reg or name.startswith(reg + ".")

    def task_of(self, name: str) -> str | None:
        """The task package a module belongs to (None: the registry, base, or a generic module)."""
        prefix = f"{self.root}.{TASKS}."
        if not name.startswith(prefix):
            return None
        head = name[len(prefix) :].split(".")[0]
        return None if head == BASE else head

    def owner_module(self, name: str) -> str | None:
        """The longest prefix of `name` that is a source module of the package (what Python executes)."""
        while name and name not in self.modules:
            name = name.rpartition(".")[0]
        return name or None

    def layer_of(self, name: str) -> int | None:
        if not self.is_internal(name) or name == self.root:
            return None
        head = name[len(self.root) + 1 :].split(".")[0]
        for i, layer in enumerate(LAYERS):
            if head in layer:
                return i
        return None

    def rel_of(self, module: str) -> str:
        return self.modules[module].rel if module in self.modules else module


def analyse(root_dir: str | Path) -> Analysis:
    """Read every .py file under root_dir (a package directory) and collect imports, functions, comparisons."""
    root_dir = Path(root_dir).resolve()
    an = Analysis(root_dir=root_dir, root=root_dir.name)
    base = root_dir.parent
    for d in [root_dir, *sorted(p for p in root_dir.rglob("*") if p.is_dir())]:
        if "__pycache__" in d.parts or any(part.startswith(".") for part in d.relative_to(base).parts):
            continue
        if not (d / "__init__.py").exists():
            an.namespaces.add(".".join(d.relative_to(base).parts))
    for f in sorted(root_dir.rglob("*.py")):
        rel = f.relative_to(base)
        if "__pycache__" in rel.parts or any(part.startswith(".") for part in rel.parts):
            continue
        parts = rel.with_suffix("").parts
        is_pkg = f.name == "__init__.py"
        name = ".".join(parts[:-1] if is_pkg else parts)
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"), str(f))
        except SyntaxError as exc:
            an.errors.append(f"{rel}:{exc.lineno}: {exc.msg}")
            continue
        an.modules[name] = SourceModule(name, f, rel.as_posix(), is_pkg, tree)
    for mod in an.modules.values():
        _ModuleVisitor(an, mod).run()
    return an


def _resolve_relative(an: Analysis, mod: SourceModule, level: int, module: str | None) -> str:
    if not level:
        return module or ""
    parts = mod.name.split(".")
    keep = len(parts) - level + (1 if mod.is_package else 0)
    base = parts[: max(keep, 0)]
    return ".".join(base + ([module] if module else []))


def _literal_strings(node: ast.AST, consts: dict[str, frozenset[str]]) -> set[str]:
    """String constants a comparison operand stands for: a literal, a collection literal, or a name bound to one."""
    if isinstance(node, ast.Constant):
        return {node.value} if isinstance(node.value, str) else set()
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(_literal_strings(e, consts) for e in node.elts)) if node.elts else set()
    if isinstance(node, ast.Dict):
        return set().union(*(_literal_strings(k, consts) for k in node.keys if k is not None)) if node.keys else set()
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {"set", "frozenset", "tuple", "list"}:
        return set().union(*(_literal_strings(a, consts) for a in node.args)) if node.args else set()
    if isinstance(node, ast.Name):
        return set(consts.get(node.id, ()))
    return set()


class _ModuleVisitor(ast.NodeVisitor):
    def __init__(self, an: Analysis, mod: SourceModule):
        self.an, self.mod = an, mod
        self.scope: list[str] = []
        self.aliases: dict[str, str] = {}  # local name -> module it is bound to
        self.consts: dict[str, frozenset[str]] = {}  # local name -> string constants of the literal assigned to it

    def run(self) -> None:
        # First pass (order-independent): names bound to modules by imports, names bound to string literals.
        for node in ast.walk(self.mod.tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        self.aliases[a.asname] = a.name
                    else:
                        top = a.name.split(".")[0]
                        self.aliases[top] = top
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_relative(self.an, self.mod, node.level, node.module)
                for a in node.names:
                    full = f"{base}.{a.name}"
                    if self.an.known(full) or not self.an.is_internal(full):
                        # an external `from a import b` may bind a module too (from keras import src)
                        self.aliases[a.asname or a.name] = full
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                strings = _literal_strings(node.value, {})
                if strings:
                    for t in targets:
                        if isinstance(t, ast.Name):
                            self.consts[t.id] = self.consts.get(t.id, frozenset()) | frozenset(strings)
        self.visit(self.mod.tree)

    # ------------------------------------------------------------------ helpers

    def where(self, node: ast.AST) -> str:
        return f"{self.mod.rel}:{node.lineno} ({'.'.join(self.scope) or '<module>'})"

    def add(self, module: str, name: str | None, kind: str, node: ast.AST) -> None:
        text = ast.unparse(node).split("\n")[0][:120]
        self.an.imports.append(Import(self.mod.name, module, name, kind, self.where(node), text))

    # ------------------------------------------------------------------ scopes and functions

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        qual = ".".join([*self.scope, node.name])
        self.an.functions.append(Function(self.mod.rel, qual, node.lineno, node.end_lineno - node.lineno + 1))
        for d in node.decorator_list:
            self.visit(d)
        self.visit(node.args)
        if node.returns is not None:
            self.visit(node.returns)
        self.scope.append(node.name)
        for stmt in node.body:
            self.visit(stmt)
        self.scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for d in [*node.decorator_list, *node.bases, *node.keywords]:
            self.visit(d)
        self.scope.append(node.name)
        for stmt in node.body:
            self.visit(stmt)
        self.scope.pop()

    # ------------------------------------------------------------------ imports

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.add(a.name, None, "import", node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _resolve_relative(self.an, self.mod, node.level, node.module)
        runs_package = False
        for a in node.names:
            full = f"{base}.{a.name}"
            if a.name != "*" and self.an.known(full):
                self.add(full, None, "from", node)
                runs_package = True
            else:
                self.add(base, a.name, "from", node)
        if runs_package:
            self.add(base, None, "package", node)

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        fname = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        if (
            fname in _DYNAMIC_IMPORTERS
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            self.add(node.args[0].value, None, "dynamic", node)
        self.generic_visit(node)

    # ------------------------------------------------------------------ attributes reached through an imported module

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain: list[str] = []
        cur: ast.AST = node
        while isinstance(cur, ast.Attribute):
            chain.append(cur.attr)
            cur = cur.value
        if not (isinstance(cur, ast.Name) and cur.id in self.aliases):
            self.generic_visit(node)
            return
        module = self.aliases[cur.id]
        text = ast.unparse(node)[:120]
        for attr in reversed(chain):
            self.an.attributes.append(Attribute(self.mod.name, module, attr, self.where(node), text))
            nxt = f"{module}.{attr}"
            if self.an.is_internal(module) and not self.an.known(nxt):
                break  # a value (function, class, constant) of an internal module: stop there
            if is_private(attr):
                break
            module = nxt

    # ------------------------------------------------------------------ comparisons

    def visit_Compare(self, node: ast.Compare) -> None:
        strings: set[str] = set()
        for operand in [node.left, *node.comparators]:
            strings |= _literal_strings(operand, self.consts)
        if strings:
            self.an.comparisons.append(
                Comparison(self.mod.name, self.where(node), frozenset(strings), ast.unparse(node)[:120])
            )
        self.generic_visit(node)

    def visit_Match(self, node: ast.Match) -> None:
        for case in node.cases:
            strings = {
                p.value.value
                for p in ast.walk(case.pattern)
                if isinstance(p, ast.MatchValue) and isinstance(p.value, ast.Constant) and isinstance(p.value.value, str)
            }
            if strings:
                text = f"match {ast.unparse(node.subject)}: case {ast.unparse(case.pattern)}"[:120]
                self.an.comparisons.append(Comparison(self.mod.name, self.where(case.pattern), frozenset(strings), text))
        self.generic_visit(node)


# ====================================================================== rules


def import_graph(an: Analysis) -> dict[str, dict[str, list[Import]]]:
    """importer -> imported module -> the statements that make the edge (modules of the package only)."""
    graph: dict[str, dict[str, list[Import]]] = {m: {} for m in an.modules}
    for imp in an.imports:
        if not an.is_internal(imp.module):
            continue
        target = an.owner_module(imp.module)
        if target and target != imp.importer:
            graph[imp.importer].setdefault(target, []).append(imp)
    return graph


def strongly_connected(graph: dict[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; only the components of more than one node, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    advanced = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
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


def _shortest_cycle(graph: dict[str, dict[str, list[Import]]], members: set[str], start: str) -> list[str]:
    prev: dict[str, str] = {}
    queue = deque([start])
    seen = {start}
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v]):
            if w not in members:
                continue
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
            if w not in seen:
                seen.add(w)
                prev[w] = v
                queue.append(w)
    return [start]


def _edge_text(imp: Import) -> str:
    text = f"{imp.where}: {imp.text}"
    if imp.kind == "package":
        text += (
            f"  (imports the package {imp.module} itself: `from {imp.module} import <submodule>` runs its"
            f" __init__ first; `from {imp.module}.<submodule> import ...` does not)"
        )
    return text


def cycles(an: Analysis) -> list[dict]:
    """Each cycle: its modules, one shortest loop through them, and every import inside the component."""
    graph = import_graph(an)
    found = []
    for comp in strongly_connected({m: set(d) for m, d in graph.items()}):
        members = set(comp)
        loop = _shortest_cycle(graph, members, comp[0])
        steps = [f"{a} -> {b} [{_edge_text(graph[a][b][0])}]" for a, b in zip(loop, loop[1:])]
        edges = sorted({_edge_text(imp) for a in comp for b, imps in graph[a].items() if b in members for imp in imps})
        found.append({"modules": comp, "loop": steps, "imports": edges})
    return found


def _fmt(imp: Import, what: str) -> str:
    return f"{imp.where}: {imp.text}  [{what}]"


def generic_imports_task(an: Analysis) -> list[str]:
    out = set()
    for imp in an.imports:
        if an.in_tasks(imp.importer) or imp.importer == f"{an.root}.{TASKS}":
            continue
        task = an.task_of(imp.module)
        if task is not None:
            out.add(_fmt(imp, f"{imp.importer} imports task package {an.root}.{TASKS}.{task}"))
    return sorted(out)


def task_imports_task(an: Analysis) -> list[str]:
    out = set()
    for imp in an.imports:
        mine, theirs = an.task_of(imp.importer), an.task_of(imp.module)
        if mine is not None and theirs is not None and mine != theirs:
            out.add(_fmt(imp, f"task {mine} imports task {theirs}"))
    return sorted(out)


def long_functions(an: Analysis, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    return [str(f) for f in sorted(an.functions, key=lambda f: (f.path, f.line)) if f.length > limit]


def task_name_comparisons(an: Analysis, names: Iterable[str]) -> list[str]:
    names = set(names)
    out = []
    for c in an.comparisons:
        hit = c.strings & names
        if hit and not an.in_tasks(c.module):
            out.append(f"{c.where}: {c.text}  [task name {', '.join(sorted(hit))}]")
    return out


def _private_module_owner(name: str) -> str | None:
    """For a.b._c.d: the package that owns the private module (a.b); None when no segment is private."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if i and is_private(part):
            return ".".join(parts[:i])
    return None


def private_imports(an: Analysis) -> list[str]:
    out = set()
    for imp in an.imports:
        if not an.is_internal(imp.module) or imp.kind == "package":
            continue
        if imp.name is not None and is_private(imp.name) and imp.module != imp.importer:
            out.add(_fmt(imp, f"private name {imp.module}.{imp.name}"))
        owner = _private_module_owner(imp.module)
        if owner is not None and not (imp.importer == owner or imp.importer.startswith(owner + ".")):
            out.add(_fmt(imp, f"private module {imp.module} from outside {owner}"))
    for at in an.attributes:
        if an.is_internal(at.module) and is_private(at.attr) and at.module != at.importer:
            full = f"{at.module}.{at.attr}"
            if an.known(full):
                owner = at.module
                if at.importer == owner or at.importer.startswith(owner + "."):
                    continue
            out.add(f"{at.where}: {at.text}  [private name {full}]")
    return sorted(out)


def _is_keras_private(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "keras" and len(parts) > 1 and (parts[1] == "src" or is_private(parts[1]))


def keras_src_imports(an: Analysis) -> list[str]:
    out = set()
    for imp in an.imports:
        full = f"{imp.module}.{imp.name}" if imp.name and imp.name != "*" else imp.module
        if _is_keras_private(full):
            out.add(_fmt(imp, "private keras API"))
    for at in an.attributes:
        if _is_keras_private(f"{at.module}.{at.attr}"):
            out.add(f"{at.where}: {at.text}  [private keras API]")
    return sorted(out)


def layer_violations(an: Analysis) -> list[str]:
    out = set()
    for imp in an.imports:
        if imp.kind == "package":
            continue
        src, dst = an.layer_of(imp.importer), an.layer_of(imp.module)
        if src is not None and dst is not None and dst < src:
            out.add(_fmt(imp, f"layer {src} ({imp.importer}) imports up into layer {dst} ({imp.module})"))
    return sorted(out)


def _bound_names(target: ast.AST) -> set[str]:
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, (ast.Tuple, ast.List)):
        return set().union(*(_bound_names(e) for e in target.elts)) if target.elts else set()
    if isinstance(target, ast.Starred):
        return _bound_names(target.value)
    return set()


def top_level_names(tree: ast.Module) -> set[str] | None:
    """The names a module binds at top level (inside if/try/with/for blocks too); None when it can hand out
    names it does not bind (a module __getattr__, a star import)."""
    names: set[str] = set()
    dynamic = False

    def visit(stmts: list[ast.stmt]) -> None:
        nonlocal dynamic
        for s in stmts:
            if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(s.name)
                dynamic |= s.name == "__getattr__"
            elif isinstance(s, ast.Import):
                names.update(a.asname or a.name.split(".")[0] for a in s.names)
            elif isinstance(s, ast.ImportFrom):
                dynamic |= any(a.name == "*" for a in s.names)
                names.update(a.asname or a.name for a in s.names)
            elif isinstance(s, ast.Assign):
                for t in s.targets:
                    names.update(_bound_names(t))
            elif isinstance(s, (ast.AnnAssign, ast.AugAssign)):
                names.update(_bound_names(s.target))
            elif isinstance(s, getattr(ast, "TypeAlias", ())):
                names.update(_bound_names(s.name))
            elif isinstance(s, (ast.For, ast.AsyncFor)):
                names.update(_bound_names(s.target))
                visit(s.body), visit(s.orelse)
            elif isinstance(s, (ast.With, ast.AsyncWith)):
                for item in s.items:
                    if item.optional_vars is not None:
                        names.update(_bound_names(item.optional_vars))
                visit(s.body)
            elif isinstance(s, (ast.If, ast.While)):
                visit(s.body), visit(s.orelse)
            elif isinstance(s, (ast.Try, getattr(ast, "TryStar", ast.Try))):
                visit(s.body), visit(s.orelse), visit(s.finalbody)
                for h in s.handlers:
                    if h.name:
                        names.add(h.name)
                    visit(h.body)
            for node in ast.walk(s) if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else ():
                if isinstance(node, ast.NamedExpr):
                    names.update(_bound_names(node.target))

    visit(tree.body)
    return None if dynamic else names


def unresolved_imports(an: Analysis) -> list[str]:
    out = set()
    cache: dict[str, set[str] | None] = {}
    for imp in an.imports:
        if not an.is_internal(imp.module) or imp.kind == "package":
            continue
        if not an.known(imp.module):
            out.add(_fmt(imp, f"no module {imp.module}"))
            continue
        if imp.name is None or imp.name == "*":
            continue
        if imp.module not in an.modules:  # a directory without __init__.py binds no names
            out.add(_fmt(imp, f"{imp.module} (a directory without __init__.py) has no {imp.name}"))
            continue
        if imp.module not in cache:
            cache[imp.module] = top_level_names(an.modules[imp.module].tree)
        names = cache[imp.module]
        if names is not None and imp.name not in names:
            out.add(_fmt(imp, f"{imp.module} has no top-level name {imp.name}"))
    return sorted(out)


def static_task_names(an: Analysis) -> set[str]:
    """Task names visible in the source of <root>.tasks without importing it: Task(name=...) / register_task(...)
    keywords, `name = "..."` in classes deriving from a *Task class, and the task package directories."""
    names: set[str] = set()
    prefix = f"{an.root}.{TASKS}."
    for m in [*an.modules, *an.namespaces]:
        if m.startswith(prefix):
            head = m[len(prefix) :].split(".")[0]
            if head != BASE and not head.startswith("_"):
                names.add(head)
    for mod in an.modules.values():
        if not an.in_tasks(mod.name):
            continue
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.Call):
                f = node.func
                fname = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                if fname.endswith("Task") or fname == "register_task":
                    for kw in node.keywords:
                        if kw.arg == "name" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                            names.add(kw.value.value)
            elif isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b).split(".")[-1] for b in node.bases]
                if any(b.endswith("Task") for b in bases):
                    for stmt in node.body:
                        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
                        value = getattr(stmt, "value", None)
                        if any(isinstance(t, ast.Name) and t.id == "name" for t in targets) and isinstance(value, ast.Constant) and isinstance(value.value, str):
                            names.add(value.value)
    return names


def report(an: Analysis, task_names: Iterable[str] | None = None) -> dict[str, list]:
    names = set(FIXED_TASK_NAMES) | static_task_names(an) | set(task_names or ())
    return {
        "syntax_errors": an.errors,
        "cycles": cycles(an),
        "generic_imports_task": generic_imports_task(an),
        "task_imports_task": task_imports_task(an),
        "long_functions": long_functions(an),
        "task_name_comparisons": task_name_comparisons(an, names),
        "private_imports": private_imports(an),
        "keras_src_imports": keras_src_imports(an),
        "layer_violations": layer_violations(an),
        "unresolved_imports": unresolved_imports(an),
    }


if __name__ == "__main__":
    pkg_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "tlkit"
    an = analyse(pkg_dir)
    print(f"{len(an.modules)} modules, {len(an.imports)} imports, {len(an.functions)} functions")
    for rule, found in report(an).items():
        print(f"\n== {rule}: {len(found)}")
        for item in found:
            if isinstance(item, dict):
                print("  cycle: " + ", ".join(item["modules"]))
                for step in item["loop"]:
                    print("    " + step)
            else:
                print("  " + item)
