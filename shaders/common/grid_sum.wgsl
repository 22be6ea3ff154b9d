// A sum over the workgroups of one dispatch, finished in that same dispatch: each
// workgroup leaves its partial in `scratch`, and the last workgroup to arrive adds them
// all ("last block" reduction), which saves the dependent second dispatch (7-9 µs on a
// discrete GPU) of a two-pass sum.
// Needs from the including shader: `override WG: u32`, a binding
// `var<storage, read_write> scratch: Scratch` whose `done` is 0 before the dispatch (the
// last workgroup sets it back to 0: the buffer persists, see kernels/reduce_tree.rs),
// and `fn wg_sum(v: f32, lane: u32) -> f32` (the workgroup's total, at lane 0 at least).
// Partials are atomics: stored and read at device scope.
struct Scratch {
    done: atomic<u32>,
    partials: array<atomic<u32>>,
}

var<workgroup> grid_last: bool;

// Every lane of workgroup `g` of `groups` calls it (it holds barriers), `total` being the
// workgroup's partial (read at lane 0). In the workgroup that arrives last it returns
// (1, the sum of all partials) at lane 0; everywhere else x is 0.
fn grid_sum(total: f32, lane: u32, g: u32, groups: u32) -> vec2<f32> {
    if (lane == 0u) {
        atomicStore(&scratch.partials[g], bitcast<u32>(total));
    }
    // naga gives storageBarrier device memory scope with acquire-release semantics: the
    // partial is visible device-wide before the count says it is there...
    storageBarrier();
    if (lane == 0u) {
        grid_last = atomicAdd(&scratch.done, 1u) == groups - 1u;
    }
    if (!workgroupUniformLoad(&grid_last)) {
        return vec2<f32>(0.0);
    }
    // ...and the last workgroup reads the partials only after seeing the full count.
    storageBarrier();
    var t = 0.0;
    for (var k = lane; k < groups; k += WG) {
        t += bitcast<f32>(atomicLoad(&scratch.partials[k]));
    }
    let sum = wg_sum(t, lane);
    if (lane == 0u) {
        atomicStore(&scratch.done, 0u);
    }
    return vec2<f32>(1.0, sum);
}
