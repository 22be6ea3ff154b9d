//! Elementwise fusion: chains of elementwise ops run as one generated kernel.
//!
//! With fusion on (the default; `BLO_FUSION=0` or [`GpuContext::set_fusion`] turns it
//! off), the elementwise ops (unary; binary on equal shapes, with a one-element operand,
//! or with one broadcast over a contiguous block of dimensions; `broadcast_to`; fill; the
//! `b·y + a·x` updates) and the full reductions do not dispatch. Each returns a
//! *deferred* buffer ([`GpuBuffer::deferred`]) holding its op and operands. When
//! something needs a deferred buffer's contents (a kernel that binds it, a copy, a
//! readback, a sync), [`compute`] walks the deferred ops it depends on, writes one WGSL
//! kernel that evaluates them all in registers, four elements per invocation (summing
//! them, when the root is a reduction), and dispatches it once. Deferred values that
//! are never needed are never computed; one that a tensor or another op also holds is
//! written out by the kernel that computes it (a side output), so it is not computed
//! twice. Other kernels can be deferred whole ([`defer_kernel`]) so that an unread
//! result never runs. Values a loop carries side by side can be computed in one kernel
//! ([`compute_together`]), and kernels that read an operand from memory can take parts
//! of its expression themselves: a matrix product moves its operands' scalar factors to
//! its result ([`split_factors`]), the cross-entropy's VJP adds a row bias
//! ([`split_row_bias`]).
//!
//! Fusion is below the tape: every op is still recorded with its own backward rule, so
//! gradients, `create_graph` and second order are unchanged; only the number of
//! dispatches falls.
//!
//! Kernels are generated from the structure of the expression alone (ops, how operands
//! are shared, how each input is read), never from sizes, scalar values or broadcast
//! strides, which travel in the parameter block. So a loop compiles each distinct shape
//! of expression once ([`GpuContext::fused_kernel_count`]). Expressions are capped at
//! [`MAX_NODES`] ops, [`MAX_INPUTS`] inputs (or the adapter's storage bindings) and
//! [`MAX_SCALARS`] host scalars; past a cap, the largest operand is computed first.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::context::GpuContext;
use super::pool::{BufferCell, GpuBuffer};
use super::profile::Label;
use crate::backend::{BinaryOp, FullOp, UnaryOp};
use crate::error::Result;

/// Most ops one generated kernel evaluates; a longer chain computes a prefix first. The
/// host scalars of those ops (two each at most) fill the parameter block.
pub(crate) const MAX_NODES: usize = 24;
/// Most buffers one generated kernel reads (further capped by the adapter's limit on
/// storage bindings, less the output).
pub(crate) const MAX_INPUTS: usize = 12;

/// How an operand's elements map to its op's: element e reads element `(e / div) % len`
/// of the operand. Broadcasting one contiguous block of dimensions has this form: a
/// bias `[c]` over rows `[n, c]` is (1, c), per-row weights `[n, 1]` are (c, n).
pub(crate) type Stride = (u32, u32);

/// How an input is read, per vec4 of the output.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Element for element.
    Whole,
    /// Its one element, repeated.
    Splat,
    /// Through a broadcast [`Stride`] (given in the parameter block).
    Strided,
}

/// The [`Stride`] of an operand of shape `shape` broadcast to `out` (NumPy rules), if
/// the dimensions it does not broadcast over are one contiguous block of `out`; `None`
/// when they are not (it is broadcast in a gap), or when it has one element or `out`'s
/// shape (which need no stride).
pub(crate) fn block_stride(shape: &[usize], out: &[usize]) -> Option<Stride> {
    if shape == out || shape.iter().product::<usize>() == 1 || shape.len() > out.len() {
        return None;
    }
    let strides = crate::backend::broadcast_strides(shape, out);
    let active: Vec<usize> = (0..out.len())
        .filter(|&d| strides[d] != 0 && out[d] > 1)
        .collect();
    let (&lo, &last) = (active.first()?, active.last()?);
    let hi = last + 1;
    // Within the block, every dimension longer than 1 is read with row-major strides.
    let mut expected = 1;
    for d in (lo..hi).rev() {
        if out[d] > 1 && strides[d] != expected {
            return None;
        }
        expected *= out[d];
    }
    let div: usize = out[hi..].iter().product();
    let len: usize = out[lo..hi].iter().product();
    Some((u32::try_from(div).ok()?, u32::try_from(len).ok()?))
}
/// Invocations per workgroup of the generated kernels.
const WG: u32 = 256;
/// Most vec4s one invocation of a fused reduction adds (as the reduce kernels do).
const REDUCE_VEC4: usize = 64;
/// Most workgroups of a fused reduction: their partials are summed by a second pass.
const REDUCE_MAX_GROUPS: usize = 1024;
/// Host scalars a kernel's parameter block holds: 256 bytes less the 16-byte header
/// and the broadcast index of each input.
pub(crate) const MAX_SCALARS: usize = 36;

/// Where an update's coefficient comes from (as in `shaders/update.wgsl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum CoefSource {
    /// The op's host scalar.
    Host,
    /// The host scalar times a one-element device buffer.
    Device,
    /// The host scalar times num / den (two device buffers), 0 when den is 0.
    Ratio,
}

/// One elementwise op of a deferred buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FusedOp {
    /// Every element is the host scalar `s0` (no operands).
    Fill,
    /// The operand broadcast to the output: one element repeated, or read through a
    /// broadcast stride.
    Splat,
    /// `op` of the operand, with `s0`, `s1` as [`UnaryOp::ScaleShift`]'s a and b.
    Unary(UnaryOp),
    /// `op` of two operands of equal length, or of one and a one-element operand.
    Binary(BinaryOp),
    /// `b·y + a·x` with operands y, x, then a's device scalars (one for `Device`, num and
    /// den for `Ratio`), then b's (one for `Device`); host parts in `s0` (a) and `s1` (b).
    Update { a: CoefSource, b: CoefSource },
    /// `s0 · Σ op(a, b)` over the operands' elements, into one element: a full
    /// reduction whose operands' deferred ops run inside it. It ends an expression: a
    /// kernel that reads its result computes it first (a dispatch of its own).
    Reduce(FullOp),
    /// Any other kernel, deferred whole ([`defer_kernel`]) so that a result nobody
    /// reads (a loss value in an inner step) never runs. Like a reduction, it is
    /// computed on its own before a kernel that reads it.
    Kernel,
}

