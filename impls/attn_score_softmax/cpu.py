"""attn_score_softmax on the CPU: one numba kernel, logits never stored.

q: (B, Hq, S, d), k: (B, Hkv, S, d) -> p: (B, Hq, S, S). A task owns ROWS query positions
of the g = Hq / Hkv heads that share one kv head (fb_numba.group_queries): every K row
loaded serves g·ROWS dot products. Keys go by in blocks of KEYS, only up to the task's
last position (causal); the logits of the task's rows land in a thread-local float32
buffer (g·ROWS × S: this is the on-chip part, sized by S at run time, so any S works),
then each row takes its max, exponentials and sum and is written once, normalised,
straight into P in the storage dtype, zeros past the diagonal.

float16 and bfloat16 arrive as raw 16-bit patterns; q rows and each K block are widened
to float32 once per task.
"""

from __future__ import annotations

import numpy as np

from harness.backends.cpu import NumbaFused, bits16
from harness.registry import Implementation, register


class AttnScoreSoftmaxCpu(NumbaFused):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.q, self.k = self.host_inputs(inputs, ("q", "k"))
        self.p = bits16(self.alloc_outputs()["p"]).reshape(-1, self.dims["S"])  # the kernel stores rounded bits here
        self.scale = np.float32(attrs["scale"])

    def run(self):
        self.kernel(self.q, self.k, self.scale, self.kind, self.p)


register(Implementation("attn_score_softmax", "cpu", "fused", "fused", AttnScoreSoftmaxCpu,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
