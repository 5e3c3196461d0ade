// decode_attention: o[b] = softmax(scale * q[b] k[b, :len]^T) v[b, :len], in f32, with the
// key axis optionally split across workgroups (flash-decoding): entry point `attend`, then
// `combine` when there is more than one split.
//
// impls/decode_attention/wgsl.py replaces the line below with the buffer declarations
// (harness.backends.wgsl.wgsl_buffers): q, k, v at bindings 0..2 (ld_q / ld_k / ld_v), lens
// (array<i32>) at 3, the output o at 4 (st_o), the f32 partials pml (max, sum) at 5 and
// pacc (unnormalised outputs) at 6, and `var<uniform> P: Params` at 7; it substitutes WD
// (invocations per workgroup), D4 (head_dim / 4, rounded up), BK (keys per tile), GW (q
// heads per workgroup) and VPT (accumulator vec4s per invocation, ceil(GW * D4 / WD)).
// @@BUFFERS@@

// q: (B, Hq, d), k, v: (B, Hkv, T, d), lens: (B,), o: (B, Hq, d). The G = Hq / Hkv q heads
// of kv head kh are kh * G .. kh * G + G - 1, in hgroups groups of GW (the last may be short).
// Split s covers cache positions s * chunk .. (s + 1) * chunk, clipped to lens[b].
// Partials of (b, q head r, split s): pml[(r * splits + s) * 2 + (0, 1)] = (max, sum),
// pacc[(r * splits + s) * d + c], with r = b * Hq + head.
struct Params { B: u32, T: u32, Hq: u32, Hkv: u32, d: u32, scale: f32, G: u32, hgroups: u32,
                chunk: u32, splits: u32, _p0: u32, _p1: u32 }
const WD: u32 = @@WD@@u;
const D4: u32 = @@D4@@u;
const BK: u32 = @@BK@@u;
const GW: u32 = @@GW@@u;
const VPT: u32 = @@VPT@@u;
//@fusebench-splice fb_attention_q.wgsl
//@fusebench-splice fb_attention_kv.wgsl

var<workgroup> ps: array<f32, @@PS@@>;        // GW * BK: logits, then weights, per head
var<workgroup> hm: array<f32, GW>;            // running max per head
var<workgroup> hl: array<f32, GW>;            // running sum per head
var<workgroup> ha: array<f32, GW>;            // this tile's rescale factor per head
var<workgroup> wg_len: u32;

