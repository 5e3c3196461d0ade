// ---- fusebench WGSL chain: the row-wise primitives, one workgroup of 256 per row -----------
// harness/backends/wgsl.py (WgslOps.rms_norm, WgslOps.softmax) takes each section as a whole
// shader (harness.splice.kernel_sections); wgsl_buffers declares x, g and y and their
// ld_ / st_ helpers. Rows past 65535 workgroups are laid out in 2-D (grid_1d). The sums
// across the workgroup are fb_row_sum.wgsl's row_sum (the max in softmax is reduced alike).
//@fusebench-section rms_norm
// The sum of squares reduced in workgroup memory, then the row written.
struct Params { rows: u32, H: u32, eps: f32, one: f32 }  // one = 1.0, see below
//@fusebench-splice fb_row_sum.wgsl
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) t: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= P.rows) { return; }
  let H = P.H;
  let o = row * H;
  var ss = 0.0;
  for (var h = t; h < H; h += 256u) { let v = ld_x(o + h); ss += v * v; }
  // P.one rather than a literal 1.0, or the compiler may fold 1 / sqrt into an approximate
  // reciprocal square root; this way sqrt and the division are both correctly rounded
  let inv = P.one / sqrt(row_sum(t, ss) / f32(H) + P.eps);
  for (var h = t; h < H; h += 256u) { st_y(o + h, ld_x(o + h) * inv * ld_g(h)); }
}

//@fusebench-section softmax
// The max, then the sum of exp(x - max), then the row written. The max starts at the lowest
// finite f32, so a row of -inf (fully masked) never forms inf - inf.
struct Params { rows: u32, H: u32, _p0: u32, _p1: u32 }
//@fusebench-splice fb_row_sum.wgsl
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) t: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= P.rows) { return; }
  let H = P.H;
  let o = row * H;
  var mx = -3.4028234663852886e38;
  for (var h = t; h < H; h += 256u) { mx = max(mx, ld_x(o + h)); }
  red[t] = mx;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (t < s) { red[t] = max(red[t], red[t + s]); }
    workgroupBarrier();
  }
  let m = red[0];
  workgroupBarrier();
  var se = 0.0;
  for (var h = t; h < H; h += 256u) { se += exp(ld_x(o + h) - m); }
  // a fully masked row (all -inf): every exp() is 0 and the sum too; the row is zeros
  let sum = row_sum(t, se);
  let inv = select(0.0, 1.0 / sum, sum > 0.0);
  for (var h = t; h < H; h += 256u) { st_y(o + h, exp(ld_x(o + h) - m) * inv); }
}
