// Softmax losses over the rows of a [rows, c] matrix (src/ops/loss.rs). One invocation
// owns a row: rows are short in the losses blo computes (c = classes), and a row per
// invocation needs no barrier. Row starts are not vec4-aligned, so the row is read as
// whole vec4s with the lanes outside it masked off.
//
// `log_softmax`: y = z − logsumexp(z) per row, stable (the row max is subtracted).
// `cross_entropy`: Σ_i w_i·(logsumexp(z_i) − z_{i,y_i}) with a strided loop over rows,
// a workgroup tree, and one partial per workgroup (final, times `scale`, when there is
// one workgroup). An invalid label (negative, ≥ c, not an integer, NaN) makes the
// row's term NaN: checking on the host would need a readback.
override WG: u32 = 64u;         // a power of two
override WEIGHTED: bool = false;

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
    _pad: u32,
}

@group(0) @binding(0) var<uniform> rp: RowParams;
@group(0) @binding(0) var<uniform> cp: CeParams;
@group(0) @binding(1) var<storage, read> z: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<f32>;
@group(0) @binding(3) var<storage, read> weights: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> tree: array<f32, WG>;

fn neg_inf() -> f32 {
    return bitcast<f32>(0xff800000u);
}

fn nan() -> f32 {
    return bitcast<f32>(0x7fc00000u);
}

fn load(e: u32) -> f32 {
    return z[e / 4u][e % 4u];
}

// Lanes of vec4 `v` that hold elements of [lo, hi).
fn inside(v: u32, lo: u32, hi: u32) -> vec4<bool> {
    let e = v * 4u + vec4<u32>(0u, 1u, 2u, 3u);
    return e >= vec4<u32>(lo) & e < vec4<u32>(hi);
}

// log Σ exp z over elements [lo, hi), lo < hi: max first, so no exp overflows.
fn logsumexp(lo: u32, hi: u32) -> f32 {
    let first = lo / 4u;
    let last = (hi - 1u) / 4u;
    let ninf = vec4<f32>(neg_inf());
    var m4 = ninf;
    for (var v = first; v <= last; v++) {
        m4 = max(m4, select(ninf, z[v], inside(v, lo, hi)));
    }
    let m = max(max(m4.x, m4.y), max(m4.z, m4.w));
    var s4 = vec4<f32>(0.0);
    for (var v = first; v <= last; v++) {
        s4 += select(vec4<f32>(0.0), exp(z[v] - m), inside(v, lo, hi));
    }
    return m + log((s4.x + s4.y) + (s4.z + s4.w));
}

@compute @workgroup_size(WG)
fn log_softmax(@builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let r = (wid.x + wid.y * nwg.x) * WG + lid;
    if (r >= rp.rows) {
        return;
    }
    let lo = r * rp.c;
    let hi = lo + rp.c;
    let lse = logsumexp(lo, hi);
    for (var e = lo; e < hi; e++) {
        y[e] = load(e) - lse;
    }
}

@compute @workgroup_size(WG)
fn cross_entropy(@builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let stride = nwg.x * WG;
    let cf = f32(cp.c);
    var acc = 0.0;
    for (var r = wid.x * WG + lid; r < cp.n; r += stride) {
        let lo = r * cp.c;
        let label = labels[r];
        // NaN fails every comparison, so it lands in the invalid branch too.
        var term = nan();
        if (label >= 0.0 && label < cf && floor(label) == label) {
            term = logsumexp(lo, lo + cp.c) - load(lo + u32(label));
        }
        if (WEIGHTED) {
            term *= weights[r];
        }
        acc += term;
    }
    tree[lid] = acc;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half = half / 2u) {
        if (lid < half) {
            tree[lid] += tree[lid + half];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        out[wid.x] = tree[0] * cp.scale;
    }
}
