"""The import direction (ARCHITECTURE.md §2), checked over the module graph of the source tree,
and what a command or a plain `import lepton` really loads, checked in fresh interpreters.

    contract and wire  <-  backends  <-  coordinator, agent (not each other)  <-  CLI
    contract and wire  <-  client (never backends or servers)                 <-  CLI
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The folders that pyproject.toml's package-dir maps into the one `lepton` namespace.
FOLDERS = {"lepton": "clients/python/lepton", "lepton.coordinator": "coordinator", "lepton.agent": "node_agent",
           "lepton.backends": "backends"}

# Each layer, from the bottom, with the modules in it (a prefix covers its submodules) and the layers it
# may import besides its own. The CLI may import anything.
CONTRACT = ("lepton.v1", "lepton.errors", "lepton.contract", "lepton.wire", "lepton.logs", "lepton.tuning",
            "lepton.decoding", "lepton.serving", "lepton.rpc_errors", "lepton.lifecycle", "lepton.credentials", "lepton.security",
            "lepton.sharedmem", "lepton.failover")
LAYERS = {
    "contract": (CONTRACT, set()),
    "backends": (("lepton.backends",), {"contract"}),
    "coordinator": (("lepton.coordinator",), {"contract", "backends"}),
    "agent": (("lepton.agent",), {"contract", "backends"}),
    "client": (("lepton.client", "lepton.retry", "lepton.local", "lepton.trace", "lepton.certs", "lepton.etcd_process"),
               {"contract"}),
    "cli": (("lepton.cli", "lepton.demo", "lepton.__main__", "lepton.slurm"), {"contract", "backends", "coordinator", "agent",
                                                               "client"}),
}


def layer_of(module: str) -> str | None:
    for name, (prefixes, _) in LAYERS.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return name
    return None


def modules() -> dict[str, Path]:
    """Every module of the source tree by its installed name (packages by their __init__)."""
    found = {}
    for package, folder in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports_of(name: str, path: Path) -> set[str]:
    """The lepton modules `path` imports anywhere in its body (imports inside functions count too)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)  # `from lepton import wire`
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "_lazy" and node.args \
                and isinstance(node.args[0], ast.Constant):
            out.add(node.args[0].value)  # the CLI's lazy imports name their module as a string
    return {m for m in out if m == "lepton" or m.startswith("lepton.")}


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in modules() if m != "lepton" and layer_of(m) is None)
    assert not unplaced, f"put these in a layer of tests/test_layering.py and ARCHITECTURE.md: {unplaced}"


def test_imports_flow_one_way():
    known = modules()
    wrong = []
    for name, path in sorted(known.items()):
        here = layer_of(name)
        if here is None:
            continue  # the package itself: its names resolve lazily (lepton/__init__.py)
        allowed = {here} | LAYERS[here][1]
        for target in sorted(imports_of(name, path)):
            if target not in known:
                continue  # `from lepton.x import Name` adds lepton.x.Name, which is no module
            there = layer_of(target)
            if there is not None and there not in allowed:
                wrong.append(f"{name} ({here}) imports {target} ({there})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_checker_sees_a_wrong_import(tmp_path):
    """The graph test is only worth something if it notices: a backend importing a server must show."""
    path = tmp_path / "bad.py"
    path.write_text("def f():\n    from lepton.coordinator import jobs\n")
    assert "lepton.coordinator.jobs" in imports_of("lepton.backends.bad", path)
    assert layer_of("lepton.coordinator.jobs") not in LAYERS["backends"][1] | {"backends"}


# The servers' packages and their flags hold no server code: the CLI loads them to build its parser.
LIGHT = ["lepton.coordinator", "lepton.coordinator.flags", "lepton.agent", "lepton.agent.flags"]


def loaded_after(code: str) -> list[str]:
    """The modules of interest a fresh interpreter holds after running `code` (LIGHT ones left out)."""
    probe = (f"import json, sys\n{code}\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('pyopencl', 'mpi4py', 'numpy', "
             "'grpc') or m.startswith(('lepton.coordinator', 'lepton.agent', 'lepton.backends')) and m not in "
             f"{LIGHT!r})))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def roots(modules: list[str]) -> set[str]:
    return {m.split(".")[0] if not m.startswith("lepton.") else ".".join(m.split(".")[:2]) for m in modules}


def test_import_lepton_loads_no_backend_and_no_server():
    assert roots(loaded_after("import lepton")) == set()
    # Using the client loads gRPC and NumPy, still no device library and no server.
    assert roots(loaded_after("import lepton; lepton.Client; lepton.LocalCluster")) == {"grpc", "numpy"}


def test_help_loads_neither_grpc_nor_numpy_nor_a_server():
    code = ("from lepton.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert roots(loaded_after(code)) == set()


@pytest.mark.parametrize("command", [["status"], ["jobs"], ["datasets"]])
def test_client_commands_load_no_device_library_and_no_server(clusters, command):
    args = [*command, "--coordinator", clusters[1].address, "--token-file", str(clusters[1].token_file)]
    code = f"from lepton.cli import main\nassert main({args!r}) == 0"
    assert roots(loaded_after(code)) == {"grpc", "numpy"}


def test_every_package_of_the_tree_is_installed():
    """pyproject.toml lists the packages by hand (package-dir maps several folders into one namespace):
    a new subpackage left out of the list would be missing from every non-editable install."""
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert packages == listed


@pytest.mark.parametrize("kind, library", [("opencl", "pyopencl"), ("mpi", "mpi4py")])
def test_a_device_kind_without_its_extra_says_which_extra(kind, library):
    """A base install has no pyopencl or mpi4py: asking for their devices names the extra to install."""
    code = (f"import sys\nsys.modules[{library!r}] = None  # as if the extra were not installed\n"
            "from lepton.backends.discovery import open_devices\nfrom lepton.errors import FailedPrecondition\n"
            f"try:\n    open_devices([{kind!r}])\nexcept FailedPrecondition as exc:\n    print(exc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"pip install 'lepton[{kind}]'" in out.stdout
