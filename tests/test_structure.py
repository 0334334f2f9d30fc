"""The shape of tlkit, checked from its source (tests/structure_check.py) and by import-linter.

One test per rule on the real tree, each failing with the offending places; then self-tests that build a
tiny package in tmp_path and prove the checker (and the import-linter contracts in pyproject.toml) catch
each rule. The rules:

  cycles                  no import cycle between tlkit modules, function-level imports included
  generic -> task         a module outside tlkit.tasks imports only the registry (tlkit.tasks) and
                          tlkit.tasks.base, never a task package tlkit.tasks.<name>
  task -> task            a task package never imports another task package
  long functions          no function, method or nested function over 80 lines
  task names              outside tlkit/tasks/ nothing is compared (==, !=, in, not in, ..., match/case)
                          against a task name: the registry's names plus classification, segmentation,
                          multilabel (and the stop hook's multi_label, detection)
  private names           no `from tlkit.a import _x` (nor `a._x`) in another module, no keras.src
  layers                  cli -> api-level -> tasks -> (data, models) -> (recipe, runs, errors), down only
  unresolved imports      every import of a tlkit module names a module and a name that exist
  import-linter           `lint-imports` keeps the contracts in pyproject.toml

Run: `pytest tests/test_structure.py` (a few seconds; the registry's task names come from importing
tlkit.tasks in a subprocess that overlaps the other tests, cached per source tree in .pytest_cache),
or `python tests/structure_check.py` for the whole report.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import tomllib
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import structure_check as sc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "tlkit"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
NAMES_TEST = "test_no_task_name_comparisons_outside_tasks"


def _listing(title: str, items: list[str]) -> str:
    return f"{title} ({len(items)}):\n  " + "\n  ".join(items)


# ====================================================================== the real tree


@pytest.fixture(scope="module")
def tree() -> sc.Analysis:
    return sc.analyse(PKG)


def test_sources_parse(tree):
    assert not tree.errors, _listing("files that do not parse (their imports are not checked)", tree.errors)


def test_no_import_cycles(tree):
    found = sc.cycles(tree)
    lines = []
    for c in found:
        lines.append("cycle: " + ", ".join(c["modules"]))
        lines += ["    " + step for step in c["loop"]]
        lines.append(f"    imports inside this cycle ({len(c['imports'])}):")
        lines += ["      " + e for e in c["imports"]]
    assert not found, _listing("import cycles (function-level imports count)", lines)


def test_generic_modules_do_not_import_task_packages(tree):
    found = sc.generic_imports_task(tree)
    assert not found, _listing("generic modules importing a task package (ask the registry instead)", found)


def test_task_packages_do_not_import_each_other(tree):
    found = sc.task_imports_task(tree)
    assert not found, _listing("task packages importing another task package", found)


def test_no_function_over_80_lines(tree):
    found = sc.long_functions(tree)
    assert not found, _listing(f"functions over {sc.MAX_FUNCTION_LINES} lines (path:function:lines)", found)


def test_no_private_imports_across_modules(tree):
    found = sc.private_imports(tree)
    assert not found, _listing("private names used from another module", found)


def test_no_keras_src_imports(tree):
    found = sc.keras_src_imports(tree)
    assert not found, _listing("keras.src (private keras) used; use the public keras API", found)


def test_layers_point_down(tree):
    found = sc.layer_violations(tree)
    layers = " -> ".join("(" + ", ".join(sorted(layer)) + ")" for layer in sc.LAYERS)
    assert not found, _listing(f"imports pointing up the layers {layers}", found)


def test_internal_imports_resolve(tree):
    found = sc.unresolved_imports(tree)
    assert not found, _listing("imports of tlkit modules or names that do not exist", found)


# ---------------------------------------------------------------------- task names from the registry

_PROBE = "import json, tlkit.tasks as t; print('TLKIT_TASKS=' + json.dumps(sorted(t.TASKS)))"
_probe: dict = {}


def _source_digest() -> str:
    h = hashlib.sha256(sys.executable.encode())
    for f in sorted(PKG.rglob("*.py")):
        if "__pycache__" not in f.parts:
            h.update(f.relative_to(PKG).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


@pytest.fixture(scope="module", autouse=True)
def _registry_probe(request):
    """Import the registry (tensorflow: seconds) in a subprocess from the module's first test on, so that it
    overlaps the other tests; only when the name test is selected and nothing cheaper has the answer."""
    if not any(item.name == NAMES_TEST for item in request.session.items) or "tlkit.tasks" in sys.modules:
        yield
        return
    cache = getattr(request.config, "cache", None)
    digest = _source_digest()
    cached = cache.get("tlkit/structure/registry", None) if cache is not None else None
    if cached and cached.get("digest") == digest:
        _probe["names"] = cached["names"]
        yield
        return
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _PROBE], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _probe.update(proc=proc, digest=digest, cache=cache)
    yield
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def registered_task_names() -> tuple[set[str] | None, str]:
    """The names in tlkit.tasks.TASKS, and where they came from (None: the registry could not be imported)."""
    if "tlkit.tasks" in sys.modules:
        return set(sys.modules["tlkit.tasks"].TASKS), "the registry imported in this process"
    if "names" in _probe:
        return set(_probe["names"]), "the registry (cached for this source tree)"
    proc = _probe.get("proc")
    if proc is None:
        return None, "no registry probe ran"
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    line = next((ln for ln in out.splitlines() if ln.startswith("TLKIT_TASKS=")), None)
    if proc.returncode != 0 or line is None:
        return None, f"`import tlkit.tasks` failed (exit {proc.returncode}): {err.strip()[-600:]}"
    names = json.loads(line.split("=", 1)[1])
    if _probe.get("cache") is not None:
        _probe["cache"].set("tlkit/structure/registry", {"digest": _probe["digest"], "names": names})
    return set(names), "the registry (imported in a subprocess)"


def test_no_task_name_comparisons_outside_tasks(tree, registered_task_names):
    registry, source = registered_task_names
    if registry is None:
        warnings.warn(f"task names from the fixed list and the source only: {source}", stacklevel=1)
    names = set(sc.FIXED_TASK_NAMES) | sc.static_task_names(tree) | (registry or set())
    found = sc.task_name_comparisons(tree, names)
    assert not found, _listing(
        f"comparisons against task names {sorted(names)} outside tlkit/tasks/ (names from {source}); "
        "ask the task object instead",
        found,
    )


# ---------------------------------------------------------------------- import-linter


def _lint(config: Path, cwd: Path, path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(config)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )


def _lint_section() -> dict:
    section = tomllib.loads((REPO / "pyproject.toml").read_text()).get("tool", {}).get("importlinter")
    assert section and section.get("contracts"), "pyproject.toml has no [tool.importlinter] contracts"
    return section


def _module_exists(root: Path, name: str) -> bool:
    rel = Path(*name.split("."))
    return (root / rel).with_suffix(".py").exists() or (root / rel / "__init__.py").exists()


def _toml_value(value) -> str:
    return json.dumps(value)  # strings, lists of strings and booleans: JSON is valid TOML for these


def _write_lint_config(section: dict, path: Path, root: Path) -> list[str]:
    """Write `section` as a config, without modules (named without wildcards) that do not exist under root,
    and without a contract left with nothing to check. Returns what was dropped."""
    dropped = []
    lines = ["[tool.importlinter]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in section.items() if k != "contracts"]
    for contract in section["contracts"]:
        contract = dict(contract)
        for key in ("modules", "source_modules", "forbidden_modules", "containers"):
            if key in contract:
                keep = [m for m in contract[key] if "*" in m or not m.startswith(section["root_package"]) or _module_exists(root, m)]
                dropped += [f"{contract['name']}: {key} {m} (no such module)" for m in contract[key] if m not in keep]
                contract[key] = keep
        modules = contract.get("modules", [])
        vacuous = (
            contract["type"] == "independence" and len(modules) < 2 and not any("*" in m for m in modules)
        ) or (contract["type"] == "forbidden" and not (contract.get("source_modules") and contract.get("forbidden_modules")))
        if vacuous:
            dropped.append(f"contract {contract['name']!r} (nothing left to check)")
            continue
        lines.append("\n[[tool.importlinter.contracts]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in contract.items()]
    path.write_text("\n".join(lines) + "\n")
    return dropped


def test_import_linter_contracts_are_kept(tmp_path):
    if not LINT_IMPORTS.exists():
        pytest.skip(f"import-linter is not installed (no {LINT_IMPORTS}); pip install -e '.[test]'")
    config = tmp_path / "importlinter.toml"
    dropped = _write_lint_config(_lint_section(), config, REPO)
    if dropped:
        warnings.warn("import-linter: skipped " + "; ".join(dropped), stacklevel=1)
    proc = _lint(config, REPO, REPO)
    assert proc.returncode == 0, f"lint-imports exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"


# ====================================================================== self-tests: the checker catches each rule


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Write {relative path: source} under root; returns root/<the first path's top folder>."""
    for rel, src in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(src))
    return root / next(iter(files)).split("/")[0]


