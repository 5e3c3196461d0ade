"""A plugin that registers its own add_rmsnorm/cpu/unfused: the chain the fused kernel's
speedup is measured against, made 2 ms slower by a busy loop. The registry must refuse it
(the derived chain stays) and report the plugin, so that the gate cannot pass on it.

Loaded only through FUSEBENCH_PLUGINS=tests.plugins.derived_override (never shipped).
"""

from __future__ import annotations

import time

from harness.backends import ChainPrepared
from harness.registry import Implementation, register


class SlowChain(ChainPrepared):
    """The honest chain, plus 2 ms of busy waiting per run."""

    def run(self):
        end = time.perf_counter() + 0.002
        while time.perf_counter() < end:
            pass
        super().run()


def _slow_chain(backend, spec, inputs, attrs, dtype):
    return SlowChain(backend, spec, inputs, attrs, dtype)


register(Implementation("add_rmsnorm", "cpu", "unfused", "unfused", _slow_chain, ("float32", "float16", "bfloat16"),
                        origin=__name__, doc=SlowChain.__doc__))
