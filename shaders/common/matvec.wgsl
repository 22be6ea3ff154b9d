// What both matvec shaders (matvec.wgsl, matvec_subgroup.wgsl) share: the parameters,
// the bindings, the accumulation of one invocation's share of k, and the `cols` kernel's
// workgroup sum and split-k finish. See backend/gpu/kernels/matvec.rs.
//
// Y[M, NC] = op(L) · S, NC ≤ 16, batched over workgroup_id.z, Y written through strides.
// L (the long operand) is M×K, S (the short one) K×NC.
//
// Accumulators: one vec4 per output column, as the 16 named fields of `Acc`, each touched
// only under `if (NC > j)` with a constant j. An override folds those branches when the
// pipeline is made, so NC = 1 (X·w, Xᵀ·r) keeps one vec4, and no accumulator is ever
// indexed by a run-time value: on NVIDIA such an array lives in slow local memory.

// Invocations per workgroup.
override WG: u32 = 64u;
// rows: invocations per row (a power of two dividing WG).
override TPR: u32 = 16u;
// cols: invocations along the columns (each owns 4 columns); WG / CW slices of k.
override CW: u32 = 16u;
// Output columns (1..=16).
override NC: u32 = 1u;
// Workgroup floats (rows) or vec4s (cols) of partials: NC * WG.
override TREE: u32 = 64u;
// L's rows (rows: along k; cols: along m) are whole vec4s.
override L_VEC4: bool = false;
// rows: S runs along k (s_k = 1) in whole vec4s.
override S_VEC4: bool = false;
// cols: k is split across workgroups (workgroup_id.y): write partials, `cols_sum` adds them.
override SPLIT: bool = false;

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
    // cols with SPLIT: workgroups along k, and the rows of k each covers.
    splits: u32,
    chunk: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> l4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> l1: array<f32>;
@group(0) @binding(3) var<storage, read> s4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> s1: array<f32>;
@group(0) @binding(5) var<storage, read_write> c: array<f32>;

// Hides loop bounds from lavapipe's uniform inlining (see matmul_operands.wgsl).
fn opaque(x: u32) -> u32 {
    return x | (arrayLength(&c) & 0x80000000u);
}

struct Acc {
    a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>,
    a4: vec4<f32>, a5: vec4<f32>, a6: vec4<f32>, a7: vec4<f32>,
    a8: vec4<f32>, a9: vec4<f32>, a10: vec4<f32>, a11: vec4<f32>,
    a12: vec4<f32>, a13: vec4<f32>, a14: vec4<f32>, a15: vec4<f32>,
}

// Column j of an accumulator. Called with constant j (or in loops bounded by NC, which
// compilers unroll): a switch, never an indexed array.
fn acc_col(acc: Acc, j: u32) -> vec4<f32> {
    switch j {
        case 0u: { return acc.a0; }
        case 1u: { return acc.a1; }
        case 2u: { return acc.a2; }
        case 3u: { return acc.a3; }
        case 4u: { return acc.a4; }
        case 5u: { return acc.a5; }
        case 6u: { return acc.a6; }
        case 7u: { return acc.a7; }
        case 8u: { return acc.a8; }
        case 9u: { return acc.a9; }
        case 10u: { return acc.a10; }
        case 11u: { return acc.a11; }
        case 12u: { return acc.a12; }
        case 13u: { return acc.a13; }
        case 14u: { return acc.a14; }
        default: { return acc.a15; }
    }
}

// ---- rows: L stored [M][K] --------------------------------------------------------------

// S's column j at k = 4q..4q+3.
fn s_vec(sbase: u32, q: u32, j: u32) -> vec4<f32> {
    if (S_VEC4) {
        return s4[(sbase + j * p.s_n) / 4u + q];
    }
    let at = sbase + 4u * q * p.s_k + j * p.s_n;
    return vec4<f32>(s1[at], s1[at + p.s_k], s1[at + 2u * p.s_k], s1[at + 3u * p.s_k]);
}