impl FusedOp {
    /// Whether the op runs as a kernel of its own rather than inside an expression.
    fn alone(self) -> bool {
        matches!(self, FusedOp::Reduce(_) | FusedOp::Kernel)
    }
}

impl FusedOp {
    fn scalars(self) -> usize {
        match self {
            FusedOp::Fill => 1,
            FusedOp::Unary(UnaryOp::ScaleShift) | FusedOp::Update { .. } => 2,
            FusedOp::Reduce(_) => 1,
            _ => 0,
        }
    }
}

/// The op a deferred buffer waits on, with its operands (each a computed or a deferred
/// buffer) and host scalars.
pub(crate) struct Deferred {
    op: FusedOp,
    operands: Vec<GpuBuffer>,
    /// Per operand, its broadcast stride, if it is read through one (a computed
    /// buffer: a strided operand is never evaluated inside the expression).
    strides: Vec<Option<Stride>>,
    scalars: [f32; 2],
    /// The deferred values under this one and the computed buffers they read (sorted
    /// addresses), kept so that building an expression never walks it. Exact when made;
    /// an operand computed since makes them stale, which `compute` allows for.
    members: Vec<usize>,
    inputs: Vec<usize>,
    /// Host scalars of the expression ending here (an upper bound: a shared value's
    /// count twice), which the parameter block caps.
    scalar_count: usize,
    /// A [`FusedOp::Kernel`]'s dispatch, given its operands.
    kernel: Option<KernelThunk>,
}

/// A deferred kernel: records its dispatch on the operands and returns its output.
type KernelThunk = Box<dyn FnOnce(&[GpuBuffer]) -> Result<GpuBuffer> + Send>;

impl GpuContext {
    /// Whether elementwise ops are deferred and fused (on unless `BLO_FUSION=0`).
    pub fn fusion(&self) -> bool {
        self.fusion.load(Ordering::Relaxed)
    }

    /// Turns elementwise fusion on or off for later ops. Results agree either way to f32
    /// rounding; off, every op is one dispatch, which is what kernel benchmarks time.
    pub fn set_fusion(&self, on: bool) {
        self.fusion.store(on, Ordering::Relaxed);
    }

    /// Number of distinct fused kernels compiled on this context so far.
    pub fn fused_kernel_count(&self) -> usize {
        self.fused_lock().len()
    }

    fn fused_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, FusedKernel>> {
        self.fused.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn input_cap(&self) -> usize {
        (self.limits.max_storage_buffers_per_shader_stage as usize)
            .saturating_sub(1)
            .clamp(4, MAX_INPUTS)
    }

    /// Computes every deferred buffer still held by a tensor: what a sync owes the
    /// caller, so that the work recorded before it is done after it.
    pub(crate) fn compute_deferred(&self) -> Result<()> {
        let list =
            std::mem::take(&mut *self.deferred_list.lock().unwrap_or_else(|p| p.into_inner()));
        // Newest first: computing a value drops its hold on the deferred operands it
        // read, so an intermediate that only it held is never computed on its own.
        for weak in list.iter().rev() {
            if let Some(cell) = weak.upgrade()
                && cell.buffer.get().is_none()
            {
                compute(&GpuBuffer::from_cell(cell))?;
            }
        }
        Ok(())
    }
}

/// A deferred buffer of `n` elements computed by `op` of `operands`, or, with fusion
/// off, the op dispatched now.
pub(crate) fn defer(
    ctx: &Arc<GpuContext>,
    op: FusedOp,
    operands: &[&GpuBuffer],
    scalars: [f32; 2],
    n: usize,
) -> Result<GpuBuffer> {
    defer_strided(ctx, op, operands, &vec![None; operands.len()], scalars, n)
}

/// [`defer`] with some operands read through a broadcast [`Stride`].
pub(crate) fn defer_strided(
    ctx: &Arc<GpuContext>,
    op: FusedOp,
    operands: &[&GpuBuffer],
    strides: &[Option<Stride>],
    scalars: [f32; 2],
    n: usize,
) -> Result<GpuBuffer> {
    let bytes = (n * 4) as u64;
    ctx.check_size("tensor", bytes)?;
    // A strided operand is read from memory: computed now if it is deferred.
    for (b, st) in operands.iter().zip(strides) {
        if st.is_some() {
            b.compute()?;
        }
    }
    let (mut members, mut inputs) = footprint(operands);
    let scalar_count = |operands: &[&GpuBuffer]| {
        operands.iter().fold(op.scalars(), |total, b| {
            let d = b.inner.deferred.lock().unwrap_or_else(|p| p.into_inner());
            total
                + d.as_ref()
                    .filter(|d| !d.op.alone())
                    .map_or(0, |d| d.scalar_count)
        })
    };
    // Too long or too wide: compute the largest deferred operand first, until it fits.
    while members.len() + 1 > MAX_NODES
        || inputs.len() > ctx.input_cap()
        || scalar_count(operands) > MAX_SCALARS
    {
        let Some(largest) = operands
            .iter()
            .map(|b| (b, footprint(&[b]).0.len()))
            .filter(|(_, ops)| *ops > 0)
            .max_by_key(|(_, ops)| *ops)
        else {
            break;
        };
        compute(largest.0)?;
        (members, inputs) = footprint(operands);
    }
    let out = GpuBuffer::deferred(
        ctx.clone(),
        bytes,
        Deferred {
            op,
            operands: operands.iter().map(|b| b.share()).collect(),
            strides: strides.to_vec(),
            scalars,
            scalar_count: scalar_count(operands),
            members,
            inputs,
            kernel: None,
        },
    );
    ctx.track_deferred(&out);
    Ok(out)
}

/// The deferred values and the computed buffers an op of `operands` would read: each
/// deferred elementwise operand with its own, and anything else (a computed buffer, a
/// reduction or kernel computed on its own) as one input.
fn footprint(operands: &[&GpuBuffer]) -> (Vec<usize>, Vec<usize>) {
    let (mut members, mut inputs) = (Vec::new(), Vec::new());
    for b in operands {
        let id = Arc::as_ptr(&b.inner) as usize;
        let d = b.inner.deferred.lock().unwrap_or_else(|p| p.into_inner());
        match d.as_ref() {
            Some(d) if !d.op.alone() => {
                members.extend_from_slice(&d.members);
                members.push(id);
                inputs.extend_from_slice(&d.inputs);
            }
            _ => inputs.push(id),
        }
    }
    for set in [&mut members, &mut inputs] {
        set.sort_unstable();
        set.dedup();
    }
    (members, inputs)
}

impl GpuContext {
    /// Lists a new deferred buffer for [`Self::compute_deferred`].
    fn track_deferred(&self, b: &GpuBuffer) {
        let mut list = self.deferred_list.lock().unwrap_or_else(|p| p.into_inner());
        // Dead entries are dropped as the list grows, so it stays as long as what is live.
        if list.len() >= 64 && list.len().is_power_of_two() {
            list.retain(|w| w.strong_count() > 0);
        }
        list.push(Arc::downgrade(&b.inner));
    }
}

/// A compiled fused kernel and its name in profiles (its ops in evaluation order).
pub(super) type FusedKernel = (Arc<wgpu::ComputePipeline>, Arc<str>);

/// One op of an expression in evaluation order; operands are earlier ops or inputs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Arg {
    Op(usize),
    Input(usize),
}