def test_self_cycle_through_a_function_level_import(tmp_path):
    pkg = write_tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    from pkg import b\n    return b\n",
        "pkg/b.py": "import pkg.a\n",
        "pkg/c.py": "from pkg.a import f\n",  # imports into the cycle, is not part of it
    })
    found = sc.cycles(sc.analyse(pkg))
    assert [c["modules"] for c in found] == [["pkg.a", "pkg.b"]]
    assert any("pkg/a.py:2 (f)" in step for step in found[0]["loop"])


def test_self_cycle_through_relative_and_dynamic_imports(tmp_path):
    pkg = write_tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "",
        "pkg/sub/x.py": "class C:\n    def m(self):\n        from ..y import g\n",
        "pkg/y.py": "import importlib\ndef g():\n    return importlib.import_module('pkg.sub.x')\n",
    })
    assert [c["modules"] for c in sc.cycles(sc.analyse(pkg))] == [["pkg.sub.x", "pkg.y"]]


def test_self_from_package_import_resolves_submodule_or_package(tmp_path):
    pkg = write_tree(tmp_path, {
        "pkg/__init__.py": "from pkg.c import helper\n",  # a re-export
        "pkg/runs.py": "",
        "pkg/recipe.py": "def load_recipe(): ...\n",
        "pkg/c.py": "def helper(): ...\ndef g():\n    from pkg import helper\n",  # the re-export: imports pkg
        "pkg/d.py": "from pkg import runs\nfrom pkg.recipe import load_recipe\n",
    })
    an = sc.analyse(pkg)
    d = {(i.module, i.name, i.kind) for i in an.imports if i.importer == "pkg.d"}
    assert ("pkg.runs", None, "from") in d  # from pkg import runs: the module pkg.runs
    assert ("pkg.recipe", "load_recipe", "from") in d  # from pkg.recipe import load_recipe: pkg.recipe
    assert not any(m == "pkg.recipe.load_recipe" for m, _, _ in d)
    assert [c["modules"] for c in sc.cycles(an)] == [["pkg", "pkg.c"]]  # from pkg import helper imports pkg