// v (four k of one row) times S's columns at those k.
fn rows_fma4(acc: ptr<function, Acc>, v: vec4<f32>, sbase: u32, q: u32) {
    (*acc).a0 += v * s_vec(sbase, q, 0u);
    if (NC > 1u) { (*acc).a1 += v * s_vec(sbase, q, 1u); }
    if (NC > 2u) { (*acc).a2 += v * s_vec(sbase, q, 2u); }
    if (NC > 3u) { (*acc).a3 += v * s_vec(sbase, q, 3u); }
    if (NC > 4u) { (*acc).a4 += v * s_vec(sbase, q, 4u); }
    if (NC > 5u) { (*acc).a5 += v * s_vec(sbase, q, 5u); }
    if (NC > 6u) { (*acc).a6 += v * s_vec(sbase, q, 6u); }
    if (NC > 7u) { (*acc).a7 += v * s_vec(sbase, q, 7u); }
    if (NC > 8u) { (*acc).a8 += v * s_vec(sbase, q, 8u); }
    if (NC > 9u) { (*acc).a9 += v * s_vec(sbase, q, 9u); }
    if (NC > 10u) { (*acc).a10 += v * s_vec(sbase, q, 10u); }
    if (NC > 11u) { (*acc).a11 += v * s_vec(sbase, q, 11u); }
    if (NC > 12u) { (*acc).a12 += v * s_vec(sbase, q, 12u); }
    if (NC > 13u) { (*acc).a13 += v * s_vec(sbase, q, 13u); }
    if (NC > 14u) { (*acc).a14 += v * s_vec(sbase, q, 14u); }
    if (NC > 15u) { (*acc).a15 += v * s_vec(sbase, q, 15u); }
}

// One float of a row at k = kk times S's row kk (the x components only).
fn rows_fma1(acc: ptr<function, Acc>, v: f32, at: u32) {
    let sn = p.s_n;
    (*acc).a0.x += v * s1[at];
    if (NC > 1u) { (*acc).a1.x += v * s1[at + sn]; }
    if (NC > 2u) { (*acc).a2.x += v * s1[at + 2u * sn]; }
    if (NC > 3u) { (*acc).a3.x += v * s1[at + 3u * sn]; }
    if (NC > 4u) { (*acc).a4.x += v * s1[at + 4u * sn]; }
    if (NC > 5u) { (*acc).a5.x += v * s1[at + 5u * sn]; }
    if (NC > 6u) { (*acc).a6.x += v * s1[at + 6u * sn]; }
    if (NC > 7u) { (*acc).a7.x += v * s1[at + 7u * sn]; }
    if (NC > 8u) { (*acc).a8.x += v * s1[at + 8u * sn]; }
    if (NC > 9u) { (*acc).a9.x += v * s1[at + 9u * sn]; }
    if (NC > 10u) { (*acc).a10.x += v * s1[at + 10u * sn]; }
    if (NC > 11u) { (*acc).a11.x += v * s1[at + 11u * sn]; }
    if (NC > 12u) { (*acc).a12.x += v * s1[at + 12u * sn]; }
    if (NC > 13u) { (*acc).a13.x += v * s1[at + 13u * sn]; }
    if (NC > 14u) { (*acc).a14.x += v * s1[at + 14u * sn]; }
    if (NC > 15u) { (*acc).a15.x += v * s1[at + 15u * sn]; }
}

// Invocation t of TPR's share of row `row` (clamped: rows past M compute row M − 1 and
// are not stored): k = t, t + TPR, ... Column j's partial is the sum of acc's field j.
fn rows_partials(row: u32, t: u32, bt: u32) -> Acc {
    let lbase = bt * p.l_batch + min(row, p.m - 1u) * p.k;
    let sbase = bt * p.s_batch;
    var acc: Acc;
    if (L_VEC4) {
        let k4 = opaque(p.k / 4u);
        for (var q = t; q < k4; q += TPR) {
            rows_fma4(&acc, l4[lbase / 4u + q], sbase, q);
        }
    } else {
        let k = opaque(p.k);
        for (var kk = t; kk < k; kk += TPR) {
            rows_fma1(&acc, l1[lbase + kk], sbase + kk * p.s_k);
        }
    }
    return acc;
}

// ---- cols: L stored [K][M] --------------------------------------------------------------

