//! Reverse-mode automatic differentiation that can differentiate its own backward pass.
//!
//! Every op on a tensor that requires gradients records a node holding the op, its
//! inputs and (when its backward rule needs it) its output. [`grad`] walks the graph
//! from a loss back to the requested tensors. With `create_graph = true` the backward
//! pass is recorded like any other computation, because every backward rule (all in
//! `autodiff/rules.rs`) is written with ordinary differentiable tensor ops. That is where
//! Hessian-vector products and mixed second derivatives come from ([`hvp`], [`mixed`],
//! [`mixed_t`]): no separate second-order code, and no host readback on the GPU.
//!
//! The graph is held by the tensors themselves (each result points at its inputs), so
//! it is freed as soon as the last tensor of it is dropped and device buffers return to
//! the pool.
//!
//! Recording (the recorded form of each op, the nodes, the grad mode of [`no_grad`])
//! lives below the ops, in the tensor layer (`tensor/tape.rs`), so that ops record
//! without importing this module; this module starts graphs
//! ([`Tensor::requires_grad`]) and walks them back.

pub(crate) mod rules;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Node ids are distinct counters, so a multiply spreads them well enough; SipHash's
/// flood resistance is not needed and cost ~3% of a hypergradient in hashing alone.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;
use std::sync::Arc;

use crate::error::{Result, invalid};
use crate::tensor::Tensor;
use crate::tensor::tape::{self, Node, Op, with_grad_mode};
pub use crate::tensor::tape::{is_grad_enabled, no_grad};

impl Tensor {
    /// A copy of this tensor (sharing storage) that is a leaf of the graph: gradients
    /// can be taken with respect to it.
    pub fn requires_grad(&self) -> Tensor {
        tape::leaf(self, rules::keeps_output)
    }
}

/// Gradients of the scalar `loss` with respect to each tensor in `wrt`, in the same
/// order. A tensor the loss does not depend on gets zeros.
///
/// With `create_graph = true` the gradients are themselves on the graph and can be
/// differentiated again; otherwise they are constants and the backward pass records
/// nothing.
pub fn grad(loss: &Tensor, wrt: &[&Tensor], create_graph: bool) -> Result<Vec<Tensor>> {
    if loss.numel() != 1 {
        return Err(invalid(
            "grad",
            format!(
                "the loss must have one element, got shape {:?}; reduce it (sum/mean) or use vjp with a seed",
                loss.shape()
            ),
        ));
    }
    let seed = loss.detach().ones_like()?;
    vjp(loss, &seed, wrt, create_graph)
}

/// Vector-Jacobian product: Σ seed ⊙ ∂output/∂wrt for each tensor in `wrt`.
pub fn vjp(
    output: &Tensor,
    seed: &Tensor,
    wrt: &[&Tensor],
    create_graph: bool,
) -> Result<Vec<Tensor>> {
    vjp_many(&[output], &[seed], wrt, create_graph)
}

/// Σ_j seeds_j ⊙ ∂outputs_j/∂wrt for each tensor in `wrt`: one reverse sweep for
/// several outputs, the same as [`grad`] of Σ_j ⟨seeds_j, outputs_j⟩ without the inner
/// products and their backward passes (a reverse sweep through an inner step has
/// one output per parameter tensor).
pub fn vjp_many(
    outputs: &[&Tensor],
    seeds: &[&Tensor],
    wrt: &[&Tensor],
    create_graph: bool,
) -> Result<Vec<Tensor>> {
    if outputs.len() != seeds.len() {
        return Err(invalid(
            "vjp",
            format!(
                "give one seed per output: {} output(s), {} seed(s)",
                outputs.len(),
                seeds.len()
            ),
        ));
    }
    for (output, seed) in outputs.iter().zip(seeds) {
        if seed.shape() != output.shape() {
            return Err(crate::Error::ShapeMismatch {
                op: "vjp",
                lhs: output.shape().to_vec(),
                rhs: seed.shape().to_vec(),
            });
        }
        crate::tensor::same_place("vjp", output, seed)?;
    }
    for (i, w) in wrt.iter().enumerate() {
        if w.node.is_none() {
            return Err(invalid(
                "grad",
                format!(
                    "wrt[{i}] (shape {:?}) is not on the graph; create it with .requires_grad() before using it",
                    w.shape()
                ),
            ));
        }
    }
    let wanted: IdSet = wrt.iter().map(|w| node_id(w)).collect();
    let grads = with_grad_mode(create_graph, || backward(outputs, seeds, &wanted))?;
    wrt.iter()
        .map(|w| match grads.get(&node_id(w)) {
            Some(g) => Ok(g.clone()),
            None => w.detach().zeros_like(),
        })
        .collect()
}

