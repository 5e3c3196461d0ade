"""The asv suite (benchmarks/) and its tooling (harness/asv_suite.py), offline.

1. The generated suite covers every (fusion, implementation, case, dtype) of the smoke
   suite that the harness can run here, and nothing else runs: the rest raise
   NotImplementedError in setup (asv's skip). A fusion or implementation added by a
   plugin shows up without touching benchmarks/.
2. `asv run --quick` on a small subset of this working tree, and `history` over the last
   two commits (each from its own git worktree), save results whose track_ values are
   the figures of the fusebench records the same run wrote.
3. `asv publish` builds a site that works without a network, and headless Chromium
   (Debian's chromium + chromedriver through Selenium) opens it over http and draws a
   graph. Without a browser that part skips, unless FUSEBENCH_REQUIRE_BROWSER=1 (CI).

asv writes only under tmp_path (a temporary config with absolute paths; HOME points
there too, for asv's machine file); the worktrees are removed afterwards.
"""

from __future__ import annotations

import ast
import functools
import http.server
import itertools
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

pytest.importorskip("asv")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from harness.asv_suite import load_config  # noqa: E402
from tests.browser import chrome  # noqa: E402

MACHINE = "fusebench-test"
FUSION = "add_rmsnorm"
CASE = "smoke.awkward"
IMPLS = ("reference/float64", "cpu/fused", "torch/eager")
HISTORY_IMPL = "torch/eager"
TRACKS = ("track_time", "track_noise", "track_gbps", "track_nmse", "track_max_ulp")


EVERY_CLASS = r"fusions\.\w+\.track_time\('cpu/fused', 'smoke\.awkward', 'float32'\)"


def _subset(impls) -> str:
    """asv --bench regex for FUSION x impls x CASE x float32 (asv matches `name(params)`)."""
    return rf"fusions\.{FUSION}\.track_.*\('({'|'.join(impls)})', '{CASE}', 'float32'\)"


@pytest.fixture(scope="module")
def suite():
    from benchmarks import fusions

    return fusions


# --- 1. the suite is the registry ------------------------------------------------------

def test_suite_covers_every_available_combination(suite, registry):
    from harness.cases import load_cases, select
    from harness.runner import plan, unavailable_records

    cases = select(load_cases(registry), suite="smoke")
    _, usable = unavailable_records(registry.select())
    expected = {(i.fusion, f"{i.backend}/{i.variant}", job.case.id, job.dtype)
                for job in plan(cases, usable) for i in job.impls}
    assert expected, "nothing available to benchmark here"

    available = suite.backend_availability()
    generated, skipped = set(), []
    for cls in suite.BENCHMARK_CLASSES.values():
        for impl, case, dtype in itertools.product(*cls.params):
            if suite.skip_reason(cls.fusion, impl, case, dtype, available) is None:
                generated.add((cls.fusion, impl, case, dtype))
            else:
                skipped.append((cls, impl, case, dtype))
    assert generated == expected

    # every fusion with a smoke case has a class with every implementation, case and dtype
    assert {c.fusion for c in cases} == {cls.fusion for cls in suite.BENCHMARK_CLASSES.values()}
    for cls in suite.BENCHMARK_CLASSES.values():
        impls, case_ids, dtypes = cls.params
        assert impls == [f"{i.backend}/{i.variant}" for i in registry.select(fusions=[cls.fusion])]
        assert case_ids == [c.id for c in cases if c.fusion == cls.fusion]
        assert dtypes == list(registry.fusions[cls.fusion].dtypes)
        assert cls.param_names == ["implementation", "case", "dtype"]

    # the rest are skipped the asv way, before anything is measured
    cache = {"memo": "/nonexistent", "available": available, "peaks": {}, "run": {}}
    for cls, impl, case, dtype in skipped:
        with pytest.raises(NotImplementedError):
            cls().setup(cache, impl, case, dtype)


