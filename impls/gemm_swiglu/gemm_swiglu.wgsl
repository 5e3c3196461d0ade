// gemm_swiglu: y = silu(x @ Wg.T) * (x @ Wu.T), gate and up accumulated together in f32.
//
// impls/gemm_swiglu/wgsl.py replaces the line below with the buffer declarations
// (harness.backends.wgsl.wgsl_buffers): x, w_gate, w_up at bindings 0..2 (read through
// ld_x / ld_w_gate / ld_w_up as f32), y at binding 3 (written through st_y), and
// `var<uniform> P: Params` at binding 4. y's storage mode may differ from the inputs'
// (swiglu_ffn writes an f32 scratch activation with the same kernels).
// @@BUFFERS@@

// Neither entry point writes the pre-activations: each invocation that owns output
// (m, n) holds both dot products x[m].Wg[n] and x[m].Wu[n] and stores only
// silu(g) * u = g / (1 + exp(-g)) * u. x is read once for both products.
struct Params { M: u32, H: u32, I: u32, _p: u32 }

fn swiglu(g: f32, u: f32) -> f32 { return g / (1.0 + exp(-g)) * u; }

// ---------------------------------------------------------------------------------
// gemv: few rows (decode). Workgroup (wid.x, wid.y) computes y[m = wid.y, n0 .. n0+R).
// Each invocation strides over h, loads x[m, h] once into a register and uses it against
// the R = 8 rows of Wg and the 8 rows of Wu (16 accumulators; with R = 16, 32 accumulators
// spilled on lavapipe and ran 10-15% slower). One barrier; then invocation
// r < R adds the GV_WG partial products of gate row n0 + r and of up row n0 + r and
// stores the activation. Rows past I are clamped to I-1 (computed, never stored).
// GV_WG is substituted by wgsl.py: 16 on CPU adapters, 256 on GPUs.
// ---------------------------------------------------------------------------------
const GV_WG: u32 = @@GV_WG@@u;
const GV_R: u32 = 8u;  // 8 gate + 8 up accumulators: as many registers as a plain GEMV's 16
var<workgroup> gv_g: array<f32, @@GV_RED@@>;  // GV_R * GV_WG
var<workgroup> gv_u: array<f32, @@GV_RED@@>;

@compute @workgroup_size(@@GV_WG@@)
fn gemv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let m = wid.y;
  let n0 = wid.x * GV_R;
  let H = P.H;
  let I = P.I;
  let xo = m * H;
  var ag: array<f32, 8>;
  var au: array<f32, 8>;
  var wo: array<u32, 8>;
  for (var r = 0u; r < GV_R; r++) { ag[r] = 0.0; au[r] = 0.0; wo[r] = min(n0 + r, I - 1u) * H; }
  for (var h = t; h < H; h += GV_WG) {
    let a = ld_x(xo + h);
    for (var r = 0u; r < GV_R; r++) {
      ag[r] += a * ld_w_gate(wo[r] + h);
      au[r] += a * ld_w_up(wo[r] + h);
    }
  }
  for (var r = 0u; r < GV_R; r++) { gv_g[r * GV_WG + t] = ag[r]; gv_u[r * GV_WG + t] = au[r]; }
  workgroupBarrier();
  if (t < GV_R && n0 + t < I) {
    var g = 0.0;
    var u = 0.0;
    for (var i = 0u; i < GV_WG; i++) { g += gv_g[t * GV_WG + i]; u += gv_u[t * GV_WG + i]; }
    st_y(m * I + n0 + t, swiglu(g, u));
  }
}

// ---------------------------------------------------------------------------------
// tiled: many rows (prefill). Workgroup (wid.x, wid.y) computes the TM x TN tile of y at
// (m0, n0) = (wid.y * TM, wid.x * TN), 4 x 4 outputs per invocation, each with a gate and
// an up accumulator (vec4 registers). H in steps of TK: the x tile and the Wg and Wu
// tiles go through workgroup memory (out-of-range elements load as 0). Wg and Wu are
// read ceil(M / TM) times, x ceil(I / TN) times. Sums run in three levels (TK terms per
// tile, 16 tiles, the rest) as in rmsnorm_gemm.
// ---------------------------------------------------------------------------------
//@fusebench-splice fb_tile.wgsl
var<workgroup> tl_a: array<f32, 1024>;  // TK * TM, [k][m]
var<workgroup> tl_b: array<f32, 2048>;  // two TK * TN tiles, [k][n]: Wg at 0, Wu at TK * TN

@compute @workgroup_size(256)
fn tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let M = P.M;
  let H = P.H;
  let I = P.I;
  let m0 = wid.y * TM;
  let n0 = wid.x * TN;
  let tx = t % 16u;
  let ty = t / 16u;
  let lk = t % TK;
  let lr = t / TK;
  var gate: Tile;  // zero
  var up: Tile;
  for (var k0 = 0u; k0 < H; k0 += TK) {
    let gk = k0 + lk;
    for (var i = 0u; i < 4u; i++) {
      let r = lr + i * 16u;
      var a = 0.0;
      if (m0 + r < M && gk < H) { a = ld_x((m0 + r) * H + gk); }
      tl_a[lk * TM + r] = a;
      var g = 0.0;
      var u = 0.0;
      if (n0 + r < I && gk < H) { g = ld_w_gate((n0 + r) * H + gk); u = ld_w_up((n0 + r) * H + gk); }
      tl_b[lk * TN + r] = g;
      tl_b[TK * TN + lk * TN + r] = u;
    }
    workgroupBarrier();
    tile_step2(&gate, &up, ty, tx, k0 / TK);
    workgroupBarrier();
  }
  let gs = tile_sums(gate);
  let us = tile_sums(up);
  for (var i = 0u; i < 4u; i++) {
    let gm = m0 + ty * 4u + i;
    for (var j = 0u; j < 4u; j++) {
      let gn = n0 + tx * 4u + j;
      if (gm < M && gn < I) { st_y(gm * I + gn, swiglu(gs[i][j], us[i][j])); }
    }
  }
}