// Workgroup (split, (b * Hkv + kh) * hgroups + hg): heads h0 .. h0 + nh of kv head kh over
// the split's valid positions j0 .. j1, BK at a time. Each K and V tile is loaded once
// (positions >= lens[b] are never read) and serves all nh heads. Then, with a barrier
// between each step: invocation (slot, head) = (t / GW, t % GW) forms logits of its head
// (its q in registers) for keys slot, slot + WD / GW, ...; invocation h < nh moves head h's
// running max and sum and turns its logits into weights; every invocation updates its
// VPT (head, 4 columns) accumulators. One split: o = acc / sum is stored directly (zeros
// when lens[b] = 0); several: the unnormalised acc and (max, sum) go to the partials.
@compute @workgroup_size(WD)
fn attend(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let d = P.d;
  let split = wid.x;
  let hg = wid.y % P.hgroups;
  let bk = wid.y / P.hgroups;  // b * Hkv + kh
  let b = bk / P.Hkv;
  let h0 = (bk % P.Hkv) * P.G + hg * GW;  // first q head, within batch row b
  let nh = min(GW, P.G - hg * GW);
  if (t == 0u) { wg_len = u32(clamp(lens[b], 0, i32(P.T))); }
  if (t < GW) { hm[t] = LOWEST; hl[t] = 0.0; }
  let len = workgroupUniformLoad(&wg_len);  // a barrier too: hm, hl are set
  let j0 = split * P.chunk;
  let j1 = min(j0 + P.chunk, len);
  let kvbase = bk * P.T * d;

  let sh = t % GW;
  let slot = t / GW;
  let nslots = WD / GW;
  var q = load_q((b * P.Hq + h0 + min(sh, nh - 1u)) * d);
  var acc: array<vec4<f32>, VPT>;
  for (var a = 0u; a < VPT; a++) { acc[a] = vec4<f32>(0.0); }

  for (var k0 = j0; k0 < j1; k0 += BK) {
    let kn = min(BK, j1 - k0);
    load_kv(kvbase, k0, j1, t, WD);
    workgroupBarrier();
    if (slot < nslots && sh < nh) {
      for (var jj = slot; jj < kn; jj += nslots) {
        var a = 0.0;
        for (var c = 0u; c < D4; c++) { a += dot(q[c], ks[jj * D4 + c]); }
        ps[sh * BK + jj] = a * P.scale;
      }
    }
    workgroupBarrier();
    if (t < nh) {
      var mt = hm[t];
      for (var jj = 0u; jj < kn; jj++) { mt = max(mt, ps[t * BK + jj]); }
      var sum = 0.0;
      for (var jj = 0u; jj < kn; jj++) {
        let p = exp(ps[t * BK + jj] - mt);
        ps[t * BK + jj] = p;
        sum += p;
      }
      let alpha = exp(hm[t] - mt);
      ha[t] = alpha;
      hl[t] = hl[t] * alpha + sum;
      hm[t] = mt;
    }
    workgroupBarrier();
    for (var a = 0u; a < VPT; a++) {
      let e = t + a * WD;
      if (e < nh * D4) {
        let h = e / D4;
        let c = e - h * D4;
        var x = acc[a] * ha[h];
        for (var jj = 0u; jj < kn; jj++) { x += ps[h * BK + jj] * vs[jj * D4 + c]; }
        acc[a] = x;
      }
    }
    workgroupBarrier();  // before the next tile overwrites ks, vs and ps
  }

  for (var a = 0u; a < VPT; a++) {
    let e = t + a * WD;
    if (e < nh * D4) {
      let h = e / D4;
      let c = (e - h * D4) * 4u;
      let r = b * P.Hq + h0 + h;
      if (P.splits == 1u) {
        let l = hl[h];
        let y = acc[a] * select(0.0, 1.0 / l, l > 0.0);
        for (var u = 0u; u < 4u; u++) { if (c + u < d) { st_o(r * d + c + u, y[u]); } }
      } else {
        let o = (r * P.splits + split) * d + c;
        for (var u = 0u; u < 4u; u++) { if (c + u < d) { pacc[o + u] = acc[a][u]; } }
      }
    }
  }
  if (P.splits > 1u && t < nh) {
    let o = ((b * P.Hq + h0 + t) * P.splits + split) * 2u;
    pml[o] = hm[t];
    pml[o + 1u] = hl[t];
  }
}

// combine: one workgroup per (b, q head) r. With M the largest split max, each split's
// partial counts exp(m_s - M) times: o = sum_s acc_s exp(m_s - M) / sum_s l_s exp(m_s - M),
// zeros when the sum is 0 (lens[b] = 0; empty splits have l = 0, acc = 0).
@compute @workgroup_size(WD)
fn combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) t: u32) {
  let r = wid.x + wid.y * nwg.x;
  if (r >= P.B * P.Hq) { return; }
  let d = P.d;
  let base = r * P.splits;
  var mx = LOWEST;
  for (var s = 0u; s < P.splits; s++) { mx = max(mx, pml[(base + s) * 2u]); }
  var l = 0.0;
  for (var s = 0u; s < P.splits; s++) { l += pml[(base + s) * 2u + 1u] * exp(pml[(base + s) * 2u] - mx); }
  let inv = select(0.0, 1.0 / l, l > 0.0);
  for (var c = t; c < d; c += WD) {
    var x = 0.0;
    for (var s = 0u; s < P.splits; s++) { x += pacc[(base + s) * d + c] * exp(pml[(base + s) * 2u] - mx); }
    st_o(r * d + c, x * inv);
  }
}