def test_self_no_cycle_in_a_chain(tmp_path):
    pkg = write_tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    import pkg.b\n",
        "pkg/b.py": "from pkg import c\n",
        "pkg/c.py": "import os, json\n",
    })
    assert sc.cycles(sc.analyse(pkg)) == []


TASK_TREE = {
    "pkg/__init__.py": "",
    "pkg/tasks/__init__.py": "from pkg.tasks.base import Task\nTASKS = {}\ndef get_task(name): return TASKS[name]\n",
    "pkg/tasks/base.py": "class Task: ...\n",
    "pkg/tasks/cls/__init__.py": "from pkg.tasks.base import Task\nfrom pkg.tasks.cls import model\n",
    "pkg/tasks/cls/model.py": "def f():\n    from pkg.tasks.seg.losses import dice\n",
    "pkg/tasks/seg/__init__.py": "from pkg.tasks.base import Task\n",
    "pkg/tasks/seg/losses.py": "from ..cls import model\ndef dice(): ...\n",
    "pkg/tasks/empty/.keep": "",  # a task directory without any module yet
    "pkg/train.py": (
        "from pkg.tasks import get_task\nfrom pkg.tasks.base import Task\n"
        "def f():\n    from pkg.tasks.cls import model\n    import pkg.tasks.seg.losses\n"
    ),
    "pkg/report.py": "from pkg.tasks import cls, empty\nimport importlib\nm = importlib.import_module('pkg.tasks.seg')\n",
    "pkg/data.py": "from pkg.tasks import get_task\nfrom pkg.tasks import base\n",
}


