"""The admin API, the injector, the webhook and the CLI call the core, never each other.

Checked on the import statements, so a shortcut taken in a hurry fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "flux_proxy"

# module -> flux_proxy modules it must not import
FORBIDDEN = {
    "injector": {"admin", "webhook", "sidecar", "cli", "cmd_k8s", "cmd_admin", "httpserve"},
    "injector_spec": {"admin", "webhook", "sidecar", "cli", "cmd_k8s", "cmd_admin", "httpserve"},
    "webhook": {"admin", "sidecar", "cli", "cmd_k8s", "cmd_admin"},
    "admin": {"injector", "injector_spec", "webhook", "cli", "cmd_k8s", "cmd_admin", "sidecar"},
    "cmd_admin": {"admin", "injector", "webhook", "sidecar", "httpserve"},
    "cmd_k8s": {"admin", "cmd_admin", "sidecar"},
    "podinfo": {"admin", "webhook", "injector", "sidecar", "cli"},
}
# The injector is a pure function: no I/O modules at all.
PURE = {"injector", "injector_spec"}
IO_MODULES = {"asyncio", "socket", "ssl", "subprocess", "os", "http", "urllib.request"}


def imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                if node.module:
                    found.add(f"flux_proxy.{node.module}")
                else:
                    found.update(f"flux_proxy.{alias.name}" for alias in node.names)
            elif node.module:
                found.add(node.module)
    return found


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_shell_modules_do_not_import_each_other(module: str) -> None:
    ours = {
        name.removeprefix("flux_proxy.")
        for name in imports(module)
        if name.startswith("flux_proxy.")
    }
    assert not ours & FORBIDDEN[module], f"{module} imports {sorted(ours & FORBIDDEN[module])}"


@pytest.mark.parametrize("module", sorted(PURE))
def test_injector_does_no_io(module: str) -> None:
    found = {
        name for name in imports(module) if name in IO_MODULES or name.split(".")[0] in IO_MODULES
    }
    assert not found, f"{module} imports {sorted(found)}"
