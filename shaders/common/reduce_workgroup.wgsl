// The kernels of the GPU reduction variants (`reduce/subgroup`, `reduce/tree`), written
// against the segment reduction the including shader brings in (seg_reduce_subgroup or
// seg_reduce_tree): workgroups of WG lanes that cooperate, loads coalesced across them.
//
// `full`: a whole buffer (or the product of two) to one value in ONE dispatch. Lanes
// stride over the vec4s with the whole grid's width (lane l of workgroup g reads vec4
// g·WG + l, then one grid further: every step of a workgroup reads WG adjacent vec4s),
// two loads in flight; the workgroup adds its lanes with seg_reduce, and the last
// workgroup to finish adds the workgroups' partials (common/grid_sum.wgsl).
//
// `rows` (inner = 1) and `cols`: one axis of a tensor viewed as [outer, len, inner],
// split into `splits` chunks per output, leaving [outer, splits, inner] partials (the
// host runs the same entry over the splits until one remains). A segment of TPR lanes
// (a power of two) reduces one chunk: in `rows` its lanes take interleaved vec4s of the
// contiguous chunk (masked at both ends: rows start anywhere); in `cols` a lane owns
// VEC adjacent outputs and its segment's lanes take interleaved rows of the chunk
// (lanes of neighbouring segments read neighbouring columns). TPR = 1 is one chunk per
// lane, for many short rows or many columns.
override WG: u32 = 256u;
override TPR: u32 = 1u;
override OP: u32 = 0u;           // full: a FULL_* code (FullOp)
override MAXIMUM: bool = false;  // rows/cols: max instead of sum
override VEC: u32 = 1u;          // cols: outputs per lane (1, or 4 when inner % 4 == 0)
//#include op_codes
//#include common/grid_sum.wgsl

alias Acc = vec4<f32>;

struct FullParams {
    n: u32,
    nv: u32, // whole vec4s: n / 4
    scale: f32,
    _pad: u32,
}

