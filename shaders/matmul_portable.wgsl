// Matmul without subgroup operations, for adapters that lack them (the GL backend, some
// web and mobile adapters), and `pack`, which copies an operand (transposed when asked)
// into rows padded to whole vec4s: large products read it faster that way.
//
// `main` computes the same thing as shaders/matmul.wgsl with the same parameters, but
// each invocation (8 rows × 4 columns) loads its own A instead of sharing it across a
// subgroup: ~11 GFLOP/s on llvmpipe against ~50, fine on hardware.
override WG: u32 = 64u;
//#include common/matmul_operands.wgsl
//#include common/linear_id.wgsl

// See `opaque` in common/matmul_operands.wgsl: keeps lavapipe from recompiling for every
// loop bound.
fn opaque_pack(x: u32) -> u32 {
    return x | (arrayLength(&dst) & 0x80000000u);
}

fn load_a_masked(base: u32, kk: u32, col4: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), load_a(base, kk, col4), kk < p.k);
}

// Rows r..r+3 of A at k..k+3 as a matrix whose column j is row r+j.
fn a_block(base: u32, r: u32, q: u32) -> mat4x4<f32> {
    if (TRANS_A) {
        let k0 = 4u * q;
        return transpose(mat4x4<f32>(
            load_a_masked(base, k0, r / 4u),
            load_a_masked(base, k0 + 1u, r / 4u),
            load_a_masked(base, k0 + 2u, r / 4u),
            load_a_masked(base, k0 + 3u, r / 4u),
        ));
    }
    let blk = mat4x4<f32>(
        load_a(base, r, q),
        load_a(base, r + 1u, q),
        load_a(base, r + 2u, q),
        load_a(base, r + 3u, q),
    );
    if (A_VEC4) {
        return blk;
    }
    let k0 = 4u * q;
    return mat4x4<f32>(kmask4(blk[0], k0), kmask4(blk[1], k0), kmask4(blk[2], k0),
                       kmask4(blk[3], k0));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col4 = wid.x * WG + lid;
    let row0 = (wid.y + p.group_m0) * 8u;
    let batch = wid.z + p.batch0;
    let abase = batch * p.a_batch;
    let bbase = batch * p.b_batch;
    var lo = mat4x4<f32>();
    var hi = mat4x4<f32>();
    let k4 = opaque(p.k4);
    for (var q = 0u; q < k4; q++) {
        let k0 = 4u * q;
        var bm: mat4x4<f32>;
        if (TRANS_B) {
            var t = mat4x4<f32>(
                load_b(bbase, 4u * col4, q),
                load_b(bbase, 4u * col4 + 1u, q),
                load_b(bbase, 4u * col4 + 2u, q),
                load_b(bbase, 4u * col4 + 3u, q),
            );
            if (!B_VEC4) {
                t = mat4x4<f32>(kmask4(t[0], k0), kmask4(t[1], k0), kmask4(t[2], k0),
                                kmask4(t[3], k0));
            }
            bm = transpose(t);
        } else {
            bm = mat4x4<f32>(
                select(vec4<f32>(0.0), load_b(bbase, k0, col4), k0 < p.k),
                select(vec4<f32>(0.0), load_b(bbase, k0 + 1u, col4), k0 + 1u < p.k),
                select(vec4<f32>(0.0), load_b(bbase, k0 + 2u, col4), k0 + 2u < p.k),
                select(vec4<f32>(0.0), load_b(bbase, k0 + 3u, col4), k0 + 3u < p.k),
            );
        }
        lo += bm * a_block(abase, row0, q);
        hi += bm * a_block(abase, row0 + 4u, q);
    }
    let cbase = batch * p.m * p.n;
    let col = 4u * col4;
    for (var j = 0u; j < 4u; j++) {
        store_row(row0 + j, lo[j], col, cbase);
        store_row(row0 + 4u + j, hi[j], col, cbase);
    }
}

struct PackParams {
    // Each of the stacked source matrices is [rows, cols]; the destination holds their
    // transposes, [out_rows = cols, out_cols = rows], in rows of ld4 vec4s, zero padded.
    rows: u32,
    cols: u32,
    out_rows: u32,
    out_cols: u32,
    ld4: u32,
    total_rows: u32,
}

@group(0) @binding(0) var<uniform> pk: PackParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;

// One invocation per destination row, so the index arithmetic (integer division is slow
// on CPU adapters) is paid once per row rather than once per element.
@compute @workgroup_size(WG)
fn pack(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i >= pk.total_rows) {
        return;
    }
    let mat = i / pk.out_rows;
    let orow = i - mat * pk.out_rows;
    // Destination row `orow` is source column `orow`: step down it.
    var at = mat * pk.rows * pk.cols + orow;
    let step = pk.cols;
    let full4 = opaque_pack(pk.out_cols / 4u);
    for (var c4 = 0u; c4 < full4; c4++) {
        dst[i * pk.ld4 + c4] = vec4<f32>(src[at], src[at + step], src[at + 2u * step], src[at + 3u * step]);
        at += 4u * step;
    }
    if (full4 < pk.ld4) {
        var v = vec4<f32>(0.0);
        let tail = pk.out_cols - 4u * full4;
        for (var e = 0u; e < tail; e++) {
            v[e] = src[at + e * step];
        }
        dst[i * pk.ld4 + full4] = v;
    }
}
