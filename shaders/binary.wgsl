// Elementwise binary ops with NumPy broadcasting, four outputs per invocation.
// OP is `BinaryOp as u32` (src/backend/op.rs), or BINARY_FIRST (the left operand:
// broadcasting as a copy). MODE picks the indexing:
//   MODE_SAME: both operands have the output's shape (plain vec4 streams);
//   MODE_SCALAR_A: the left operand is a single element, MODE_SCALAR_B: the right one is;
//   MODE_STRIDED: general broadcasting through per-dimension strides (0 on broadcast dims).
override OP: u32 = 0u;
override MODE: u32 = 0u;
override WG: u32 = 256u;
//#include op_codes
//#include common/linear_id.wgsl

const MAX_RANK: u32 = 8u;

struct Params {
    n: u32,
    n4: u32,
    rank: u32,
    _pad: u32,
    shape: array<vec4<u32>, 2>,
    stride_a: array<vec4<u32>, 2>,
    stride_b: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<vec4<f32>>;

fn apply(u: vec4<f32>, v: vec4<f32>) -> vec4<f32> {
    switch OP {
        case BINARY_ADD: { return u + v; }
        case BINARY_SUB: { return u - v; }
        case BINARY_MUL: { return u * v; }
        case BINARY_DIV: { return u / v; }
        case BINARY_MAX: { return max(u, v); }
        case BINARY_MIN: { return min(u, v); }
        case BINARY_GT: { return select(vec4<f32>(0.0), vec4<f32>(1.0), u > v); }
        case BINARY_GE: { return select(vec4<f32>(0.0), vec4<f32>(1.0), u >= v); }
        case BINARY_LT: { return select(vec4<f32>(0.0), vec4<f32>(1.0), u < v); }
        case BINARY_LE: { return select(vec4<f32>(0.0), vec4<f32>(1.0), u <= v); }
        case BINARY_EQ: { return select(vec4<f32>(0.0), vec4<f32>(1.0), u == v); }
        case BINARY_FIRST, default: { return u; }
    }
}

fn dim(arr: array<vec4<u32>, 2>, d: u32) -> u32 {
    return arr[d / 4u][d % 4u];
}

fn load(src: u32, e: u32) -> f32 {
    if (src == 0u) {
        return a[e / 4u][e % 4u];
    }
    return b[e / 4u][e % 4u];
}

// Offsets of output element `e` in a and b.
fn offsets(e: u32) -> vec2<u32> {
    var rem = e;
    var off = vec2<u32>(0u, 0u);
    for (var k = 0u; k < p.rank; k++) {
        let d = p.rank - 1u - k;
        let extent = dim(p.shape, d);
        let c = rem % extent;
        rem = rem / extent;
        off += c * vec2<u32>(dim(p.stride_a, d), dim(p.stride_b, d));
    }
    return off;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.n4) {
        return;
    }
    switch MODE {
        case MODE_SAME: { y[i] = apply(a[i], b[i]); }
        case MODE_SCALAR_A: { y[i] = apply(vec4<f32>(a[0].x), b[i]); }
        case MODE_SCALAR_B: { y[i] = apply(a[i], vec4<f32>(b[0].x)); }
        case MODE_STRIDED, default: {
            var u = vec4<f32>(0.0);
            var v = vec4<f32>(0.0);
            for (var j = 0u; j < 4u; j++) {
                let e = 4u * i + j;
                if (e < p.n) {
                    let off = offsets(e);
                    u[j] = load(0u, off.x);
                    v[j] = load(1u, off.y);
                }
            }
            y[i] = apply(u, v);
        }
    }
}
