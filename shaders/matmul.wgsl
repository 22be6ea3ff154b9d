// C = op(A) · op(B), batched, with subgroup broadcasts (src/ops/matmul.rs explains the
// design and the measurements behind it).
//
// Each invocation owns 4 adjacent columns of C and ROWS rows, so its accumulators are
// ROWS/4 4×4 matrices whose columns are rows of C. Each subgroup shares its rows: per step of
// 4 along k, lane l of a group of 8 loads one vec4 of A and `subgroupBroadcast` hands all 32
// values to every lane. A broadcast is a register move on every target, while a load whose
// address differs per lane is a loop over lanes on a CPU adapter (llvmpipe), so sharing A
// this way cuts its load cost by the subgroup width. B is private to the lane (its columns),
// one vec4 per k row, reused by all ROWS rows.
//
// Layouts (vec4 index units; a vec4 never straddles a row because the caller pads the
// contiguous dimension to a multiple of 4):
//   A: TRANS_A = false: [m, lda] rows of k;   true: [k, lda] rows of m.
//   B: TRANS_B = false: [k, ldb] rows of n;   true: [n, ldb] rows of k.
// Rows and columns past m and n are clamped on load (their results are never stored), and k
// past the end is masked to zero, so the loop needs no per-iteration bounds branches.
override WG: u32 = 8u;
override ROWS: u32 = 64u;
override TRANS_A: bool = false;
override TRANS_B: bool = false;
override SWAP: bool = false;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    k4: u32,
    // Leading dimensions and per-batch offsets of A and B in vec4s (batch stride 0 shares
    // an operand across the batch); C is dense [batch, m, n].
    lda4: u32,
    ldb4: u32,
    a_batch4: u32,
    b_batch4: u32,
    // Rows of vec4s of the stored A (m/4 or k) and B (k or n/4 ... see src) minus one, for
    // clamping.
    a_rows: u32,
    a_cols4: u32,
    b_rows: u32,
    b_cols4: u32,
    // Workgroups along n, for unswizzling the linear workgroup index.
    groups_n: u32,
    groups_m: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const MAX_GROUPS: u32 = 8u;

// Accumulators: rows 4i..4i+3 of this invocation's block, one matrix column per row.
var<private> acc: array<mat4x4<f32>, 32>;

fn load_a(base: u32, row: u32, col4: u32) -> vec4<f32> {
    return a[base + min(row, p.a_rows) * p.lda4 + min(col4, p.a_cols4)];
}

fn load_b(base: u32, row: u32, col4: u32) -> vec4<f32> {
    return b[base + min(row, p.b_rows) * p.ldb4 + min(col4, p.b_cols4)];
}

// One group of 8 rows for one step of 4 along k. `av` is this lane's vec4 of A:
// untransposed, lane l holds row 8g+l at k..k+3; transposed, lane l holds rows
// 8g+4(l/4)..+3 at k + l%4, so the same eight broadcasts form the transpose.
fn rows8(g: u32, av: vec4<f32>, bm: mat4x4<f32>) {
    var lo = mat4x4<f32>(
        subgroupBroadcast(av, 0u),
        subgroupBroadcast(av, 1u),
        subgroupBroadcast(av, 2u),
        subgroupBroadcast(av, 3u),
    );
    var hi = mat4x4<f32>(
        subgroupBroadcast(av, 4u),
        subgroupBroadcast(av, 5u),
        subgroupBroadcast(av, 6u),
        subgroupBroadcast(av, 7u),
    );
    if (TRANS_A) {
        lo = transpose(lo);
        hi = transpose(hi);
    }
    // bm's columns are B's rows k..k+3 over this lane's 4 columns, and lo's column j is
    // row j's four values of A, so bm * lo adds four rank-1 updates at once.
    acc[2u * g] += bm * lo;
    acc[2u * g + 1u] += bm * hi;
}

fn a_vec(base: u32, row0: u32, g: u32, lane: u32, k0: u32) -> vec4<f32> {
    if (TRANS_A) {
        let kk = k0 + (lane & 3u);
        let v = load_a(base, kk, (row0 + 8u * g) / 4u + (lane >> 2u));
        return select(vec4<f32>(0.0), v, kk < p.k);
    }
    return load_a(base, row0 + 8u * g + lane, k0 / 4u);
}

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