def test_asv_discovers_the_generated_benchmarks(suite):
    from asv_runner.discovery import disc_benchmarks

    found = {b.name: b for b in disc_benchmarks(str(ROOT / "benchmarks"))}
    expected = {f"fusions.{name}.{t}" for name in suite.BENCHMARK_CLASSES for t in TRACKS}
    assert set(found) == expected
    b = found[f"fusions.{FUSION}.track_time"]
    assert b.unit == "seconds" and b.type == "track" and b.setup_cache_key is not None
    assert found[f"fusions.{FUSION}.track_gbps"].unit == "GB/s"


def test_a_plugin_fusion_and_implementation_appear_without_editing_the_suite(tmp_path):
    """A fusion registered by a plugin (a renamed copy of add_rmsnorm) with its own case file,
    and a plugin implementation of an existing fusion: both are benchmarked, and a kernel
    that is wrong reports its error figures instead of failing the run."""
    (tmp_path / "toy_plugin.py").write_text(textwrap.dedent("""
        import dataclasses
        import numpy as np
        from harness.backends import Prepared
        from harness.ops import NumpyOps
        from harness.registry import Implementation, register, register_fusion
        import impls.add_rmsnorm as base

        register_fusion(dataclasses.replace(base.SPEC, name="toy_fusion"))

        class Zeros(Prepared):
            def __init__(self, backend, spec, inputs, attrs, dtype):
                super().__init__(backend, spec, inputs, attrs, dtype)
                ref = spec.decompose(NumpyOps(dtype), **inputs, **attrs)
                self.out = {k: np.empty_like(v) for k, v in ref.items()}
            def run(self):
                for v in self.out.values():
                    v[...] = 0

        register(Implementation("add_rmsnorm", "cpu", "zeros", "fused", Zeros, ("float32",), origin="toy_plugin"))
    """))
    (tmp_path / "toy.toml").write_text(textwrap.dedent("""
        model = "toy"
        [[case]]
        fusion = "toy_fusion"
        name = "tiny"
        M = 2
        H = 33
        suites = ["smoke"]
    """))
    probe = textwrap.dedent(f"""
        import json, tempfile
        from benchmarks import fusions as f
        toy = f.BENCHMARK_CLASSES["toy_fusion"]
        avail = f.backend_availability()
        cache = {{"memo": tempfile.mkdtemp(), "available": avail, "peaks": {{"cpu": {{}}}},
                  "run": {{"machine": "m", "fingerprint": {{}}, "commit": "c", "dirty": False, "versions": {{}},
                          "run_id": "r"}}}}
        bench = f.BENCHMARK_CLASSES["{FUSION}"]()
        bench.setup(cache, "cpu/zeros", "{CASE}", "float32")
        print(json.dumps({{"toy_params": toy.params, "impls": f.fusion_params("{FUSION}")[0],
                          "nmse": bench.track_nmse(cache, "cpu/zeros", "{CASE}", "float32"),
                          "time": bench.track_time(cache, "cpu/zeros", "{CASE}", "float32")}}))
    """)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}", FUSEBENCH_PLUGINS="toy_plugin",
               FUSEBENCH_ASV_CASES=str(tmp_path / "toy.toml"), FUSEBENCH_ASV_BUDGET="0.01",
               FUSEBENCH_ASV_MIN_SAMPLES="3")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["toy_params"][1] == ["toy.tiny"] and "cpu/unfused" in got["toy_params"][0]
    assert "cpu/zeros" in got["impls"]
    assert got["nmse"] == pytest.approx(1.0)  # all zeros: the error shows in the history
    assert got["time"] > 0
    assert "fails the accuracy gate" in out.stderr


# --- 2. asv run and history save the harness's figures ---------------------------------

