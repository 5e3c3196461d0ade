// rmsnorm_gemm: y = (x * rsqrt(mean(x^2) + eps) * gamma) @ W.T, accumulated in f32.
//
// impls/rmsnorm_gemm/wgsl.py replaces the line below with the buffer declarations for
// the storage dtype (harness.backends.wgsl.wgsl_buffers): x, gamma, w at bindings 0..2
// (read-only, loaded through ld_x / ld_gamma / ld_w as f32), y at binding 3 (written
// through st_y), and `var<uniform> P: Params` at binding 4.
// @@BUFFERS@@


// Both entry points defer the normalisation: since y[m, n] = inv[m] * sum_h x[m,h] *
// gamma[h] * W[n,h], they accumulate x * gamma against W and the sum of squares of x in
// the same pass over x, and scale by inv[m] = 1 / sqrt(mean(x[m]^2) + eps) when the
// output is stored. x is read once per workgroup and no (M, H) intermediate exists.
// `one` = 1.0 is passed in so that 1.0 / sqrt(v) stays a correctly rounded sqrt and
// division (written as a literal, compilers fold it into an approximate rsqrt).
struct Params { M: u32, H: u32, N: u32, eps: f32, one: f32 }

// ---------------------------------------------------------------------------------
// gemv: few rows (decode). Workgroup (wid.x, wid.y) computes y[m = wid.y, n0 .. n0+R).
// Each invocation strides over h, loads x[m, h] once into a register, adds its square to
// the row's partial sum of squares and uses x * gamma against all R rows of W. One
// barrier; then invocation r < R adds the GV_WG partial dot products of row n0 + r and
// the GV_WG partial sums of squares (workgroup memory) and stores dot * inverse RMS.
// Rows past N are clamped to N-1 (computed, never stored) so the loop has no branches.
// GV_WG is substituted by wgsl.py: 16 on CPU adapters (lavapipe runs an invocation per
// SIMD lane and each workgroup on one core), 256 on GPUs.
// ---------------------------------------------------------------------------------
const GV_WG: u32 = @@GV_WG@@u;
const GV_R: u32 = 16u;
var<workgroup> gv_red: array<f32, @@GV_RED@@>;  // GV_R * GV_WG
var<workgroup> gv_ss: array<f32, @@GV_WG@@>;

@compute @workgroup_size(@@GV_WG@@)
fn gemv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let m = wid.y;
  let n0 = wid.x * GV_R;
  let H = P.H;
  let N = P.N;
  let xo = m * H;

  var ss = 0.0;
  var acc: array<f32, 16>;
  var wo: array<u32, 16>;
  for (var r = 0u; r < GV_R; r++) { acc[r] = 0.0; wo[r] = min(n0 + r, N - 1u) * H; }
  for (var h = t; h < H; h += GV_WG) {
    let xv = ld_x(xo + h);
    ss += xv * xv;
    let a = xv * ld_gamma(h);
    for (var r = 0u; r < GV_R; r++) { acc[r] += a * ld_w(wo[r] + h); }
  }
  for (var r = 0u; r < GV_R; r++) { gv_red[r * GV_WG + t] = acc[r]; }
  gv_ss[t] = ss;
  workgroupBarrier();
  if (t < GV_R && n0 + t < N) {
    var tot = 0.0;
    var s = 0.0;
    for (var i = 0u; i < GV_WG; i++) { tot += gv_ss[i]; s += gv_red[t * GV_WG + i]; }
    st_y(m * N + n0 + t, s * (P.one / sqrt(tot / f32(H) + P.eps)));
  }
}

// ---------------------------------------------------------------------------------
// tiled: many rows (prefill). Workgroup (wid.x, wid.y) computes the TM x TN tile of y at
// (m0, n0) = (wid.y * TM, wid.x * TN), 4 x 4 outputs per invocation (in vec4 registers).
// H in steps of TK: x * gamma and W tiles go through workgroup memory (out-of-range
// elements load as 0); the invocation that loads x[m, k] also adds x^2 to its partial sum
// of squares of row m (each invocation always loads the same 4 rows at the same column
// offset), and the TK partials per row are added in workgroup memory at the end.
// W is read ceil(M / TM) times, x ceil(N / TN) times.
// Sums run in three levels (TK terms per tile, 16 tiles, the rest), which keeps the
// rounding error near that of a blocked BLAS sum instead of growing with sqrt(H).
// ---------------------------------------------------------------------------------
//@fusebench-splice fb_tile.wgsl
var<workgroup> tl_a: array<f32, 1024>;  // TK * TM, [k][m]
var<workgroup> tl_b: array<f32, 1024>;  // TK * TN, [k][n]
var<workgroup> tl_ss: array<f32, 1024>;  // TM * TK partial sums of squares, [m][k]

@compute @workgroup_size(256)
fn tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let M = P.M;
  let H = P.H;
  let N = P.N;
  let m0 = wid.y * TM;
  let n0 = wid.x * TN;
  let tx = t % 16u;
  let ty = t / 16u;
  let lk = t % TK;   // the column this invocation loads in every tile ...
  let lr = t / TK;   // ... of rows lr, lr + 16, lr + 32, lr + 48
  var acc: Tile;  // zero
  var sc = vec4<f32>(0.0);
  var se = vec4<f32>(0.0);
  for (var k0 = 0u; k0 < H; k0 += TK) {
    let gk = k0 + lk;
    var g = 0.0;
    if (gk < H) { g = ld_gamma(gk); }
    var sq = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
      let r = lr + i * 16u;
      var xv = 0.0;
      if (m0 + r < M && gk < H) { xv = ld_x((m0 + r) * H + gk); }
      sq[i] = xv * xv;
      tl_a[lk * TM + r] = xv * g;
      var b = 0.0;
      if (n0 + r < N && gk < H) { b = ld_w((n0 + r) * H + gk); }
      tl_b[lk * TN + r] = b;
    }
    se += sq;
    workgroupBarrier();
    tile_step(&acc, ty, tx, 0u, k0 / TK);
    if ((k0 / TK) % 16u == 15u) {
      sc += se;
      se = vec4<f32>(0.0);
    }
    workgroupBarrier();
  }
  sc += se;
  for (var i = 0u; i < 4u; i++) { tl_ss[(lr + i * 16u) * TK + lk] = sc[i]; }
  workgroupBarrier();
  let cs = tile_sums(acc);
  for (var i = 0u; i < 4u; i++) {
    let rl = ty * 4u + i;
    let gm = m0 + rl;
    var tot = 0.0;
    for (var kk = 0u; kk < TK; kk++) { tot += tl_ss[rl * TK + kk]; }
    let inv = P.one / sqrt(tot / f32(H) + P.eps);
    for (var j = 0u; j < 4u; j++) {
      let gn = n0 + tx * 4u + j;
      if (gm < M && gn < N) { st_y(gm * N + gn, cs[i][j] * inv); }
    }
  }
}
