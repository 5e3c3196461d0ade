"""Plugins cannot fake or end the gate: one that takes the key of a derived implementation
(the reference, a backend's unfused chain, a torch peer) is refused, and one that calls
sys.exit() or raises KeyboardInterrupt while it loads is a plugin failure; each is named,
and `fusebench check` cannot pass on it. A real Ctrl-C during a plugin's import still
stops the program."""

from __future__ import annotations

import pytest

from harness.registry import PLUGINS_ENV, _declared_impls, discover
from tests.test_cli import fusebench

ONE_CASE = ["--suite", "smoke", "--fusion", "add_rmsnorm", "--backend", "cpu", "--dtype", "float32",
            "--no-isolation"]


@pytest.fixture
def plugin_registry(monkeypatch):
    """discover(plugin) -> the registry it builds; what the plugin declared is forgotten afterwards."""
    loaded = []

    def build(plugin: str):
        loaded.append(plugin)
        monkeypatch.setenv(PLUGINS_ENV, plugin)
        return discover(entry_points=False)

    yield build
    for key in [k for k, v in _declared_impls.items() if v.origin in loaded]:
        _declared_impls.pop(key)


def test_a_plugin_cannot_replace_a_derived_chain(plugin_registry):
    reg = plugin_registry("tests.plugins.derived_override")
    chain = reg.impls["add_rmsnorm/cpu/unfused"]
    assert chain.origin == "derived" and chain.factory.__name__ == "_chain_factory"
    (problem,) = [p for p in reg.problems if "add_rmsnorm/cpu/unfused" in p]
    assert "tests.plugins.derived_override" in problem and "refused" in problem and "derived" in problem


def test_the_gate_fails_on_a_refused_plugin(tmp_path):
    r = fusebench("check", *ONE_CASE, cwd=tmp_path, plugins="tests.plugins.derived_override")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "warning: add_rmsnorm/cpu/unfused (tests.plugins.derived_override): refused" in r.stderr
    assert "the gate cannot pass: 1 registry problem" in r.stdout
    assert "FAIL" not in r.stdout  # the derived chain itself ran, and passed
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("plugin, words", [("tests.plugins.exits", "called sys.exit(0) while loading"),
                                           ("tests.plugins.interrupts", "raised KeyboardInterrupt while loading")])
def test_a_plugin_that_exits_or_interrupts_is_a_failure(plugin_registry, plugin, words):
    reg = plugin_registry(plugin)
    assert any(plugin in p and words in p for p in reg.problems), reg.problems
    assert "add_rmsnorm/cpu/fused" in reg.impls  # the rest still loads


@pytest.mark.parametrize("plugin", ["tests.plugins.exits", "tests.plugins.interrupts"])
def test_check_neither_stops_nor_passes_on_such_a_plugin(tmp_path, plugin):
    r = fusebench("check", *ONE_CASE, cwd=tmp_path, plugins=plugin)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"warning: plugin {plugin}" in r.stderr and "the gate cannot pass" in r.stdout
    assert "add_rmsnorm/cpu/fused" in r.stdout  # the check itself ran
    assert "Traceback" not in r.stderr


def test_a_real_ctrl_c_while_a_plugin_loads_still_stops(plugin_registry, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        plugin_registry("tests.plugins.ctrl_c")
    r = fusebench("check", *ONE_CASE, cwd=tmp_path, plugins="tests.plugins.ctrl_c")
    assert r.returncode == 130 and "interrupted" in r.stderr, r.stdout + r.stderr
