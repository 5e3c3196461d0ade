"""reference: every fusion's decomposition run by NumPy in float64 — the oracle.

Inputs arrive already rounded to the case's storage dtype; the reference computes on
those exact values in float64 and never rounds in between.
"""

from __future__ import annotations

import numpy as np

from harness.backends import Backend
from harness.backends.cpu import cpu_fingerprint, host_peak, host_peak_again
from harness.ops import NumpyOps


class ReferenceBackend(Backend):
    name = "reference"
    device_kind = "cpu"
    dtypes = ("float32", "float16", "bfloat16")
    compiles_per_size = False  # NumPy: nothing to compile

    # 1. probe and fingerprint: always available
    def fingerprint(self):
        return {"numpy": np.__version__, **cpu_fingerprint()}

    # 2. upload and download: host arrays, upcast once
    def upload(self, a):
        return np.asarray(a).astype(np.float64)

    # 3. synchronise and 4. timer: the host clock (Backend defaults)

    # 5. primitive ops
    def ops(self, dtype):
        return NumpyOps("float64")

    # 6. peak probe: the CPU's (the reference runs there)
    def measure_peak(self):
        return host_peak()

    def measure_peak_again(self):
        return host_peak_again()


BACKENDS = {"reference": ReferenceBackend()}
