// rmsnorm_gemm: y = (x * rsqrt(mean(x^2) + eps) * gamma) @ W.T, accumulated in f32.
//
// impls/rmsnorm_gemm/wgsl.py replaces the line below with the buffer declarations for
// the storage dtype (harness.backends.wgsl.wgsl_buffers): x, gamma, w at bindings 0..2
// (read-only, loaded through ld_x / ld_gamma / ld_w as f32), y at binding 3 (written
// through st_y), and `var<uniform> P: Params` at binding 4.
// @@BUFFERS@@


// Both entry points defer the normalisation (harness/kernels/fb_rms_matmul.wgsl): x * gamma
// is accumulated against W together with the sum of squares of x, and the accumulators are
// scaled by inv[m] = 1 / sqrt(mean(x[m]^2) + eps) when they are stored.
struct Params { M: u32, H: u32, N: u32, eps: f32, one: f32 }

//@fusebench-splice fb_tile.wgsl
//@fusebench-splice fb_rms_matmul.wgsl

// ---------------------------------------------------------------------------------
// gemv: few rows (decode), the entry point of fb_rms_matmul.wgsl: y[m, n0 .. n0 + GV_R)
// from W rows n0 .. n0 + GV_R, those past N clamped to N - 1 (computed, never stored);
// then invocation r < GV_R adds the GV_WG partial dot products of row n0 + r and the
// partial sums of squares and stores dot * inverse RMS.
// ---------------------------------------------------------------------------------
fn gv_rows(n0: u32) -> array<u32, 16> {
  var wo: array<u32, 16>;
  for (var r = 0u; r < GV_R; r++) { wo[r] = min(n0 + r, P.N - 1u) * P.H; }
  return wo;
}

fn gv_store(m: u32, n0: u32, t: u32) {
  if (t < GV_R && n0 + t < P.N) { st_y(m * P.N + n0 + t, gv_dot(t) * gv_inv_rms()); }
}

// ---------------------------------------------------------------------------------
// tiled: many rows (prefill), the entry point of fb_rms_matmul.wgsl: 64 x 64 output tiles,
// 4 x 4 per invocation, in W's own column order.
// ---------------------------------------------------------------------------------
fn w_row(n: u32) -> u32 { return n; }

fn store4(m: u32, n: u32, y: vec4<f32>) {
  for (var j = 0u; j < 4u; j++) {
    if (n + j < P.N) { st_y(m * P.N + n + j, y[j]); }
  }
}
