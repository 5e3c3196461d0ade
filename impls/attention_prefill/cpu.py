"""attention_prefill on the CPU: one numba kernel, flash-attention style (online softmax).

q: (B, Hq, S, d), k, v: (B, Hkv, S, d) -> o: (B, Hq, S, d). A task owns R = max(ROWS,
GROUP_ROWS / g) query positions of the g = Hq / Hkv heads that share one kv head
(fb_numba.group_queries), so every K and V row loaded serves g·R query rows. Keys go by
in blocks of KEYS, only up to the task's last position (causal): the block's logits
(g·R, KEYS) go to a small thread-local buffer, each row's running max and sum are updated
and its float32 accumulator rescaled (online softmax), and the block's V rows are added
in. The (S, S) matrix never exists; the largest buffer is g·R × KEYS floats.

float16 and bfloat16 arrive as raw 16-bit patterns; q rows and each K / V block are
widened to float32 once per task; o is rounded once, straight into the storage dtype.
"""

from __future__ import annotations

import numpy as np

from harness.backends.cpu import NumbaFused, bits16
from harness.registry import Implementation, register


class AttentionPrefillCpu(NumbaFused):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.q, self.k, self.v = self.host_inputs(inputs, ("q", "k", "v"))
        self.o = bits16(self.alloc_outputs()["o"]).reshape(-1, self.dims["head_dim"])  # the kernel stores rounded bits here
        self.scale = np.float32(attrs["scale"])

    def run(self):
        self.kernel(self.q, self.k, self.v, self.scale, self.kind, self.o)


register(Implementation("attention_prefill", "cpu", "fused", "fused", AttentionPrefillCpu,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
