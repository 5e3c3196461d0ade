// gemm_swiglu: y = silu(x @ Wg.T) * (x @ Wu.T), gate and up accumulated together in f32.
//
// impls/gemm_swiglu/wgsl.py replaces the line below with the buffer declarations
// (harness.backends.wgsl.wgsl_buffers): x, wg, wu at bindings 0..2 (read through ld_x /
// ld_wg / ld_wu as f32), y at binding 3 (written through st_y), and
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
      ag[r] += a * ld_wg(wo[r] + h);
      au[r] += a * ld_wu(wo[r] + h);
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
const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;
var<workgroup> tl_a: array<f32, 1024>;  // TK * TM, [k][m]
var<workgroup> tl_g: array<f32, 1024>;  // TK * TN, [k][n]
var<workgroup> tl_u: array<f32, 1024>;  // TK * TN, [k][n]

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
  var c0 = vec4<f32>(0.0); var c1 = vec4<f32>(0.0); var c2 = vec4<f32>(0.0); var c3 = vec4<f32>(0.0);
  var e0 = vec4<f32>(0.0); var e1 = vec4<f32>(0.0); var e2 = vec4<f32>(0.0); var e3 = vec4<f32>(0.0);
  var v0 = vec4<f32>(0.0); var v1 = vec4<f32>(0.0); var v2 = vec4<f32>(0.0); var v3 = vec4<f32>(0.0);
  var f0 = vec4<f32>(0.0); var f1 = vec4<f32>(0.0); var f2 = vec4<f32>(0.0); var f3 = vec4<f32>(0.0);
  for (var k0 = 0u; k0 < H; k0 += TK) {
    let gk = k0 + lk;
    for (var i = 0u; i < 4u; i++) {
      let r = lr + i * 16u;
      var a = 0.0;
      if (m0 + r < M && gk < H) { a = ld_x((m0 + r) * H + gk); }
      tl_a[lk * TM + r] = a;
      var g = 0.0;
      var u = 0.0;
      if (n0 + r < I && gk < H) { g = ld_wg((n0 + r) * H + gk); u = ld_wu((n0 + r) * H + gk); }
      tl_g[lk * TN + r] = g;
      tl_u[lk * TN + r] = u;
    }
    workgroupBarrier();
    var d0 = vec4<f32>(0.0); var d1 = vec4<f32>(0.0); var d2 = vec4<f32>(0.0); var d3 = vec4<f32>(0.0);
    var q0 = vec4<f32>(0.0); var q1 = vec4<f32>(0.0); var q2 = vec4<f32>(0.0); var q3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < TK; kk++) {
      let ab = kk * TM + ty * 4u;
      let bb = kk * TN + tx * 4u;
      let g = vec4<f32>(tl_g[bb], tl_g[bb + 1u], tl_g[bb + 2u], tl_g[bb + 3u]);
      let u = vec4<f32>(tl_u[bb], tl_u[bb + 1u], tl_u[bb + 2u], tl_u[bb + 3u]);
      let a0 = tl_a[ab]; let a1 = tl_a[ab + 1u]; let a2 = tl_a[ab + 2u]; let a3 = tl_a[ab + 3u];
      d0 += a0 * g; d1 += a1 * g; d2 += a2 * g; d3 += a3 * g;
      q0 += a0 * u; q1 += a1 * u; q2 += a2 * u; q3 += a3 * u;
    }
    e0 += d0; e1 += d1; e2 += d2; e3 += d3;
    f0 += q0; f1 += q1; f2 += q2; f3 += q3;
    if ((k0 / TK) % 16u == 15u) {
      c0 += e0; c1 += e1; c2 += e2; c3 += e3;
      v0 += f0; v1 += f1; v2 += f2; v3 += f3;
      e0 = vec4<f32>(0.0); e1 = vec4<f32>(0.0); e2 = vec4<f32>(0.0); e3 = vec4<f32>(0.0);
      f0 = vec4<f32>(0.0); f1 = vec4<f32>(0.0); f2 = vec4<f32>(0.0); f3 = vec4<f32>(0.0);
    }
    workgroupBarrier();
  }
  let gs = array<vec4<f32>, 4>(c0 + e0, c1 + e1, c2 + e2, c3 + e3);
  let us = array<vec4<f32>, 4>(v0 + f0, v1 + f1, v2 + f2, v3 + f3);
  for (var i = 0u; i < 4u; i++) {
    let gm = m0 + ty * 4u + i;
    for (var j = 0u; j < 4u; j++) {
      let gn = n0 + tx * 4u + j;
      if (gm < M && gn < I) { st_y(gm * I + gn, swiglu(gs[i][j], us[i][j])); }
    }
  }
}
