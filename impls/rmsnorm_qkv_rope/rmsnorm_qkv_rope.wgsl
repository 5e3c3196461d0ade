// rmsnorm_qkv_rope: q | k | v = (x * rsqrt(mean(x^2) + eps) * gamma) @ W.T, then rotary
// embedding (rotate-half / NeoX) on q and k, applied to the f32 accumulators before they
// are stored. One dispatch.
//
// impls/rmsnorm_qkv_rope/wgsl.py replaces the line below with the buffer declarations
// (harness.backends.wgsl.wgsl_buffers): x, gamma, w at bindings 0..2 (ld_x / ld_gamma /
// ld_w), pos (array<i32>) at 3, freq (array<u32>, the rotary table of
// WgslBackend.rope_table) at 4, the outputs q, k, v at 5..7 (st_q / st_k / st_v), and
// `var<uniform> P: Params` at 8; then ROPE_WGSL (fb_rope_cs) from harness/backends/wgsl.py.
// @@BUFFERS@@

// Pair-major column order. The N = (nh + 2 nkv) d projected columns are visited in a
// "virtual" order j in which the two members of every rotary pair are adjacent:
// j = 2p + s, pair p = head * d/2 + i (i < d/2), s = 0 for column head*d + i and s = 1 for
// column head*d + i + d/2. Whoever owns virtual columns 2p and 2p+1 owns both
// accumulators of the pair and can rotate them in registers. v columns use the same
// order (and are not rotated). N is even, so a pair never straddles a tile edge.
//
// The normalisation is deferred as in rmsnorm_gemm: x * gamma is accumulated against W
// together with the sum of squares of x, and inv[m] = 1 / sqrt(mean(x^2) + eps) scales
// the accumulators (before the rotation, which is linear) when they are stored.
struct Params { M: u32, H: u32, N: u32, eps: f32, one: f32, nh: u32, nkv: u32, half: u32 }

// The W row (real column) of virtual column j.
fn w_row(j: u32) -> u32 {
  let p = j >> 1u;
  let head = p / P.half;
  return head * 2u * P.half + (p - head * P.half) + (j & 1u) * P.half;
}

// Store pair p of row m: a is column i, b column i + d/2 of the pair's head, both scaled.
fn store_pair(m: u32, p: u32, a: f32, b: f32) {
  let half = P.half;
  let d = 2u * half;
  let head = p / half;
  let i = p - head * half;
  if (head < P.nh + P.nkv) {
    let cs = fb_rope_cs(pos[m], freq[2u * i], freq[2u * i + 1u]);
    let ra = a * cs.x - b * cs.y;
    let rb = b * cs.x + a * cs.y;
    if (head < P.nh) {
      let o = (m * P.nh + head) * d + i;
      st_q(o, ra);
      st_q(o + half, rb);
    } else {
      let o = (m * P.nkv + head - P.nh) * d + i;
      st_k(o, ra);
      st_k(o + half, rb);
    }
  } else {
    let o = (m * P.nkv + head - P.nh - P.nkv) * d + i;
    st_v(o, a);
    st_v(o + half, b);
  }
}

//@fusebench-splice fb_tile.wgsl
//@fusebench-splice fb_rms_matmul.wgsl

// ---------------------------------------------------------------------------------
// gemv: few rows (decode), the entry point of fb_rms_matmul.wgsl: virtual columns
// n0 .. n0 + GV_R of row m (GV_R / 2 rotary pairs); then invocation t < GV_R / 2 adds up
// pair t's two partial dot products and the sum of squares, scales, rotates and stores.
// ---------------------------------------------------------------------------------
// The W rows of the 8 pairs, walked pair by pair without a division per row (one with a
// divisor that is not a constant per row kept lavapipe from keeping wo uniform: 1.7x
// slower). Virtual columns past N read row 0 (computed, never stored).
fn gv_rows(n0: u32) -> array<u32, 16> {
  let H = P.H;
  var wo: array<u32, 16>;
  var hd = (n0 / 2u) / P.half;
  var ii = n0 / 2u - hd * P.half;
  for (var r = 0u; r < GV_R; r += 2u) {
    let c = hd * 2u * P.half + ii;
    let past = n0 + r >= P.N;
    wo[r] = select(c, 0u, past) * H;
    wo[r + 1u] = select(c + P.half, 0u, past) * H;
    ii += 1u;
    if (ii == P.half) { ii = 0u; hd += 1u; }
  }
  return wo;
}

fn gv_store(m: u32, n0: u32, t: u32) {
  if (t < GV_R / 2u && n0 + 2u * t < P.N) {
    let inv = gv_inv_rms();
    store_pair(m, n0 / 2u + t, gv_dot(2u * t) * inv, gv_dot(2u * t + 1u) * inv);
  }
}

// ---------------------------------------------------------------------------------
// tiled: many rows (prefill), the entry point of fb_rms_matmul.wgsl: 64 x 64 tiles of (row,
// virtual column), W's rows gathered in pair order (w_row). Each invocation's 4 adjacent
// virtual columns are 2 whole pairs, which store4 rotates and stores.
// ---------------------------------------------------------------------------------
fn store4(m: u32, n: u32, y: vec4<f32>) {
  if (n < P.N) { store_pair(m, n / 2u, y.x, y.y); }
  if (n + 2u < P.N) { store_pair(m, n / 2u + 1u, y.z, y.w); }
}
