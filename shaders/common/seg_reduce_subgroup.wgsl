// The reduction over aligned segments of common/seg_reduce_tree.wgsl (same names, same
// contract), with subgroup shuffles for the steps inside a subgroup: a butterfly of
// `subgroupShuffleXor` over log2(SG_MIN) steps leaves every lane of each aligned group
// of SG_MIN lanes with the group's total, without workgroup memory or barriers; only
// segments wider than SG_MIN finish with log2(width / SG_MIN) tree steps.
// Needs `override SG_MIN: u32`: the adapter's smallest subgroup size (a power of two;
// a larger subgroup at run time holds whole aligned groups of SG_MIN lanes, so the
// butterfly stays inside one) and subgroups that tile the workgroup (WG a multiple of
// the largest subgroup size).
var<workgroup> seg_tree: array<Acc, WG>;

struct Ids {
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
}

// Lanes are numbered by subgroup, so that a shuffle partner (`sg_lane ^ s`) is the lane
// `lane ^ s` whatever order a driver gives subgroups within a workgroup (every known
// one makes this local_invocation_index, keeping loads coalesced).
fn lane_of(ids: Ids) -> u32 {
    return ids.sg_id * ids.sg_size + ids.sg_lane;
}

fn seg_reduce(v: Acc, lane: u32, width: u32) -> Acc {
    var x = v;
    let inside = min(width, SG_MIN);
    for (var s = 1u; s < inside; s <<= 1u) {
        x = seg_comb(x, subgroupShuffleXor(x, s));
    }
    if (width <= SG_MIN) {
        return x;
    }
    workgroupBarrier();
    seg_tree[lane] = x;
    for (var s = width / 2u; s >= SG_MIN; s >>= 1u) {
        workgroupBarrier();
        if (lane % width < s) {
            seg_tree[lane] = seg_comb(seg_tree[lane], seg_tree[lane + s]);
        }
    }
    workgroupBarrier();
    return seg_tree[lane - lane % width];
}
