// The floor of chained dispatch for `blo bench`, measured with wgpu alone: a kernel with
// next to no work (one workgroup, 64 invocations, one multiply-add each), dispatched
// many times in one compute pass with one bind group, each dispatch reading what the
// last one wrote. What a dispatch of it costs is what any dispatch costs on this
// adapter and driver; blo's `dispatch_overhead` (the same arithmetic as `scale_shift`)
// is measured against it.
@group(0) @binding(0) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn chain_step(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < arrayLength(&y)) {
        y[i] = 0.5 * y[i] + 0.25;
    }
}
