// ---- fusebench WGSL tile: a 64 x 64 output tile, 4 x 4 outputs per invocation ----------
// Spliced into impls/*/*.wgsl and the WGSL chain's matmul (harness/kernels/fb_chain_matmul.wgsl) where
// `//@fusebench-splice fb_tile.wgsl` stands (harness.splice).
//
// A workgroup of 256 invocations owns a TM x TN tile of the output; invocation t owns rows
// ty * 4 .. ty * 4 + 3 (ty = t / 16) and columns tx * 4 .. tx * 4 + 3 (tx = t % 16) of it.
// K goes in steps of TK through workgroup memory: the kernel fills tl_a (the A tile,
// [k][m], TK x TM floats) and one or more B tiles in tl_b ([k][n], TK x TN floats each,
// the i-th at offset i * TK * TN), then calls tile_step once per B tile (tile_step2 for
// two). The kernel
// declares tl_a and tl_b (tl_b's length is its number of B tiles times TK * TN).
//
// Sums run in three levels: TK products per step, then 16 steps (`e`), then the rest
// (`c`), which keeps float32 error growth near K / 256 + 32 additions instead of K. The
// 4 x 4 sums are held as vec4 fields, never as arrays indexed in loops (those cost
// lavapipe 2.5x).
const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

struct Tile {
  c0: vec4<f32>, c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>,  // sums of the older steps
  e0: vec4<f32>, e1: vec4<f32>, e2: vec4<f32>, e3: vec4<f32>,  // sums of the last <= 16 steps
}

// Adds one step's products d0..d3 (rows 0..3) to the sums; closes the 16-step level.
fn tile_add(acc: ptr<function, Tile>, d0: vec4<f32>, d1: vec4<f32>, d2: vec4<f32>, d3: vec4<f32>, step: u32) {
  (*acc).e0 += d0; (*acc).e1 += d1; (*acc).e2 += d2; (*acc).e3 += d3;
  if (step % 16u == 15u) {
    (*acc).c0 += (*acc).e0; (*acc).c1 += (*acc).e1; (*acc).c2 += (*acc).e2; (*acc).c3 += (*acc).e3;
    (*acc).e0 = vec4<f32>(0.0); (*acc).e1 = vec4<f32>(0.0); (*acc).e2 = vec4<f32>(0.0); (*acc).e3 = vec4<f32>(0.0);
  }
}

// Step number `step` (k0 / TK) of this invocation's tile against the B tile at `boff`.
fn tile_step(acc: ptr<function, Tile>, ty: u32, tx: u32, boff: u32, step: u32) {
  var d0 = vec4<f32>(0.0); var d1 = vec4<f32>(0.0); var d2 = vec4<f32>(0.0); var d3 = vec4<f32>(0.0);
  for (var kk = 0u; kk < TK; kk++) {
    let ab = kk * TM + ty * 4u;
    let bb = boff + kk * TN + tx * 4u;
    let b = vec4<f32>(tl_b[bb], tl_b[bb + 1u], tl_b[bb + 2u], tl_b[bb + 3u]);
    let a0 = tl_a[ab]; let a1 = tl_a[ab + 1u]; let a2 = tl_a[ab + 2u]; let a3 = tl_a[ab + 3u];
    d0 += a0 * b; d1 += a1 * b; d2 += a2 * b; d3 += a3 * b;
  }
  tile_add(acc, d0, d1, d2, d3, step);
}

// tile_step against two B tiles at once (at 0 and TK * TN), sharing each load of tl_a
// (a gate and an up projection): one pass instead of two measured 20 % faster on lavapipe.
fn tile_step2(acc: ptr<function, Tile>, acc2: ptr<function, Tile>, ty: u32, tx: u32, step: u32) {
  var d0 = vec4<f32>(0.0); var d1 = vec4<f32>(0.0); var d2 = vec4<f32>(0.0); var d3 = vec4<f32>(0.0);
  var q0 = vec4<f32>(0.0); var q1 = vec4<f32>(0.0); var q2 = vec4<f32>(0.0); var q3 = vec4<f32>(0.0);
  for (var kk = 0u; kk < TK; kk++) {
    let ab = kk * TM + ty * 4u;
    let bb = kk * TN + tx * 4u;
    let b = vec4<f32>(tl_b[bb], tl_b[bb + 1u], tl_b[bb + 2u], tl_b[bb + 3u]);
    let bb2 = TK * TN + bb;
    let b2 = vec4<f32>(tl_b[bb2], tl_b[bb2 + 1u], tl_b[bb2 + 2u], tl_b[bb2 + 3u]);
    let a0 = tl_a[ab]; let a1 = tl_a[ab + 1u]; let a2 = tl_a[ab + 2u]; let a3 = tl_a[ab + 3u];
    d0 += a0 * b; d1 += a1 * b; d2 += a2 * b; d3 += a3 * b;
    q0 += a0 * b2; q1 += a1 * b2; q2 += a2 * b2; q3 += a3 * b2;
  }
  tile_add(acc, d0, d1, d2, d3, step);
  tile_add(acc2, q0, q1, q2, q3, step);
}

// The finished sums, row i of the invocation's 4 x 4 at index i.
fn tile_sums(acc: Tile) -> array<vec4<f32>, 4> {
  return array<vec4<f32>, 4>(acc.c0 + acc.e0, acc.c1 + acc.e1, acc.c2 + acc.e2, acc.c3 + acc.e3);
}
// ---- end of fb_tile.wgsl ----------------------------------------------------------------
