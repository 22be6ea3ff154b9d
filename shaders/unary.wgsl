// Elementwise unary ops, four elements per invocation. OP selects the function; the
// numbering is `UnaryOp as u32` in src/ops/unary.rs. Buffers are allocated in whole
// vec4s, so the tail past n is scratch space that nothing reads.
override OP: u32 = 0u;
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
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<vec4<f32>>;

// ln(1 + t) with t = e^−|v| ∈ (0, 1]: no overflow, and no small t lost to the rounding
// of 1 + t: below t = 0.05 the series t − t²/2 + t³/3 − t⁴/4 + t⁵/5 (relative error
// < t⁵/6 < 5e-8), so that log's absolute error near 1 (up to 2⁻²¹ in Vulkan's rules)
// stays relative to ≥ 0.05. The same expression as fusion.rs's `unary_wgsl`.
fn log1p_exp_neg_abs(v: vec4<f32>) -> vec4<f32> {
    let t = exp(-abs(v));
    return select(log(1.0 + t), t * (1.0 - t * (0.5 - t * (0.33333334 - t * (0.25 - t * 0.2)))), t < vec4<f32>(0.05));
}

fn apply(v: vec4<f32>) -> vec4<f32> {
    switch OP {
        case UNARY_NEG: { return -v; }
        case UNARY_EXP: { return exp(v); }
        case UNARY_LOG: { return log(v); }
        case UNARY_SQRT: { return sqrt(v); }
        case UNARY_SQUARE: { return v * v; }
        case UNARY_ABS: { return abs(v); }
        case UNARY_SIN: { return sin(v); }
        case UNARY_COS: { return cos(v); }
        // Clamped because some drivers compute tanh from exp(2x), which overflows to
        // NaN for large |x|; tanh(±15) is ±1 in f32 already.
        case UNARY_TANH: { return tanh(clamp(v, vec4<f32>(-15.0), vec4<f32>(15.0))); }
        case UNARY_SIGMOID: { return 1.0 / (1.0 + exp(-v)); }
        case UNARY_RELU: { return max(v, vec4<f32>(0.0)); }
        case UNARY_RELU_MASK: { return select(vec4<f32>(0.0), vec4<f32>(1.0), v > vec4<f32>(0.0)); }
        case UNARY_SCALE_SHIFT: { return p.a * v + p.b; }
        case UNARY_SIGN: { return sign(v); }
        case UNARY_RECIP: { return 1.0 / v; }
        case UNARY_SOFTPLUS: { return max(v, vec4<f32>(0.0)) + log1p_exp_neg_abs(v); }
        case UNARY_LOG_SIGMOID: { return min(v, vec4<f32>(0.0)) - log1p_exp_neg_abs(v); }
        default: { return v; }
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i < p.n4) {
        y[i] = apply(x[i]);
    }
}
