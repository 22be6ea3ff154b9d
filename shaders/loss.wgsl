// Softmax losses over the rows of a [rows, c] matrix (src/ops/loss.rs). One invocation
// owns a row: rows are short in the losses blo computes (c = classes), and a row per
// invocation needs no barrier. Row starts are not vec4-aligned, so the row is read as
// whole vec4s with the lanes outside it masked off.
//
// `log_softmax`: y = z − logsumexp(z) per row, stable (exponents are taken relative
// to the running row max).
// `ce_grad`: the gradient of the (weighted) mean cross-entropy with respect to the
// logits, times an upstream gradient g: g·scale·w_i·(softmax(z_i) − onehot(y_i)), one
// dispatch for what is otherwise a log-softmax, an exp, a one-hot, a difference and
// two broadcast products. g is `upstream[0]` with UPSTREAM, else folded into `scale`.
// An invalid label makes its row NaN, as in the loss.
// `ce_grad_vjp`: ce_grad's vector–Jacobian product with u (second order through the
// cross-entropy): vjp_z = s_i·p_i ⊙ (u_i − ⟨p_i, u_i⟩) and vjp_r = ⟨p_i − onehot_i, u_i⟩
// (the weights' and g's gradients follow from r), with s_i as in ce_grad. The GPU
// variant of the losses uses this row-per-invocation kernel too. With BIAS it adds a
// [c] bias to every row of u as it reads it: an HVP's tangent of the logits X·W + b is
// X·u_W + u_b, and the sum need not be written out first.
// `cross_entropy`: Σ_i w_i·(logsumexp(z_i) − z_{i,y_i}) with a strided loop over rows,
// a workgroup sum, and one partial per workgroup (final, times `scale`, when there is
// one workgroup). An invalid label (negative, ≥ c, not an integer, NaN) makes the
// row's term NaN: checking on the host would need a readback.
override WG: u32 = 64u;         // a multiple of 8
override WEIGHTED: bool = false;
override UPSTREAM: bool = false;
override BIAS: bool = false;
//#include common/linear_id.wgsl
//#include common/workgroup_sum.wgsl
//#include common/ce_grad.wgsl

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
@group(0) @binding(5) var<storage, read_write> dz: array<f32>;
@group(0) @binding(5) var<storage, read> u: array<f32>;
// With BIAS, ce_grad_vjp's u is `u + u_bias` with u_bias [c] added to every row.
@group(0) @binding(6) var<storage, read> u_bias: array<f32>;
@group(0) @binding(7) var<storage, read_write> vjp_z: array<f32>;
@group(0) @binding(8) var<storage, read_write> vjp_r: array<f32>;

fn neg_inf() -> f32 {
    return bitcast<f32>(0xff800000u);
}

fn nan() -> f32 {
    return bitcast<f32>(0x7fc00000u);
}

// Lanes of vec4 `v` that hold elements of [lo, hi).
fn inside(v: u32, lo: u32, hi: u32) -> vec4<bool> {
    let e = v * 4u + vec4<u32>(0u, 1u, 2u, 3u);
    return e >= vec4<u32>(lo) & e < vec4<u32>(hi);
}

// Over elements [lo, hi), lo < hi: (max m, Σ exp(z − m), z[pick]) in one pass (an
// online softmax: the sum is rescaled whenever the max grows), so no exp overflows
// and each element is loaded once. Loads are the costly part on CPU adapters, which
// is why the row is read as whole vec4s rather than element by element.
fn row_stats(lo: u32, hi: u32, pick: u32) -> vec3<f32> {
    let first = lo / 4u;
    let last = (hi - 1u) / 4u;
    let ninf = vec4<f32>(neg_inf());
    var m = neg_inf();
    var s = 0.0;
    var zp = 0.0;
    for (var v = first; v <= last; v++) {
        let x = select(ninf, z[v], inside(v, lo, hi));
        let mn = max(m, max(max(x.x, x.y), max(x.z, x.w)));
        let ex = exp(x - mn);
        s = s * exp(m - mn) + ((ex.x + ex.y) + (ex.z + ex.w));
        m = mn;
        if (v == pick / 4u) {
            zp = x[pick % 4u];
        }
    }
    return vec3<f32>(m, s, zp);
}

fn logsumexp(st: vec3<f32>) -> f32 {
    return st.x + log(st.y);
}

@compute @workgroup_size(WG)
fn log_softmax(@builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let r = linear_id(wid, nwg, lid);
    if (r >= rp.rows) {
        return;
    }
    let lo = r * rp.c;
    let hi = lo + rp.c;
    let lse = logsumexp(row_stats(lo, hi, lo));
    let first = lo / 4u;
    let last = (hi - 1u) / 4u;
    for (var v = first; v <= last; v++) {
        let x = z[v] - lse;
        let e = v * 4u;
        if (e >= lo) { y[e] = x.x; }
        if (e + 1u >= lo && e + 1u < hi) { y[e + 1u] = x.y; }
        if (e + 2u >= lo && e + 2u < hi) { y[e + 2u] = x.z; }
        if (e + 3u < hi) { y[e + 3u] = x.w; }
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
            let st = row_stats(lo, lo + cp.c, lo + u32(label));
            term = logsumexp(st) - st.z;
        }
        if (WEIGHTED) {
            term *= weights[r];
        }
        acc += term;
    }
    let total = workgroup_sum(acc, lid);
    if (lid == 0u) {
        out[wid.x] = total * cp.scale;
    }
}

// Row r's bounds, log-sum-exp, label and gradient factor: what `ce_grad` and
// `ce_grad_vjp` start from.
struct GradRow {
    lo: u32,
    hi: u32,
    lse: f32,
    label: f32,
    s: f32,
}

fn grad_row(r: u32) -> GradRow {
    let lo = r * gp.c;
    let hi = lo + gp.c;
    let label = labels[r];
    return GradRow(lo, hi, logsumexp(row_stats(lo, hi, lo)), label, grad_scale(r, label));
}

@compute @workgroup_size(WG)
fn ce_grad(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let r = linear_id(wid, nwg, lid);
    if (r >= gp.rows) {
        return;
    }
    let g = grad_row(r);
    for (var e = g.lo; e < g.hi; e++) {
        let hot = select(0.0, 1.0, f32(e - g.lo) == g.label);
        dz[e] = g.s * (exp(z[e / 4u][e % 4u] - g.lse) - hot);
    }
}

// Element e of u (in the row starting at lo), with the row bias when there is one.
fn u_at(e: u32, lo: u32) -> f32 {
    if (BIAS) {
        return u[e] + u_bias[e - lo];
    }
    return u[e];
}

@compute @workgroup_size(WG)
fn ce_grad_vjp(@builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let r = linear_id(wid, nwg, lid);
    if (r >= gp.rows) {
        return;
    }
    let g = grad_row(r);
    var pu = 0.0;
    var u_label = 0.0;
    for (var e = g.lo; e < g.hi; e++) {
        let ue = u_at(e, g.lo);
        pu += exp(z[e / 4u][e % 4u] - g.lse) * ue;
        if (f32(e - g.lo) == g.label) {
            u_label = ue;
        }
    }
    // An invalid label makes the row NaN through s; r is NaN then too.
    vjp_r[r] = select(nan(), pu - u_label, g.s == g.s);
    for (var e = g.lo; e < g.hi; e++) {
        vjp_z[e] = g.s * exp(z[e / 4u][e % 4u] - g.lse) * (u_at(e, g.lo) - pu);
    }
}
