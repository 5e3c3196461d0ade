// ---- fusebench WGSL chain: the primitives with one invocation per element -----------------
// harness/backends/wgsl.py builds these kernels from the sections below
// (harness.splice.kernel_sections, read once per process). `main` is the shader, its
// placeholders filled by wgsl.py's _per_element: PARAMS, the fields of the uniform Params (n
// first); DECLS, bindings declared here rather than by wgsl_buffers; INDEX, the name of the
// index over 0 .. P.n - 1, 256 invocations to a workgroup (grid_1d lays the workgroups out
// in 2-D past 65535); BODY, the kernel's work: one of the other sections. ld_<name> /
// st_<name> are wgsl_buffers' helpers.
//@fusebench-section main
struct Params { @@PARAMS@@ }
@@DECLS@@@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) t: u32) {
  let @@INDEX@@ = (wid.x + wid.y * nwg.x) * 256u + t;
  if (@@INDEX@@ >= P.n) { return; }
@@BODY@@
}

//@fusebench-section add
  st_y(i, ld_a(i % P.na) + ld_b(i % P.nb));
//@fusebench-section mul
  st_y(i, ld_a(i % P.na) * ld_b(i % P.nb));
//@fusebench-section silu
  let v = ld_a(i); st_y(i, v / (1.0 + exp(-v)));

//@fusebench-section split
  // y[r, j] = x[r, off + j] for j < P.w, x rows of P.W elements
  let r = i / P.w;
  st_y(i, ld_x(r * P.W + P.off + (i - r * P.w)));

//@fusebench-section rope
  // one invocation per rotated pair (row m, head, i < d/2); x (M, heads, d)
  let i = p % P.half;
  let mh = p / P.half;        // m * heads + head
  let m = mh / P.heads;
  let o = mh * 2u * P.half + i;
  let cs = fb_rope_cs(pos[m], freq[2u * i], freq[2u * i + 1u]);
  let a = ld_x(o);
  let b = ld_x(o + P.half);
  st_y(o, a * cs.x - b * cs.y);
  st_y(o + P.half, b * cs.x + a * cs.y);

//@fusebench-section scale
  st_y(i, ld_x(i) * P.s);

//@fusebench-section causal_mask
  // x (..., S, T): element (r, j) of each (S, T) matrix becomes -inf where j > r + T - S.
  // -inf comes in as its bit pattern (ninf): WGSL has no infinite literal.
  let j = i % P.T;
  let r = (i / P.T) % P.S;
  if (i32(j) > i32(r) + i32(P.T) - i32(P.S)) { st_y(i, bitcast<f32>(P.ninf)); } else { st_y(i, ld_x(i)); }

//@fusebench-section length_mask
  // x (B, H, S, T), lens (B,) int32: element (b, ., ., j) becomes -inf where j >= lens[b].
  if (i32(i % P.T) >= lens[i / P.per_b]) { st_y(i, bitcast<f32>(P.ninf)); } else { st_y(i, ld_x(i)); }

//@fusebench-section fill
  // the backend's fill_words (poison, the timer's overhead probe): every word of buf
  buf[i] = P.word;

//@fusebench-section copy
  // the backend's bandwidth probe (measure_peak): 16 bytes an invocation
  dst[i] = src[i];
