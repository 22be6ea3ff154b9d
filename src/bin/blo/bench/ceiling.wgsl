// The adapter's compute ceiling for `blo bench`: every invocation runs four independent
// chains of dependent vec4 FMAs on registers and writes one value, so the kernel reads
// no memory and its time is arithmetic only. Several chains hide the FMA latency (one
// chain measures latency, not throughput); more than four spill registers on a CPU
// adapter (llvmpipe keeps each vec4 component of 8 invocations in one 256-bit
// register). The eight steps per loop iteration are written out by hand: llvmpipe does
// not unroll an inner loop, and its loop overhead halved the measured peak. FLOPs per
// invocation: iters · 8 steps · 4 chains · 4 lanes · 2. The multiplier and addend come
// from the uniform block, so the compiler cannot fold the loop away.
override WG: u32 = 64u;

struct Params {
    iters: u32,
    _pad: u32,
    m: f32,
    c: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn fma_chain(@builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    let s = f32(i) * 1e-6;
    let m = vec4<f32>(p.m);
    let c = vec4<f32>(p.c);
    var a0 = vec4<f32>(s, s + 0.1, s + 0.2, s + 0.3);
    var a1 = a0 + 1.0;
    var a2 = a0 + 2.0;
    var a3 = a0 + 3.0;
    for (var k = 0u; k < p.iters; k++) {
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
    }
    let t = (a0 + a1) + (a2 + a3);
    out[i] = t.x + t.y + t.z + t.w;
}
