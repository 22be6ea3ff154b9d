// Narrow products, `matvec/subgroup` (see backend/gpu/kernels/matvec.rs): the TPR
// invocations of a row (TPR ≤ the adapter's smallest subgroup, a power of two, so they
// are aligned lanes of one subgroup) add their partials with subgroup shuffles: no
// workgroup memory and no barrier. `cols` and `cols_sum` are matvec.wgsl's.
//#include common/matvec.wgsl

fn hsum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

// The sum of v over the TPR lanes of this row, in every one of them.
fn row_sum(v: f32) -> f32 {
    var s = v;
    // Bounded by a constant: unrolled into log2(TPR) butterfly steps.
    for (var o = TPR / 2u; o > 0u; o /= 2u) {
        s += subgroupShuffleXor(s, o);
    }
    return s;
}

@compute @workgroup_size(WG)
fn rows(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) g: vec3<u32>) {
    let r = lid / TPR;
    let t = lid % TPR;
    let row = (g.x + p.group0) * (WG / TPR) + r;
    let bt = g.z + p.batch0;
    let acc = rows_partials(row, t, bt);
    for (var j = 0u; j < NC; j++) {
        // Every lane takes part in the shuffles; lane j % TPR stores column j.
        let sum = row_sum(hsum(acc_col(acc, j)));
        if (row < p.m && t == j % TPR) {
            c[bt * p.c_batch + row * p.c_m + j * p.c_n] = sum;
        }
    }
}

@compute @workgroup_size(WG)
fn cols(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) g: vec3<u32>) {
    cols_kernel(lid, g);
}

@compute @workgroup_size(WG)
fn cols_sum(@builtin(global_invocation_id) id: vec3<u32>, @builtin(workgroup_id) g: vec3<u32>) {
    cols_sum_kernel(id.x, g);
}
