"""The code's layers (docs/architecture.md) hold: every import, read from the source (ast),
points down.

    tools/     benchmarks, fault campaign          may import anything; nothing imports it
    vmm/       the machine, persistence, the CLI   may import snapshot/ and guests/
    guests/    guest programs and their build      may import only vmm.layout and vmm.errors
    snapshot/  the file-format library             imports nothing of the project

vmm.layout and vmm.errors are leaves (they import nothing of the project), so guests/ can use
them without a circle; and no two modules import each other at load time.
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("snapshot", "vmm", "guests", "tools")
LEAVES = frozenset({"vmm.layout", "vmm.errors"})  # the only modules guests/ may import


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module (or a name in it), dotted
    line: int
    at_load: bool  # at module level, outside `if TYPE_CHECKING:` (runs when the module loads)


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(root: Path, path: Path) -> list[Import]:
    """Every import in the file at `path`, absolute, with the project's packages only."""
    source = module_name(root, path)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, at_load: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(Import(source, alias.name, child.lineno, at_load))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                for alias in child.names:
                    found.append(Import(source, f"{module}.{alias.name}", child.lineno, at_load))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                visit(child, False)
            else:
                visit(child, at_load)

    visit(ast.parse(path.read_text(), str(path)), True)
    return [i for i in found if i.target.split(".")[0] in PACKAGES]


def resolve(target: str, modules: set[str]) -> str:
    """The module `target` (a module, or a name imported from one) names."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target


def violations(root: Path) -> list[str]:
    """Every import in the tree at `root` that breaks the layers, as 'file:line: why'."""
    files = [p for pkg in PACKAGES if (root / pkg).is_dir() for p in sorted((root / pkg).rglob("*.py"))]
    modules = {module_name(root, p) for p in files}
    problems: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for path in files:
        for imp in imports_of(root, path):
            target = resolve(imp.target, modules) or imp.target
            src_pkg, dst_pkg = imp.source.split(".")[0], target.split(".")[0]
            where = f"{path.relative_to(root)}:{imp.line}"
            if imp.source in LEAVES and target != imp.source:
                problems.append(f"{where}: {imp.source} is a leaf and must not import {target}")
            elif dst_pkg == "tools" and src_pkg != "tools":
                problems.append(f"{where}: {src_pkg}/ must not import tools/ ({target})")
            elif src_pkg == "snapshot" and dst_pkg != "snapshot":
                problems.append(f"{where}: snapshot/ is the bottom layer and must not import {target}")
            elif src_pkg == "guests" and dst_pkg == "vmm" and target not in LEAVES:
                problems.append(f"{where}: guests/ may import only {sorted(LEAVES)} of vmm/, not {target}")
            if imp.at_load and target in modules and target != imp.source:
                graph[imp.source].add(target)
    problems += [f"import cycle at load time: {' -> '.join(c)}" for c in _cycles(graph)]
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def test_every_import_points_down_the_layers() -> None:
    assert violations(ROOT) == []


@pytest.mark.parametrize(
    "package, code, expected",
    [
        ("snapshot", "from vmm.machine import MicroVM\n", "snapshot/ is the bottom layer"),
        ("snapshot", "def f():\n    import guests\n", "snapshot/ is the bottom layer"),
        ("vmm", "from tools.bench import exec\n", "must not import tools/"),
        ("guests", "from vmm import psci\n", "guests/ may import only"),
        ("vmm", "from . import layout\n", None),  # a relative import inside vmm/ is fine
    ],
)
def test_the_checker_finds_a_deliberate_bad_import(tmp_path: Path, package: str, code: str, expected: str | None) -> None:
    """The check can fail: a copy of the tree plus one scratch module with a bad import."""
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.so", "bin"))
    (tmp_path / package / "scratch_bad_import.py").write_text(code)
    problems = violations(tmp_path)
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0] and "scratch_bad_import.py" in problems[0]


def test_the_checker_finds_a_load_time_cycle(tmp_path: Path) -> None:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.so", "bin"))
    (tmp_path / "vmm" / "errors.py").write_text((ROOT / "vmm" / "errors.py").read_text() + "\nfrom vmm import machine\n")
    problems = violations(tmp_path)
    assert any("vmm.errors is a leaf" in p for p in problems)
    assert any(p.startswith("import cycle at load time") and "vmm.errors" in p for p in problems)


def test_importing_the_constants_does_not_load_the_machine() -> None:
    code = "import sys, guests.asm, vmm.layout; print(sorted(m for m in sys.modules if m.startswith(('vmm', 'snapshot'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "['vmm', 'vmm.errors', 'vmm.layout']"


@pytest.mark.slow
def test_an_installed_copy_has_no_tools_package(tmp_path: Path) -> None:
    """A non-editable install ships vmm, snapshot and guests, not the checkout's tools/: run from
    a folder with a tools/ of its own, `microvm dirty-map`'s code still imports."""
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(ROOT)],
        capture_output=True, text=True, env={**os.environ, "PIP_NO_INPUT": "1"},
    )
    assert build.returncode == 0, build.stderr[-2000:]
    assert (target / "vmm" / "plots.py").is_file() and not (target / "tools").exists()
    user = tmp_path / "user"
    (user / "tools").mkdir(parents=True)
    (user / "tools" / "__init__.py").write_text("")  # the user's own package named tools
    code = textwrap.dedent(
        """
        import importlib.util, vmm.plots, vmm.cli
        assert vmm.cli.__file__.startswith(%r), vmm.cli.__file__
        spec = importlib.util.find_spec("tools.bench")
        print("tools.bench" if spec else "no tools.bench")
        """
        % str(target)
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=user, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "no tools.bench"
    outside = subprocess.run([sys.executable, "-c", "import tools"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert outside.returncode != 0 and "No module named 'tools'" in outside.stderr


def test_snapshot_files_are_described_verified_and_rebased_without_the_vm(tmp_path: Path) -> None:
    """snapshot/ alone (vmm and guests made unimportable) handles files a VM wrote."""
    from vmm import MicroVM, VmConfig

    vm = MicroVM(VmConfig(guest="memwalk", mem_size=32 << 20, params={"rounds": 0, "region_mib": 1}, track_dirty_pages=True))
    vm.run(200_000)
    vm.save_snapshot(tmp_path / "base")
    vm.run(200_000)
    vm.save_snapshot(tmp_path / "top", kind="diff")
    code = textwrap.dedent(
        """
        import sys
        sys.modules["vmm"] = None  # any import of vmm or guests now fails
        sys.modules["guests"] = None
        from snapshot.chain import rebase, verify
        from snapshot.describe import describe
        info = describe("top", verify=True)
        assert info["kind"] == "diff" and info["pair_ok"] is True and info["parent"]["state_name"] == "base.snap", info
        assert verify("top").ok
        report = rebase("base", ["top"], "flat")
        assert report.merged == 2 and describe("flat", verify=True)["pair_ok"] is True
        print("OK")
        """
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "OK", run.stderr[-2000:]
    flat = MicroVM.load_snapshot(tmp_path / "flat")
    assert flat.state_digest() == vm.state_digest()
