//! The tape's recording half: the recorded form of every op ([`Op`]), the graph nodes
//! ([`Node`]) and [`record`], which every public op calls after computing its result,
//! plus the grad mode (`no_grad`, `is_grad_enabled`).
//!
//! It sits in the tensor layer, below `ops` (which records onto it) and `autodiff`
//! (which walks it backward, with the rules in `autodiff/rules.rs`). Recording needs one
//! thing from the rules: whether an op's backward rule reads the op's output, so that
//! the node keeps it. The tape cannot name the rules (they sit above it), so that
//! decision travels with the graph: every leaf is made by `Tensor::requires_grad` (in
//! `autodiff`) with the rules' `keeps_output`, and every node recorded from it copies the
//! function from an input on the graph. A tensor is on a graph only through a leaf, so
//! every node has it.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::scalar::Scalar;
use super::{Storage, Tensor};
use crate::backend::{BinaryOp, UnaryOp};

/// The recorded form of an op: what its backward rule needs besides the inputs.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// A tensor created by [`Tensor::requires_grad`].
    Leaf,
    Unary {
        op: UnaryOp,
        a: f64,
    },
    Binary(BinaryOp),
    /// Broadcast of the input to the node's shape.
    BroadcastTo,
    /// Sum of the input down to the node's (broadcast-compatible) shape.
    SumTo,
    Reshape,
    Matmul {
        trans_a: bool,
        trans_b: bool,
    },
    Sum,
    Mean,
    SumAxis {
        axis: usize,
        keepdim: bool,
    },
    MeanAxis {
        axis: usize,
        keepdim: bool,
    },
    MaxAxis {
        axis: usize,
        keepdim: bool,
    },
    Dot,
    Sqnorm,
    LogSoftmax,
    Softmax,
    /// Inputs: logits, then the weights if any. `probs`: softmax of the logits when
    /// the forward pass had it for free (the CPU computes it with the loss), so the
    /// rule does not recompute it.
    CrossEntropy {
        labels: Tensor,
        probs: Option<Tensor>,
    },
    /// The cross-entropy's gradient with respect to its logits, g·(w_i/n)·(softmax(z_i)
    /// − onehot(y_i)), as one op (what the cross-entropy's rule records): inputs the
    /// logits, the upstream 0-d g, then the weights if any.
    CeGrad {
        labels: Tensor,
    },
    Mse,
    Gather {
        labels: Tensor,
    },
    Transpose,
    Concat,
    Slice {
        start: usize,
    },
    /// b·y + a·x; inputs: y, x, then the device scalars among (a, b) in that order.
    Axpby {
        a: ScalarKind,
        b: ScalarKind,
    },
    /// y + sign·(num/den)·x; inputs: y, x, num, den.
    AxpyRatio {
        sign: f64,
    },
}

/// Defines `OpKind` (the `Op` variants without their data), `OpKind::ALL` and
/// `Op::kind`, so that tests can enumerate every op. `Op::kind` matches with no
/// wildcard: a new `Op` variant does not compile until it is listed below, and a listed
/// kind is in `ALL` by construction (the second-order tests iterate it).
#[cfg(test)]
macro_rules! op_kinds {
    ($($kind:ident),* $(,)?) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum OpKind {
            $($kind),*
        }

        impl OpKind {
            pub(crate) const ALL: &[OpKind] = &[$(OpKind::$kind),*];
        }

        impl Op {
            pub(crate) fn kind(&self) -> OpKind {
                match self {
                    $(Op::$kind { .. } => OpKind::$kind),*
                }
            }
        }
    };
}

#[cfg(test)]
op_kinds!(
    Leaf,
    Unary,
    Binary,
    BroadcastTo,
    SumTo,
    Reshape,
    Matmul,
    Sum,
    Mean,
    SumAxis,
    MeanAxis,
    MaxAxis,
    Dot,
    Sqnorm,
    LogSoftmax,
    Softmax,
    CrossEntropy,
    CeGrad,
    Mse,
    Gather,
    Transpose,
    Concat,
    Slice,
    Axpby,
    AxpyRatio,
);