// v (four adjacent columns of L at one k) times S's row at that k.
fn cols_fma(acc: ptr<function, Acc>, v: vec4<f32>, at: u32) {
    let sn = p.s_n;
    (*acc).a0 += v * s1[at];
    if (NC > 1u) { (*acc).a1 += v * s1[at + sn]; }
    if (NC > 2u) { (*acc).a2 += v * s1[at + 2u * sn]; }
    if (NC > 3u) { (*acc).a3 += v * s1[at + 3u * sn]; }
    if (NC > 4u) { (*acc).a4 += v * s1[at + 4u * sn]; }
    if (NC > 5u) { (*acc).a5 += v * s1[at + 5u * sn]; }
    if (NC > 6u) { (*acc).a6 += v * s1[at + 6u * sn]; }
    if (NC > 7u) { (*acc).a7 += v * s1[at + 7u * sn]; }
    if (NC > 8u) { (*acc).a8 += v * s1[at + 8u * sn]; }
    if (NC > 9u) { (*acc).a9 += v * s1[at + 9u * sn]; }
    if (NC > 10u) { (*acc).a10 += v * s1[at + 10u * sn]; }
    if (NC > 11u) { (*acc).a11 += v * s1[at + 11u * sn]; }
    if (NC > 12u) { (*acc).a12 += v * s1[at + 12u * sn]; }
    if (NC > 13u) { (*acc).a13 += v * s1[at + 13u * sn]; }
    if (NC > 14u) { (*acc).a14 += v * s1[at + 14u * sn]; }
    if (NC > 15u) { (*acc).a15 += v * s1[at + 15u * sn]; }
}

// Y (i, j), or with SPLIT this workgroup's partial of it: [batch][split][NC][M], the batch
// counted within this dispatch.
fn cols_store(i: u32, j: u32, v: f32, bt: u32, g: vec3<u32>) {
    if (i < p.m) {
        if (SPLIT) {
            c[((g.z * p.splits + g.y) * NC + j) * p.m + i] = v;
        } else {
            c[bt * p.c_batch + i * p.c_m + j * p.c_n] = v;
        }
    }
}

var<workgroup> tree4: array<vec4<f32>, TREE>;

// The `cols` kernel: each invocation owns 4 adjacent columns of L (one vec4 load when M is
// a multiple of 4; adjacent invocations read adjacent addresses) and one of WG / CW slices
// of k (of this workgroup's chunk of k with SPLIT); after one barrier the first slice adds
// the others' and stores Y, or with SPLIT this chunk's partial sums.
fn cols_kernel(lid: u32, g: vec3<u32>) {
    let lane = lid % CW;
    let slice = lid / CW;
    let i0 = 4u * ((g.x + p.group0) * CW + lane);
    let bt = g.z + p.batch0;
    let lbase = bt * p.l_batch;
    let sbase = bt * p.s_batch;
    let last = p.m - 1u;
    var k0 = 0u;
    var k = opaque(p.k);
    if (SPLIT) {
        k0 = g.y * p.chunk;
        k = min(k, k0 + p.chunk);
    }
    var acc: Acc;
    for (var kk = k0 + slice; kk < k; kk += WG / CW) {
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
        cols_fma(&acc, v, sbase + kk * p.s_k);
    }
    for (var j = 0u; j < NC; j++) {
        tree4[j * WG + lid] = acc_col(acc, j);
    }
    workgroupBarrier();
    if (slice == 0u) {
        for (var j = 0u; j < NC; j++) {
            var sum = vec4<f32>(0.0);
            for (var q = lane; q < WG; q += CW) {
                sum += tree4[j * WG + q];
            }
            cols_store(i0, j, sum.x, bt, g);
            cols_store(i0 + 1u, j, sum.y, bt, g);
            cols_store(i0 + 2u, j, sum.z, bt, g);
            cols_store(i0 + 3u, j, sum.w, bt, g);
        }
    }
}

// The second pass of a split `cols`: Y = the sum of the splits' partials (bound as L),
// one invocation per output of one batch entry.
fn cols_sum_kernel(id: u32, g: vec3<u32>) {
    if (id >= p.m * NC) {
        return;
    }
    let j = id / p.m;
    let i = id % p.m;
    let splits = opaque(p.splits);
    var sum = 0.0;
    for (var s = 0u; s < splits; s++) {
        sum += l1[((g.z * splits + s) * NC + j) * p.m + i];
    }
    c[(g.z + p.batch0) * p.c_batch + i * p.c_m + j * p.c_n] = sum;
}