fn node_id(t: &Tensor) -> u64 {
    t.node.as_ref().map_or(0, |n| n.id)
}

/// Reverse sweep from `outputs` seeded with `seeds`: accumulates gradients of every
/// node on a path to a wanted node.
fn backward(outputs: &[&Tensor], seeds: &[&Tensor], wanted: &IdSet) -> Result<IdMap<Tensor>> {
    // Post-order DFS from each output in turn (iterative: graphs of unrolled loops are
    // deep), keeping only nodes from which a wanted node is reachable. Reversed, the
    // post-order of the whole forest is a topological order.
    let mut order: Vec<Arc<Node>> = Vec::new();
    let mut reaches: IdMap<bool> = IdMap::default();
    let mut visiting: IdSet = IdSet::default();
    let mut stack: Vec<(Arc<Node>, usize)> = Vec::new();
    for root in outputs.iter().filter_map(|o| o.node.clone()) {
        if visiting.insert(root.id) {
            stack.push((root, 0));
        }
        while let Some((node, next)) = stack.pop() {
            if next < node.inputs.len() {
                let child = node.inputs[next].node.clone();
                stack.push((node, next + 1));
                if let Some(child) = child
                    && !reaches.contains_key(&child.id)
                    && visiting.insert(child.id)
                {
                    stack.push((child, 0));
                }
            } else {
                let r = wanted.contains(&node.id)
                    || node.inputs.iter().any(|t| {
                        t.node
                            .as_ref()
                            .is_some_and(|c| reaches.get(&c.id) == Some(&true))
                    });
                reaches.insert(node.id, r);
                if r {
                    order.push(node);
                }
            }
        }
    }

    let mut grads: IdMap<Tensor> = IdMap::default();
    for (output, seed) in outputs.iter().zip(seeds) {
        let Some(root) = &output.node else { continue };
        let seed = seed.detach();
        let acc = match grads.remove(&root.id) {
            Some(prev) => prev.add(&seed)?,
            None => seed,
        };
        grads.insert(root.id, acc);
    }
    for node in order.iter().rev() {
        let Some(g) = grads.get(&node.id).cloned() else {
            continue;
        };
        if matches!(node.op, Op::Leaf) {
            continue;
        }
        // The output is on the graph as this node, so rules that read it stay
        // differentiable (softmax's second derivative goes through y).
        let out = node.out.as_ref().map(|(shape, storage)| Tensor {
            shape: shape.clone(),
            storage: storage.clone(),
            node: Some(node.clone()),
        });
        // Rules skip inputs nothing wanted depends on (data matrices, labels, λ during
        // an inner step): for a matmul with data that halves the backward work.
        let needed: Vec<bool> = node
            .inputs
            .iter()
            .map(|t| {
                t.node
                    .as_ref()
                    .is_some_and(|c| reaches.get(&c.id) == Some(&true))
            })
            .collect();
        let input_grads = rules::backward(&node.op, &node.inputs, &needed, out.as_ref(), &g)?;
        for (input, ig) in node.inputs.iter().zip(input_grads) {
            let (Some(ig), Some(child)) = (ig, input.node.as_ref()) else {
                continue;
            };
            if reaches.get(&child.id) != Some(&true) {
                continue;
            }
            let acc = match grads.remove(&child.id) {
                Some(prev) => prev.add(&ig)?,
                None => ig,
            };
            grads.insert(child.id, acc);
        }
    }
    grads.retain(|id, _| wanted.contains(id));
    Ok(grads)
}

/// Second-order products of one scalar loss with respect to parameters `w`.
///
/// The gradient ∇_w L is built once with its graph; every product after that is one
/// more backward pass through it (so an HVP costs about two gradients, not three).
/// This is the operator conjugate gradient and Neumann iterate on.
pub struct HvpOperator {
    w: Vec<Tensor>,
    grad_w: Vec<Tensor>,
}

