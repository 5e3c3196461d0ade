// ---- fusebench WGSL: RMSNorm folded into a matrix product (the GEMV and the tiled loop) ----
// Spliced into impls/rmsnorm_gemm/rmsnorm_gemm.wgsl and impls/rmsnorm_qkv_rope/
// rmsnorm_qkv_rope.wgsl where `//@fusebench-splice fb_rms_matmul.wgsl` stands, after
// fb_tile.wgsl (harness.splice). The kernel declares ld_x, ld_gamma, ld_w, a uniform `P`
// with fields M, H, N, eps and one, the column order and the stores of each entry point
// (gv_rows and gv_store for `gemv`, w_row and store4 for `tiled`); wgsl.py substitutes
// @@GV_WG@@ and @@GV_RED@@ (WgslBackend.gemv_source).
//
// The normalisation is deferred: y[m, n] = inv[m] * sum_h x[m,h] * gamma[h] * W[n,h], so
// x * gamma is accumulated against W and the sum of squares of x in the same pass over x,
// and the caller scales by inv[m] = 1 / sqrt(mean(x[m]^2) + eps) when it stores. x is read
// once per workgroup and no (M, H) intermediate exists. `one` = 1.0 comes in as a
// parameter so that 1.0 / sqrt(v) stays a correctly rounded sqrt and division (written as
// a literal, compilers fold it into an approximate rsqrt).

// ---- gemv: few rows (decode) --------------------------------------------------------------
// A workgroup of GV_WG invocations owns GV_R rows of W against one row of x. GV_WG is 16 on
// CPU adapters (lavapipe runs an invocation per SIMD lane and each workgroup on one core)
// and 256 on GPUs.
const GV_WG: u32 = @@GV_WG@@u;
const GV_R: u32 = 16u;
var<workgroup> gv_red: array<f32, @@GV_RED@@>;  // GV_R * GV_WG partial dot products, [r][t]
var<workgroup> gv_ss: array<f32, @@GV_WG@@>;    // partial sums of squares, [t]

// Invocation t strides over h: it loads x[xo + h] once into a register, adds its square to
// its partial sum of squares and uses x * gamma against the GV_R rows of W that start at
// element offsets wo[r]. The partials land in gv_red and gv_ss; ends with the barrier.
fn gv_partials(t: u32, xo: u32, wo_in: array<u32, 16>) {
  let H = P.H;
  var wo = wo_in;
  var ss = 0.0;
  var acc: array<f32, 16>;
  for (var r = 0u; r < GV_R; r++) { acc[r] = 0.0; }
  for (var h = t; h < H; h += GV_WG) {
    let xv = ld_x(xo + h);
    ss += xv * xv;
    let a = xv * ld_gamma(h);
    for (var r = 0u; r < GV_R; r++) { acc[r] += a * ld_w(wo[r] + h); }
  }
  for (var r = 0u; r < GV_R; r++) { gv_red[r * GV_WG + t] = acc[r]; }
  gv_ss[t] = ss;
  workgroupBarrier();
}

// After gv_partials: the dot product of W row number r (of the GV_R) with x * gamma.
fn gv_dot(r: u32) -> f32 {
  var s = 0.0;
  for (var i = 0u; i < GV_WG; i++) { s += gv_red[r * GV_WG + i]; }
  return s;
}

// After gv_partials: inv = 1 / RMS of the row of x.
fn gv_inv_rms() -> f32 {
  var tot = 0.0;
  for (var i = 0u; i < GV_WG; i++) { tot += gv_ss[i]; }
  return P.one / sqrt(tot / f32(P.H) + P.eps);
}

// Entry point `gemv`: workgroup (wid.x, wid.y) computes output columns n0 .. n0 + GV_R
// (n0 = wid.x * GV_R, in the kernel's column order) of row m = wid.y: gv_partials against
// the W rows the kernel's gv_rows(n0) gives, one barrier, then the kernel's
// gv_store(m, n0, t) adds up (gv_dot, gv_inv_rms) and stores.
@compute @workgroup_size(@@GV_WG@@)
fn gemv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let m = wid.y;
  let n0 = wid.x * GV_R;
  gv_partials(t, m * P.H, gv_rows(n0));
  gv_store(m, n0, t);
}

// ---- tiled: many rows (prefill) -------------------------------------------------------------
// Entry point `tiled`: workgroup (wid.x, wid.y) computes the TM x TN tile at rows m0 =
// wid.y * TM and columns n0 = wid.x * TN (of the kernel's column order), 4 x 4 outputs per
// invocation (fb_tile.wgsl). H goes in steps of TK through workgroup memory: x * gamma into
// tl_a and W into tl_b (out-of-range elements load as 0); the invocation that loads x[m, k]
// also adds x^2 to its partial sum of squares of row m (it always loads the same 4 rows at
// the same column offset), and the TK partials of a row meet in tl_ss at the end. Sums run
// in three levels (TK terms per tile, 16 tiles, the rest), which keeps the rounding error
// near that of a blocked BLAS sum instead of growing with sqrt(H). Each row of 4 is scaled
// by its inverse RMS and handed to the kernel's store4. W is read ceil(M / TM) times, x
// ceil(N / TN) times.
//
// The kernel declares `fn w_row(n: u32) -> u32`, the row of W that makes output column n,
// and `fn store4(m: u32, n: u32, y: vec4<f32>)`, which stores row m's outputs at columns
// n .. n + 3 (n a multiple of 4; those at or past N dropped).
var<workgroup> tl_a: array<f32, 1024>;   // TK * TM, [k][m]
var<workgroup> tl_b: array<f32, 1024>;   // TK * TN, [k][n]
var<workgroup> tl_ss: array<f32, 1024>;  // TM * TK partial sums of squares, [m][k]

// After the tile loop of `tiled`: inv = 1 / RMS of tile row rl (0 .. TM-1).
fn tl_inv_rms(rl: u32) -> f32 {
  var tot = 0.0;
  for (var kk = 0u; kk < TK; kk++) { tot += tl_ss[rl * TK + kk]; }
  return P.one / sqrt(tot / f32(P.H) + P.eps);
}

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
  var wrow: array<u32, 4>;  // the offsets of the W rows it loads (tile columns past N: the last)
  for (var i = 0u; i < 4u; i++) { wrow[i] = w_row(min(n0 + lr + i * 16u, N - 1u)) * H; }
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
      if (n0 + r < N && gk < H) { b = ld_w(wrow[i] + gk); }
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
    if (m0 + rl < M) { store4(m0 + rl, n0 + tx * 4u, cs[i] * tl_inv_rms(rl)); }
  }
}

// ---- end of fb_rms_matmul.wgsl --------------------------------------------------------------