def _asv_suite(*args, env) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "harness.asv_suite", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{args}: exit {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


def _results(results_dir: Path, commit: str) -> dict:
    """{benchmark: {(impl, case, dtype): value}} from asv's results file of one commit."""
    files = list((results_dir / MACHINE).glob(f"{commit[:8]}-*.json"))
    assert len(files) == 1, files
    data = json.loads(files[0].read_text())
    cols = data["result_columns"]
    out = {}
    for name, row in data["results"].items():
        values, params = row[cols.index("result")], row[cols.index("params")]
        keys = [tuple(ast.literal_eval(p) for p in combo) for combo in itertools.product(*params)]  # reprs
        out[name] = dict(zip(keys, values))
    return out


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("asv")
    conf = load_config(ROOT / "asv.conf.json")
    conf.update(results_dir=str(tmp / "results"), html_dir=str(tmp / "html"), env_dir=str(tmp / "env"))
    config = tmp / "asv.conf.json"
    config.write_text(json.dumps(conf, indent=1))
    home = tmp / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), FUSEBENCH_ASV_MIN_SAMPLES="5")
    env.pop("FUSEBENCH_ASV_ROOT", None)
    base = ["--config", str(config)]

    _asv_suite(*base, "machine", "--machine", MACHINE, env=env)
    assert MACHINE in json.loads((home / ".asv-machine.json").read_text())
    # this working tree, recorded as HEAD: three implementations of one fusion, quick mode
    # plus every fusion's class (one per fusion) on its awkward smoke case, the fused cpu kernel
    # (float32): no generated benchmark is broken
    _asv_suite(*base, "run", "--machine", MACHINE, "--quick", "--budget", "0.02", "--backends",
               "reference,cpu,torch", "-b", _subset(IMPLS), "-b", EVERY_CLASS, env=env)
    # the last two commits, each from its own worktree: torch eager only (the reference is
    # checked, never timed, so it has no time to keep a history of)
    commits = subprocess.run(["git", "rev-list", "--first-parent", "--max-count=2", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()[::-1]
    _asv_suite(*base, "history", str(len(commits)), "--machine", MACHINE, "--quick", "--budget", "0.05",
               "--backends", "torch", "-b", _subset((HISTORY_IMPL,)), "--worktrees", str(tmp / "worktrees"),
               "--prune", "--publish", env=env)
    listed = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert str(tmp / "worktrees") not in listed  # --prune removed them
    return {"tmp": tmp, "conf": conf, "commits": commits, "html": Path(conf["html_dir"])}


def test_quick_run_saves_the_fusebench_figures(history):
    head = history["commits"][-1]
    results = _results(Path(history["conf"]["results_dir"]), head)
    records = [json.loads(line) for line in
               (history["tmp"] / "fusebench" / f"{head[:12]}.jsonl").read_text().splitlines()]
    by_impl = {r["impl"].split("/", 1)[1]: r for r in records if r["fusion"] == FUSION and r["case"] == CASE
               and r["dtype"] == "float32"}
    for impl in IMPLS:
        key = (impl, CASE, "float32")
        rec = by_impl[impl]
        assert rec["status"] == "ok" and rec["case"] == CASE and rec["dtype"] == "float32"
        if impl.startswith("reference/"):  # the yardstick is checked, never timed: no time to track
            assert "median_s" not in rec and math.isnan(results[f"fusions.{FUSION}.track_time"][key])
        else:
            assert results[f"fusions.{FUSION}.track_time"][key] == rec["median_s"] > 0
        if not impl.startswith("reference/"):
            assert results[f"fusions.{FUSION}.track_noise"][key] == rec["noise"]
            assert results[f"fusions.{FUSION}.track_gbps"][key] == pytest.approx(rec["gbps"])
        assert results[f"fusions.{FUSION}.track_nmse"][key] == rec["nmse"] >= 0
        assert results[f"fusions.{FUSION}.track_max_ulp"][key] == rec["max_ulp"] >= 0
        if not impl.startswith("reference/"):
            assert rec["n"] >= 5 and rec["time"]["samples"]  # the runner's own measure() record
    # torch eager, measured from HEAD's worktree by `history`, is recorded under HEAD's commit
    assert by_impl[HISTORY_IMPL]["commit"] == head
    # every class ran its fused cpu kernel on the awkward smoke case
    from benchmarks import fusions

    available = fusions.backend_availability()
    for name, cls in fusions.BENCHMARK_CLASSES.items():
        for impl, case in itertools.product(("cpu/fused",), set(cls.params[1]) & {"smoke.awkward"}):
            if fusions.skip_reason(cls.fusion, impl, case, "float32", available) is None:
                assert results[f"fusions.{name}.track_time"][(impl, case, "float32")] > 0, (name, impl, case)
    # nothing outside the --bench subsets ran: those combinations stay empty (nan)
    assert math.isnan(results[f"fusions.{FUSION}.track_time"][("cpu/fused", CASE, "float16")])


def test_history_has_every_commit(history):
    for commit in history["commits"]:
        value = _results(Path(history["conf"]["results_dir"]), commit)[f"fusions.{FUSION}.track_time"][
            (HISTORY_IMPL, CASE, "float32")]
        assert value > 0, commit
        rec = json.loads((history["tmp"] / "fusebench" / f"{commit[:12]}.jsonl").read_text().splitlines()[-1])
        assert rec["commit"] == commit and not rec["dirty"]  # measured from the commit's own checkout


# --- 3. the published site, offline, in a browser --------------------------------------

def test_site_loads_nothing_from_a_network(history):
    index = (history["html"] / "index.html").read_text()
    assert not re.search(r"""<(script|link)\b[^>]*\b(src|href)=["']?(https?:)?//""", index)
    for name in ("jquery.js", "jquery.flot.js", "fusebench-offline.js", "fusebench-offline.css"):
        assert (history["html"] / "offline" / name).stat().st_size > 1000




class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_site_draws_graphs_in_a_browser(history):
    driver = chrome(console_log=True)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # asv's page fetches its JSON with XHR, which file:// does not allow: serve it
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_QuietHandler, directory=str(history["html"])))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    wait = WebDriverWait(driver, 30)
    try:
        driver.get(url)
        wait.until(lambda d: "fusebench" in d.title)  # asv's JS ran (else: "dependencies failed" page)
        grid = wait.until(lambda d: d.find_element(By.ID, "summarygrid-display").text)
        assert f"{FUSION}.track_time" in grid

        driver.get(f"{url}#fusions.{FUSION}.track_time")
        canvas = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#main-graph canvas.flot-base"))[0]
        wait.until(lambda d: _inked(d, canvas) > 500)  # axes, ticks and the series drawn
        nav = driver.find_element(By.ID, "graphdisplay-navigation").text
        assert "reference/float64" in nav and MACHINE in nav

        # the commit-date axis (flot's time mode) and an implementation axis (categories) draw too
        driver.find_element(By.ID, "date-scale").click()
        wait.until(lambda d: re.search(r"\d{4}-\d\d-\d\d", d.find_element(By.ID, "main-graph").text))
        axis = next(b for b in driver.find_elements(By.CSS_SELECTOR, "#graphdisplay-navigation a")
                    if b.text.strip() == "implementation")
        axis.click()
        wait.until(lambda d: "cpu/fused" in d.find_element(By.ID, "main-graph").text)
        canvas = driver.find_element(By.CSS_SELECTOR, "#main-graph canvas.flot-base")
        assert _inked(driver, canvas) > 500

        errors = [e for e in driver.get_log("browser")
                  if e["level"] == "SEVERE" and "404" not in e["message"]]  # 404: benchmarks never run here
        assert not errors, errors
    finally:
        driver.quit()
        server.shutdown()


def _inked(driver, canvas) -> int:
    """Pixels of the canvas that are not transparent or white."""
    return driver.execute_script("""
        const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4)
            if (d[i + 3] > 0 && (d[i] < 240 || d[i + 1] < 240 || d[i + 2] < 240)) n++;
        return n;""", canvas)
