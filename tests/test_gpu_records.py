"""The GPU runs committed under reports/data/ still pass the accuracy gate as it is now.

A record keeps each output's NMSE against the float64 reference and the seed of its
inputs, so its squared error is NMSE · Σ reference², and the inputs, the reference, the
NumPy chain and the rounding model's allowance can all be made again here: the two
global rules of harness.accuracy (model bound and chain rule) are checked on every
passing record (the row rule needs the per-row errors, which records do not keep).
When the rules change, this says whether the kernels measured on real hardware would
still pass, without a GPU."""

from __future__ import annotations

import math

import pytest

from harness.accuracy import BOUND_UNITS, CHAIN_FLOOR_UNITS, FLOOR_CAP, Yardstick
from harness.report import COMMITTED_DATA
from harness.results import read_records

GPU_BACKENDS = ("cuda", "torch_cuda")
MAX_BYTES = 128e6  # cases judged again here (float32 bytes): the quick suite's sizes, not 1 GB FFN weights


def _gpu_records():
    if not COMMITTED_DATA.is_dir():
        return []
    loaded = read_records([COMMITTED_DATA])
    return [r for r in loaded.records if r.get("backend") in GPU_BACKENDS and r.get("status") == "ok"
            and r.get("outputs") and r.get("dtype") in ("float32", "float16", "bfloat16")]


def test_committed_gpu_records_pass_the_current_rules(registry):
    records = _gpu_records()
    if not records:
        pytest.skip("no GPU run committed under reports/data/")
    yards: dict[tuple, Yardstick] = {}
    worst: dict[str, float] = {}
    for r in records:
        spec = registry.fusions[r["fusion"]]
        if spec.cost(spec.split(r["params"])[0], "float32").bytes > MAX_BYTES:
            continue  # tens of seconds of float64 here each; the quick-suite records stand for them
        key = (r["fusion"], r["case"], r["dtype"], r["seed"], str(sorted(r["params"].items())))
        if key not in yards:
            dims, attrs = spec.split(r["params"])
            yards[key] = Yardstick.for_inputs(spec, spec.make_inputs(dims, r["dtype"], r["seed"]), attrs, r["dtype"])
        yard = yards[key]
        for name, m in r["outputs"].items():
            y = yard._yard(name)
            error = math.sqrt(m["nmse"]) * y.ref_norm
            floor = min(CHAIN_FLOOR_UNITS * y.sigma_norm, FLOOR_CAP * y.ref_norm)
            allowed = min(BOUND_UNITS * y.sigma_norm, max(yard.k * y.chain_err, floor))
            label = f"{r['impl']} {r['case']} {r['dtype']} {name}"
            worst[label] = max(worst.get(label, 0.0), error / allowed)
    failing = {k: v for k, v in worst.items() if v > 1}
    assert not failing, f"committed GPU records over the current allowance (error / allowed): {failing}"
    assert len(worst) >= 100  # the first H200 run: 198 gate records and more
