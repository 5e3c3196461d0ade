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
const LOWEST: f32 = -3.4028234663852886e38;  // the running max starts here: never inf - inf

var<workgroup> ks: array<vec4<f32>, @@KV@@>;  // BK * D4: the key tile, zeros past d and past the keys
var<workgroup> vs: array<vec4<f32>, @@KV@@>;  // the value tile, the same way

// Workgroup (wid.x, wid.y): query rows r0 .. r0 + WQ of head bh = b * Hq + h; invocation t
// owns row i = r0 + t: its q and its output accumulator (d values each) in registers,
// with the running max m and sum l. Row i sees keys 0 .. i, so the block streams keys
// 0 .. nk - 1 (nk = min(r0 + WQ, S)) through ks / vs, each K and V tile loaded once for
// all WQ rows. Per tile and row: the tile's logits, its new max, one rescale of l and
// the accumulator by exp(m_old - m_new), then the weights exp(logit - m_new) added in.
// At the end o = acc / l.
@compute @workgroup_size(WQ)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let S = P.S;
  let d = P.d;
  let bh = wid.y;
  let g = P.Hq / P.Hkv;
  let kvbase = ((bh / P.Hq) * P.Hkv + (bh % P.Hq) / g) * S * d;
  let r0 = wid.x * WQ;
  let i = r0 + t;
  let nk = min(r0 + WQ, S);

  var q: array<vec4<f32>, D4>;
  var acc: array<vec4<f32>, D4>;
  let qo = (bh * S + min(i, S - 1u)) * d;
  for (var c = 0u; c < D4; c++) {
    var v = vec4<f32>(0.0);
    for (var u = 0u; u < 4u; u++) { if (4u * c + u < d) { v[u] = ld_q(qo + 4u * c + u); } }
    q[c] = v;
    acc[c] = vec4<f32>(0.0);
  }

  var m = LOWEST;
  var l = 0.0;
  var s: array<f32, BK>;
  for (var k0 = 0u; k0 < nk; k0 += BK) {
    for (var e = t; e < BK * D4; e += WQ) {
      let j = k0 + e / D4;
      let c = (e % D4) * 4u;
      var kv = vec4<f32>(0.0);
      var vv = vec4<f32>(0.0);
      if (j < nk) {
        let o = kvbase + j * d + c;
        for (var u = 0u; u < 4u; u++) {
          if (c + u < d) { kv[u] = ld_k(o + u); vv[u] = ld_v(o + u); }
        }
      }
      ks[e] = kv;
      vs[e] = vv;
    }
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

  if (i < S) {
    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var c = 0u; c < D4; c++) {
      let r = acc[c] * inv;
      for (var u = 0u; u < 4u; u++) { if (4u * c + u < d) { st_o(qo + 4u * c + u, r[u]); } }
    }
  }
}
