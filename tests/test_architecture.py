"""The import graph of the repository's packages, read with ``ast`` (nothing is imported):

- no import cycle between modules, counting every import in a module (top-level or inside a
  function: a lazy import hides a cycle, it does not remove it);
- imports go one way, down the layers ``pipelines`` <- ``benchmark_builder`` <- ``training`` <-
  ``eval`` <- ``bench`` (docs/architecture.md): no module imports a module of a higher layer, at
  the top of the file or inside a function;
- no function or method longer than 60 lines (a longer one is split where a name explains the piece);
- no ``_private`` name of one package used from another, whether imported by name
  (``from training.data import _raw_samples``) or reached through an imported module
  (``data._raw_samples``). A package is a module's directory: ``training.methods`` and
  ``training`` are two packages. Tests are not checked: they may test private helpers.

The walk below is the oracle; the two small graphs at the end check the walk itself.
"""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("pipelines", "benchmark_builder", "training", "eval", "bench")  # lowest layer first


def module_files(root: str = ROOT, packages=PACKAGES) -> dict[str, str]:
    """{dotted module name: path} of every .py file under the packages."""
    out = {}
    for pkg in packages:
        for d, dirs, files in os.walk(os.path.join(root, pkg)):
            dirs[:] = sorted(x for x in dirs if x != "__pycache__")
            for f in sorted(files):
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(d, f), root)[:-3].split(os.sep)
                    if rel[-1] == "__init__":
                        rel = rel[:-1]
                    out[".".join(rel)] = os.path.join(d, f)
    return out


def _is_package(name: str, files: dict[str, str]) -> bool:
    return files.get(name, "").endswith("__init__.py")


