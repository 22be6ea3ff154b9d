// Matmul for discrete GPUs (`matmul/tiled_large`): the shape of the textbook WGSL SGEMM
// that reached 28.5 TFLOP/s at n = 4096 on an H200 through Vulkan, with the parameters,
// bindings and results of shaders/matmul_tiled.wgsl.
//
// A workgroup of 16×16 invocations computes a 128×128 block of C. Per K-step of 8 it
// stages an 8×128 tile of A (stored transposed, [k][m]) and an 8×128 tile of B in
// workgroup memory, each invocation loading one vec4 of each. Each invocation then owns
// 8×8 outputs: rows 4·ty + 0..3 and 64 + 4·ty + 0..3, columns 4·tx + 0..3 and
// 64 + 4·tx + 0..3. Per k it reads two vec4s of each tile for 64 multiply-adds (twice the
// reuse of matmul/tiled's 4×4). The two halves are 64 apart rather than adjacent so that
// the 16 lanes of a row read 16 consecutive vec4s of B (adjacent pairs would be a stride
// of 32 bytes: 2-way bank conflicts on every vec4 read); the A reads are broadcasts.
//
// The 64 accumulators are 16 separate vec4 variables and every loop over them is unrolled
// by hand: a private array indexed by a run-time loop variable is placed in local memory
// on NVIDIA (28.5 → 2.1 TFLOP/s for the same kernel on an H200).
//
// Global loads: an operand whose rows run along the block (A transposed, B as stored) is
// loaded as 32 vec4s per k row (a warp reads 512 contiguous bytes). One whose rows run
// along k (A as stored, B transposed) is loaded as 2 vec4s per row (the 32 bytes of a
// K-step, one memory sector) and written into the tile component by component. Edges:
// rows and columns past the matrices are clamped on load (their results are never
// stored), values past k are masked to zero, stores are masked to C.
//#include common/matmul_operands.wgsl

// Rows and columns of C per workgroup (both 8 × 16 invocations) and the K-step.
const BLOCK: u32 = 128u;
const KSTEP: u32 = 8u;
// vec4s per k row of a tile: the 32 of the block and one of padding. Without it, the
// component stores of a transposed load (rows along k) would hit each bank twice per warp:
// lanes with q = 0 and q = 1 write words 512 apart (128 floats × 4 k), the same bank.
// With rows of 132 floats they are 528 apart, 16 banks over. Reads are unaffected (a
// vec4 row is still 16-byte aligned). 8448 bytes in all.
const ROW4: u32 = 33u;

// A tile transposed, [KSTEP][ROW4] as vec4s of 4 rows; B tile [KSTEP][ROW4] as vec4s of
// 4 columns.
var<workgroup> a_tile: array<vec4<f32>, 264>;
var<workgroup> b_tile: array<vec4<f32>, 264>;

