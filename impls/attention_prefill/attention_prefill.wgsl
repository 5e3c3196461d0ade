// attention_prefill: o = softmax(scale * q k^T + causal mask) v, in f32, one dispatch,
// with an online softmax: no logit or weight is ever stored.
//
// impls/attention_prefill/wgsl.py replaces the line below with the buffer declarations
// (harness.backends.wgsl.wgsl_buffers): q, k, v at bindings 0..2 (ld_q / ld_k / ld_v), the
// output o at 3 (st_o) and `var<uniform> P: Params` at 4; it substitutes WQ (query rows
// per workgroup, one per invocation), D4 (head_dim / 4, rounded up) and BK (keys per tile),
// and writes out each `//@unroll` line (harness.backends.wgsl.unroll_loops): the loops over
// the head's columns would otherwise count against llvmpipe's loop limit once per key.
// @@BUFFERS@@

// q: (B, Hq, S, d), k, v: (B, Hkv, S, d), o: (B, Hq, S, d); q head h reads kv head h / (Hq / Hkv).
struct Params { S: u32, Hq: u32, Hkv: u32, d: u32, scale: f32, _p0: u32, _p1: u32, _p2: u32 }
const WQ: u32 = @@WQ@@u;
const D4: u32 = @@D4@@u;
const BK: u32 = @@BK@@u;
//@fusebench-splice fb_attention_q.wgsl
//@fusebench-splice fb_attention_kv.wgsl
//@fusebench-splice fb_causal_block.wgsl

// Workgroup (wid.x, wid.y): the query block of fb_causal_block.wgsl; invocation t owns row
// i: its q and its output accumulator (d values each) in registers, with the running max m
// and sum l. The block streams keys 0 .. nk - 1 through ks / vs, each K and V tile loaded
// once for all WQ rows. Per tile and row: the tile's logits, its new max, one rescale of l
// and the accumulator by exp(m_old - m_new), then the weights exp(logit - m_new) added in.
// At the end o = acc / l.
@compute @workgroup_size(WQ)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let qb = query_block(wid);
  let nk = qb.nk;
  let i = qb.r0 + t;
  let qo = q_row(qb, i);
  var q = load_q(qo);
  var acc: array<vec4<f32>, D4>;  // zero

  var m = LOWEST;
  var l = 0.0;
  var s: array<f32, BK>;
  for (var k0 = 0u; k0 < nk; k0 += BK) {
    load_kv(qb.kv, k0, nk, t, WQ);
    workgroupBarrier();
    let kn = min(BK, nk - k0);
    var mt = m;
    for (var jj = 0u; jj < kn; jj++) {
      var a = 0.0;
      //@unroll c < D4: a += dot(q[c], ks[jj * D4 + c]);
      s[jj] = select(LOWEST, a * P.scale, k0 + jj <= i);
      mt = max(mt, s[jj]);
    }
    let alpha = exp(m - mt);
    l *= alpha;
    //@unroll c < D4: acc[c] *= alpha;
    for (var jj = 0u; jj < kn; jj++) {
      if (k0 + jj <= i) {
        let p = exp(s[jj] - mt);
        l += p;
        //@unroll c < D4: acc[c] += p * vs[jj * D4 + c];
      }
    }
    m = mt;
    workgroupBarrier();  // before the next tile overwrites ks and vs
  }

  if (i < P.S) {
    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var c = 0u; c < D4; c++) {
      let r = acc[c] * inv;
      for (var u = 0u; u < 4u; u++) { if (4u * c + u < P.d) { st_o(qo + 4u * c + u, r[u]); } }
    }
  }
}
