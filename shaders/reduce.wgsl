// Reductions (src/ops/reduce.rs).
//
// `full`: a whole buffer (or two, for dot products) to one value per workgroup. Each
// workgroup owns a contiguous block of vec4s, its invocations interleaved inside it;
// each invocation accumulates its share in registers, then one invocation adds the
// workgroup's partials after a single barrier (barriers are what costs on CPU
// adapters). With one workgroup the result is final (times `scale`); otherwise the
// host reduces the partials with a second, one-workgroup dispatch of the same entry.
// Splitting the sum this way keeps f32 accurate: no accumulator adds more than a few
// hundred terms.
//
// `rows` and `cols`: one axis of a tensor viewed as [outer, len, inner]. An invocation
// owns one output element (or four adjacent ones, VEC = 4, in `cols`) of one chunk of
// the axis, and writes [outer, splits, inner] partials; the host runs the same entry
// again over the splits until one remains. `rows` is the inner = 1 case (the axis is
// contiguous: vec4 loads along it); `cols` reads along a stride of `inner`.
override OP: u32 = 0u;   // full: a FULL_* code (FullOp). rows/cols: AXIS_SUM or AXIS_MAX.
override WG: u32 = 256u; // a multiple of 8
override VEC: u32 = 1u;  // cols: outputs per invocation (1, or 4 when inner % 4 == 0)
//#include op_codes
//#include common/linear_id.wgsl
//#include common/workgroup_sum.wgsl

struct FullParams {
    n: u32,
    nv: u32, // whole vec4s: n / 4
    scale: f32,
    block: u32, // vec4s per workgroup
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

fn term(u: vec4<f32>, v: vec4<f32>) -> vec4<f32> {
    switch OP {
        case FULL_SUM: { return u; }
        case FULL_SUM_SQ: { return u * u; }
        case FULL_DOT: { return u * v; }
        case FULL_SQ_DIFF, default: {
            let d = u - v;
            return d * d;
        }
    }
}

@compute @workgroup_size(WG)
fn full(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    // Workgroup g owns the contiguous vec4s [g·block, (g+1)·block); its invocations
    // interleave inside it, so each step reads WG adjacent vec4s (coalesced on a GPU)
    // and consecutive steps stay close (prefetch-friendly on a CPU adapter).
    let lo = wid.x * p.block;
    let hi = min(p.nv, lo + p.block);
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var i = lo + lid;
    loop {
        if (i + WG >= hi) { break; }
        acc0 += term(a[i], b[i]);
        acc1 += term(a[i + WG], b[i + WG]);
        i += 2u * WG;
    }
    if (i < hi) {
        acc0 += term(a[i], b[i]);
    }
    // The last n % 4 elements: the rest of their vec4 is not ours to read as data.
    if (wid.x == 0u && lid == 0u && p.nv * 4u < p.n) {
        let k = p.n - p.nv * 4u;
        let m = vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(k);
        let zero = vec4<f32>(0.0);
        acc1 += select(zero, term(a[p.nv], b[p.nv]), m);
    }
    let s = acc0 + acc1;
    let total = workgroup_sum((s.x + s.y) + (s.z + s.w), lid);
    if (lid == 0u) {
        out[wid.x] = total * p.scale;
    }
}

fn ident() -> f32 {
    if (OP == AXIS_MAX) {
        return bitcast<f32>(0xff800000u); // −∞
    }
    return 0.0;
}

// A chunk (thousands of terms) is accumulated in two levels: blocks of BLOCK terms,
// then the blocks. Each f32 add then rounds against a partial sum of about √BLOCK or
// √(len / BLOCK) terms rather than √len, which cuts the rounding error of a long
// chunk several times over at one extra add per block. (Kahan compensation would do
// better on paper, but compilers may fold it away: WGSL arithmetic is not exact.)
const BLOCK: u32 = 64u;

fn comb4(m: vec4<f32>, v: vec4<f32>) -> vec4<f32> {
    if (OP == AXIS_MAX) {
        // max that keeps a NaN once seen (where the device honours NaN at all).
        return select(m, v, v > m | v != v);
    }
    return m + v;
}

fn comb(m: f32, v: f32) -> f32 {
    if (OP == AXIS_MAX) {
        return select(m, v, v > m || v != v);
    }
    return m + v;
}

fn finish(v: f32) -> f32 {
    if (OP == AXIS_MAX) {
        return v;
    }
    return v * q.scale;
}

// Elements [lo, hi) of a: the masked head and tail vec4s, whole vec4s between.
fn run(lo: u32, hi: u32) -> f32 {
    if (lo >= hi) {
        return ident();
    }
    let id = vec4<f32>(ident());
    let lanes = vec4<u32>(0u, 1u, 2u, 3u);
    let first = lo / 4u;
    let last = (hi - 1u) / 4u;
    let e0 = first * 4u + lanes;
    var acc = select(id, a[first], e0 >= vec4<u32>(lo) & e0 < vec4<u32>(hi));
    if (last > first) {
        let e1 = last * 4u + lanes;
        acc = comb4(acc, select(id, a[last], e1 < vec4<u32>(hi)));
    }
    // Two accumulators per block so consecutive loads do not wait on each other's adds.
    var v = first + 1u;
    loop {
        if (v >= last) { break; }
        let end = min(last, v + BLOCK);
        var b0 = id;
        var b1 = id;
        loop {
            if (v + 1u >= end) { break; }
            b0 = comb4(b0, a[v]);
            b1 = comb4(b1, a[v + 1u]);
            v += 2u;
        }
        if (v < end) {
            b0 = comb4(b0, a[v]);
            v += 1u;
        }
        acc = comb4(acc, comb4(b0, b1));
    }
    return comb(comb(acc.x, acc.y), comb(acc.z, acc.w));
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

fn load_col(e: u32) -> vec4<f32> {
    if (VEC == 4u) {
        return a[e / 4u];
    }
    return vec4<f32>(a[e / 4u][e % 4u], 0.0, 0.0, 0.0);
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
    let id = vec4<f32>(ident());
    var acc = id;
    var k = k0;
    loop {
        if (k >= k1) { break; }
        let end = min(k1, k + BLOCK);
        var b0 = id;
        var b1 = id;
        loop {
            if (k + 1u >= end) { break; }
            b0 = comb4(b0, load_col(e));
            b1 = comb4(b1, load_col(e + q.inner));
            e += 2u * q.inner;
            k += 2u;
        }
        if (k < end) {
            b0 = comb4(b0, load_col(e));
            e += q.inner;
            k += 1u;
        }
        acc = comb4(acc, comb4(b0, b1));
    }
    let dst = rest * q.inner + j;
    out_axis[dst] = finish(acc.x);
    if (VEC == 4u) {
        out_axis[dst + 1u] = finish(acc.y);
        out_axis[dst + 2u] = finish(acc.z);
        out_axis[dst + 3u] = finish(acc.w);
    }
}