/// An expression as a kernel evaluates it.
struct Expr {
    ops: Vec<(FusedOp, Vec<Arg>)>,
    scalars: Vec<f32>,
    /// The computed buffers read, in binding order, with the stride each is read through.
    inputs: Vec<(GpuBuffer, Option<Stride>)>,
    /// Deferred values inside the expression that something else also holds (a tensor,
    /// another deferred op): written out as the kernel computes them, by op index, so
    /// that no later kernel computes them again.
    outputs: Vec<(usize, GpuBuffer)>,
    /// Elements the kernel runs over.
    n: usize,
    /// The op whose value is the kernel's output (the last one, unless companions were
    /// evaluated after it).
    root: usize,
    /// Per deferred value met: its op, a handle, and how many operands of this
    /// expression hold it.
    met: HashMap<*const BufferCell, (usize, GpuBuffer, usize)>,
    /// The first error computing a reduction it reads.
    error: Option<crate::error::Error>,
}

impl Expr {
    /// Walks the deferred ops under `root` (whose op is `top`), each shared one once,
    /// over `n` elements, with at most `max_outputs` values written besides the root.
    /// `companions` (deferred elementwise values of `n` elements) are evaluated in the
    /// same kernel and written out.
    fn build(
        root: &GpuBuffer,
        top: &Deferred,
        n: usize,
        max_outputs: usize,
        companions: &[&GpuBuffer],
    ) -> Expr {
        let mut e = Expr {
            ops: Vec::new(),
            scalars: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            n,
            root: 0,
            met: HashMap::new(),
            error: None,
        };
        let mut seen: HashMap<*const BufferCell, Arg> = HashMap::new();
        let root_arg = e.visit_op(top, &mut seen);
        seen.insert(Arc::as_ptr(&root.inner), root_arg);
        e.root = e.ops.len() - 1;
        for c in companions.iter().filter(|c| c.is_deferred()) {
            e.visit(c, &mut seen);
            // Not an operand of the expression: it is written because the caller holds it.
            if let Some(m) = e.met.get_mut(&Arc::as_ptr(&c.inner)) {
                m.2 -= 1;
            }
        }
        // Held by more than this expression's operands (and the handle in `met`).
        let mut outputs: Vec<(usize, GpuBuffer)> = std::mem::take(&mut e.met)
            .into_values()
            .filter(|(_, b, hits)| Arc::strong_count(&b.inner) > hits + 1)
            .map(|(k, b, _)| (k, b))
            .collect();
        outputs.sort_by_key(|(k, _)| *k);
        outputs.truncate(max_outputs.saturating_sub(e.inputs.len()));
        e.outputs = outputs;
        e
    }

    fn visit_op(&mut self, d: &Deferred, seen: &mut HashMap<*const BufferCell, Arg>) -> Arg {
        let args: Vec<Arg> = d
            .operands
            .iter()
            .zip(&d.strides)
            .map(|(b, st)| match st {
                Some(st) => self.strided_input(b, *st),
                None => self.visit(b, seen),
            })
            .collect();
        self.scalars.extend_from_slice(&d.scalars[..d.op.scalars()]);
        self.ops.push((d.op, args));
        Arg::Op(self.ops.len() - 1)
    }

    fn visit(&mut self, b: &GpuBuffer, seen: &mut HashMap<*const BufferCell, Arg>) -> Arg {
        let key = Arc::as_ptr(&b.inner);
        if let Some(&a) = seen.get(&key) {
            if let Some(m) = self.met.get_mut(&key) {
                m.2 += 1;
            }
            return a;
        }
        let guard = b.inner.deferred.lock().unwrap_or_else(|p| p.into_inner());
        let arg = match guard.as_ref() {
            Some(d) if !d.op.alone() => {
                let arg = self.visit_op(d, seen);
                if let (Arg::Op(k), true) = (arg, b.numel() == self.n) {
                    self.met.insert(key, (k, b.share(), 1));
                }
                arg
            }
            deferred => {
                let reduction = deferred.is_some();
                drop(guard);
                if reduction {
                    // Its own dispatch, recorded before the kernel that reads it.
                    if let Err(e) = compute(b) {
                        self.error.get_or_insert(e);
                    }
                }
                self.inputs.push((b.share(), None));
                Arg::Input(self.inputs.len() - 1)
            }
        };
        seen.insert(key, arg);
        arg
    }