def test_self_generic_module_importing_a_task_package(tmp_path):
    found = sc.generic_imports_task(sc.analyse(write_tree(tmp_path, TASK_TREE)))
    places = {f.split(":")[0] + ":" + f.split(":")[1].split()[0] for f in found}
    assert places == {"pkg/train.py:4", "pkg/train.py:5", "pkg/report.py:1", "pkg/report.py:3"}, found
    assert any("pkg.tasks.empty" in f for f in found)  # from pkg.tasks import <task dir without modules>
    assert not any(f.startswith("pkg/data.py") for f in found)  # the registry and base are allowed


def test_self_task_packages_importing_each_other(tmp_path):
    found = sc.task_imports_task(sc.analyse(write_tree(tmp_path, TASK_TREE)))
    assert [f.split(" (")[0] for f in found] == ["pkg/tasks/cls/model.py:2", "pkg/tasks/seg/losses.py:1"], found
    assert "task cls imports task seg" in found[0] and "task seg imports task cls" in found[1]


def test_self_long_functions(tmp_path):
    body80 = "def ok():\n" + "    x = 1\n" * 78 + "    return x\n"  # exactly 80 lines
    body81 = "def too_long():\n" + "    x = 1\n" * 79 + "    return x\n"
    nested = "class C:\n    def m(self):\n        def inner():\n" + "            y = 2\n" * 85 + "        return inner\n"
    pkg = write_tree(tmp_path, {"pkg/__init__.py": "", "pkg/m.py": body80 + body81 + nested})
    found = sc.long_functions(sc.analyse(pkg))
    assert found == ["pkg/m.py:too_long:81", "pkg/m.py:C.m:88", "pkg/m.py:C.m.inner:86"], found


def test_self_task_name_comparisons(tmp_path):
    pkg = write_tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/tasks/__init__.py": "def f(t):\n    return t == 'classification'\n",  # inside tasks: allowed
        "pkg/gen.py": """\
            SEGMENTING = ("segmentation",)
            def f(recipe, meta, t):
                if recipe.task == "classification":
                    pass
                if meta.get("task") != 'detection_v2':
                    pass
                if t in ("segmentation", "other"):
                    pass
                if t not in {"multilabel"}:
                    pass
                if t in SEGMENTING:
                    pass
                match t:
                    case "a" | "multilabel":
                        pass
                    case "b":
                        pass
                print("classification")
                return t == "accuracy"
            """,
    })
    an = sc.analyse(pkg)
    found = sc.task_name_comparisons(an, set(sc.FIXED_TASK_NAMES) | {"detection_v2"})  # detection_v2: registry
    assert [f.split(" (")[0] for f in found] == [f"pkg/gen.py:{n}" for n in (3, 5, 7, 9, 11, 14)], found
    assert not sc.task_name_comparisons(an, sc.FIXED_TASK_NAMES - {"multilabel", "segmentation", "classification"})


def test_self_static_task_names(tmp_path):
    pkg = write_tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/tasks/__init__.py": "",
        "pkg/tasks/base.py": "class Task: ...\n",
        "pkg/tasks/det/__init__.py": "from pkg.tasks.base import Task\nTASK = Task(name='detection2', loss=f(name='x'))\n",
        "pkg/tasks/kp/__init__.py": "from pkg.tasks import base\nclass KP(base.Task):\n    name = 'keypoints'\n",
    })
    assert sc.static_task_names(sc.analyse(pkg)) == {"det", "kp", "detection2", "keypoints"}


def test_self_private_imports(tmp_path):
    pkg = write_tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "_x = 1\ny = 2\ndef _f(): ...\n",
        "pkg/sub/__init__.py": "from pkg.sub import _impl\n",  # its own private module: allowed
        "pkg/sub/_impl.py": "",
        "pkg/sub/user.py": "from pkg.sub._impl import thing\nfrom . import _impl\n",  # same package: allowed
        "pkg/b.py": """\
            from pkg.a import _x, y
            from pkg import a
            import pkg.a as alias
            def g():
                from .a import _f
                return a._f() + alias._x + a.y
            """,
        "pkg/c.py": "from pkg.sub._impl import thing\nimport pkg.sub._impl\nfrom pkg.a import __doc__\n",
    })
    found = [f.split(" (")[0] for f in sc.private_imports(sc.analyse(pkg))]
    assert sorted(set(found)) == sorted({"pkg/b.py:1", "pkg/b.py:5", "pkg/b.py:6", "pkg/c.py:1", "pkg/c.py:2"}), found
    assert found.count("pkg/b.py:6") == 2  # a._f and alias._x


