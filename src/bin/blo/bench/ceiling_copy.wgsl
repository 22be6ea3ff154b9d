// The adapter's memory ceiling for `blo bench`, as the kernels see memory: a copy
// through a compute kernel, one vec4 load and store per step, adjacent invocations on
// adjacent addresses, each invocation striding over the buffer by the whole grid so
// that a fixed, moderate number of workgroups covers any size. (A buffer-to-buffer
// copy is measured too; on some drivers it runs on a copy engine well below what
// kernels reach.)
override WG: u32 = 256u;

struct Params {
    // Elements in vec4s, and the invocations of the grid.
    n4: u32,
    stride: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn copy_vec4(@builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    for (var i = (wid.x + wid.y * nwg.x) * WG + lid; i < p.n4; i += p.stride) {
        dst[i] = src[i];
    }
}
