// Matmul designed for GPUs (`matmul/tiled`): the textbook shared-memory tiling, with the
// same parameters, bindings and results as shaders/matmul.wgsl.
//
// A workgroup of 16×16 invocations computes a 64×64 block of C. Per K-step of 16 it
// stages a 64×16 tile of A and a 16×64 tile of B in workgroup memory (8 KiB in all; each
// invocation loads one vec4 of each), then each invocation accumulates its 4×4 outputs
// (rows 4·ty.., columns 4·tx..) from one vec4 of each tile per k: 16 multiply-adds per
// two workgroup loads. A is stored transposed ([k][m]), so both reads are vec4s along
// the output block: within a 32-lane warp the B reads are 16 consecutive vec4s (no bank
// conflicts) and the A reads are broadcasts.
//
// The accumulators are four separate vec4 variables and every loop over them is unrolled
// by hand: a private array indexed by a run-time loop variable is placed in local memory
// on NVIDIA (28.5 → 2.1 TFLOP/s for the same kernel on an H200).
//
// Global loads: an operand whose rows run along the block (A transposed, B as stored) is
// loaded as 16 vec4s per k row, one row of the tile per 16 invocations (fully coalesced).
// One whose rows run along k (A as stored, B transposed) is loaded as 4 vec4s per row, 4
// invocations per 64 contiguous bytes, and written into the tile component by component
// (4-way bank conflicts on these stores, once per K-step). Edges: rows and columns past
// the matrices are clamped on load (their results are never stored), values past k are
// masked to zero, stores are masked to C.
//#include common/matmul_operands.wgsl

// Rows and columns of C per workgroup (both 4 × 16 invocations) and the K-step.
const BLOCK: u32 = 64u;
const KSTEP: u32 = 16u;

// A tile transposed, [KSTEP][BLOCK], as vec4s of 4 rows; B tile [KSTEP][BLOCK] as vec4s
// of 4 columns.
var<workgroup> a_tile: array<vec4<f32>, 256>;
var<workgroup> b_tile: array<vec4<f32>, 256>;

// Writes v, the values at k0 + 4q + 0..3 of row `row` of the block, into a tile stored
// [k][row] (for an operand whose rows run along k).
fn put_transposed(is_a: bool, row: u32, q: u32, v: vec4<f32>) {
    let at = 64u * q + row / 4u;
    let e = row % 4u;
    if (is_a) {
        a_tile[at][e] = v.x;
        a_tile[at + 16u][e] = v.y;
        a_tile[at + 32u][e] = v.z;
        a_tile[at + 48u][e] = v.w;
    } else {
        b_tile[at][e] = v.x;
        b_tile[at + 16u][e] = v.y;
        b_tile[at + 32u][e] = v.z;
        b_tile[at + 48u][e] = v.w;
    }
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(local_invocation_id) local: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let tx = local.x;
    let ty = local.y;
    let row0 = (wid.y + p.group_m0) * BLOCK;
    let col0 = wid.x * BLOCK;
    let batch = wid.z + p.batch0;
    let abase = batch * p.a_batch;
    let bbase = batch * p.b_batch;
    // This invocation's share of the tile loads: for rows along k, row `lr` of the block
    // and vec4 `lq` of the K-step; for rows along the block, k row `ty` and vec4 `tx`.
    let lr = lid / 4u;
    let lq = lid % 4u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let steps = opaque((p.k + KSTEP - 1u) / KSTEP);
    for (var s = 0u; s < steps; s++) {
        let k0 = s * KSTEP;
        let kr = k0 + ty;
        if (TRANS_A) {
            a_tile[lid] = select(vec4<f32>(0.0), load_a(abase, kr, row0 / 4u + tx), kr < p.k);
        } else {
            let kq = k0 / 4u + lq;
            put_transposed(true, lr, lq, kmask4(load_a(abase, row0 + lr, kq), 4u * kq));
        }
        if (TRANS_B) {
            let kq = k0 / 4u + lq;
            put_transposed(false, lr, lq, kmask4(load_b(bbase, col0 + lr, kq), 4u * kq));
        } else {
            b_tile[lid] = select(vec4<f32>(0.0), load_b(bbase, kr, col0 / 4u + tx), kr < p.k);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < KSTEP; kk++) {
            let av = a_tile[16u * kk + ty];
            let bv = b_tile[16u * kk + tx];
            acc0 += av.x * bv;
            acc1 += av.y * bv;
            acc2 += av.z * bv;
            acc3 += av.w * bv;
        }
        workgroupBarrier();
    }
    let cbase = batch * p.m * p.n;
    let col = col0 + 4u * tx;
    let r = row0 + 4u * ty;
    store_row(r, acc0, col, cbase);
    store_row(r + 1u, acc1, col, cbase);
    store_row(r + 2u, acc2, col, cbase);
    store_row(r + 3u, acc3, col, cbase);
}
