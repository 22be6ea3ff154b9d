// What the matmul kernels (matmul.wgsl, matmul_portable.wgsl, matmul_tiled.wgsl,
// matmul_tiled_large.wgsl) share: the parameters, the bindings, and the loads and stores
// of C = op(A) · op(B), batched over workgroup_id.z.
//
// Layouts (offsets and row lengths in floats):
//   A: TRANS_A = false: [m][lda] (rows run along k);  true: [k][lda] (rows run along m).
//   B: TRANS_B = false: [k][ldb] (rows run along n);  true: [n][ldb] (rows run along k).
// Rows and columns past the matrices are clamped on load (their results are never
// stored) and values past k are masked to zero, so the k loop has no bounds branches.
override TRANS_A: bool = false;
override TRANS_B: bool = false;
override A_VEC4: bool = true;
override B_VEC4: bool = true;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    k4: u32,
    lda: u32,
    ldb: u32,
    // Per-batch offsets; 0 shares the operand across the batch. C is dense [batch, m, n].
    a_batch: u32,
    b_batch: u32,
    // Last valid row and vec4 column of the stored A and B, for clamping.
    a_last_row: u32,
    a_last_col4: u32,
    b_last_row: u32,
    b_last_col4: u32,
    // Offsets of this dispatch's first workgroup along y (row blocks) and z (batch), for
    // grids larger than the per-dimension workgroup limit.
    group_m0: u32,
    batch0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// Each operand is bound twice: as vec4s for rows that are whole vec4s (A_VEC4, B_VEC4),
// and as floats for the others, which then cost four loads per vec4 but no copy.
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> a1: array<f32>;
@group(0) @binding(4) var<storage, read> b1: array<f32>;
@group(0) @binding(5) var<storage, read_write> c: array<f32>;

// lavapipe (Mesa's CPU Vulkan driver) recompiles a shader for every new value of a uniform
// that bounds a loop ("uniform inlining"): seconds of LLVM time at every new k. Or-ing in a
// bit that is always zero but comes from a buffer length hides the bound from that
// analysis (bindings hold fewer than 2^31 elements).
fn opaque(x: u32) -> u32 {
    return x | (arrayLength(&c) & 0x80000000u);
}

fn load_a(base: u32, row: u32, col4: u32) -> vec4<f32> {
    let i = base + min(row, p.a_last_row) * p.lda + 4u * min(col4, p.a_last_col4);
    if (A_VEC4) {
        return a[i / 4u];
    }
    return vec4<f32>(a1[i], a1[i + 1u], a1[i + 2u], a1[i + 3u]);
}

fn load_b(base: u32, row: u32, col4: u32) -> vec4<f32> {
    let i = base + min(row, p.b_last_row) * p.ldb + 4u * min(col4, p.b_last_col4);
    if (B_VEC4) {
        return b[i / 4u];
    }
    return vec4<f32>(b1[i], b1[i + 1u], b1[i + 2u], b1[i + 3u]);
}

// In an unaligned row that runs along k, the components past k belong to the next row
// (or to no row: past the buffer a read returns 0 or another element of the buffer).
fn kmask4(v: vec4<f32>, k0: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), v, vec4<u32>(k0) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.k));
}

// Row r of C from column `col` on: four values, those inside C stored.
fn store_row(r: u32, v: vec4<f32>, col: u32, cbase: u32) {
    if (r < p.m) {
        let at = cbase + r * p.n + col;
        for (var e = 0u; e < 4u; e++) {
            if (col + e < p.n) {
                c[at + e] = v[e];
            }
        }
    }
}