// Writes v, the values at k0 + 4q + 0..3 of row `row` of the block, into a tile stored
// [k][row] (for an operand whose rows run along k).
fn put_transposed(is_a: bool, row: u32, q: u32, v: vec4<f32>) {
    let at = 4u * ROW4 * q + row / 4u;
    let e = row % 4u;
    if (is_a) {
        a_tile[at][e] = v.x;
        a_tile[at + ROW4][e] = v.y;
        a_tile[at + 2u * ROW4][e] = v.z;
        a_tile[at + 3u * ROW4][e] = v.w;
    } else {
        b_tile[at][e] = v.x;
        b_tile[at + ROW4][e] = v.y;
        b_tile[at + 2u * ROW4][e] = v.z;
        b_tile[at + 3u * ROW4][e] = v.w;
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
    // and vec4 `lq` of the K-step; for rows along the block, k row `lk` and vec4 `lc`.
    let lr = lid / 2u;
    let lq = lid % 2u;
    let lk = lid / 32u;
    let lc = lid % 32u;
    // lo<i>: columns 4·tx.., hi<i>: columns 64 + 4·tx..; i = 0..3: rows 4·ty + i,
    // i = 4..7: rows 64 + 4·ty + i - 4.
    var lo0 = vec4<f32>(0.0);
    var lo1 = vec4<f32>(0.0);
    var lo2 = vec4<f32>(0.0);
    var lo3 = vec4<f32>(0.0);
    var lo4 = vec4<f32>(0.0);
    var lo5 = vec4<f32>(0.0);
    var lo6 = vec4<f32>(0.0);
    var lo7 = vec4<f32>(0.0);
    var hi0 = vec4<f32>(0.0);
    var hi1 = vec4<f32>(0.0);
    var hi2 = vec4<f32>(0.0);
    var hi3 = vec4<f32>(0.0);
    var hi4 = vec4<f32>(0.0);
    var hi5 = vec4<f32>(0.0);
    var hi6 = vec4<f32>(0.0);
    var hi7 = vec4<f32>(0.0);
    let steps = opaque((p.k + KSTEP - 1u) / KSTEP);
    for (var s = 0u; s < steps; s++) {
        let k0 = s * KSTEP;
        let kr = k0 + lk;
        let kq = k0 / 4u + lq;
        if (TRANS_A) {
            let v = load_a(abase, kr, row0 / 4u + lc);
            a_tile[ROW4 * lk + lc] = select(vec4<f32>(0.0), v, kr < p.k);
        } else {
            put_transposed(true, lr, lq, kmask4(load_a(abase, row0 + lr, kq), 4u * kq));
        }
        if (TRANS_B) {
            put_transposed(false, lr, lq, kmask4(load_b(bbase, col0 + lr, kq), 4u * kq));
        } else {
            let v = load_b(bbase, kr, col0 / 4u + lc);
            b_tile[ROW4 * lk + lc] = select(vec4<f32>(0.0), v, kr < p.k);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < KSTEP; kk++) {
            let a0 = a_tile[ROW4 * kk + ty];
            let a1 = a_tile[ROW4 * kk + 16u + ty];
            let b0 = b_tile[ROW4 * kk + tx];
            let b1 = b_tile[ROW4 * kk + 16u + tx];
            lo0 += a0.x * b0;
            hi0 += a0.x * b1;
            lo1 += a0.y * b0;
            hi1 += a0.y * b1;
            lo2 += a0.z * b0;
            hi2 += a0.z * b1;
            lo3 += a0.w * b0;
            hi3 += a0.w * b1;
            lo4 += a1.x * b0;
            hi4 += a1.x * b1;
            lo5 += a1.y * b0;
            hi5 += a1.y * b1;
            lo6 += a1.z * b0;
            hi6 += a1.z * b1;
            lo7 += a1.w * b0;
            hi7 += a1.w * b1;
        }
        workgroupBarrier();
    }
    let cbase = batch * p.m * p.n;
    let cl = col0 + 4u * tx;
    let ch = cl + 64u;
    let r = row0 + 4u * ty;
    let r4 = r + 64u;
    store_row(r, lo0, cl, cbase);
    store_row(r, hi0, ch, cbase);
    store_row(r + 1u, lo1, cl, cbase);
    store_row(r + 1u, hi1, ch, cbase);
    store_row(r + 2u, lo2, cl, cbase);
    store_row(r + 2u, hi2, ch, cbase);
    store_row(r + 3u, lo3, cl, cbase);
    store_row(r + 3u, hi3, ch, cbase);
    store_row(r4, lo4, cl, cbase);
    store_row(r4, hi4, ch, cbase);
    store_row(r4 + 1u, lo5, cl, cbase);
    store_row(r4 + 1u, hi5, ch, cbase);
    store_row(r4 + 2u, lo6, cl, cbase);
    store_row(r4 + 2u, hi6, ch, cbase);
    store_row(r4 + 3u, lo7, cl, cbase);
    store_row(r4 + 3u, hi7, ch, cbase);
}
