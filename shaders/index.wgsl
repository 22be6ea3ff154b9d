// Indexing and layout: one_hot, gather, transpose (src/ops/index.rs). Pure data
// movement: every output element is a copy of an input element, 0, 1 or NaN.
//
// Labels are f32 class indices. A label that is not an integer in [0, classes) cannot
// be reported without a readback, so it turns its output row (one_hot) or element
// (gather) into NaN, which poisons anything computed from it.
override WG: u32 = 256u;

struct Params {
    // one_hot / gather: rows n, columns classes. transpose: input [batch, rows, cols].
    n: u32,
    classes: u32,
    rows: u32,
    cols: u32,
    total: u32,
    total4: u32,
    // The bits of a quiet NaN, passed in because WGSL constant evaluation rejects NaN.
    nan_bits: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<vec4<f32>>;

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// The class of `label`, or `classes` (out of range) when it is not an integer in
// [0, classes). Inf and NaN are caught on their bits, since a compiler may assume
// floats are never NaN and drop a `l != l` test.
fn class_of(label: f32) -> u32 {
    let special = (bitcast<u32>(label) & 0x7f800000u) == 0x7f800000u;
    if (special || label < 0.0 || label >= f32(p.classes) || floor(label) != label) {
        return p.classes;
    }
    return u32(label);
}

// a = labels [n]; b is unused (bound to a dummy); y = [n, classes], four elements each.
@compute @workgroup_size(WG)
fn one_hot(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.total4) {
        return;
    }
    let nan = bitcast<f32>(p.nan_bits);
    var out = vec4<f32>(0.0);
    // Element e = 4i + j sits at (row, col); step col and wrap into the next row
    // instead of dividing four times.
    var row = (4u * i) / p.classes;
    var col = (4u * i) % p.classes;
    for (var j = 0u; j < 4u; j++) {
        if (4u * i + j < p.total) {
            let c = class_of(a[row]);
            if (c == p.classes) {
                out[j] = nan;
            } else {
                out[j] = select(0.0, 1.0, col == c);
            }
        }
        col += 1u;
        if (col == p.classes) {
            col = 0u;
            row += 1u;
        }
    }
    y[i] = out;
}

// a = x [n, classes]; b = labels [n]; y = [n] with y[r] = x[r, label_r].
@compute @workgroup_size(WG)
fn gather(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.total4) {
        return;
    }
    let nan = bitcast<f32>(p.nan_bits);
    var out = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let r = 4u * i + j;
        if (r < p.n) {
            let c = class_of(b[r]);
            if (c == p.classes) {
                out[j] = nan;
            } else {
                out[j] = a[r * p.classes + c];
            }
        }
    }
    y[i] = out;
}

// a = x [batch, rows, cols]; b unused; y = [batch, cols, rows]. Four consecutive output
// elements per invocation (one vec4 store), read with stride `cols` from x.
@compute @workgroup_size(WG)
fn transpose(@builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.total4) {
        return;
    }
    let plane = p.rows * p.cols;
    let e = 4u * i;
    // Output element e is (t, c, r) in [batch, cols, rows] and reads x[t, r, c]. Step r
    // and carry into c and t instead of dividing four times.
    var r = e % p.rows;
    var c = (e / p.rows) % p.cols;
    var src = (e / plane) * plane + r * p.cols + c;
    var out = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (e + j < p.total) {
            out[j] = a[src];
        }
        r += 1u;
        src += p.cols;
        if (r == p.rows) {
            // Back to input row 0, next column: src = t·plane + c + 1.
            r = 0u;
            c += 1u;
            src = src - plane + 1u;
            if (c == p.cols) {
                // Past the last column: the next batch's (0, 0) = (t + 1)·plane.
                c = 0u;
                src = src - p.cols + plane;
            }
        }
    }
    y[i] = out;
}
