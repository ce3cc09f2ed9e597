"""The layout is the architecture (ADR 0011), and stays so: these rules fail on the first import
that crosses a boundary, not in a review months later."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "discovery"
MODULES = sorted(PACKAGE.rglob("*.py"))

# Pure cores: functions of data. They may import only these (no IO, clock, logging, metrics,
# clients, or any module that has them).
PURE = ["watch/desired.py", "watch/guard.py", "watch/plan.py", "watch/drain.py", "watch/reload_cap.py",
        "register/labels.py", "register/sync.py", "model.py"]
PURE_MAY_IMPORT = {"__future__", "collections", "dataclasses", "typing", "enum", "hashlib", "ipaddress", "operator",
                   "re", "discovery.model"}
# Shared ground may be used by both processes, and so uses neither.
SHARED = ["model.py", "cli.py", "metrics.py", "files.py", "consul_api.py", "haproxy"]


def name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imports(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved (`from ..register import x`)."""
    package = name(path).split(".") if path.name == "__init__.py" else name(path).split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_package_has_the_modules_this_test_names():
    assert {p.relative_to(PACKAGE).as_posix() for p in MODULES} >= set(PURE) | {"cli.py", "files.py", "consul_api.py"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_neither_process_imports_the_others_modules(path):
    module, used = name(path), imports(path)
    for mine, theirs in (("discovery.watch", "discovery.register"), ("discovery.register", "discovery.watch")):
        if under(module, mine):
            assert not [u for u in used if under(u, theirs)], f"{module} imports {theirs}"


@pytest.mark.parametrize("shared", SHARED)
def test_shared_ground_uses_neither_process(shared):
    for path in [PACKAGE / shared] if shared.endswith(".py") else sorted((PACKAGE / shared).rglob("*.py")):
        used = imports(path)
        assert not [u for u in used if under(u, "discovery.watch") or under(u, "discovery.register")], path


@pytest.mark.parametrize("pure", PURE)
def test_the_pure_core_does_no_io(pure):
    used = imports(PACKAGE / pure)
    assert not [u for u in used if not any(under(u, ok) for ok in PURE_MAY_IMPORT)], f"{pure} imports IO"


def test_a_relative_import_across_the_boundary_is_seen(monkeypatch):
    fake = PACKAGE / "register" / "sync.py"
    monkeypatch.setattr(Path, "read_text", lambda self: "from ..watch import run\nfrom . import labels\n")
    found = imports(fake)
    assert {"discovery.watch", "discovery.watch.run", "discovery.register", "discovery.register.labels"} <= found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_runtime_module_is_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= 400


def test_the_runtime_package_holds_no_demo_or_tooling():
    assert not [p for p in MODULES if p.stem in ("webapp", "lab", "screenshot")]
    for path in MODULES:
        assert not [u for u in imports(path) if under(u, "demo") or under(u, "tools")], path


@pytest.mark.parametrize("command", ["watch", "register"])
def test_each_process_is_a_package_run_with_python_m(command):
    main = (PACKAGE / command / "__main__.py").read_text()
    assert f"from discovery.{command}.main import main" in main and len(main.splitlines()) <= 3
