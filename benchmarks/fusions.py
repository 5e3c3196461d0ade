"""asv benchmarks generated from the fusebench registry: nobody edits this file when a
fusion, an implementation or a case is added.

One class per registered fusion, named after it (`fusions.rmsnorm_gemm`), with
`params = [implementation, case, dtype]`: every implementation registered for the fusion
(fused kernels, unfused chains, reference, torch peers, on every backend), every case of
the fusion in the chosen suite ($FUSEBENCH_ASV_SUITE, default "smoke"), every dtype of the
fusion. The same parameters on every machine, so that histories line up; a combination
this machine cannot run (no GPU, no wgpu, a dtype the case or implementation lacks) is
skipped the asv way: `setup` raises NotImplementedError.

Each combination is checked and timed once, by the harness's own runner
(`harness.runner.run_job` with `Options(bench=True)`, the loop `fusebench bench` runs):
`harness.timing.measure()` with device time where the backend has it (CUDA events,
WebGPU timestamp queries), the host clock otherwise. The record is kept in the run's
setup_cache folder, and every track_ benchmark of the class reads from it:

    track_time      median seconds per call (unit "seconds")
    track_noise     relative noise of that median (standard error / median)
    track_gbps      GB/s from the spec's cost model
    track_nmse      NMSE against the float64 reference (worst output)
    track_max_ulp   max ULP distance in the output dtype (worst output)

A kernel that drifts in accuracy shows in the NMSE / ULP history; one that fails the
accuracy gate still reports its figures (and says so on stderr); one that raises fails
the benchmark.

Environment (all optional):
    FUSEBENCH_ASV_SUITE        smoke | quick | full (default smoke)
    FUSEBENCH_ASV_BUDGET       seconds of samples per measurement (default 0.2;
                               `fusebench bench` uses 0.5)
    FUSEBENCH_ASV_MIN_SAMPLES  at least this many samples (default 10)
    FUSEBENCH_ASV_HOT=1        keep caches warm between samples (default: flush)
    FUSEBENCH_ASV_BACKENDS     only these backends, comma-separated (the rest are skipped)
    FUSEBENCH_ASV_CASES        more case files (os.pathsep-separated), e.g. for a plugin's fusions
    FUSEBENCH_ASV_TIMEOUT      seconds per benchmark process (default 900: first numba
                               compiles and torch.compile take tens of seconds)
    FUSEBENCH_ASV_RESULTS      also append each measured record to this fusebench
                               results file (JSON lines), for `fusebench report` and
                               `fusebench compare`: the same numbers asv tracks
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path

from harness.cases import load_cases, select, shipped_case_files
from harness.registry import discover

SUITE = os.environ.get("FUSEBENCH_ASV_SUITE", "smoke")
# Bump when the meaning of a tracked figure changes (asv keeps histories per version).
SUITE_VERSION = "fusebench-asv-1"
PARAM_NAMES = ["implementation", "case", "dtype"]


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


REGISTRY = discover()
# Case files beyond the shipped ones (e.g. for a plugin's fusions), os.pathsep-separated.
EXTRA_CASES = [f for f in os.environ.get("FUSEBENCH_ASV_CASES", "").split(os.pathsep) if f]
CASES = select(load_cases(REGISTRY, [*shipped_case_files(), *EXTRA_CASES]), suite=SUITE)
# Only these backends are measured (the others are skipped, as unavailable ones are).
BACKENDS = [b.strip() for b in os.environ.get("FUSEBENCH_ASV_BACKENDS", "").split(",") if b.strip()]


def options():
    """The runner options a measurement uses (those of `fusebench bench`, smaller budget)."""
    from harness.runner import Options

    return Options(bench=True, budget_s=_env_float("FUSEBENCH_ASV_BUDGET", 0.2),
                   min_samples=int(_env_float("FUSEBENCH_ASV_MIN_SAMPLES", 10)),
                   cold=os.environ.get("FUSEBENCH_ASV_HOT", "") in ("", "0"))


def impl_label(impl) -> str:
    return f"{impl.backend}/{impl.variant}"


def fusion_params(fusion: str) -> list[list[str]]:
    """[implementations, cases, dtypes] of one fusion in the chosen suite."""
    spec = REGISTRY.fusions[fusion]
    impls = [impl_label(i) for i in REGISTRY.select(fusions=[fusion])]
    cases = [c.id for c in CASES if c.fusion == fusion]
    return [impls, cases, list(spec.dtypes)]


def backend_availability() -> dict[str, list]:
    """{backend: [ok, reason]} for every backend the registry uses (and $FUSEBENCH_ASV_BACKENDS allows)."""
    from harness.backends import get_backend

    names = [b for b in dict.fromkeys(i.backend for i in REGISTRY.impls.values()) if not BACKENDS or b in BACKENDS]
    available = {}
    for name in names:
        try:
            available[name] = list(get_backend(name).probe())
        except Exception as e:  # a backend module that cannot load is unavailable, not fatal
            available[name] = [False, f"backend {name!r} failed to load: {type(e).__name__}: {e}"]
    return available


def probe_backends() -> dict:
    """What setup_cache hands every benchmark: the memo folder (asv runs setup_cache and
    the benchmarks that share it in one temporary folder), each backend's availability and
    measured peak, and the run's machine fingerprint and commit: probed once per asv run,
    as `fusebench bench` probes them once per run."""
    from harness.backends import get_backend
    from harness.results import RunInfo

    available = backend_availability()
    usable = [get_backend(n) for n, (ok, _) in available.items() if ok]
    info = RunInfo.collect(usable)  # machine, fingerprint, commit, versions, run_id: one per asv run
    peaks = {}
    for backend in usable:  # in one process, as `fusebench bench` does: the CPU backends share one probe
        try:
            peaks[backend.name] = backend.peak()
        except Exception:  # left to the benchmark, which records the error as the runner does
            pass
    cache = {"memo": os.getcwd(), "available": available, "peaks": peaks, "run": dataclasses.asdict(info)}
    # Plain JSON types only: asv unpickles this in every benchmark process, and a str
    # subclass such as torch's version string would import torch there each time.
    return json.loads(json.dumps(cache, default=jsonable))


def skip_reason(fusion: str, impl: str, case_id: str, dtype: str, available: dict) -> str | None:
    """Why this combination is not measured here (None: it is)."""
    key = f"{fusion}/{impl}"
    implementation = REGISTRY.impls.get(key)
    if implementation is None:
        return f"{key} is not registered"
    case = next((c for c in CASES if c.fusion == fusion and c.id == case_id), None)
    if case is None:
        return f"no case {case_id} for {fusion} in suite {SUITE}"
    if dtype not in case.dtypes:
        return f"case {case_id} does not run {dtype}"
    if dtype not in implementation.dtypes:
        return f"{key} does not claim {dtype}"
    if BACKENDS and implementation.backend not in BACKENDS:
        return f"backend {implementation.backend} not selected (FUSEBENCH_ASV_BACKENDS={','.join(BACKENDS)})"
    ok, why = available.get(implementation.backend, (False, f"backend {implementation.backend} not probed"))
    if not ok:
        return f"{key} is unavailable here: {why}"
    return None


def _memo_path(cache: dict, fusion: str, impl: str, case_id: str, dtype: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{fusion}__{impl}__{case_id}__{dtype}")
    return Path(cache["memo"]) / f"record-{name}.json"


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, default=jsonable))
    os.replace(tmp, path)


def jsonable(o):
    # a copy of harness.results.jsonable: this file also measures older commits, whose
    # harness may not have it (see harness/asv_suite.py, history)
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "as_dict"):
        return o.as_dict()
    return str(o)


def measure_one(cache: dict, fusion: str, impl: str, case_id: str, dtype: str) -> dict:
    """Check and time one combination with the harness's runner; the stamped record."""
    from harness.backends import get_backend
    from harness.results import ResultsWriter, RunInfo
    from harness.runner import Job, run_job

    implementation = REGISTRY.impls[f"{fusion}/{impl}"]
    case = next(c for c in CASES if c.fusion == fusion and c.id == case_id)
    backend = get_backend(implementation.backend)
    if implementation.backend in cache.get("peaks", {}):  # measured once per asv run in setup_cache
        backend._peak = cache["peaks"][implementation.backend]
    records: list[dict] = []
    run_job(REGISTRY, Job(case, dtype, [implementation]), options(), records.append)
    info = RunInfo(**cache["run"])
    rec = info.stamp(records[0])
    rec["asv"] = {"suite": SUITE, "budget_s": options().budget_s}
    results = os.environ.get("FUSEBENCH_ASV_RESULTS")
    if results:
        with ResultsWriter(results) as writer:
            writer.write(rec)
    return rec


