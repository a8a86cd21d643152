"""The rules the layout keeps: model/ never imports backend/, no package imports itself in a circle, the request
path loads no benchmark code, modules and functions stay small enough to read, and every domain error has its HTTP
status."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _sources(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", _sources("model", "policy_server"), ids=lambda p: str(p.relative_to(ROOT)))
def test_model_never_imports_backend(path):
    assert not {name for name in _imports(path) if name.split(".")[0] == "backend"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path) -> set[str]:
    """Every module the file imports when it runs, at its top or inside a function; only imports under
    `if TYPE_CHECKING:` are left out. Relative imports are resolved, and `from a import b` counts a and a.b."""
    tree = ast.parse(path.read_text())
    typing_only = {id(node) for branch in ast.walk(tree)
                   if isinstance(branch, ast.If) and "TYPE_CHECKING" in ast.unparse(branch.test)
                   for statement in branch.body for node in ast.walk(statement)}
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join([*package[:len(package) - node.level + 1], node.module or ""]).strip(".") \
                if node.level else node.module or ""
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return names


def _import_circles() -> list[list[str]]:
    """The strongly connected components of more than one module in the import graph (Tarjan's algorithm)."""
    modules = {_module_name(path): path for path in _sources("backend", "model", "policy_server")}
    graph = {name: sorted(m for m in _runtime_imports(path) if m in modules and m != name)
             for name, path in modules.items()}
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(name: str) -> None:
        order[name] = low[name] = len(order)
        stack.append(name)
        for imported in graph[name]:
            if imported not in order:
                visit(imported)
                low[name] = min(low[name], low[imported])
            elif imported in stack:
                low[name] = min(low[name], order[imported])
        if low[name] == order[name]:
            component = stack[stack.index(name):]
            del stack[stack.index(name):]
            if len(component) > 1:
                circles.append(sorted(component))

    for name in graph:
        if name not in order:
            visit(name)
    return circles


def test_no_import_circles():
    assert _import_circles() == []


def test_the_request_path_loads_no_benchmark_code(tmp_path):
    script = (
        "import sys\n"
        "from model.settings import Settings\n"
        "from backend.app import create_app\n"
        "from backend.container import Backend\n"
        f"backend = Backend.build(Settings(data_dir={str(tmp_path)!r}))\n"
        "create_app(backend)\n"
        "backend.close()\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith(('model.benchmarks', 'model.quality.corr',"
        " 'model.cli', 'matplotlib', 'tqdm')))))\n")
    loaded = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.split() == []


@pytest.mark.parametrize("path", _sources("model", "backend", "policy_server"), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_stay_small(path):
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_MODULE_LINES, f"{len(lines)} lines"
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{node.name} has {length} lines"


def test_every_domain_error_has_a_status():
    from backend import errors

    domain = [cls for cls in vars(errors).values()
              if isinstance(cls, type) and issubclass(cls, errors.DomainError) and cls is not errors.DomainError]
    assert domain and all(errors.status_for(cls("x")) for cls in domain)
    assert errors.status_for(ValueError("a bug")) is None  # an untyped error stays a 500
    assert errors.status_for(errors.ImageTooBig("x")) == 413
    assert errors.status_for(errors.CapabilityOff("x")) == 503
