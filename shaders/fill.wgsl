// Fills a buffer with one 32-bit pattern (zeros, ones, or NaN to poison new buffers).
override WG: u32 = 256u;
//#include common/linear_id.wgsl

struct Params {
    n4: u32,
    bits: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i < p.n4) {
        y[i] = vec4<f32>(bitcast<f32>(p.bits));
    }
}