    /// A computed operand read through `stride` (once per buffer and stride).
    fn strided_input(&mut self, b: &GpuBuffer, stride: Stride) -> Arg {
        // Computed when the op was deferred, unless by another thread meanwhile.
        if let Err(e) = b.compute() {
            self.error.get_or_insert(e);
        }
        let same = |(x, st): &(GpuBuffer, Option<Stride>)| {
            Arc::ptr_eq(&x.inner, &b.inner) && *st == Some(stride)
        };
        match self.inputs.iter().position(same) {
            Some(k) => Arg::Input(k),
            None => {
                self.inputs.push((b.share(), Some(stride)));
                Arg::Input(self.inputs.len() - 1)
            }
        }
    }

    /// The ops in evaluation order, for profiles, repeats counted: `sub·square×2·axpby`.
    fn name(&self) -> String {
        let mut runs: Vec<(String, usize)> = Vec::new();
        for (op, _) in &self.ops {
            let name = match op {
                FusedOp::Fill => "fill".to_string(),
                FusedOp::Splat => "splat".to_string(),
                FusedOp::Unary(u) => snake(&format!("{u:?}")),
                FusedOp::Binary(b) => snake(&format!("{b:?}")),
                FusedOp::Update { .. } => "axpby".to_string(),
                FusedOp::Reduce(r) => snake(&format!("{r:?}")),
                FusedOp::Kernel => "kernel".to_string(),
            };
            match runs.last_mut() {
                Some((last, count)) if *last == name => *count += 1,
                _ => runs.push((name, 1)),
            }
        }
        let parts: Vec<String> = runs
            .into_iter()
            .map(|(n, c)| if c > 1 { format!("{n}×{c}") } else { n })
            .collect();
        parts.join("·")
    }

    /// The kernel's cache key: the ops and how they connect, and which inputs are single
    /// elements (read once and repeated). Sizes and scalar values are parameters.
    fn signature(&self, n: usize) -> String {
        let mut s = signature(&self.ops, &self.reads(n));
        if self.root + 1 != self.ops.len() {
            let _ = write!(s, "|root,o{}", self.root);
        }
        for (k, _) in &self.outputs {
            let _ = write!(s, "|out,o{k}");
        }
        s
    }

    /// The op indices written besides the root.
    fn written(&self) -> Vec<usize> {
        self.outputs.iter().map(|(k, _)| *k).collect()
    }

    /// How each input is read over `n` elements.
    fn reads(&self, n: usize) -> Vec<Read> {
        self.inputs
            .iter()
            .map(|(b, st)| match st {
                Some(_) => Read::Strided,
                None if b.numel() == 1 && n > 1 => Read::Splat,
                None => Read::Whole,
            })
            .collect()
    }
}

fn signature(ops: &[(FusedOp, Vec<Arg>)], reads: &[Read]) -> String {
    let mut s = String::new();
    for (i, read) in reads.iter().enumerate() {
        let c = match read {
            Read::Whole => 'v',
            Read::Splat => 's',
            Read::Strided => 't',
        };
        let _ = write!(s, "{c}{i}");
    }
    for (op, args) in ops {
        let _ = write!(s, "|{op:?}");
        for a in args {
            match a {
                Arg::Op(i) => {
                    let _ = write!(s, ",o{i}");
                }
                Arg::Input(i) => {
                    let _ = write!(s, ",i{i}");
                }
            }
        }
    }
    s
}