// Stores rows 4i..4i+3 of the block (i is a constant after inlining, so `acc` stays in
// registers: a variable index anywhere would push the whole array to memory).
fn store4(i: u32, row0: u32, col: u32, cbase: u32) {
    if (ROWS > 4u * i) {
        let m = acc[i];
        store_row(row0 + 4u * i, m[0], col, cbase);
        store_row(row0 + 4u * i + 1u, m[1], col, cbase);
        store_row(row0 + 4u * i + 2u, m[2], col, cbase);
        store_row(row0 + 4u * i + 3u, m[3], col, cbase);
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_invocation_id) sgl: u32) {
    let lane = sgl & 7u;
    let col4 = select(wid.x, wid.y, SWAP) * WG + lid;
    let row0 = select(wid.y, wid.x, SWAP) * ROWS;
    let batch = wid.z;
    let abase = batch * p.a_batch4;
    let bbase = batch * p.b_batch4;

    for (var q = 0u; q < p.k4; q++) {
        let k0 = 4u * q;
        var bm: mat4x4<f32>;
        if (TRANS_B) {
            bm = transpose(mat4x4<f32>(
                load_b(bbase, 4u * col4, q),
                load_b(bbase, 4u * col4 + 1u, q),
                load_b(bbase, 4u * col4 + 2u, q),
                load_b(bbase, 4u * col4 + 3u, q),
            ));
        } else {
            bm = mat4x4<f32>(
                select(vec4<f32>(0.0), load_b(bbase, k0, col4), k0 < p.k),
                select(vec4<f32>(0.0), load_b(bbase, k0 + 1u, col4), k0 + 1u < p.k),
                select(vec4<f32>(0.0), load_b(bbase, k0 + 2u, col4), k0 + 2u < p.k),
                select(vec4<f32>(0.0), load_b(bbase, k0 + 3u, col4), k0 + 3u < p.k),
            );
        }
        // Constant conditions: the pipeline compiler drops the groups past ROWS.
        rows8(0u, a_vec(abase, row0, 0u, lane, k0), bm);
        if (ROWS > 8u) { rows8(1u, a_vec(abase, row0, 1u, lane, k0), bm); }
        if (ROWS > 16u) { rows8(2u, a_vec(abase, row0, 2u, lane, k0), bm); }
        if (ROWS > 24u) { rows8(3u, a_vec(abase, row0, 3u, lane, k0), bm); }
        if (ROWS > 32u) { rows8(4u, a_vec(abase, row0, 4u, lane, k0), bm); }
        if (ROWS > 40u) { rows8(5u, a_vec(abase, row0, 5u, lane, k0), bm); }
        if (ROWS > 48u) { rows8(6u, a_vec(abase, row0, 6u, lane, k0), bm); }
        if (ROWS > 56u) { rows8(7u, a_vec(abase, row0, 7u, lane, k0), bm); }
        if (ROWS > 64u) { rows8(8u, a_vec(abase, row0, 8u, lane, k0), bm); }
        if (ROWS > 72u) { rows8(9u, a_vec(abase, row0, 9u, lane, k0), bm); }
        if (ROWS > 80u) { rows8(10u, a_vec(abase, row0, 10u, lane, k0), bm); }
        if (ROWS > 88u) { rows8(11u, a_vec(abase, row0, 11u, lane, k0), bm); }
        if (ROWS > 96u) { rows8(12u, a_vec(abase, row0, 12u, lane, k0), bm); }
        if (ROWS > 104u) { rows8(13u, a_vec(abase, row0, 13u, lane, k0), bm); }
        if (ROWS > 112u) { rows8(14u, a_vec(abase, row0, 14u, lane, k0), bm); }
        if (ROWS > 120u) { rows8(15u, a_vec(abase, row0, 15u, lane, k0), bm); }
    }

    let cbase = batch * p.m * p.n;
    let col = 4u * col4;
    store4(0u, row0, col, cbase);
    store4(1u, row0, col, cbase);
    store4(2u, row0, col, cbase);
    store4(3u, row0, col, cbase);
    store4(4u, row0, col, cbase);
    store4(5u, row0, col, cbase);
    store4(6u, row0, col, cbase);
    store4(7u, row0, col, cbase);
    store4(8u, row0, col, cbase);
    store4(9u, row0, col, cbase);
    store4(10u, row0, col, cbase);
    store4(11u, row0, col, cbase);
    store4(12u, row0, col, cbase);
    store4(13u, row0, col, cbase);
    store4(14u, row0, col, cbase);
    store4(15u, row0, col, cbase);
    store4(16u, row0, col, cbase);
    store4(17u, row0, col, cbase);
    store4(18u, row0, col, cbase);
    store4(19u, row0, col, cbase);
    store4(20u, row0, col, cbase);
    store4(21u, row0, col, cbase);
    store4(22u, row0, col, cbase);
    store4(23u, row0, col, cbase);
    store4(24u, row0, col, cbase);
    store4(25u, row0, col, cbase);
    store4(26u, row0, col, cbase);
    store4(27u, row0, col, cbase);
    store4(28u, row0, col, cbase);
    store4(29u, row0, col, cbase);
    store4(30u, row0, col, cbase);
    store4(31u, row0, col, cbase);
}
