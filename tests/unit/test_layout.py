"""The house rules, checked on the source: no import cycle among the project's modules (imports inside
functions count); the layers point one way (``dashboard`` -> ``analysis`` -> ``compute``; neither of the
last two imports ``streamlit`` or ``dashboard``); nothing outside ``tests`` imports the test helpers, and test
modules import helpers.py, never each other or conftest.py; SQL only
in the store and the read library's queries; and a long module says why it is long."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from helpers import ONE_WORKER, ROOT

PACKAGES = ("compute", "analysis", "dashboard", "tools")
LONG = 400  # lines; a longer module says why in its docstring ("Long because ...")
SQL_HOMES = {"compute.store", "compute.store_batches", "compute.store_heads", "compute.storefile", "analysis.queries"}  # the write side (the statements, the file) and the read side
SQL = re.compile(r"\b(SELECT\s+[\w*(]|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|VIEW))")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules ``name`` imports anywhere in its file (a package's own __init__ excluded)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_no_import_cycle(graph):
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert len(graph) > 30  # the walk saw the project, not an empty folder


def third_party(path: Path) -> set[str]:
    """Top-level names of every module the file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.partition(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.partition(".")[0])
    return found


def test_compute_and_the_read_library_never_import_streamlit_or_the_dashboard(graph):
    lower = [m for m in graph if m.startswith(("compute", "analysis"))]
    up = sorted(f"{m} -> {t}" for m in lower for t in graph[m] if t.startswith("dashboard"))
    assert up == []
    streamlit = sorted(m for m, path in modules().items() if m in lower and "streamlit" in third_party(path))
    assert streamlit == []
    assert any(t.startswith("analysis") for t in graph["compute.export"])  # export stands on the library
    assert any(t.startswith("analysis") for m in graph if m.startswith("dashboard") for t in graph[m])


def test_compute_never_imports_the_read_library_but_for_the_export_verb(graph):
    up = sorted(f"{m} -> {t}" for m, ts in graph.items() for t in ts
                if m.startswith("compute") and t.startswith("analysis") and m != "compute.export")
    assert up == []


# What checks an experiment (compute.config and the kinds' registry it checks against, the command line up to
# the run) and what the pages' menus and charts read: none may bring torch, whose import takes about a second.
TORCH_FREE = ("compute.__main__", "compute.config", "compute.ablations", "compute.kinds", "analysis.charts",
              "analysis.heads", "analysis.queries", "analysis.tables")
BAD_EXPERIMENT = """name = "x"
[model]
clip = "openai/clip-vit-base-patch16"
[dataset]
images = "images"
annotations = "instances.json"
[ablations]
extra = ["identity:1-99999999999999"]
[[prompts]]
text = "a photo of a cat"
label = "cat"
"""
CHECK_ONLY = """
import sys
from compute.__main__ import main
codes = [main(["run", sys.argv[1]]), main(["rescore", "--run", "x", "--prompts", sys.argv[2], "--as", "y"]),
         main(["run", sys.argv[3], "--db", sys.argv[5]]), main(["run", sys.argv[3], "--db", sys.argv[4]])]
print(*codes, sorted(m for m in ("torch", "transformers") if m in sys.modules))
"""
IMAGE_ID_A_STRING = {"images": [{"id": "1", "file_name": "a.jpg", "width": 8, "height": 8}],
                     "categories": [{"id": 1, "name": "cat"}], "annotations": []}


def test_checking_an_experiment_and_the_charts_import_no_torch(tmp_path):
    """A refused experiment, prompts file, annotations file or store answers before torch is imported (0.2 s
    instead of 1.3-1.6 s), and the Flow page's targets come from the registry without it."""
    probe = (f"import sys, {', '.join(TORCH_FREE)}; "
             "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    imported = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert imported.stdout.split() == ["[]"]
    (tmp_path / "bad.toml").write_text(BAD_EXPERIMENT)
    (tmp_path / "prompts.txt").write_bytes(b"\xffa photo of a cat\n")  # not UTF-8
    (tmp_path / "images").mkdir()
    (tmp_path / "instances.json").write_text(json.dumps(IMAGE_ID_A_STRING))
    (tmp_path / "data.toml").write_text(BAD_EXPERIMENT.replace("identity:1-99999999999999", "identity:1"))
    with duckdb.connect(str(tmp_path / "other.duckdb")) as con:  # another application's store
        con.execute("CREATE TABLE customers (id INTEGER)")
    refused = subprocess.run([sys.executable, "-c", CHECK_ONLY, tmp_path / "bad.toml", tmp_path / "prompts.txt",
                              tmp_path / "data.toml", tmp_path / "other.duckdb", tmp_path / "new.duckdb"],
                             cwd=ROOT, env=env, capture_output=True, text=True)
    assert refused.stdout.split() == ["2", "2", "2", "2", "[]"], refused.stdout + refused.stderr[-2000:]
    lines = refused.stderr.splitlines()
    assert len(lines) == 4 and "out of range" in lines[0] and "is not UTF-8" in lines[1], lines
    assert "images[0].id must be an integer, got '1' (a string)" in lines[2], lines
    assert "a DuckDB file of another application (tables: customers" in lines[3], lines
    assert not (tmp_path / "new.duckdb").exists()


def test_nothing_outside_the_tests_imports_test_helpers():
    strays = sorted(m for m, path in modules().items() if {"tests", "conftest", "helpers"} & third_party(path))
    assert strays == []


def test_test_modules_never_import_each_other_or_conftest():
    """Shared test code lives in tests/helpers.py (fixtures in conftest.py): importing a test module runs its
    import-time code and ties two files' contents together."""
    tests = ROOT / "tests"
    names = {p.stem for p in tests.rglob("test_*.py")} | {"conftest"}
    assert len(names) > 30
    strays = sorted(f"{p.relative_to(ROOT)}: {', '.join(sorted(third_party(p) & names))}"
                    for p in tests.rglob("*.py") if third_party(p) & names)
    assert strays == []


def test_the_modules_kept_on_one_worker_exist():
    tests = {p.name for p in (ROOT / "tests").rglob("test_*.py")}
    assert set(ONE_WORKER) <= tests  # a renamed module would silently lose its grouping


def test_the_dashboard_and_compute_never_import_tools(graph):
    assert sorted(m for m, ts in graph.items() if not m.startswith("tools") and any(t.startswith("tools") for t in ts)) == []


def test_sql_lives_in_the_store_and_the_dashboard_queries():
    strays = []
    for name, path in modules().items():
        if name in SQL_HOMES or name.startswith("tools"):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(body[0].value) for node in ast.walk(tree) if (body := getattr(node, "body", None))
                      and isinstance(body, list) and isinstance(body[0], ast.Expr)}
        strays += [f"{name}: {node.value.strip()[:60]!r}" for node in ast.walk(tree)
                   if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                   and SQL.search(node.value)]
    assert strays == []


def test_a_long_module_says_why():
    unexplained = []
    for name, path in modules().items():
        text = path.read_text()
        if len(text.splitlines()) > LONG and "Long because" not in (ast.get_docstring(ast.parse(text)) or ""):
            unexplained.append(f"{name} ({len(text.splitlines())} lines)")
    assert unexplained == []