/// The WGSL of the kernel evaluating `ops` over inputs read as `reads` says, labelled
/// with its `signature`: four elements per invocation written out, or, when the last op
/// is a [`FusedOp::Reduce`], their sum per workgroup.
fn wgsl(
    ops: &[(FusedOp, Vec<Arg>)],
    reads: &[Read],
    written: &[usize],
    root: usize,
    signature: &str,
) -> String {
    let reduce = matches!(ops.last(), Some((FusedOp::Reduce(_), _)));
    let mut w = String::new();
    let _ = writeln!(
        w,
        "// Generated by blo's elementwise fusion (src/backend/gpu/fusion.rs).\n// {signature}\n\
         const WG: u32 = {WG}u;\n\
         struct Params {{ n4: u32, n: u32, block: u32, _pad: u32,\n\
         \x20   ix: array<vec4<u32>, {}>, s: array<vec4<f32>, {}> }}\n\
         @group(0) @binding(0) var<uniform> p: Params;",
        MAX_INPUTS / 2,
        MAX_SCALARS / 4
    );
    for i in 0..reads.len() {
        let _ = writeln!(
            w,
            "@group(0) @binding({}) var<storage, read> in{i}: array<vec4<f32>>;",
            i + 1
        );
    }
    let _ = writeln!(
        w,
        "@group(0) @binding({}) var<storage, read_write> out: array<{}>;\n\
         fn scalar(k: u32) -> f32 {{ return p.s[k / 4u][k % 4u]; }}",
        reads.len() + 1,
        if reduce { "f32" } else { "vec4<f32>" }
    );
    for (j, _) in written.iter().enumerate() {
        let _ = writeln!(
            w,
            "@group(0) @binding({}) var<storage, read_write> side{j}: array<vec4<f32>>;",
            reads.len() + 2 + j
        );
    }
    for (k, read) in reads.iter().enumerate() {
        if *read == Read::Strided {
            // Lane l of vec4 i is element 4i + l; it reads element (e / div) % len.
            let _ = writeln!(
                w,
                "fn load{k}(i: u32) -> vec4<f32> {{\n\
                 \x20   let st = vec2<u32>(p.ix[{q}u][{a}u], p.ix[{q}u][{b}u]);\n\
                 \x20   let o = ((vec4<u32>(4u * i) + vec4<u32>(0u, 1u, 2u, 3u)) / st.x) % st.y;\n\
                 \x20   return vec4<f32>(in{k}[o.x / 4u][o.x % 4u], in{k}[o.y / 4u][o.y % 4u],\n\
                 \x20                    in{k}[o.z / 4u][o.z % 4u], in{k}[o.w / 4u][o.w % 4u]);\n\
                 }}",
                q = k / 2,
                a = 2 * (k % 2),
                b = 2 * (k % 2) + 1
            );
        }
    }
    let _ = writeln!(
        w,
        "// The expression at vec4 index i (writing the values others hold).\n\
         fn value(i: u32) -> vec4<f32> {{"
    );
    for (k, read) in reads.iter().enumerate() {
        let _ = match read {
            Read::Whole => writeln!(w, "    let i{k} = in{k}[i];"),
            Read::Splat => writeln!(w, "    let i{k} = vec4<f32>(in{k}[0].x);"),
            Read::Strided => writeln!(w, "    let i{k} = load{k}(i);"),
        };
    }
    let name = |a: &Arg| match a {
        Arg::Op(i) => format!("o{i}"),
        Arg::Input(i) => format!("i{i}"),
    };
    // Device scalars of updates are read as the first lane of a (splat) operand.
    let lane = |a: &Arg| format!("{}.x", name(a));
    let mut next_scalar = 0usize;
    for (k, (op, args)) in ops.iter().enumerate() {
        let s0 = format!("scalar({next_scalar}u)");
        let s1 = format!("scalar({}u)", next_scalar + 1);
        next_scalar += op.scalars();
        let first = args.first().map(name).unwrap_or_default();
        let second = args.get(1).map(name).unwrap_or_default();
        let value = match *op {
            FusedOp::Fill => format!("vec4<f32>({s0})"),
            // Its operand is already read (or computed) as the output's elements.
            FusedOp::Splat => first,
            FusedOp::Unary(u) => unary_wgsl(u, &first, &s0, &s1),
            FusedOp::Binary(b) => binary_wgsl(b, &first, &second),
            FusedOp::Update { a, b } => {
                let mut rest = args[2..].iter();
                let mut next = || lane(rest.next().expect("an update's device scalar"));
                let a_value = match a {
                    CoefSource::Host => s0.clone(),
                    CoefSource::Device => format!("({s0} * {})", next()),
                    CoefSource::Ratio => {
                        let (num, den) = (next(), next());
                        format!("select(0.0, {s0} * {num} / {den}, {den} != 0.0)")
                    }
                };
                let b_value = match b {
                    CoefSource::Host => s1.clone(),
                    CoefSource::Device | CoefSource::Ratio => next(),
                };
                // out = b·y + a·x with y, x the first two operands.
                format!("{b_value} * {first} + {a_value} * {second}")
            }
            FusedOp::Kernel => unreachable!("a deferred kernel is an input, never an op"),
            // The term summed (the scale is applied to the workgroup's sum).
            FusedOp::Reduce(r) => match r {
                FullOp::Sum => first,
                FullOp::SumSq => format!("{first} * {first}"),
                FullOp::Dot => format!("{first} * {second}"),
                FullOp::SqDiff => format!("({first} - {second}) * ({first} - {second})"),
            },
        };
        let _ = writeln!(w, "    let o{k} = {value};");
        if let Some(j) = written.iter().position(|&o| o == k) {
            let _ = writeln!(w, "    side{j}[i] = o{k};");
        }
    }
    let _ = writeln!(w, "    return o{root};\n}}");
    if !reduce {
        let _ = writeln!(
            w,
            "@compute @workgroup_size(WG)\n\
             fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,\n\
             \x20       @builtin(local_invocation_index) lid: u32) {{\n\
             \x20   let i = (wid.x + wid.y * nwg.x) * WG + lid;\n\
             \x20   if (i < p.n4) {{ out[i] = value(i); }}\n\
             }}"
        );
    } else {
        // Workgroup g sums the vec4s [g·block, (g+1)·block), its invocations interleaved
        // (adjacent reads), lanes past n masked, then a tree in workgroup memory.
        let _ = writeln!(
            w,
            "var<workgroup> part: array<f32, WG>;\n\
             @compute @workgroup_size(WG)\n\
             fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {{\n\
             \x20   let lo = wid.x * p.block;\n\
             \x20   let hi = min(p.n4, lo + p.block);\n\
             \x20   var acc = vec4<f32>(0.0);\n\
             \x20   for (var i = lo + lid; i < hi; i += WG) {{\n\
             \x20       let lane = vec4<u32>(4u * i) + vec4<u32>(0u, 1u, 2u, 3u);\n\
             \x20       acc += select(vec4<f32>(0.0), value(i), lane < vec4<u32>(p.n));\n\
             \x20   }}\n\
             \x20   part[lid] = (acc.x + acc.y) + (acc.z + acc.w);\n\
             \x20   workgroupBarrier();\n\
             \x20   for (var s = WG / 2u; s > 0u; s = s / 2u) {{\n\
             \x20       if (lid < s) {{ part[lid] += part[lid + s]; }}\n\
             \x20       workgroupBarrier();\n\
             \x20   }}\n\
             \x20   if (lid == 0u) {{ out[wid.x] = part[0] * scalar({}u); }}\n\
             }}",
            next_scalar - 1
        );
    }
    w
}

/// `ScaleShift` as `scale_shift`.
fn snake(camel: &str) -> String {
    let mut s = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            s.push('_');
        }
        s.push(c.to_ascii_lowercase());
    }
    s
}

