// attn_score_softmax: p = softmax(scale * q k^T + causal mask) over the keys, in f32, one
// dispatch. The logits are never stored: each row's max and sum come from a first pass
// over its keys, and a second pass forms the logits again and stores the weights.
//
// impls/attn_score_softmax/wgsl.py replaces the line below with the buffer declarations
// (harness.backends.wgsl.wgsl_buffers): q, k at bindings 0, 1 (ld_q / ld_k), the output p
// at 2 (st_p) and `var<uniform> P: Params` at 3; it substitutes WQ (query rows per
// workgroup, one per invocation), D4 (head_dim / 4, rounded up) and BK (keys per tile), and
// writes out each `//@unroll` line (harness.backends.wgsl.unroll_loops): the dot product's
// trips would otherwise count against llvmpipe's loop limit once per key.
// @@BUFFERS@@

// q: (B, Hq, S, d), k: (B, Hkv, S, d), p: (B, Hq, S, S); q head h reads kv head h / (Hq / Hkv).
struct Params { S: u32, Hq: u32, Hkv: u32, d: u32, scale: f32, _p0: u32, _p1: u32, _p2: u32 }
const WQ: u32 = @@WQ@@u;
const D4: u32 = @@D4@@u;
const BK: u32 = @@BK@@u;
//@fusebench-splice fb_attention_q.wgsl
//@fusebench-splice fb_causal_block.wgsl

var<workgroup> ks: array<vec4<f32>, @@KV@@>;  // BK * D4: the key tile, zeros past d and past the keys
var<workgroup> ps: array<f32, @@PS@@>;        // WQ * BK: the tile's weights, row-major, for the stores

// Keys k0 .. k0 + BK of the kv head at kbase into ks (zeros at and past key nk).
fn load_keys(kbase: u32, k0: u32, nk: u32, t: u32) {
  let d = P.d;
  for (var e = t; e < BK * D4; e += WQ) {
    let j = k0 + e / D4;
    let c = (e % D4) * 4u;
    var v = vec4<f32>(0.0);
    if (j < nk) {
      let o = kbase + j * d + c;
      for (var u = 0u; u < 4u; u++) { if (c + u < d) { v[u] = ld_k(o + u); } }
    }
    ks[e] = v;
  }
}

// scale * q . k for key jj of the tile.
fn logit(q: ptr<function, array<vec4<f32>, D4>>, jj: u32) -> f32 {
  var a = 0.0;
  //@unroll c < D4: a += dot((*q)[c], ks[jj * D4 + c]);
  return a * P.scale;
}

// Workgroup (wid.x, wid.y): the query block of fb_causal_block.wgsl; invocation t owns row
// i, its q in registers. The block's keys 0 .. nk - 1 are streamed through ks in tiles of
// BK. Pass 1: the row's running max m and sum l (one rescale per tile). Pass 2: each row's
// weights of the tile into ps, then the whole workgroup stores the tile row by row
// (neighbouring invocations, neighbouring columns). Columns nk .. S are the masked zeros of
// every row.
@compute @workgroup_size(WQ)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let qb = query_block(wid);
  let S = P.S;
  let kbase = qb.kv;
  let r0 = qb.r0;
  let nk = qb.nk;
  let nr = nk - r0;  // rows of this block inside S
  let i = r0 + t;
  var q = load_q(q_row(qb, i));

  // pass 1: max and sum of exp over the visible keys
  var m = LOWEST;
  var l = 0.0;
  var s: array<f32, BK>;
  for (var k0 = 0u; k0 < nk; k0 += BK) {
    load_keys(kbase, k0, nk, t);
    workgroupBarrier();
    let kn = min(BK, nk - k0);
    var mt = m;
    for (var jj = 0u; jj < kn; jj++) {
      s[jj] = select(LOWEST, logit(&q, jj), k0 + jj <= i);
      mt = max(mt, s[jj]);
    }
    var sum = 0.0;
    for (var jj = 0u; jj < kn; jj++) {
      if (k0 + jj <= i) { sum += exp(s[jj] - mt); }
    }
    l = l * exp(m - mt) + sum;
    m = mt;
    workgroupBarrier();  // before the next tile overwrites ks
  }
  let inv = select(0.0, 1.0 / l, l > 0.0);

  // pass 2: the weights, stored tile by tile
  let prow = qb.bh * S + r0;
  for (var k0 = 0u; k0 < nk; k0 += BK) {
    load_keys(kbase, k0, nk, t);
    workgroupBarrier();
    let kn = min(BK, nk - k0);
    for (var jj = 0u; jj < kn; jj++) {
      var p = 0.0;
      if (k0 + jj <= i) { p = exp(logit(&q, jj) - m) * inv; }
      ps[t * BK + jj] = p;
    }
    workgroupBarrier();
    // ks is read no more this tile, and ps is next written after the next tile's barrier
    for (var e = t; e < nr * kn; e += WQ) {
      let r = e / kn;
      let jj = e - r * kn;
      st_p((prow + r) * S + k0 + jj, ps[r * BK + jj]);
    }
  }
  let nz = S - nk;
  for (var e = t; e < nr * nz; e += WQ) {
    let r = e / nz;
    st_p((prow + r) * S + nk + e - r * nz, 0.0);
  }
}