def package_of(name: str, files: dict[str, str]) -> str:
    return name if _is_package(name, files) else name.rpartition(".")[0]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def imports(name: str, path: str, files: dict[str, str]):
    """(modules this module imports, [(imported module, private name, line)] of private names it
    takes from other modules)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    base = package_of(name, files)
    deps: set[str] = set()
    privates: list[tuple[str, str, int]] = []
    aliases: dict[str, str] = {}  # local name -> module it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in files:
                    deps.add(a.name)
                    if a.asname:
                        aliases[a.asname] = a.name
                for part in a.name.split("."):
                    if _private(part) and a.name.split(".")[0] in PACKAGES:
                        privates.append((a.name, part, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package up
                parts = base.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                mod = ".".join(parts + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] not in PACKAGES:
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if sub in files:  # from package import module
                    deps.add(sub)
                    aliases[a.asname or a.name] = sub
                else:
                    if mod in files:
                        deps.add(mod)
                    if _private(a.name):
                        privates.append((mod, a.name, node.lineno))
                if _private(mod.rpartition(".")[2]):
                    privates.append((mod, mod.rpartition(".")[2], node.lineno))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and _private(node.attr)):
            privates.append((aliases[node.value.id], node.attr, node.lineno))
    return deps - {name}, privates


def graph(files: dict[str, str]):
    edges, private_uses = {}, []
    for name, path in files.items():
        deps, privates = imports(name, path, files)
        edges[name] = deps
        for mod, priv, line in privates:
            if package_of(mod, files) != package_of(name, files):
                private_uses.append(f"{path}:{line}: {priv} from {mod}")
    return edges, private_uses


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def upward_imports(edges: dict[str, set[str]], layers=PACKAGES) -> list[str]:
    """``"a -> b"`` for every import of a module ``b`` in a higher layer than its importer ``a``
    (a layer is a top-level package)."""
    rank = {pkg: i for i, pkg in enumerate(layers)}
    return sorted(f"{a} -> {b}" for a, deps in edges.items() for b in deps
                  if rank[b.split(".")[0]] > rank[a.split(".")[0]])


@pytest.fixture(scope="module")
def repo_graph():
    files = module_files()
    assert "training.train" in files and "pipelines.models.encode" in files  # the walk sees the packages
    return graph(files)


def test_no_import_cycle(repo_graph):
    edges, _ = repo_graph
    assert cycles(edges) == []


def test_imports_only_go_down_the_layers(repo_graph):
    edges, _ = repo_graph
    assert upward_imports(edges) == []


def test_no_private_name_imported_across_packages(repo_graph):
    _, private_uses = repo_graph
    assert private_uses == []


def _write(root, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_the_walk_finds_a_lazy_cycle_and_a_private_import(tmp_path):
    # a hand-made repository: a.x imports a.y at the top, a.y imports a.x inside a function (a
    # cycle); b.z takes a private name from a.y by name and another through the module
    _write(tmp_path, {
        "pipelines/__init__.py": "",
        "pipelines/x.py": "from pipelines import y\n",
        "pipelines/y.py": "def f():\n    from pipelines.x import g\n\ndef _hidden():\n    pass\n",
        "pipelines/ok.py": "from pipelines.y import _hidden\n",  # same package: allowed
        "training/__init__.py": "",
        "training/z.py": "from pipelines.y import _hidden\nfrom pipelines import y\ny._hidden()\nimport os\n",
    })
    files = module_files(str(tmp_path), ("pipelines", "training"))
    edges, private_uses = graph(files)
    assert edges["pipelines.x"] == {"pipelines.y"} and edges["pipelines.y"] == {"pipelines.x"}
    assert cycles(edges) == [["pipelines.x", "pipelines.y"]]
    assert sorted(u.split(": ", 1)[1] for u in private_uses) == ["_hidden from pipelines.y"] * 2
    assert all(u.startswith(str(tmp_path / "training" / "z.py")) for u in private_uses)


def test_the_walk_finds_a_lazy_upward_import(tmp_path):
    # a builder module that reaches the trainer inside a function (the shape of the filter-model
    # job before it moved to the Makefile), beside allowed downward imports
    _write(tmp_path, {
        "pipelines/__init__.py": "", "pipelines/io.py": "",
        "benchmark_builder/__init__.py": "",
        "benchmark_builder/jobs.py": "from pipelines import io\n\ndef run():\n    from training.filter_model import ensure\n",
        "training/__init__.py": "",
        "training/filter_model.py": "import benchmark_builder.jobs\nfrom pipelines import io\n",
    })
    files = module_files(str(tmp_path), ("pipelines", "benchmark_builder", "training"))
    edges, _ = graph(files)
    assert upward_imports(edges, ("pipelines", "benchmark_builder", "training")) == [
        "benchmark_builder.jobs -> training.filter_model"]
    assert upward_imports(edges, ("pipelines", "training", "benchmark_builder")) == [
        "training.filter_model -> benchmark_builder.jobs"]


def test_the_walk_passes_a_layered_graph(tmp_path):
    _write(tmp_path, {
        "pipelines/__init__.py": "",
        "pipelines/base.py": "X = 1\n",
        "pipelines/sub/__init__.py": "from pipelines.sub.leaf import Y\n",
        "pipelines/sub/leaf.py": "from pipelines.base import X\nY = X\n",
        "training/__init__.py": "",
        "training/top.py": "from pipelines.sub import leaf\nfrom pipelines.sub import Y\nimport pipelines.base\n",
    })
    files = module_files(str(tmp_path), ("pipelines", "training"))
    edges, private_uses = graph(files)
    assert edges["training.top"] == {"pipelines.sub.leaf", "pipelines.sub", "pipelines.base"}
    assert cycles(edges) == [] and private_uses == [] and upward_imports(edges, ("pipelines", "training")) == []


MAX_FUNCTION_LINES = 60  # issue "one house": a longer function is split where a name explains the piece


def long_functions(files: dict[str, str], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:line name (n lines)`` of every function or method longer than ``limit`` lines, from
    its ``def`` (decorators excluded) to its last line."""
    out = []
    for path in files.values():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name} ({n} lines)")
    return sorted(out)


def test_no_function_over_sixty_lines():
    assert long_functions(module_files()) == []


def test_the_length_walk_counts_def_to_last_line(tmp_path):
    lines = [f"x{i} = {i}" for i in range(59)]
    ok = "@staticmethod\ndef ok():\n" + "".join(f"    {x}\n" for x in lines)  # def + 59 lines: allowed
    long = "class C:\n    def long(self):\n" + "".join(f"        {x}\n" for x in lines) + "        return 1\n"
    _write(tmp_path, {"pipelines/__init__.py": "", "pipelines/a.py": ok + "\n\n" + long})
    files = module_files(str(tmp_path), ("pipelines",))
    # ok: lines 2-61; class C at 64, def long at 65, its 61 lines end at 125
    assert [s.rsplit(os.sep, 1)[-1] for s in long_functions(files)] == ["a.py:65 long (61 lines)"]
