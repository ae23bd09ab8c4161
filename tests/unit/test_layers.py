"""The shape of the code, checked: the internet-facing gateway loads no service code, the
client library no server dependency, and no package imports itself in a circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "service",
    "webhook_gateway",
    "entitlements_client",
    "entitlements_common",
    "entitlements_cli",
)
# Where each package's sources live (the client is a distribution of its own).
SOURCES = {"entitlements_client": ROOT / "clients" / "python" / "entitlements_client"}

# What each layer may import, among our packages (prefixes). The domain is pure; the
# application layer knows the domain and its own ports; adapters know no entrypoint.
ALLOWED = {
    "service.domain": ("service.domain",),
    "service.application": ("service.domain", "service.application"),
    "service.adapters": (
        "service.domain",
        "service.application",
        "service.adapters",
        "service.metrics",
    ),
    # The gateway is a client of the service: the client library's settings (`Tls`).
    "webhook_gateway": ("webhook_gateway", "entitlements_common", "entitlements_client"),
    # The offline catalog commands use the service's own parser and Clerk client.
    "entitlements_cli": (
        "entitlements_cli",
        "entitlements_client",
        "entitlements_common.settings",
        "entitlements_common.env",
        "service.domain",
        "service.config",
        "service.adapters.clerk_api",
    ),
    "entitlements_client": ("entitlements_client",),
}


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def test_the_gateway_loads_no_service_code() -> None:
    loaded = _loaded_after("import webhook_gateway.main")
    assert not [m for m in loaded if m == "service" or m.startswith("service.")]


def test_the_client_library_loads_no_server_dependency() -> None:
    loaded = _loaded_after("import entitlements_client")
    forbidden = ("service", "webhook_gateway", "asyncpg", "aiohttp", "svix", "pgserver")
    assert not [m for m in loaded if m.split(".")[0] in forbidden]


def _module_imports(path: Path, module: str, in_functions: bool = False) -> set[str]:
    """Modules of ours imported at import time (not under TYPE_CHECKING); with `in_functions`,
    those imported inside functions too (a cycle there is a cycle all the same)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        nested = in_functions or isinstance(node, ast.If | ast.Try)
        for sub in ast.walk(node) if nested else [node]:
            if isinstance(sub, ast.Import):
                found |= {alias.name for alias in sub.names}
            elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                found.add(sub.module)
                found |= {f"{sub.module}.{alias.name}" for alias in sub.names}
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _import_graph(in_functions: bool = False) -> dict[str, set[str]]:
    """Every module of ours and the modules of ours it imports."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        base = SOURCES.get(package, ROOT / package)
        for path in base.rglob("*.py"):
            parts = (package, *path.relative_to(base).with_suffix("").parts)
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            graph[module] = _module_imports(path, module, in_functions)
    return graph


def test_every_package_is_found() -> None:
    found = {module.split(".")[0] for module in _import_graph()}
    assert found == set(PACKAGES)
    assert {"service.application.ports", "service.entrypoints.server"} <= set(_import_graph())


def test_layers_import_only_what_they_may() -> None:
    wrong = []
    for module, deps in sorted(_import_graph(in_functions=True).items()):
        layer = next((k for k in ALLOWED if module == k or module.startswith(k + ".")), None)
        if layer is None:
            continue
        for dep in sorted(deps):
            if not any(dep == a or dep.startswith(a + ".") for a in ALLOWED[layer]):
                wrong.append(f"{module} imports {dep}")
    assert not wrong, wrong


@pytest.mark.parametrize("in_functions", [False, True])
def test_no_import_cycles(in_functions: bool) -> None:
    graph = _import_graph(in_functions)
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycles.append([*trail[trail.index(dep) :], dep] if dep in trail else [dep])
            elif dep not in state:
                visit(dep, [*trail, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles
