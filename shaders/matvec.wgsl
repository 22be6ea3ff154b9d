// Narrow products (see backend/gpu/kernels/matvec.rs): Y[M, NC] = op(L) · S, NC ≤ 16,
// batched over workgroup_id.z, with Y written through strides (so that C or Cᵀ can be
// the output). L, the long operand, is M×K; S, the short one, is K×NC.
//   `rows`: L stored [M][K] (rows along k): TPR invocations per row stride along k.
//   `cols`: L stored [K][M] (k down the stored rows): each invocation owns 4 adjacent
//           columns of L (adjacent invocations read adjacent addresses), the workgroup's
//           WG / CW slices of k are added at the end.
// Either way one barrier, then a few invocations add the partials in workgroup memory.
override WG: u32 = 64;
// rows: invocations per row (a power of two dividing WG).
override TPR: u32 = 16;
// cols: invocations along the columns (each owns 4 columns); WG / CW slices of k.
override CW: u32 = 16;
// Output columns (1..=16).
override NC: u32 = 1;
// Workgroup floats (rows) or vec4s (cols) of partials: NC * WG.
override TREE: u32 = 64;
// L's rows (rows: along k; cols: along m) are whole vec4s.
override L_VEC4: bool = false;
// rows: S runs along k (s_k = 1) in whole vec4s.
override S_VEC4: bool = false;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // S element (kk, j) at s_k * kk + s_n * j.
    s_k: u32,
    s_n: u32,
    // Y element (i, j) at c_m * i + c_n * j.
    c_m: u32,
    c_n: u32,
    // Per-batch offsets (0: shared across the batch).
    l_batch: u32,
    s_batch: u32,
    c_batch: u32,
    // Offsets of this dispatch's first workgroup along x and z.
    group0: u32,
    batch0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> l4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> l1: array<f32>;
@group(0) @binding(3) var<storage, read> s4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> s1: array<f32>;
@group(0) @binding(5) var<storage, read_write> c: array<f32>;

var<workgroup> tree: array<f32, TREE>;
var<workgroup> tree4: array<vec4<f32>, TREE>;

// Hides loop bounds from lavapipe's uniform inlining (see matmul_operands.wgsl).
fn opaque(x: u32) -> u32 {
    return x | (arrayLength(&c) & 0x80000000u);
}

@compute @workgroup_size(WG)
fn rows(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) g: vec3<u32>) {
    let r = lid / TPR;
    let t = lid % TPR;
    let row = (g.x + p.group0) * (WG / TPR) + r;
    let bt = g.z + p.batch0;
    let lbase = bt * p.l_batch + min(row, p.m - 1u) * p.k;
    let sbase = bt * p.s_batch;
    var acc: array<f32, 16>;
    if (L_VEC4) {
        let k4 = opaque(p.k / 4u);
        for (var q = t; q < k4; q += TPR) {
            let v = l4[lbase / 4u + q];
            for (var j = 0u; j < NC; j++) {
                var w: vec4<f32>;
                if (S_VEC4) {
                    w = s4[(sbase + j * p.s_n) / 4u + q];
                } else {
                    let at = sbase + 4u * q * p.s_k + j * p.s_n;
                    w = vec4<f32>(s1[at], s1[at + p.s_k], s1[at + 2u * p.s_k], s1[at + 3u * p.s_k]);
                }
                acc[j] += dot(v, w);
            }
        }
    } else {
        let k = opaque(p.k);
        for (var kk = t; kk < k; kk += TPR) {
            let v = l1[lbase + kk];
            for (var j = 0u; j < NC; j++) {
                acc[j] += v * s1[sbase + kk * p.s_k + j * p.s_n];
            }
        }
    }
    for (var j = 0u; j < NC; j++) {
        tree[j * WG + lid] = acc[j];
    }
    workgroupBarrier();
    if (row < p.m) {
        // Output column j is added by invocation j % TPR of the row.
        for (var j = t; j < NC; j += TPR) {
            let base = j * WG + r * TPR;
            var sum = 0.0;
            for (var q = 0u; q < TPR; q++) {
                sum += tree[base + q];
            }
            c[bt * p.c_batch + row * p.c_m + j * p.c_n] = sum;
        }
    }
}

@compute @workgroup_size(WG)
fn cols(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) g: vec3<u32>) {
    let lane = lid % CW;
    let slice = lid / CW;
    let i0 = 4u * ((g.x + p.group0) * CW + lane);
    let bt = g.z + p.batch0;
    let lbase = bt * p.l_batch;
    let sbase = bt * p.s_batch;
    let last = p.m - 1u;
    var acc: array<vec4<f32>, 16>;
    let k = opaque(p.k);
    for (var kk = slice; kk < k; kk += WG / CW) {
        let at = lbase + kk * p.m;
        var v: vec4<f32>;
        if (L_VEC4) {
            v = l4[(at + min(i0, last)) / 4u];
        } else {
            v = vec4<f32>(
                l1[at + min(i0, last)],
                l1[at + min(i0 + 1u, last)],
                l1[at + min(i0 + 2u, last)],
                l1[at + min(i0 + 3u, last)],
            );
        }
        for (var j = 0u; j < NC; j++) {
            acc[j] += v * s1[sbase + kk * p.s_k + j * p.s_n];
        }
    }
    for (var j = 0u; j < NC; j++) {
        tree4[j * WG + lid] = acc[j];
    }
    workgroupBarrier();
    if (slice == 0u) {
        let cbase = bt * p.c_batch;
        for (var j = 0u; j < NC; j++) {
            var sum = vec4<f32>(0.0);
            for (var q = lane; q < WG; q += CW) {
                sum += tree4[j * WG + q];
            }
            for (var e = 0u; e < 4u; e++) {
                if (i0 + e < p.m) {
                    c[cbase + (i0 + e) * p.c_m + j * p.c_n] = sum[e];
                }
            }
        }
    }
}
