// The index of an invocation in a one-dimensional grid of WG-wide workgroups laid out by
// `GpuContext::grid`, which spills workgroups into y past the per-dimension limit.
// Needs `override WG: u32` (the workgroup size) in the including shader.
fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}
