// add_rmsnorm: h = x + residual; y = h * (1 / sqrt(mean(h^2) + eps)) * gamma, in f32.
//
// impls/add_rmsnorm/wgsl.py replaces the line below with the buffer declarations for the
// storage dtype (harness.backends.wgsl.wgsl_buffers): x, residual, gamma at bindings 0..2
// (read through ld_x / ld_residual / ld_gamma as f32), h and y at 3, 4 (written through
// st_h / st_y), and `var<uniform> P: Params` at binding 5. VPT (values per invocation,
// ceil(H / 256)) is substituted for @@VPT@@.
// @@BUFFERS@@

// One workgroup per row. Each invocation loads its strided share of x and residual once
// (elements t, t + 256, ...), forms h in f32, stores h, keeps it in a private array of VPT
// registers and adds h^2 to its partial sum of squares; the 256 partial sums are added in
// a tree in workgroup memory (row_sum); then each invocation scales its kept h values and stores y.
// x and residual are read once, h and y written once; y is normalised from the f32 h,
// not from h rounded to the storage dtype as the unfused chain must.
// `one` = 1.0 is passed in so that one / sqrt(v) stays a correctly rounded sqrt and
// division (a literal lets the compiler fold it into an approximate rsqrt).
struct Params { rows: u32, H: u32, eps: f32, one: f32 }
const WG: u32 = 256u;
const VPT: u32 = @@VPT@@u;
//@fusebench-splice fb_row_sum.wgsl

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) t: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= P.rows) { return; }  // uniform across the workgroup: barriers stay valid
  let H = P.H;
  let o = row * H;
  var hv: array<f32, VPT>;
  var ss = 0.0;
  for (var j = 0u; j < VPT; j++) {
    let i = t + j * WG;
    var v = 0.0;
    if (i < H) {
      v = ld_x(o + i) + ld_residual(o + i);
      st_h(o + i, v);
    }
    hv[j] = v;
    ss += v * v;
  }
  let inv = P.one / sqrt(row_sum(t, ss) / f32(H) + P.eps);
  for (var j = 0u; j < VPT; j++) {
    let i = t + j * WG;
    if (i < H) { st_y(o + i, hv[j] * inv * ld_gamma(i)); }
  }
}

// wide: rows longer than 256 * MAX_VPT (wgsl.py), which would not fit in registers. The
// same, but the second pass forms h = x + residual again from the inputs (bit-identical
// to the stored h's f32 value) instead of keeping it: x and residual are read twice.
@compute @workgroup_size(256)
fn wide(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) t: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= P.rows) { return; }
  let H = P.H;
  let o = row * H;
  var ss = 0.0;
  for (var i = t; i < H; i += WG) {
    let v = ld_x(o + i) + ld_residual(o + i);
    st_h(o + i, v);
    ss += v * v;
  }
  let inv = P.one / sqrt(row_sum(t, ss) / f32(H) + P.eps);
  for (var i = t; i < H; i += WG) { st_y(o + i, (ld_x(o + i) + ld_residual(o + i)) * inv * ld_gamma(i)); }
}