def measured(cache: dict, fusion: str, impl: str, case_id: str, dtype: str) -> dict:
    """The record of one combination: measured by the first benchmark that asks, read back
    by the others. NotImplementedError where it cannot run here."""
    why = skip_reason(fusion, impl, case_id, dtype, cache["available"])
    if why:
        raise NotImplementedError(why)
    path = _memo_path(cache, fusion, impl, case_id, dtype)
    if path.exists():
        rec = json.loads(path.read_text())
    else:
        rec = measure_one(cache, fusion, impl, case_id, dtype)
        _write_json(path, rec)
        if rec.get("status") == "fail":
            print(f"fusebench: {rec['impl']} {case_id} {dtype} fails the accuracy gate: {rec.get('reason')}",
                  file=sys.stderr)
    if rec.get("status") in ("unavailable", "skipped"):  # e.g. a chain primitive missing, a case too large here
        raise NotImplementedError(f"{rec['impl']} {case_id} {dtype}: {rec.get('status')}: {rec.get('reason')}")
    if rec.get("status") == "error":
        raise RuntimeError(f"{rec['impl']} {case_id} {dtype}: {rec.get('reason')}\n{rec.get('traceback', '')}")
    return rec


def _number(x) -> float:
    return float("nan") if x is None else float(x)


