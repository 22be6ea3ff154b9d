// A reduction over aligned segments of `width` lanes (a power of two ≤ WG) in workgroup
// memory, log2(width) steps with a barrier each: on a GPU a barrier costs a few dozen
// cycles, and a tree keeps every step's adds spread over the lanes.
// Needs from the including shader: `override WG: u32`, `alias Acc` (the accumulated
// type) and `fn seg_comb(a: Acc, b: Acc) -> Acc` (associative and commutative).
// This part and common/seg_reduce_subgroup.wgsl declare the same names (`Ids`,
// `lane_of`, `seg_reduce`), so a shader body written against them runs with either.
var<workgroup> seg_tree: array<Acc, WG>;

struct Ids {
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
}

// The lane's index in [0, WG): what segments and loads are laid out by.
fn lane_of(ids: Ids) -> u32 {
    return ids.lid;
}

// Every lane of the workgroup must call it with the same `width` (it holds barriers);
// each gets the total of its segment, lanes [lane − lane % width, … + width).
fn seg_reduce(v: Acc, lane: u32, width: u32) -> Acc {
    if (width == 1u) {
        return v;
    }
    // Lanes may still be reading the previous call's result from seg_tree.
    workgroupBarrier();
    seg_tree[lane] = v;
    for (var s = width / 2u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (lane % width < s) {
            seg_tree[lane] = seg_comb(seg_tree[lane], seg_tree[lane + s]);
        }
    }
    workgroupBarrier();
    return seg_tree[lane - lane % width];
}
