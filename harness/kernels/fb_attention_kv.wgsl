// ---- fusebench WGSL: a tile of keys and values in workgroup memory ------------------------
// Spliced into impls/attention_prefill/attention_prefill.wgsl and impls/decode_attention/
// decode_attention.wgsl where `//@fusebench-splice fb_attention_kv.wgsl` stands
// (harness.splice), after their constants D4 (head_dim / 4, rounded up) and BK (keys per
// tile); wgsl.py substitutes @@KV@@ = BK * D4. The kernel declares ld_k, ld_v and a uniform
// `P` with field d (head_dim).
var<workgroup> ks: array<vec4<f32>, @@KV@@>;  // BK * D4: the key tile, zeros past d and past the keys
var<workgroup> vs: array<vec4<f32>, @@KV@@>;  // the value tile, the same way

// Keys and values k0 .. k0 + BK of the kv head at element offset kvbase into ks and vs,
// zeros at and past key `end`; the `wg` invocations of the workgroup (t its index) share
// the BK * D4 vec4s, so each runs ceil(BK * D4 / wg) + 1 loop iterations. Positions at and
// past `end` are never read. The caller passes a barrier before reading the tile.
fn load_kv(kvbase: u32, k0: u32, end: u32, t: u32, wg: u32) {
  let d = P.d;
  for (var e = t; e < BK * D4; e += wg) {
    let j = k0 + e / D4;
    let c = (e % D4) * 4u;
    var kv = vec4<f32>(0.0);
    var vv = vec4<f32>(0.0);
    if (j < end) {
      let o = kvbase + j * d + c;
      for (var u = 0u; u < 4u; u++) {
        if (c + u < d) { kv[u] = ld_k(o + u); vv[u] = ld_v(o + u); }
      }
    }
    ks[e] = kv;
    vs[e] = vv;
  }
}
// ---- end of fb_attention_kv.wgsl --------------------------------------------------------