class _FusionBenchmark:
    """The shape of every generated class; `fusion` and `params` are set per subclass."""

    fusion = ""
    param_names = PARAM_NAMES
    params: list = []
    version = SUITE_VERSION
    timeout = _env_float("FUSEBENCH_ASV_TIMEOUT", 900.0)

    def setup_cache(self):
        return probe_backends()

    setup_cache.timeout = 600.0

    def setup(self, cache, impl, case, dtype):
        self.record = measured(cache, self.fusion, impl, case, dtype)

    def track_time(self, cache, impl, case, dtype):
        return _number(self.record.get("median_s"))

    track_time.unit = "seconds"

    def track_noise(self, cache, impl, case, dtype):
        return _number(self.record.get("noise"))

    track_noise.unit = "relative"

    def track_gbps(self, cache, impl, case, dtype):
        return _number(self.record.get("gbps"))

    track_gbps.unit = "GB/s"

    def track_nmse(self, cache, impl, case, dtype):
        return _number(self.record.get("nmse"))

    track_nmse.unit = "NMSE"

    def track_max_ulp(self, cache, impl, case, dtype):
        return _number(self.record.get("max_ulp"))

    track_max_ulp.unit = "ULP"


def class_name(fusion: str) -> str:
    """asv splits benchmark names on '.' and '-': keep a fusion name to identifier characters."""
    return re.sub(r"\W", "_", fusion)


def _make_classes() -> dict[str, type]:
    classes = {}
    for fusion in REGISTRY.fusions:
        params = fusion_params(fusion)
        if not all(params):  # no case of this fusion in the suite
            continue
        name = class_name(fusion)
        classes[name] = type(name, (_FusionBenchmark,), {
            "fusion": fusion, "params": params, "__module__": __name__,
            "__doc__": f"{fusion}: every implementation x {SUITE} case x dtype, timed by harness.timing.measure()",
        })
    return classes


BENCHMARK_CLASSES = _make_classes()
globals().update(BENCHMARK_CLASSES)
