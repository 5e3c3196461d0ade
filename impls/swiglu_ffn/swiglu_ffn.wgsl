// swiglu_ffn, second dispatch: y = act @ Wd.T, the down projection of the f32 activation
// that the first dispatch (impls/gemm_swiglu/gemm_swiglu.wgsl, f32 output) left in a
// device scratch buffer. Accumulated in f32.
//
// impls/swiglu_ffn/wgsl.py replaces the line below with the buffer declarations
// (harness.backends.wgsl.wgsl_buffers): act (always f32) and wd at bindings 0, 1 (read
// through ld_act / ld_wd), y at binding 2 (written through st_y), and
// `var<uniform> P: Params` at binding 3.
// @@BUFFERS@@

struct Params { M: u32, I: u32, H: u32, _p: u32 }

// ---------------------------------------------------------------------------------
// gemv: few rows (decode). Workgroup (wid.x, wid.y) computes y[m = wid.y, n0 .. n0+R):
// each invocation strides over i, uses act[m, i] against R rows of Wd, the partial sums
// are added in workgroup memory. Rows past H are clamped to H-1 (computed, never stored).
// ---------------------------------------------------------------------------------
const GV_WG: u32 = @@GV_WG@@u;
const GV_R: u32 = 16u;
var<workgroup> gv_red: array<f32, @@GV_RED@@>;  // GV_R * GV_WG

@compute @workgroup_size(@@GV_WG@@)
fn down_gemv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let m = wid.y;
  let n0 = wid.x * GV_R;
  let I = P.I;
  let H = P.H;
  let ao = m * I;
  var acc: array<f32, 16>;
  var wo: array<u32, 16>;
  for (var r = 0u; r < GV_R; r++) { acc[r] = 0.0; wo[r] = min(n0 + r, H - 1u) * I; }
  for (var k = t; k < I; k += GV_WG) {
    let a = ld_act(ao + k);
    for (var r = 0u; r < GV_R; r++) { acc[r] += a * ld_wd(wo[r] + k); }
  }
  for (var r = 0u; r < GV_R; r++) { gv_red[r * GV_WG + t] = acc[r]; }
  workgroupBarrier();
  if (t < GV_R && n0 + t < H) {
    var s = 0.0;
    for (var i = 0u; i < GV_WG; i++) { s += gv_red[t * GV_WG + i]; }
    st_y(m * H + n0 + t, s);
  }
}

// ---------------------------------------------------------------------------------
// tiled: many rows (prefill). 64 x 64 output tiles, I in steps of 16 through workgroup
// memory, 4 x 4 outputs per invocation in vec4 registers, sums in three levels.
// ---------------------------------------------------------------------------------
//@fusebench-splice fb_tile.wgsl
var<workgroup> tl_a: array<f32, 1024>;
var<workgroup> tl_b: array<f32, 1024>;

@compute @workgroup_size(256)
fn down_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let M = P.M;
  let K = P.I;
  let N = P.H;
  let m0 = wid.y * TM;
  let n0 = wid.x * TN;
  let tx = t % 16u;
  let ty = t / 16u;
  let lk = t % TK;
  let lr = t / TK;
  var acc: Tile;  // zero
  for (var k0 = 0u; k0 < K; k0 += TK) {
    let gk = k0 + lk;
    for (var i = 0u; i < 4u; i++) {
      let r = lr + i * 16u;
      var a = 0.0;
      if (m0 + r < M && gk < K) { a = ld_act((m0 + r) * K + gk); }
      tl_a[lk * TM + r] = a;
      var b = 0.0;
      if (n0 + r < N && gk < K) { b = ld_wd((n0 + r) * K + gk); }
      tl_b[lk * TN + r] = b;
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
      if (gm < M && gn < N) { st_y(gm * N + gn, cs[i][j]); }
    }
  }
}
