// The cross-entropy gradient's parameters and per-row factor, shared by `ce_grad` (and
// `ce_grad_vjp`) in loss.wgsl and loss_workgroup.wgsl. Needs, from the including shader:
// `override WEIGHTED: bool`, `override UPSTREAM: bool`, `labels`, `weights` and `nan()`.

// `scale` multiplies every row's gradient (1/n, times the upstream gradient when that
// is a host constant).
struct GradParams {
    rows: u32,
    c: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> gp: GradParams;
// The upstream gradient g as a device scalar (read with UPSTREAM).
@group(0) @binding(4) var<storage, read> upstream: array<f32>;

// Row r's factor g·scale·w_r; NaN if its label is not a class (as in the loss).
fn grad_scale(r: u32, label: f32) -> f32 {
    var s = gp.scale;
    if (UPSTREAM) {
        s *= upstream[0];
    }
    if (WEIGHTED) {
        s *= weights[r];
    }
    let valid = label >= 0.0 && label < f32(gp.c) && label == floor(label);
    return select(nan(), s, valid);
}
