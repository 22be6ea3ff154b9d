// Narrow products, `matvec/workgroup` (see backend/gpu/kernels/matvec.rs): a row's
// partials are added in workgroup memory. Runs on any adapter.
//   `rows`:  L stored [M][K]: TPR invocations per row stride along k.
//   `rows4`: the same with one invocation per four rows, NC = 1 and whole vec4s only: the
//            CPU-adapter kernel (a load whose address differs per lane costs a loop over
//            the lanes there, and four rows share each load of S).
//   `cols`, `cols_sum`: L stored [K][M], in common/matvec.wgsl.
//#include common/matvec.wgsl

var<workgroup> tree: array<f32, TREE>;

fn hsum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

fn rows_store(row: u32, j: u32, v: f32, bt: u32) {
    c[bt * p.c_batch + row * p.c_m + j * p.c_n] = v;
}

@compute @workgroup_size(WG)
fn rows(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) g: vec3<u32>) {
    let r = lid / TPR;
    let t = lid % TPR;
    let row = (g.x + p.group0) * (WG / TPR) + r;
    let bt = g.z + p.batch0;
    let acc = rows_partials(row, t, bt);
    if (TPR == 1u) {
        // The invocation has the whole row: no partials to add, no barrier.
        if (row < p.m) {
            for (var j = 0u; j < NC; j++) {
                rows_store(row, j, hsum(acc_col(acc, j)), bt);
            }
        }
        return;
    }
    for (var j = 0u; j < NC; j++) {
        tree[j * WG + lid] = hsum(acc_col(acc, j));
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
            rows_store(row, j, sum, bt);
        }
    }
}

@compute @workgroup_size(WG)
fn rows4(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) g: vec3<u32>) {
    // Rows row0 + WG·r: adjacent lanes take adjacent rows.
    let row0 = (g.x + p.group0) * 4u * WG + lid;
    let bt = g.z + p.batch0;
    let k4 = opaque(p.k / 4u);
    let last = p.m - 1u;
    let lbase = bt * p.l_batch / 4u;
    let b0 = lbase + min(row0, last) * k4;
    let b1 = lbase + min(row0 + WG, last) * k4;
    let b2 = lbase + min(row0 + 2u * WG, last) * k4;
    let b3 = lbase + min(row0 + 3u * WG, last) * k4;
    let sbase = bt * p.s_batch / 4u;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    for (var q = 0u; q < k4; q++) {
        let w = s4[sbase + q];
        a0 += l4[b0 + q] * w;
        a1 += l4[b1 + q] * w;
        a2 += l4[b2 + q] * w;
        a3 += l4[b3 + q] * w;
    }
    if (row0 < p.m) { rows_store(row0, 0u, hsum(a0), bt); }
    if (row0 + WG < p.m) { rows_store(row0 + WG, 0u, hsum(a1), bt); }
    if (row0 + 2u * WG < p.m) { rows_store(row0 + 2u * WG, 0u, hsum(a2), bt); }
    if (row0 + 3u * WG < p.m) { rows_store(row0 + 3u * WG, 0u, hsum(a3), bt); }
}

@compute @workgroup_size(WG)
fn cols(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) g: vec3<u32>) {
    cols_kernel(lid, g);
}

@compute @workgroup_size(WG)
fn cols_sum(@builtin(global_invocation_id) id: vec3<u32>, @builtin(workgroup_id) g: vec3<u32>) {
    cols_sum_kernel(id.x, g);
}