def test_self_keras_src(tmp_path):
    pkg = write_tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/k.py": """\
            import keras
            from keras.src.utils import summary_utils
            import keras.src.ops as ops
            from keras import src
            from keras import layers, ops as public_ops
            def f():
                return keras.src.backend.floatx(), keras.layers.Dense(1), keras._tf_keras
            """,
    })
    found = [f.split(" (")[0] for f in sc.keras_src_imports(sc.analyse(pkg))]
    assert sorted(set(found)) == ["pkg/k.py:2", "pkg/k.py:3", "pkg/k.py:4", "pkg/k.py:7"], found


def test_self_layers(tmp_path):
    pkg = write_tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/cli.py": "from pkg import train\n",
        "pkg/train.py": "from pkg.tasks import get_task\nfrom pkg import data\n",
        "pkg/tasks/__init__.py": "def get_task(): ...\ndef f():\n    from pkg import evaluation\n",
        "pkg/evaluation.py": "",
        "pkg/data/__init__.py": "from pkg import recipe\n",
        "pkg/recipe.py": "def f():\n    from pkg.data import x\n",
    })
    found = [f.split(" (")[0] for f in sc.layer_violations(sc.analyse(pkg))]
    assert found == ["pkg/recipe.py:2", "pkg/tasks/__init__.py:3"], found


def test_self_unresolved_imports(tmp_path):
    pkg = write_tree(tmp_path, {
        "pkg/__init__.py": "def __getattr__(name): ...\n",
        "pkg/a.py": "try:\n    import numpy as np\nexcept ImportError:\n    np = None\nif True:\n    X, (Y, Z) = 1, (2, 3)\ndef f(): ...\n",
        "pkg/b.py": """\
            from pkg.a import np, X, Y, f
            from pkg.a import gone
            from pkg import anything
            def g():
                from pkg.moved import h
                import pkg.also_moved
            """,
    })
    found = [f.split(" (")[0] for f in sc.unresolved_imports(sc.analyse(pkg))]
    assert found == ["pkg/b.py:2", "pkg/b.py:5", "pkg/b.py:6"], found


def test_self_import_linter_contracts_catch_violations(tmp_path):
    """The contracts in pyproject.toml, on a small tlkit with one of each violation, break as they should."""
    if not LINT_IMPORTS.exists():
        pytest.skip(f"import-linter is not installed (no {LINT_IMPORTS}); pip install -e '.[test]'")
    src = tmp_path / "src"
    write_tree(src, {
        "tlkit/__init__.py": "",
        "tlkit/tasks/__init__.py": "from tlkit.tasks import classification, segmentation\n",
        "tlkit/tasks/base.py": "class Task: ...\n",
        "tlkit/tasks/classification/__init__.py": "from tlkit.tasks.base import Task\n",
        "tlkit/tasks/classification/model.py": "",
        "tlkit/tasks/segmentation/__init__.py": "def f():\n    from tlkit.tasks.classification import model\n",
        "tlkit/train.py": "def f():\n    from tlkit.tasks.classification import model\n",
        "tlkit/evaluation.py": "from tlkit.tasks import base\nimport tlkit.tasks\n",  # the registry and base: fine
    })
    section = _lint_section()
    config = tmp_path / "importlinter.toml"
    assert _write_lint_config(section, config, src) == []
    proc = _lint(config, tmp_path, src)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Contracts: 0 kept, 2 broken." in out, out
    assert "Analyzed 8 files" in out, out  # the synthetic tree was analysed, not the installed tlkit
    assert "tlkit.train -> tlkit.tasks.classification.model" in out, out  # a function-level import
    assert "tlkit.tasks.segmentation -> tlkit.tasks.classification.model" in out, out
    assert "tlkit.evaluation ->" not in out, out
