// The sum of one f32 per invocation over a workgroup. Needs `override WG: u32`, a
// multiple of 8, in the including shader.
var<workgroup> tree: array<f32, WG>;

// Every invocation of the workgroup must call it (it holds a barrier), with its own
// `lid`; the total is returned to invocation 0 (the others get 0). One barrier, then one
// invocation adds the WG partials: barriers are the costly part of a tree on CPU
// adapters, and WG adds are cheap anywhere.
fn workgroup_sum(v: f32, lid: u32) -> f32 {
    tree[lid] = v;
    workgroupBarrier();
    var total = 0.0;
    if (lid == 0u) {
        var t0 = vec4<f32>(0.0);
        var t1 = vec4<f32>(0.0);
        for (var k = 0u; k < WG; k += 8u) {
            t0 += vec4<f32>(tree[k], tree[k + 1u], tree[k + 2u], tree[k + 3u]);
            t1 += vec4<f32>(tree[k + 4u], tree[k + 5u], tree[k + 6u], tree[k + 7u]);
        }
        let t = t0 + t1;
        total = (t.x + t.y) + (t.z + t.w);
    }
    return total;
}