impl HvpOperator {
    /// Records ∇_w L for `loss`, which must have been computed from `w` with recording on.
    pub fn new(loss: &Tensor, w: &[&Tensor]) -> Result<Self> {
        let grad_w = with_grad_mode(true, || grad(loss, w, true))?;
        Ok(Self {
            w: w.iter().map(|t| (*t).clone()).collect(),
            grad_w,
        })
    }

    /// ∇_w L as constants.
    pub fn gradient(&self) -> Vec<Tensor> {
        self.grad_w.iter().map(Tensor::detach).collect()
    }

    /// H v, block by block (one direction tensor per parameter tensor).
    pub fn hvp(&self, v: &[&Tensor]) -> Result<Vec<Tensor>> {
        let w: Vec<&Tensor> = self.w.iter().collect();
        with_grad_mode(true, || directional("hvp", &self.grad_w, v, &w))
    }

    /// H v for a single parameter tensor.
    pub fn hvp1(&self, v: &Tensor) -> Result<Tensor> {
        Ok(self.hvp(&[v])?.remove(0))
    }

    /// (∂²L/∂λ∂w) v = ∇_λ (∇_w L · v) for tensors `lambda` the loss was computed from.
    /// λ-tensors the loss does not depend on get zeros.
    pub fn mixed(&self, lambda: &[&Tensor], v: &[&Tensor]) -> Result<Vec<Tensor>> {
        with_grad_mode(true, || directional("mixed", &self.grad_w, v, lambda))
    }
}

/// Hessian-vector product H v = ∇_w (∇_w L · v) of the scalar `loss` with respect to
/// `w`, for a direction `v` of w's shape. `loss` must have been computed from `w` with
/// recording on. The result is a constant (no graph). For many products with the same
/// loss, build an [`HvpOperator`] once.
pub fn hvp(loss: &Tensor, w: &Tensor, v: &Tensor) -> Result<Tensor> {
    HvpOperator::new(loss, &[w])?.hvp1(v)
}

/// Mixed product (∂²L/∂λ∂w) v = ∇_λ (∇_w L · v): a vector in λ-space, for a direction
/// `v` in w-space (one tensor per w-tensor). λ-tensors the loss does not depend on get zeros.
pub fn mixed(
    loss: &Tensor,
    w: &[&Tensor],
    lambda: &[&Tensor],
    v: &[&Tensor],
) -> Result<Vec<Tensor>> {
    HvpOperator::new(loss, w)?.mixed(lambda, v)
}

/// Transposed mixed product (∂²L/∂w∂λ) u = ∇_w (∇_λ L · u): a vector in w-space, for a
/// direction `u` in λ-space (forward-mode hypergradients need this one).
pub fn mixed_t(
    loss: &Tensor,
    w: &[&Tensor],
    lambda: &[&Tensor],
    u: &[&Tensor],
) -> Result<Vec<Tensor>> {
    with_grad_mode(true, || {
        let g = grad(loss, lambda, true)?;
        directional("mixed_t", &g, u, w)
    })
}

/// ∇_wrt Σ_i ⟨g_i, v_i⟩ for gradients `g` on the graph and constant directions `v`
/// (one per gradient, of its shape): one reverse sweep seeded with the directions.
fn directional(
    op: &'static str,
    g: &[Tensor],
    v: &[&Tensor],
    wrt: &[&Tensor],
) -> Result<Vec<Tensor>> {
    if g.len() != v.len() || g.is_empty() {
        return Err(invalid(
            op,
            format!("expected {} direction tensor(s), got {}", g.len(), v.len()),
        ));
    }
    for (x, y) in g.iter().zip(v) {
        if x.shape() != y.shape() {
            return Err(crate::Error::ShapeMismatch {
                op,
                lhs: x.shape().to_vec(),
                rhs: y.shape().to_vec(),
            });
        }
        crate::tensor::same_place(op, x, y)?;
    }
    vjp_many(&g.iter().collect::<Vec<_>>(), v, wrt, false)
}

#[cfg(test)]
mod second_order_tests;
#[cfg(test)]
mod tests;