struct AxisParams {
    outer: u32,
    len: u32,
    inner: u32,
    splits: u32,
    chunk: u32,
    scale: f32,
    segments: u32, // outer · splits (rows) or outer · splits · inner / VEC (cols)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: FullParams;
@group(0) @binding(0) var<uniform> q: AxisParams;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> scratch: Scratch;
@group(0) @binding(2) var<storage, read_write> out_axis: array<f32>;

fn term(u: vec4<f32>, v: vec4<f32>) -> vec4<f32> {
    switch OP {
        case FULL_SUM: { return u; }
        case FULL_SUM_SQ: { return u * u; }
        case FULL_DOT: { return u * v; }
        case FULL_SQ_DIFF, default: {
            let d = u - v;
            return d * d;
        }
    }
}

fn seg_comb(m: Acc, v: Acc) -> Acc {
    if (MAXIMUM) {
        // max that keeps a NaN once seen (where the device honours NaN at all).
        return select(m, v, v > m | v != v);
    }
    return m + v;
}

fn wg_sum(v: f32, lane: u32) -> f32 {
    return seg_reduce(vec4<f32>(v, 0.0, 0.0, 0.0), lane, WG).x;
}

@compute @workgroup_size(WG)
fn full(ids: Ids) {
    let lane = lane_of(ids);
    let g = ids.wid.x;
    let groups = ids.nwg.x;
    let stride = groups * WG;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var i = g * WG + lane;
    loop {
        if (i + stride >= p.nv) { break; }
        acc0 += term(a[i], b[i]);
        acc1 += term(a[i + stride], b[i + stride]);
        i += 2u * stride;
    }
    if (i < p.nv) {
        acc0 += term(a[i], b[i]);
    }
    // The last n % 4 elements: the rest of their vec4 is not ours to read as data.
    if (g == 0u && lane == 0u && p.nv * 4u < p.n) {
        let k = p.n - p.nv * 4u;
        let m = vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(k);
        acc1 += select(vec4<f32>(0.0), term(a[p.nv], b[p.nv]), m);
    }
    let s = seg_reduce(acc0 + acc1, lane, WG);
    let total = (s.x + s.y) + (s.z + s.w);
    if (groups == 1u) {
        if (lane == 0u) {
            out[0] = total * p.scale;
        }
        return;
    }
    let r = grid_sum(total, lane, g, groups);
    if (lane == 0u && r.x != 0.0) {
        out[0] = r.y * p.scale;
    }
}

fn ident() -> f32 {
    if (MAXIMUM) {
        return bitcast<f32>(0xff800000u); // −∞
    }
    return 0.0;
}

fn finish(v: f32) -> f32 {
    if (MAXIMUM) {
        return v;
    }
    return v * q.scale;
}

fn fold(v: vec4<f32>) -> f32 {
    let h = seg_comb(v, v.yxwz);
    return seg_comb(h, h.zwxy).x;
}

// The share of lane t (of TPR) of the elements [lo, hi): vec4s first + t, first + t + TPR,
// …, with the lanes of each vec4 outside [lo, hi) masked to the identity.
fn row_part(lo: u32, hi: u32, t: u32) -> vec4<f32> {
    let id = vec4<f32>(ident());
    if (lo >= hi) {
        return id;
    }
    let first = lo / 4u;
    let last = (hi - 1u) / 4u;
    let lanes = vec4<u32>(0u, 1u, 2u, 3u);
    var acc0 = id;
    var acc1 = id;
    var v = first + t;
    loop {
        if (v + TPR > last) { break; }
        let e0 = v * 4u + lanes;
        let e1 = e0 + 4u * TPR;
        acc0 = seg_comb(acc0, select(id, a[v], e0 >= vec4<u32>(lo) & e0 < vec4<u32>(hi)));
        acc1 = seg_comb(acc1, select(id, a[v + TPR], e1 < vec4<u32>(hi)));
        v += 2u * TPR;
    }
    if (v <= last) {
        let e = v * 4u + lanes;
        acc0 = seg_comb(acc0, select(id, a[v], e >= vec4<u32>(lo) & e < vec4<u32>(hi)));
    }
    return seg_comb(acc0, acc1);
}

@compute @workgroup_size(WG)
fn rows(ids: Ids) {
    let lane = lane_of(ids);
    let group = ids.wid.x + ids.wid.y * ids.nwg.x;
    let seg = group * (WG / TPR) + lane / TPR;
    let t = lane % TPR;
    let live = seg < q.segments;
    var v = vec4<f32>(ident());
    if (live) {
        let o = seg / q.splits;
        let s = seg % q.splits;
        let k0 = s * q.chunk;
        let k1 = min(q.len, k0 + q.chunk);
        let base = o * q.len;
        v = row_part(base + min(k0, k1), base + k1, t);
    }
    // The segment combines whole vec4s (Acc is one type for every kernel) and folds
    // the total's components at the end.
    let r = fold(seg_reduce(v, lane, TPR));
    if (live && t == 0u) {
        out_axis[seg] = finish(r);
    }
}

fn load_col(e: u32) -> vec4<f32> {
    if (VEC == 4u) {
        return a[e / 4u];
    }
    return vec4<f32>(a[e / 4u][e % 4u], 0.0, 0.0, 0.0);
}

@compute @workgroup_size(WG)
fn cols(ids: Ids) {
    let lane = lane_of(ids);
    let group = ids.wid.x + ids.wid.y * ids.nwg.x;
    let unit = group * (WG / TPR) + lane / TPR;
    let t = lane % TPR;
    let live = unit < q.segments;
    let id = vec4<f32>(ident());
    var acc0 = id;
    var acc1 = id;
    let iv = q.inner / VEC;
    let j = (unit % iv) * VEC;
    let rest = unit / iv;
    if (live) {
        let s = rest % q.splits;
        let o = rest / q.splits;
        let k0 = s * q.chunk;
        let k1 = min(q.len, k0 + q.chunk);
        var k = k0 + t;
        var e = (o * q.len + k) * q.inner + j;
        let step = TPR * q.inner;
        loop {
            if (k + TPR >= k1) { break; }
            acc0 = seg_comb(acc0, load_col(e));
            acc1 = seg_comb(acc1, load_col(e + step));
            e += 2u * step;
            k += 2u * TPR;
        }
        if (k < k1) {
            acc0 = seg_comb(acc0, load_col(e));
        }
    }
    let r = seg_reduce(seg_comb(acc0, acc1), lane, TPR);
    if (live && t == 0u) {
        let dst = rest * q.inner + j;
        out_axis[dst] = finish(r.x);
        if (VEC == 4u) {
            out_axis[dst + 1u] = finish(r.y);
            out_axis[dst + 2u] = finish(r.z);
            out_axis[dst + 3u] = finish(r.w);
        }
    }
}
