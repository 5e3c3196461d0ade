// ---- fusebench WGSL: the sum across a workgroup of 256 invocations (a row per workgroup) ----
// Spliced into impls/add_rmsnorm/add_rmsnorm.wgsl and the WGSL chain's row kernels
// (harness/kernels/fb_chain_rows.wgsl) where `//@fusebench-splice fb_row_sum.wgsl` stands
// (harness.splice). It declares the workgroup array `red`.
var<workgroup> red: array<f32, 256>;

// The sum of every invocation's `v`, added in a tree in workgroup memory (the same order on
// every adapter); each invocation gets it. Called by the whole workgroup, in uniform control
// flow (it holds barriers). The sum stays in red[0]: a caller that writes red again first
// passes a barrier.
fn row_sum(t: u32, v: f32) -> f32 {
  red[t] = v;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (t < s) { red[t] += red[t + s]; }
    workgroupBarrier();
  }
  return red[0];
}
// ---- end of fb_row_sum.wgsl ---------------------------------------------------------------
