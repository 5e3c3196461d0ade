// ---- fusebench WGSL: what the attention kernels share, a q row in registers -------------
// Spliced into impls/attention_prefill/attention_prefill.wgsl, impls/attn_score_softmax/
// attn_score_softmax.wgsl and impls/decode_attention/decode_attention.wgsl where
// `//@fusebench-splice fb_attention_q.wgsl` stands (harness.splice), after their constant D4
// (head_dim / 4, rounded up). The kernel declares ld_q and a uniform `P` with field d
// (head_dim).
const LOWEST: f32 = -3.4028234663852886e38;  // a running max starts here: never inf - inf

// The q row at element offset qo as D4 vec4s, zeros past d (D4 + 1 loop iterations).
fn load_q(qo: u32) -> array<vec4<f32>, D4> {
  let d = P.d;
  var q: array<vec4<f32>, D4>;
  for (var c = 0u; c < D4; c++) {
    var v = vec4<f32>(0.0);
    for (var u = 0u; u < 4u; u++) { if (4u * c + u < d) { v[u] = ld_q(qo + 4u * c + u); } }
    q[c] = v;
  }
  return q;
}
// ---- end of fb_attention_q.wgsl ---------------------------------------------------------
