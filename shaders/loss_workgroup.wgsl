// `loss/row_per_workgroup`: the softmax losses of loss.wgsl (same parameters, same
// results), a row shared by a segment of TPR lanes (a power of two up to the whole
// workgroup) so that wide rows and few rows still give a GPU enough lanes. The lanes of
// a row take interleaved vec4s of it (masked at both ends: rows start anywhere), keep
// an online (max, Σ exp) each, and merge them with seg_reduce; log_softmax then writes
// its vec4s again. TPR = 1 is one row per lane, for narrow rows.
//
// `ce_grad` (the cross-entropy's gradient, see loss.wgsl) merges a row's statistics as
// log_softmax does, then writes its vec4s' g·scale·w_i·(softmax − onehot).
//
// `cross_entropy` strides over the rows with the whole grid, adds its rows' terms per
// workgroup, and finishes the batch sum in the same dispatch (common/grid_sum.wgsl).
override WG: u32 = 256u;
override TPR: u32 = 1u;
override WEIGHTED: bool = false;
override UPSTREAM: bool = false;
//#include common/seg_reduce_tree.wgsl
//#include common/grid_sum.wgsl
//#include common/ce_grad.wgsl

// (running max m, Σ exp(z − m)) of a set of elements; (−∞, 0) for none.
alias Acc = vec2<f32>;

struct RowParams {
    rows: u32,
    c: u32,
    _pad0: u32,
    _pad1: u32,
}

struct CeParams {
    n: u32,
    c: u32,
    scale: f32,
    rounds: u32, // grid strides over the rows: every lane runs all of them (barriers)
}

@group(0) @binding(0) var<uniform> rp: RowParams;
@group(0) @binding(0) var<uniform> cp: CeParams;
@group(0) @binding(1) var<storage, read> z: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<f32>;
@group(0) @binding(3) var<storage, read> weights: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> scratch: Scratch;
@group(0) @binding(5) var<storage, read_write> dz: array<f32>;

var<workgroup> sums: array<f32, WG>;

fn neg_inf() -> f32 {
    return bitcast<f32>(0xff800000u);
}

fn nan() -> f32 {
    return bitcast<f32>(0x7fc00000u);
}

fn seg_comb(a: Acc, b: Acc) -> Acc {
    let m = max(a.x, b.x);
    if (m == neg_inf()) {
        return Acc(m, 0.0);
    }
    return Acc(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}

// The total of one f32 per lane at lane 0: a tree in workgroup memory.
fn wg_sum(v: f32, lane: u32) -> f32 {
    workgroupBarrier();
    sums[lane] = v;
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (lane < s) {
            sums[lane] += sums[lane + s];
        }
    }
    workgroupBarrier();
    return sums[0];
}

fn inside(v: u32, lo: u32, hi: u32) -> vec4<bool> {
    let e = v * 4u + vec4<u32>(0u, 1u, 2u, 3u);
    return e >= vec4<u32>(lo) & e < vec4<u32>(hi);
}

// The online softmax statistics of lane t's vec4s of [lo, hi). Each of those vec4s holds
// at least one element of the row, so the max is finite after the first (for finite z).
fn lane_stats(lo: u32, hi: u32, t: u32) -> Acc {
    let ninf = vec4<f32>(neg_inf());
    var m = neg_inf();
    var s = 0.0;
    let last = (hi - 1u) / 4u;
    for (var v = lo / 4u + t; v <= last; v += TPR) {
        let x = select(ninf, z[v], inside(v, lo, hi));
        let mn = max(m, max(max(x.x, x.y), max(x.z, x.w)));
        let ex = exp(x - mn);
        s = s * exp(m - mn) + ((ex.x + ex.y) + (ex.z + ex.w));
        m = mn;
    }
    return Acc(m, s);
}

@compute @workgroup_size(WG)
fn log_softmax(ids: Ids) {
    let lane = lane_of(ids);
    let r = (ids.wid.x + ids.wid.y * ids.nwg.x) * (WG / TPR) + lane / TPR;
    let t = lane % TPR;
    let live = r < rp.rows;
    let lo = r * rp.c;
    let hi = lo + rp.c;
    var st = Acc(neg_inf(), 0.0);
    if (live) {
        st = lane_stats(lo, hi, t);
    }
    let row = seg_reduce(st, lane, TPR);
    if (!live) {
        return;
    }
    let lse = row.x + log(row.y);
    let last = (hi - 1u) / 4u;
    for (var v = lo / 4u + t; v <= last; v += TPR) {
        let x = z[v] - lse;
        let e = v * 4u;
        if (e >= lo) { y[e] = x.x; }
        if (e + 1u >= lo && e + 1u < hi) { y[e + 1u] = x.y; }
        if (e + 2u >= lo && e + 2u < hi) { y[e + 2u] = x.z; }
        if (e + 3u < hi) { y[e + 3u] = x.w; }
    }
}

@compute @workgroup_size(WG)
fn cross_entropy(ids: Ids) {
    let lane = lane_of(ids);
    let g = ids.wid.x;
    let groups = ids.nwg.x;
    let t = lane % TPR;
    let cf = f32(cp.c);
    var acc = 0.0;
    for (var k = 0u; k < cp.rounds; k++) {
        let r = (k * groups + g) * (WG / TPR) + lane / TPR;
        let live = r < cp.n;
        let lo = r * cp.c;
        var st = Acc(neg_inf(), 0.0);
        if (live) {
            st = lane_stats(lo, lo + cp.c, t);
        }
        let row = seg_reduce(st, lane, TPR);
        if (live && t == 0u) {
            let label = labels[r];
            // NaN fails every comparison, so it lands in the invalid branch too.
            var term = nan();
            if (label >= 0.0 && label < cf && floor(label) == label) {
                let at = lo + u32(label);
                term = row.x + log(row.y) - z[at / 4u][at % 4u];
            }
            if (WEIGHTED) {
                term *= weights[r];
            }
            acc += term;
        }
    }
    let total = wg_sum(acc, lane);
    if (groups == 1u) {
        if (lane == 0u) {
            out[0] = total * cp.scale;
        }
        return;
    }
    let s = grid_sum(total, lane, g, groups);
    if (lane == 0u && s.x != 0.0) {
        out[0] = s.y * cp.scale;
    }
}

@compute @workgroup_size(WG)
fn ce_grad(ids: Ids) {
    let lane = lane_of(ids);
    let r = (ids.wid.x + ids.wid.y * ids.nwg.x) * (WG / TPR) + lane / TPR;
    let t = lane % TPR;
    let live = r < gp.rows;
    let lo = r * gp.c;
    let hi = lo + gp.c;
    var st = Acc(neg_inf(), 0.0);
    if (live) {
        st = lane_stats(lo, hi, t);
    }
    let row = seg_reduce(st, lane, TPR);
    if (!live) {
        return;
    }
    let lse = row.x + log(row.y);
    let label = labels[r];
    let s = grad_scale(r, label);
    let last = (hi - 1u) / 4u;
    for (var v = lo / 4u + t; v <= last; v += TPR) {
        let p = exp(z[v] - lse);
        for (var k = 0u; k < 4u; k++) {
            let e = v * 4u + k;
            if (e >= lo && e < hi) {
                let hot = select(0.0, 1.0, f32(e - lo) == label);
                dz[e] = s * (p[k] - hot);
            }
        }
    }
}
