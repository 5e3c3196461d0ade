// ---- fusebench WGSL: the block of query rows of a causal prefill kernel -------------------
// Spliced into impls/attention_prefill/attention_prefill.wgsl and impls/attn_score_softmax/
// attn_score_softmax.wgsl where `//@fusebench-splice fb_causal_block.wgsl` stands
// (harness.splice), after their constant WQ (query rows per workgroup, one per invocation).
// The kernel's uniform `P` has fields S, Hq, Hkv and d: q (B, Hq, S, d), k (and v)
// (B, Hkv, S, d), q head h reading kv head h / (Hq / Hkv).
//
// Workgroup (wid.x, wid.y) takes query rows r0 .. r0 + WQ (r0 = wid.x * WQ) of q head
// bh = b * Hq + h = wid.y, invocation t row r0 + t. Row i sees keys 0 .. i, so the block
// needs keys 0 .. nk - 1, nk = min(r0 + WQ, S), of the kv head at element offset kv. All
// of it is the same across the workgroup (the loops over the keys hold barriers).
struct QueryBlock { bh: u32, r0: u32, nk: u32, kv: u32 }

fn query_block(wid: vec3<u32>) -> QueryBlock {
  let S = P.S;
  let bh = wid.y;
  let r0 = wid.x * WQ;
  let kv = ((bh / P.Hq) * P.Hkv + (bh % P.Hq) / (P.Hq / P.Hkv)) * S * P.d;
  return QueryBlock(bh, r0, min(r0 + WQ, S), kv);
}

// The element offset of the block's q row i, clamped to row S - 1 (rows past S compute,
// never store).
fn q_row(qb: QueryBlock, i: u32) -> u32 {
  return (qb.bh * P.S + min(i, P.S - 1u)) * P.d;
}
// ---- end of fb_causal_block.wgsl --------------------------------------------------------
