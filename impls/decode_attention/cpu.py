"""decode_attention on the CPU: one numba kernel, parallel over (sequence, kv head).

q: (B, Hq, d), k, v: (B, Hkv, T, d), lens: (B,) -> o: (B, Hq, d). A task owns one kv head
of one sequence and the g = Hq / Hkv query heads that read it, so each cache row is
loaded once for all g of them. Two passes over the valid rows t < lens[b] only (nothing
past lens is ever touched): pass 1 reads K and keeps the g·lens logits in a thread-local
float32 buffer (at T = 32768 and g = 4, 512 KB), then the softmax is taken per head with
its max subtracted; pass 2 reads V and accumulates the weighted rows in float32, in blocks
of SUM_BLOCK rows whose sums are then added (the softmax denominator likewise). The cache
is read exactly once; float32 rows are read in place. lens[b] = 0 writes zeros.

float16 and bfloat16 arrive as raw 16-bit patterns; each cache row is widened into a
d-float buffer in L1 as it streams, then serves all g heads; o is rounded once, straight
into the storage dtype. Split-K is not needed here: B·Hkv tasks already outnumber the two cores at every
case but B = 1 with Hkv = 2 (Qwen2.5-0.5B), where it is exactly two.
"""

from __future__ import annotations

import numpy as np

from harness.backends.cpu import NumbaFused, bits16
from harness.registry import Implementation, register


class DecodeAttentionCpu(NumbaFused):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.q, self.k, self.v = self.host_inputs(inputs, ("q", "k", "v"))
        self.lens = self.bind_inputs(inputs, ("lens",), np.ascontiguousarray)[0]
        self.o = bits16(self.alloc_outputs()["o"]).reshape(-1, self.dims["head_dim"])  # the kernel stores rounded bits here
        self.scale = np.float32(attrs["scale"])

    def run(self):
        self.kernel(self.q, self.k, self.v, self.lens, self.scale, self.kind, self.o)


register(Implementation("decode_attention", "cpu", "fused", "fused", DecodeAttentionCpu,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