fn unary_wgsl(op: UnaryOp, x: &str, a: &str, b: &str) -> String {
    // The same expressions as shaders/unary.wgsl, so fused and unfused results agree.
    match op {
        UnaryOp::Neg => format!("-{x}"),
        UnaryOp::Exp => format!("exp({x})"),
        UnaryOp::Log => format!("log({x})"),
        UnaryOp::Sqrt => format!("sqrt({x})"),
        UnaryOp::Square => format!("{x} * {x}"),
        UnaryOp::Abs => format!("abs({x})"),
        UnaryOp::Sin => format!("sin({x})"),
        UnaryOp::Cos => format!("cos({x})"),
        UnaryOp::Tanh => format!("tanh(clamp({x}, vec4<f32>(-15.0), vec4<f32>(15.0)))"),
        UnaryOp::Sigmoid => format!("1.0 / (1.0 + exp(-{x}))"),
        UnaryOp::Relu => format!("max({x}, vec4<f32>(0.0))"),
        UnaryOp::ReluMask => {
            format!("select(vec4<f32>(0.0), vec4<f32>(1.0), {x} > vec4<f32>(0.0))")
        }
        UnaryOp::ScaleShift => format!("{a} * {x} + {b}"),
        UnaryOp::Sign => format!("sign({x})"),
        UnaryOp::Recip => format!("1.0 / {x}"),
        UnaryOp::Softplus => format!("max({x}, vec4<f32>(0.0)) + {}", log1p_exp_neg_abs(x)),
        UnaryOp::LogSigmoid => format!("min({x}, vec4<f32>(0.0)) - {}", log1p_exp_neg_abs(x)),
    }
}

/// shaders/unary.wgsl's `log1p_exp_neg_abs(x)` as one expression: ln(1 + e^−|x|).
fn log1p_exp_neg_abs(x: &str) -> String {
    let t = format!("exp(-abs({x}))");
    format!(
        "select(log(1.0 + {t}), {t} * (1.0 - {t} * (0.5 - {t} * (0.33333334 - {t} * (0.25 - {t} * 0.2)))), {t} < vec4<f32>(0.05))"
    )
}

