// Fused updates out = b·y + a·x (src/ops/update.rs), four elements per invocation.
// The coefficients come from the parameter block or from 1-element device buffers, so a
// scalar computed on the GPU (a dot product, CG's α = rᵀr / pᵀAp) scales a vector
// without a readback. Unused scalar bindings are bound to any buffer and never read.
//   A_SRC COEF_HOST: a = p.a   COEF_DEVICE: a = p.a · s0[0]   COEF_RATIO: a = p.a · s0[0] / s1[0] (0 when s1[0] = 0)
//   B_SRC COEF_HOST: b = p.b   COEF_DEVICE: b = s1[0]   (never together with A_SRC = COEF_RATIO)
override A_SRC: u32 = 0u;
override B_SRC: u32 = 0u;
override WG: u32 = 256u;
//#include op_codes
//#include common/linear_id.wgsl

struct Params {
    n4: u32,
    _pad: u32,
    a: f32,
    b: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> y: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> s0: array<f32>;
@group(0) @binding(4) var<storage, read> s1: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.n4) {
        return;
    }
    var a = p.a;
    switch A_SRC {
        case COEF_DEVICE: { a = p.a * s0[0]; }
        // A zero denominator gives a zero ratio: CG's α and β once its residual is exactly 0.
        case COEF_RATIO: { a = select(0.0, p.a * s0[0] / s1[0], s1[0] != 0.0); }
        default: {}
    }
    var b = p.b;
    if (B_SRC == COEF_DEVICE) {
        b = s1[0];
    }
    out[i] = b * y[i] + a * x[i];
}
