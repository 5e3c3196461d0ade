// ---- fusebench WGSL chain: the matmuls (linear, matmul_nt, matmul) -------------------------
// Batched over grid z: a: (batch, M, K), b: (batch, N, K) ("nt", a @ bᵀ: linear and the
// attention logits) or (batch, K, N) ("nn", a @ b), y: (batch, M, N). harness/backends/wgsl.py
// (WgslOps._batched) builds each kernel from a section below and the b variant named after
// it (harness.splice.kernel_sections, read once per process); wgsl_buffers declares a, b, y.
//@fusebench-section tiled
// Many rows: a 64 x 64 output tile per workgroup, K in steps of 16 through workgroup
// memory, 4 x 4 outputs per invocation, sums in three levels: the shared tile of the fused
// kernels (harness/kernels/fb_tile.wgsl); the b tile loaded as section tiled_b_nt or
// tiled_b_nn says, in place of the LOAD_B line.
struct Params { M: u32, K: u32, N: u32, _p: u32 }
//@fusebench-splice fb_tile.wgsl
var<workgroup> tl_a: array<f32, 1024>;
var<workgroup> tl_b: array<f32, 1024>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let M = P.M;
  let K = P.K;
  let N = P.N;
  let ao = wid.z * M * K;
  let bo = wid.z * K * N;
  let yo = wid.z * M * N;
  let m0 = wid.y * TM;
  let n0 = wid.x * TN;
  let tx = t % 16u;
  let ty = t / 16u;
  var acc: Tile;  // zero
  for (var k0 = 0u; k0 < K; k0 += TK) {
    for (var i = 0u; i < 4u; i++) {
      let e = t + i * 256u;
      let rr = e / TK;
      let kk = e % TK;
      let gk = k0 + kk;
      var a = 0.0;
      if (m0 + rr < M && gk < K) { a = ld_a(ao + (m0 + rr) * K + gk); }
      tl_a[kk * TM + rr] = a;
@@LOAD_B@@
    }
    workgroupBarrier();
    tile_step(&acc, ty, tx, 0u, k0 / TK);
    workgroupBarrier();
  }
  let cs = tile_sums(acc);
  for (var i = 0u; i < 4u; i++) {
    let gm = m0 + ty * 4u + i;
    for (var j = 0u; j < 4u; j++) {
      let gn = n0 + tx * 4u + j;
      if (gm < M && gn < N) { st_y(yo + gm * N + gn, cs[i][j]); }
    }
  }
}

//@fusebench-section tiled_b_nt
      // b (N, K): element (k, n) at n * K + k, loaded as the a tile is
      var bv = 0.0;
      if (n0 + rr < N && gk < K) { bv = ld_b(bo + (n0 + rr) * K + gk); }
      tl_b[kk * TN + rr] = bv;

//@fusebench-section tiled_b_nn
      // b (K, N): element (k, n) at k * N + n, loaded along n
      let bn = e % TN;
      let bk = e / TN;
      var bv = 0.0;
      if (n0 + bn < N && k0 + bk < K) { bv = ld_b(bo + (k0 + bk) * N + n0 + bn); }
      tl_b[bk * TN + bn] = bv;

//@fusebench-section matvec
// Few rows (M <= GEMV_MAX_M, decode): one workgroup per (GEMV_R = R output columns, row m,
// batch); each invocation strides over K and adds its share of the R columns (section
// matvec_b_nt or matvec_b_nn, in place of the MV_B line; col[r]: the column's offset in b,
// COL_STRIDE apart: K or 1); the partial sums are added up in workgroup memory. GV_WG is
// the workgroup size (WgslBackend.gemv_source: 16 on CPU adapters, 256 on GPUs). Columns
// past N are clamped to N - 1 (computed, never stored).
struct Params { M: u32, K: u32, N: u32, _p: u32 }
const WGS: u32 = @@GV_WG@@u;
const R: u32 = 16u;
var<workgroup> red: array<f32, @@GV_RED@@>;
@compute @workgroup_size(@@GV_WG@@)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let m = wid.y;
  let n0 = wid.x * R;
  let K = P.K;
  let N = P.N;
  let ao = (wid.z * P.M + m) * K;
  let bo = wid.z * K * N;
  var acc: array<f32, 16>;
  var col: array<u32, 16>;
  for (var r = 0u; r < R; r++) { acc[r] = 0.0; col[r] = min(n0 + r, N - 1u) * @@COL_STRIDE@@; }
  for (var k = t; k < K; k += WGS) {
    let a = ld_a(ao + k);
@@MV_B@@
  }
  for (var r = 0u; r < R; r++) { red[r * WGS + t] = acc[r]; }
  workgroupBarrier();
  if (t < R && n0 + t < N) {
    var s = 0.0;
    for (var i = 0u; i < WGS; i++) { s += red[t * WGS + i]; }
    st_y((wid.z * P.M + m) * N + n0 + t, s);
  }
}

//@fusebench-section matvec_b_nt
    for (var r = 0u; r < R; r++) { acc[r] += a * ld_b(bo + col[r] + k); }

//@fusebench-section matvec_b_nn
    let row = bo + k * N;
    for (var r = 0u; r < R; r++) { acc[r] += a * ld_b(row + col[r]); }