fn binary_wgsl(op: BinaryOp, u: &str, v: &str) -> String {
    // The same expressions as shaders/binary.wgsl.
    let cmp = |c: &str| format!("select(vec4<f32>(0.0), vec4<f32>(1.0), {u} {c} {v})");
    match op {
        BinaryOp::Add => format!("{u} + {v}"),
        BinaryOp::Sub => format!("{u} - {v}"),
        BinaryOp::Mul => format!("{u} * {v}"),
        BinaryOp::Div => format!("{u} / {v}"),
        BinaryOp::Max => format!("max({u}, {v})"),
        BinaryOp::Min => format!("min({u}, {v})"),
        BinaryOp::Gt => cmp(">"),
        BinaryOp::Ge => cmp(">="),
        BinaryOp::Lt => cmp("<"),
        BinaryOp::Le => cmp("<="),
        BinaryOp::Eq => cmp("=="),
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n4: u32,
    /// A reduction's element count and vec4s per workgroup.
    n: u32,
    block: u32,
    _pad: u32,
    /// Per input, its broadcast stride (div, len), if it is read through one.
    strides: [u32; 2 * MAX_INPUTS],
    scalars: [f32; MAX_SCALARS],
}

/// Computes the deferred buffer `b` and the deferred ops it depends on in one dispatch,
/// and drops its hold on its operands.
pub(crate) fn compute(b: &GpuBuffer) -> Result<()> {
    compute_with(b, &[])
}

/// Computes deferred buffers that are needed together in as few dispatches as the caps
/// allow: the elementwise ones of the first one's length in one kernel (each value's ops
/// once), the rest each on its own. For values a loop carries side by side (CG's x and
/// p) that nothing reads at the same time, so that neither grows a chain of deferred ops
/// that is computed later on its own.
pub(crate) fn compute_together(bufs: &[&GpuBuffer]) -> Result<()> {
    let elementwise = |b: &GpuBuffer| {
        let d = b.inner.deferred.lock().unwrap_or_else(|p| p.into_inner());
        d.as_ref().is_some_and(|d| !d.op.alone())
    };
    let Some(root) = bufs.iter().copied().find(|b| elementwise(b)) else {
        return bufs.iter().try_for_each(|b| b.compute());
    };
    let mut companions: Vec<&GpuBuffer> = Vec::new();
    for &b in bufs {
        let fits = b.numel() == root.numel() && elementwise(b);
        if !fits || Arc::ptr_eq(&b.inner, &root.inner) {
            continue;
        }
        if !companions.iter().any(|c| Arc::ptr_eq(&c.inner, &b.inner)) {
            companions.push(b);
        }
    }
    compute_with(root, &companions)?;
    bufs.iter().try_for_each(|b| b.compute())
}

/// Computes every reduction and deferred kernel under `b` first, each in its own
/// dispatch, so that the expression reading them finds them (and any value they wrote
/// out) computed, instead of computing a value twice: once inside the reduction and
/// once in the expression.
fn compute_alone_under(b: &GpuBuffer, seen: &mut Vec<usize>) -> Result<()> {
    let id = Arc::as_ptr(&b.inner) as usize;
    if seen.contains(&id) {
        return Ok(());
    }
    seen.push(id);
    let operands = {
        let d = b.inner.deferred.lock().unwrap_or_else(|p| p.into_inner());
        match d.as_ref() {
            None => return Ok(()),
            Some(d) if d.op.alone() => None,
            Some(d) => Some(d.operands.iter().map(GpuBuffer::share).collect::<Vec<_>>()),
        }
    };
    match operands {
        None => compute(b),
        Some(ops) => ops.iter().try_for_each(|o| compute_alone_under(o, seen)),
    }
}

fn compute_with(b: &GpuBuffer, companions: &[&GpuBuffer]) -> Result<()> {
    let ctx = &b.ctx;
    {
        let operands: Vec<GpuBuffer> = {
            let slot = b.inner.deferred.lock().unwrap_or_else(|p| p.into_inner());
            match slot.as_ref() {
                Some(d) if d.op != FusedOp::Kernel => {
                    d.operands.iter().map(GpuBuffer::share).collect()
                }
                _ => Vec::new(),
            }
        };
        let mut seen = vec![Arc::as_ptr(&b.inner) as usize];
        for o in operands.iter().chain(companions.iter().copied()) {
            compute_alone_under(o, &mut seen)?;
        }
    }
    let mut slot = b.inner.deferred.lock().unwrap_or_else(|p| p.into_inner());
    let Some(top) = slot.as_ref() else {
        return Ok(()); // computed meanwhile
    };
    if top.op == FusedOp::Kernel {
        let Some(Deferred {
            operands,
            kernel: Some(run),
            ..
        }) = slot.take()
        else {
            unreachable!("a deferred kernel holds its dispatch");
        };
        let out = run(&operands)?;
        let _ = b.inner.buffer.set(out.into_raw());
        return Ok(());
    }
    // A reduction runs over its operands' length; everything else over its own.
    let reduction = matches!(top.op, FusedOp::Reduce(_));
    let n = if reduction {
        top.operands[0].numel()
    } else {
        b.numel()
    };
    let cap = ctx.input_cap();
    let companions = if reduction { &[][..] } else { companions };
    let mut expr = Expr::build(b, top, n, cap, companions);
    let over =
        |e: &Expr| e.inputs.len() > cap || e.ops.len() > MAX_NODES || e.scalars.len() > MAX_SCALARS;
    if !companions.is_empty() && over(&expr) {
        drop(expr);
        expr = Expr::build(b, top, n, cap, &[]);
    }
    // The bounds kept while building are upper bounds, except that an operand computed
    // since turns its ops into one more input; past the caps, compute the operands first.
    if over(&expr) {
        drop(expr);
        for operand in &top.operands {
            compute(operand)?;
        }
        expr = Expr::build(b, top, n, cap, &[]);
    }
    if let Some(e) = expr.error.take() {
        return Err(e);
    }
    let signature = expr.signature(n);
    let (pipeline, name) = {
        let cached = ctx.fused_lock().get(&signature).cloned();
        match cached {
            Some(k) => k,
            None => {
                let source = wgsl(
                    &expr.ops,
                    &expr.reads(n),
                    &expr.written(),
                    expr.root,
                    &signature,
                );
                let module = ctx.compile_module("fused", &source)?;
                let p = ctx.create_pipeline(
                    "fused",
                    &module,
                    "main",
                    (expr.inputs.len() as u32, 1 + expr.outputs.len() as u32),
                    &[],
                    false,
                )?;
                let k = (p, expr.name().into());
                ctx.fused_lock().insert(signature, k.clone());
                k
            }
        }
    };
    let n4 = n.div_ceil(4);
    let (groups, block) = if reduction {
        // Each invocation adds at most REDUCE_VEC4 vec4s (accuracy, and enough workgroups
        // to fill a GPU); more than one workgroup leaves partials for a second pass.
        let groups = n4
            .div_ceil(WG as usize * REDUCE_VEC4)
            .clamp(1, REDUCE_MAX_GROUPS);
        (groups, n4.div_ceil(groups))
    } else {
        (0, 0)
    };
    let mut params = Params {
        n4: n4 as u32,
        n: n as u32,
        block: block as u32,
        _pad: 0,
        strides: [0; 2 * MAX_INPUTS],
        scalars: [0.0; MAX_SCALARS],
    };
    for (k, (_, st)) in expr.inputs.iter().enumerate() {
        if let Some((div, len)) = st {
            params.strides[2 * k] = *div;
            params.strides[2 * k + 1] = *len;
        }
    }
    params.scalars[..expr.scalars.len()].copy_from_slice(&expr.scalars);
    let scale = expr.scalars.last().copied().unwrap_or(1.0);
    if groups > 1 {
        *params.scalars[..expr.scalars.len()]
            .last_mut()
            .expect("a reduction's scale") = 1.0;
    }
    let (out, workgroups) = if reduction {
        (ctx.alloc((groups * 4) as u64)?, [groups as u32, 1, 1])
    } else {
        (ctx.alloc(b.bytes())?, ctx.grid(n4 as u64, u64::from(WG))?)
    };
    ctx.check_workgroups("fused", workgroups)?;
    let sides = expr
        .outputs
        .iter()
        .map(|(_, s)| ctx.alloc(s.bytes()))
        .collect::<Result<Vec<_>>>()?;
    let mut buffers: Vec<&GpuBuffer> = expr.inputs.iter().map(|(b, _)| b).collect();
    buffers.push(&out);
    buffers.extend(&sides);
    if !workgroups.contains(&0) {
        ctx.record(
            &pipeline,
            Label::Fused(&name),
            (expr.inputs.len() as u32, 1 + sides.len() as u32),
            bytemuck::bytes_of(&params),
            &buffers,
            workgroups,
        );
    }
    drop(buffers);
    for ((_, value), written) in expr.outputs.iter().zip(sides) {
        let mut slot = value
            .inner
            .deferred
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match value.inner.buffer.set(written.into_raw()) {
            Ok(()) => *slot = None,
            // Computed meanwhile by another thread: this copy goes back to the pool.
            Err(raw) => ctx.release(raw),
        }
    }
    let out = if groups > 1 {
        super::kernels::reduce::sum_partials_gpu(&out, groups, scale)?
    } else {
        out
    };
    let _ = b.inner.buffer.set(out.into_raw());
    *slot = None;
    Ok(())
}

/// A deferred kernel with a `bytes`-byte output: `run` records its dispatch on
/// `operands` when the output is first needed, and is never called if it is not.
pub(crate) fn defer_kernel(
    operands: &[&GpuBuffer],
    bytes: u64,
    run: impl FnOnce(&[GpuBuffer]) -> Result<GpuBuffer> + Send + 'static,
) -> Result<GpuBuffer> {
    let ctx = &operands[0].ctx;
    ctx.check_size("tensor", bytes)?;
    let out = GpuBuffer::deferred(
        ctx.clone(),
        bytes,
        Deferred {
            op: FusedOp::Kernel,
            operands: operands.iter().map(|b| b.share()).collect(),
            strides: vec![None; operands.len()],
            scalars: [0.0; 2],
            scalar_count: 0,
            members: Vec::new(),
            inputs: Vec::new(),
            kernel: Some(Box::new(run)),
        },
    );
    ctx.track_deferred(&out);
    Ok(out)
}

/// The value of a buffer every element of which is one known constant: a deferred fill
/// (an autodiff seed, `ones_like`), or a one-element scale-shift or splat of one. The
/// kernel reading it can take the value as a parameter instead of computing it.
pub(crate) fn constant(b: &GpuBuffer) -> Option<f32> {
    let d = b.inner.deferred.lock().unwrap_or_else(|p| p.into_inner());
    let d = d.as_ref()?;
    match d.op {
        FusedOp::Fill => Some(d.scalars[0]),
        FusedOp::Splat => constant(&d.operands[0]),
        FusedOp::Unary(UnaryOp::ScaleShift) => {
            constant(&d.operands[0]).map(|v| d.scalars[0] * v + d.scalars[1])
        }
        _ => None,
    }
}

/// A scalar factor split off a deferred value by [`split_factors`].
pub(crate) enum Factor {
    /// A host constant.
    Host(f32),
    /// A one-element device buffer.
    Device(GpuBuffer),
}

/// Splits `b = c₁·c₂·…·rest` into `rest` and its scalar factors: deferred scale-shifts
/// with no shift, and products with a one-element operand. A linear consumer that must
/// read its operand from memory (a matrix product) then reads `rest` and the factors
/// apply to its result, where they fuse into whatever reads it: the dispatch that would
/// compute `c·rest` on its own is saved. (Reordering the product changes f32 rounding
/// only, and an infinite `rest` times a zero factor gives NaN either way.)
pub(crate) fn split_factors(b: &GpuBuffer) -> (GpuBuffer, Vec<Factor>) {
    let mut rest = b.share();
    let mut factors = Vec::new();
    loop {
        let next = {
            let d = rest
                .inner
                .deferred
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match d.as_ref() {
                Some(d) if d.op == FusedOp::Unary(UnaryOp::ScaleShift) && d.scalars[1] == 0.0 => {
                    Some((d.operands[0].share(), Factor::Host(d.scalars[0])))
                }
                Some(d)
                    if d.op == FusedOp::Binary(BinaryOp::Mul)
                        && d.strides.iter().all(Option::is_none) =>
                {
                    let (x, y) = (&d.operands[0], &d.operands[1]);
                    let n = rest.numel();
                    let scalar = |s: &GpuBuffer| match constant(s) {
                        Some(c) => Factor::Host(c),
                        None => Factor::Device(s.share()),
                    };
                    if y.numel() == 1 && x.numel() == n {
                        Some((x.share(), scalar(y)))
                    } else if x.numel() == 1 && y.numel() == n {
                        Some((y.share(), scalar(x)))
                    } else {
                        None
                    }
                }
                _ => None,
            }
        };
        match next {
            Some((r, f)) => {
                rest = r;
                factors.push(f);
            }
            None => return (rest, factors),
        }
    }
}

/// `(m, bias)` when `b` is the deferred sum `m + bias` of an `[rows, c]` value and a
/// `[c]` bias broadcast over its rows (either order): a row kernel can add the bias as
/// it reads `m`, so that `b` is never computed on its own (an HVP's tangent of the
/// logits X·W + b).
pub(crate) fn split_row_bias(b: &GpuBuffer, c: usize) -> Option<(GpuBuffer, GpuBuffer)> {
    let d = b.inner.deferred.lock().unwrap_or_else(|p| p.into_inner());
    let d = d.as_ref()?;
    if d.op != FusedOp::Binary(BinaryOp::Add) || d.strides.iter().any(Option::is_some) {
        return None;
    }
    let row_bias = |x: &GpuBuffer| {
        let dx = x.inner.deferred.lock().unwrap_or_else(|p| p.into_inner());
        let dx = dx.as_ref()?;
        let per_column = dx.op == FusedOp::Splat
            && dx.strides[0] == Some((1, u32::try_from(c).ok()?))
            && dx.operands[0].numel() == c;
        per_column.then(|| dx.operands[0].share())
    };
    let (x, y) = (&d.operands[0], &d.operands[1]);
    let n = b.numel();
    if y.numel() == n
        && let Some(bias) = row_bias(x)
    {
        return Some((y.share(), bias));
    }
    if x.numel() == n
        && let Some(bias) = row_bias(y)
    {
        return Some((x.share(), bias));
    }
    // One row: any sum of two rows is a row plus a bias.
    (n == c && x.numel() == c && y.numel() == c).then(|| (x.share(), y.share()))
}

/// `b` times `factors`, deferred.
pub(crate) fn apply_factors(b: GpuBuffer, factors: Vec<Factor>) -> Result<GpuBuffer> {
    let n = b.numel();
    let ctx = b.ctx.clone();
    factors.into_iter().try_fold(b, |v, f| match f {
        Factor::Host(c) => defer(
            &ctx,
            FusedOp::Unary(UnaryOp::ScaleShift),
            &[&v],
            [c, 0.0],
            n,
        ),
        Factor::Device(s) => defer(&ctx, FusedOp::Binary(BinaryOp::Mul), &[&v, &s], [0.0; 2], n),
    })
}

/// A deferred full reduction `scale · Σ op(a, b)` over the `n` elements of `a` (and
/// `b`, read by [`FullOp::Dot`] and [`FullOp::SqDiff`]), into one element.
pub(crate) fn defer_reduce(
    op: FullOp,
    a: &GpuBuffer,
    b: &GpuBuffer,
    scale: f32,
) -> Result<GpuBuffer> {
    let operands: &[&GpuBuffer] = match op {
        FullOp::Sum | FullOp::SumSq => &[a],
        FullOp::Dot | FullOp::SqDiff => &[a, b],
    };
    defer(&a.ctx, FusedOp::Reduce(op), operands, [scale, 0.0], 1)
}

#[cfg(test)]
mod tests;
