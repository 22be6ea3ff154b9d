// C = op(A) · op(B), batched over workgroup_id.z, sharing A across a subgroup.
// src/backend/gpu/kernels/matmul.rs explains the design and the measurements behind it.
//
// Each invocation owns 8 adjacent columns of C and ROWS rows (a multiple of 8, at most 64).
// Its accumulators are 4×4 matrices whose columns are rows of C. Per step of 4 along k:
//   - B: the invocation loads its own 8 columns at k..k+3 (4 or 8 vec4 loads);
//   - A: lanes 0..7 of the subgroup each load one vec4 per group of 8 rows, and
//     `subgroupBroadcast` hands those 32 values to every lane of the subgroup.
// A broadcast is a register move, while a load whose address differs per lane is a loop
// over the lanes on a CPU adapter, so sharing A divides its cost by the subgroup width.
// Needs a subgroup size of at least 8 (the requirement of the `matmul/subgroup` variant).

override WG: u32 = 8u;
override ROWS: u32 = 64u;
//#include common/matmul_operands.wgsl

// acc[4g + 2h + j]: rows 8g+4j..8g+4j+3 (one per matrix column) by columns 4h..4h+3 of
// the invocation's block. Only ever indexed by constants (after inlining), so it lives in
// registers and stack slots; one variable index would move it all to slow scratch memory.
var<private> acc: array<mat4x4<f32>, 32>;

fn masked(v: vec4<f32>, kk: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), v, kk < p.k);
}

// Columns 4h..4h+3 of the invocation at k..k+3, as a matrix whose column j is row k+j of B.
fn b_block(base: u32, col8: u32, h: u32, q: u32) -> mat4x4<f32> {
    if (TRANS_B) {
        let r = 8u * col8 + 4u * h;
        var t = mat4x4<f32>(
            load_b(base, r, q),
            load_b(base, r + 1u, q),
            load_b(base, r + 2u, q),
            load_b(base, r + 3u, q),
        );
        if (!B_VEC4) {
            t = mat4x4<f32>(kmask4(t[0], 4u * q), kmask4(t[1], 4u * q), kmask4(t[2], 4u * q),
                            kmask4(t[3], 4u * q));
        }
        return transpose(t);
    }
    let k0 = 4u * q;
    let c4 = 2u * col8 + h;
    return mat4x4<f32>(
        masked(load_b(base, k0, c4), k0),
        masked(load_b(base, k0 + 1u, c4), k0 + 1u),
        masked(load_b(base, k0 + 2u, c4), k0 + 2u),
        masked(load_b(base, k0 + 3u, c4), k0 + 3u),
    );
}

// This lane's share of A for rows 8g..8g+7 at k..k+3. Untransposed, lane l holds row 8g+l
// at k..k+3; transposed, lane l holds rows 8g+4(l/4)..+3 at k + l%4.
fn a_vec(base: u32, row0: u32, g: u32, lane: u32, q: u32) -> vec4<f32> {
    if (TRANS_A) {
        let kk = 4u * q + (lane & 3u);
        return masked(load_a(base, kk, (row0 + 8u * g) / 4u + (lane >> 2u)), kk);
    }
    let v = load_a(base, row0 + 8u * g + lane, q);
    if (A_VEC4) {
        return v;
    }
    return kmask4(v, 4u * q);
}

// Rows 8g..8g+7 for one step of 4 along k: eight broadcasts give every lane all 32 values of
// A; in the transposed layout the same broadcasts hold the transposed blocks.
fn rows8(g: u32, av: vec4<f32>, b0: mat4x4<f32>, b1: mat4x4<f32>) {
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
    // Column j of lo is row j's four values of A and column i of b0 is row k+i of B, so
    // b0 * lo adds the four rank-1 updates of this step to a 4×4 block of C at once.
    acc[4u * g] += b0 * lo;
    acc[4u * g + 1u] += b0 * hi;
    acc[4u * g + 2u] += b1 * lo;
    acc[4u * g + 3u] += b1 * hi;
}

fn store_block(i: u32, r: u32, col: u32, cbase: u32) {
    let blk = acc[i];
    store_row(r, blk[0], col, cbase);
    store_row(r + 1u, blk[1], col, cbase);
    store_row(r + 2u, blk[2], col, cbase);
    store_row(r + 3u, blk[3], col, cbase);
}

fn store8(g: u32, row0: u32, col: u32, cbase: u32) {
    if (ROWS > 8u * g) {
        let r = row0 + 8u * g;
        store_block(4u * g, r, col, cbase);
        store_block(4u * g + 1u, r + 4u, col, cbase);
        store_block(4u * g + 2u, r, col + 4u, cbase);
        store_block(4u * g + 3u, r + 4u, col + 4u, cbase);
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_invocation_id) sgl: u32) {
    let lane = sgl & 7u;
    let col8 = wid.x * WG + lid;
    let row0 = (wid.y + p.group_m0) * ROWS;
    let batch = wid.z + p.batch0;
    let abase = batch * p.a_batch;
    let bbase = batch * p.b_batch;

    let k4 = opaque(p.k4);
    for (var q = 0u; q < k4; q++) {
        let b0 = b_block(bbase, col8, 0u, q);
        let b1 = b_block(bbase, col8, 1u, q);
        // Constant conditions: the groups past ROWS vanish when the pipeline is compiled.
        rows8(0u, a_vec(abase, row0, 0u, lane, q), b0, b1);
        if (ROWS > 8u) { rows8(1u, a_vec(abase, row0, 1u, lane, q), b0, b1); }
        if (ROWS > 16u) { rows8(2u, a_vec(abase, row0, 2u, lane, q), b0, b1); }
        if (ROWS > 24u) { rows8(3u, a_vec(abase, row0, 3u, lane, q), b0, b1); }
        if (ROWS > 32u) { rows8(4u, a_vec(abase, row0, 4u, lane, q), b0, b1); }
        if (ROWS > 40u) { rows8(5u, a_vec(abase, row0, 5u, lane, q), b0, b1); }
        if (ROWS > 48u) { rows8(6u, a_vec(abase, row0, 6u, lane, q), b0, b1); }
        if (ROWS > 56u) { rows8(7u, a_vec(abase, row0, 7u, lane, q), b0, b1); }
    }

    let cbase = batch * p.m * p.n;
    let col = 8u * col8;
    store8(0u, row0, col, cbase);
    store8(1u, row0, col, cbase);
    store8(2u, row0, col, cbase);
    store8(3u, row0, col, cbase);
    store8(4u, row0, col, cbase);
    store8(5u, row0, col, cbase);
    store8(6u, row0, col, cbase);
    store8(7u, row0, col, cbase);
}