/// How a scalar operand of a fused update was given.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ScalarKind {
    Host(f64),
    Device,
}

impl ScalarKind {
    pub(crate) fn of(s: &Scalar<'_>) -> Self {
        match s {
            Scalar::Host(v) => ScalarKind::Host(*v),
            Scalar::Device(_) => ScalarKind::Device,
        }
    }
}

/// Whether an op's backward rule reads the op's output: autodiff's
/// `rules::keeps_output`, carried by the graph (see the module docs).
pub(crate) type KeepsOutput = fn(&Op) -> bool;

/// One recorded op.
pub(crate) struct Node {
    pub(crate) id: u64,
    pub(crate) op: Op,
    pub(crate) inputs: Vec<Tensor>,
    /// The op's output (shape, storage), kept only for the ops whose backward rule reads
    /// it (`keeps_output`: exp, tanh, softmax, ...).
    pub(crate) out: Option<(Arc<[usize]>, Arc<Storage>)>,
    /// The rules' `keeps_output`, passed on to the nodes recorded from this one.
    keeps_output: KeepsOutput,
}

impl Drop for Node {
    // A long chain (thousands of unrolled steps) would otherwise be freed recursively,
    // one stack frame per node, and overflow the stack.
    fn drop(&mut self) {
        let mut stack: Vec<Node> = Vec::new();
        let take = |inputs: &mut Vec<Tensor>, stack: &mut Vec<Node>| {
            for t in inputs.drain(..) {
                if let Some(node) = t.node
                    && let Some(node) = Arc::into_inner(node)
                {
                    stack.push(node);
                }
            }
        };
        take(&mut self.inputs, &mut stack);
        while let Some(mut node) = stack.pop() {
            take(&mut node.inputs, &mut stack);
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Runs `f` without recording: results of ops inside have no graph. Use it for updates
/// that must not be differentiated through (an optimizer step on a detached copy,
/// evaluation).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    with_grad_mode(false, f)
}

/// Runs `f` with recording on or off, restoring the previous mode afterwards (also when
/// `f` panics).
pub(crate) fn with_grad_mode<R>(enabled: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GRAD_ENABLED.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GRAD_ENABLED.with(|g| g.replace(enabled)));
    f()
}

/// True when ops record onto the graph (the default; false inside [`no_grad`]).
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Attaches a node for `op` to `out` when recording is on and an input is on the graph.
/// Every public op calls this after computing its result with a `_raw` kernel function.
pub(crate) fn record(op: Op, inputs: &[&Tensor], out: Tensor) -> Tensor {
    if !is_grad_enabled() {
        return out;
    }
    let Some(keeps_output) = inputs
        .iter()
        .find_map(|t| t.node.as_ref().map(|n| n.keeps_output))
    else {
        return out;
    };
    let node = Node {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        inputs: inputs.iter().map(|t| (*t).clone()).collect(),
        out: keeps_output(&op).then(|| (out.shape.clone(), out.storage.clone())),
        op,
        keeps_output,
    };
    Tensor {
        node: Some(Arc::new(node)),
        ..out
    }
}

/// A copy of `t` (sharing storage) that is a leaf of a graph whose nodes keep their
/// outputs where `keeps_output` says so: `Tensor::requires_grad` (in `autodiff`), the one
/// place that starts a graph.
pub(crate) fn leaf(t: &Tensor, keeps_output: KeepsOutput) -> Tensor {
    let node = Node {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        op: Op::Leaf,
        inputs: Vec::new(),
        out: None,
        keeps_output,
    };
    Tensor {
        shape: t.shape.clone(),
        storage: t.storage.clone(),
        node: Some(Arc::new(node)),
    }
}

impl Tensor {
    /// The same values with no graph: a constant for later ops.
    pub fn detach(&self) -> Tensor {
        Tensor {
            shape: self.shape.clone(),
            storage: self.storage.clone(),
            node: None,
        }
    }

    /// True if this tensor is on a graph (a leaf from [`Tensor::requires_grad`] or the
    /// result of ops on one).
    pub fn is_tracked(&self) -> bool {
        self.node.is_some()
    }
}
