// Reductions (src/ops/reduce.rs).
//
// `full`: a whole buffer (or two, for dot products) to one value per workgroup. Each
// invocation accumulates a strided run of vec4s (adjacent invocations read adjacent
// vec4s), then the workgroup reduces its partial sums as a shared-memory tree. With one
// workgroup the result is final (times `scale`); otherwise the host reduces the partials
// with a second one-workgroup dispatch of the same entry. Splitting the sum across
// invocations and then a tree is what keeps f32 accurate: no single accumulator adds
// more than a few hundred terms.
//
// `rows` and `cols`: one axis of a tensor viewed as [outer, len, inner]. An invocation
// owns one output element (or four adjacent ones, VEC = 4, in `cols`) of one chunk of
// the axis, and writes [outer, splits, inner] partials; the host runs the same entry
// again over the splits until one remains. `rows` is the inner = 1 case (the axis is
// contiguous: vec4 loads along it); `cols` reads along a stride of `inner`.
override OP: u32 = 0u;   // full: 0 Σa, 1 Σa², 2 Σab, 3 Σ(a−b)². rows/cols: 0 sum, 1 max.
override WG: u32 = 256u; // a power of two
override VEC: u32 = 1u;  // cols: outputs per invocation (1, or 4 when inner % 4 == 0)

struct FullParams {
    n: u32,
    nv: u32, // whole vec4s: n / 4
    scale: f32,
    _pad: u32,
}

struct AxisParams {
    outer: u32,
    len: u32,
    inner: u32,
    splits: u32,
    chunk: u32,
    scale: f32,
    threads: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: FullParams;
@group(0) @binding(0) var<uniform> q: AxisParams;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> out_axis: array<f32>;

var<workgroup> tree: array<f32, WG>;

fn term(u: vec4<f32>, v: vec4<f32>) -> vec4<f32> {
    switch OP {
        case 0u: { return u; }
        case 1u: { return u * u; }
        case 2u: { return u * v; }
        default: {
            let d = u - v;
            return d * d;
        }
    }
}

@compute @workgroup_size(WG)
fn full(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = wid.x * WG + lid;
    let stride = nwg.x * WG;
    // Two accumulators so consecutive loads do not wait on each other's adds.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var i = t;
    loop {
        if (i + stride >= p.nv) { break; }
        acc0 += term(a[i], b[i]);
        acc1 += term(a[i + stride], b[i + stride]);
        i += 2u * stride;
    }
    if (i < p.nv) {
        acc0 += term(a[i], b[i]);
    }
    // The last n % 4 elements: the rest of their vec4 is not ours to read as data.
    if (t == 0u && p.nv * 4u < p.n) {
        let k = p.n - p.nv * 4u;
        let m = vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(k);
        let zero = vec4<f32>(0.0);
        acc1 += select(zero, term(a[p.nv], b[p.nv]), m);
    }
    let s = acc0 + acc1;
    tree[lid] = (s.x + s.y) + (s.z + s.w);
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half = half / 2u) {
        if (lid < half) {
            tree[lid] += tree[lid + half];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        out[wid.x] = tree[0] * p.scale;
    }
}

fn ident() -> f32 {
    if (OP == 1u) {
        return bitcast<f32>(0xff800000u); // −∞
    }
    return 0.0;
}

// max that keeps a NaN once seen (where the device honours NaN at all).
fn comb(m: f32, v: f32) -> f32 {
    if (OP == 1u) {
        return select(m, v, v > m || v != v);
    }
    return m + v;
}

fn comb4(m: vec4<f32>, v: vec4<f32>) -> vec4<f32> {
    if (OP == 1u) {
        return select(m, v, v > m | v != v);
    }
    return m + v;
}

fn hcomb(v: vec4<f32>) -> f32 {
    return comb(comb(v.x, v.y), comb(v.z, v.w));
}

fn finish(v: f32) -> f32 {
    if (OP == 1u) {
        return v;
    }
    return v * q.scale;
}

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// Elements [lo, hi) of a: the masked head and tail vec4s, whole vec4s between.
fn run(lo: u32, hi: u32) -> f32 {
    let id = vec4<f32>(ident());
    var acc0 = id;
    var acc1 = id;
    if (lo >= hi) {
        return ident();
    }
    let lanes = vec4<u32>(0u, 1u, 2u, 3u);
    let first = lo / 4u;
    let last = (hi - 1u) / 4u;
    let e0 = first * 4u + lanes;
    acc0 = comb4(acc0, select(id, a[first], e0 >= vec4<u32>(lo) & e0 < vec4<u32>(hi)));
    if (last > first) {
        let e1 = last * 4u + lanes;
        acc1 = comb4(acc1, select(id, a[last], e1 < vec4<u32>(hi)));
    }
    var v = first + 1u;
    loop {
        if (v + 1u >= last) { break; }
        acc0 = comb4(acc0, a[v]);
        acc1 = comb4(acc1, a[v + 1u]);
        v += 2u;
    }
    if (v < last) {
        acc0 = comb4(acc0, a[v]);
    }
    return hcomb(comb4(acc0, acc1));
}

@compute @workgroup_size(WG)
fn rows(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = linear_id(wid, nwg, lid);
    if (g >= q.threads) {
        return;
    }
    let o = g / q.splits;
    let s = g % q.splits;
    let k0 = s * q.chunk;
    let k1 = min(q.len, k0 + q.chunk);
    let base = o * q.len;
    out_axis[g] = finish(run(base + min(k0, k1), base + k1));
}

fn load1(e: u32) -> f32 {
    return a[e / 4u][e % 4u];
}

@compute @workgroup_size(WG)
fn cols(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = linear_id(wid, nwg, lid);
    if (g >= q.threads) {
        return;
    }
    let iv = q.inner / VEC;
    let j = (g % iv) * VEC;
    let rest = g / iv;
    let s = rest % q.splits;
    let o = rest / q.splits;
    let k0 = s * q.chunk;
    let k1 = min(q.len, k0 + q.chunk);
    var e = o * q.len * q.inner + k0 * q.inner + j;
    let dst = rest * q.inner + j;
    if (VEC == 4u) {
        let id = vec4<f32>(ident());
        var acc0 = id;
        var acc1 = id;
        var k = k0;
        loop {
            if (k + 1u >= k1) { break; }
            acc0 = comb4(acc0, a[e / 4u]);
            acc1 = comb4(acc1, a[(e + q.inner) / 4u]);
            e += 2u * q.inner;
            k += 2u;
        }
        if (k < k1) {
            acc0 = comb4(acc0, a[e / 4u]);
        }
        let r = comb4(acc0, acc1);
        out_axis[dst] = finish(r.x);
        out_axis[dst + 1u] = finish(r.y);
        out_axis[dst + 2u] = finish(r.z);
        out_axis[dst + 3u] = finish(r.w);
    } else {
        var acc0 = ident();
        var acc1 = ident();
        var k = k0;
        loop {
            if (k + 1u >= k1) { break; }
            acc0 = comb(acc0, load1(e));
            acc1 = comb(acc1, load1(e + q.inner));
            e += 2u * q.inner;
            k += 2u;
        }
        if (k < k1) {
            acc0 = comb(acc0, load1(e));
        }
        out_axis[dst] = finish(comb(acc0, acc1));
    }
}
