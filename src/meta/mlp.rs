//! A functional multilayer perceptron whose parameters are one flat vector, evaluated
//! for a whole batch of tasks at once.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::device::Device;
use crate::error::{Error, Result, invalid};
use crate::tensor::{DType, Tensor};

/// The nonlinearity between layers (none after the last).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// max(x, 0).
    #[default]
    Relu,
    /// tanh(x).
    Tanh,
}

/// A multilayer perceptron `x ↦ W_L·σ(…σ(x·W_1 + b_1)…) + b_L` with layer widths
/// `[in, h_1, …, out]`.
///
/// Parameters are one flat vector θ with a fixed layout: for each layer in order, W
/// stored as `[fan_in, fan_out]` row-major, then b (`fan_out`). For 1-40-40-1 that is W1
/// (0..39), b1 (40..79), W2 (80..1679), b2 (1680..1719), W3 (1720..1759), b3 (1760):
/// dimension 1761.
///
/// A batch of B tasks holds B parameter sets. Internally a parameter set is the list of
/// its per-layer pieces ([`Mlp::unflatten`]): W as `[fan_in, fan_out]` (shared by every
/// task) or `[B, fan_in, fan_out]` (one per task), b as `[1, fan_out]` or
/// `[B, 1, fan_out]`. [`Mlp::forward`] multiplies inputs `[B, N, in]` by them with
/// batched matmuls, so the number of kernels does not depend on B.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mlp {
    widths: Vec<usize>,
    activation: Activation,
}

impl Mlp {
    /// An MLP with the given layer widths (input first, output last; at least two, all
    /// ≥ 1).
    pub fn new(widths: &[usize], activation: Activation) -> Result<Self> {
        if widths.len() < 2 || widths.contains(&0) {
            return Err(invalid(
                "mlp",
                format!(
                    "layer widths must list at least the input and output widths, all ≥ 1; got {widths:?}"
                ),
            ));
        }
        let mut total: usize = 0;
        for w in widths.windows(2) {
            total = w[0]
                .checked_mul(w[1])
                .and_then(|m| m.checked_add(w[1]))
                .and_then(|m| m.checked_add(total))
                .ok_or_else(|| invalid("mlp", format!("widths {widths:?} overflow usize")))?;
        }
        Ok(Self {
            widths: widths.to_vec(),
            activation,
        })
    }

    /// The layer widths `[in, …, out]`.
    pub fn widths(&self) -> &[usize] {
        &self.widths
    }

    /// The activation.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// Input width.
    pub fn inputs(&self) -> usize {
        self.widths[0]
    }

    /// Output width.
    pub fn outputs(&self) -> usize {
        self.widths[self.widths.len() - 1]
    }

    /// Number of layers (weight matrices).
    pub fn layers(&self) -> usize {
        self.widths.len() - 1
    }

    /// The number of parameters P = Σ (fan_in + 1)·fan_out.
    pub fn dim(&self) -> usize {
        self.widths.windows(2).map(|w| (w[0] + 1) * w[1]).sum()
    }

    /// The sizes of the flat layout's pieces, in order: W1, b1, W2, b2, …
    pub fn piece_sizes(&self) -> Vec<usize> {
        self.widths
            .windows(2)
            .flat_map(|w| [w[0] * w[1], w[1]])
            .collect()
    }

    /// The shapes of the pieces for one shared parameter set: `[fan_in, fan_out]` and
    /// `[1, fan_out]` per layer.
    pub fn piece_shapes(&self) -> Vec<Vec<usize>> {
        self.widths
            .windows(2)
            .flat_map(|w| [vec![w[0], w[1]], vec![1, w[1]]])
            .collect()
    }

    /// Seeded initial parameters, flat layout, by PyTorch's `nn.Linear` rule: every W and
    /// b entry of a layer drawn from U(−1/√fan_in, 1/√fan_in), layer by layer, W before
    /// b, from one ChaCha8 stream seeded with `seed`.
    pub fn init(&self, seed: u64, device: &Device, dtype: DType) -> Result<Tensor> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut data = Vec::with_capacity(self.dim());
        for w in self.widths.windows(2) {
            let bound = 1.0 / (w[0] as f64).sqrt();
            for _ in 0..(w[0] + 1) * w[1] {
                data.push(rng.random_range(-bound..bound));
            }
        }
        host_tensor(&data, &[self.dim()], device, dtype)
    }

    /// Checks that θ is a flat parameter vector of this model: shape `[P]`.
    pub fn check_theta(&self, what: &'static str, theta: &Tensor) -> Result<()> {
        if theta.shape() != [self.dim()] {
            return Err(invalid(
                what,
                format!(
                    "must be a flat vector of the model's {} parameters (widths {:?}), got shape {:?}",
                    self.dim(),
                    self.widths,
                    theta.shape()
                ),
            ));
        }
        Ok(())
    }

    /// The flat vector `[P]` cut into its pieces (shapes [`Mlp::piece_shapes`]), recorded
    /// on the tape when θ is.
    pub fn unflatten(&self, theta: &Tensor) -> Result<Vec<Tensor>> {
        self.check_theta("θ", theta)?;
        theta
            .split(&self.piece_sizes())?
            .into_iter()
            .zip(self.piece_shapes())
            .map(|(p, s)| p.reshape(&s))
            .collect()
    }

    /// The pieces of one parameter set, shared (`[fan_in, fan_out]`, `[1, fan_out]`) or
    /// batched (`[B, …]`, summed over the batch), as the flat vector `[P]`.
    ///
    /// The sum over tasks is a product with a row of ones, `[1, B]·[B, r·c]`, not a
    /// reduction: a reduction over an axis of length 1 is skipped, so B = 1 would run
    /// fewer kernels than B > 1.
    pub fn flatten(&self, pieces: &[Tensor]) -> Result<Tensor> {
        let parts: Vec<Tensor> = pieces
            .iter()
            .map(|p| {
                if p.rank() == 3 {
                    let b = p.shape()[0];
                    let ones = host_tensor(&vec![1.0; b], &[1, b], &p.device(), p.dtype())?;
                    ones.matmul(&p.reshape(&[b, p.numel() / b])?)
                } else {
                    Ok(p.clone())
                }
            })
            .collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = parts.iter().collect();
        Tensor::concat(&refs)
    }

    /// `y = f(x)` for a batch: `x` is `[B, N, in]`, `params` the 2·L pieces of
    /// [`Mlp::unflatten`], each shared or batched over the B tasks; the result is
    /// `[B, N, out]`. Every layer is the same few kernels whatever B is (see
    /// [`Mlp::forward_with_ones`]).
    pub fn forward(&self, params: &[Tensor], x: &Tensor) -> Result<Tensor> {
        let s = x.shape();
        if s.len() != 3 {
            return Err(invalid(
                "mlp forward",
                format!("inputs must be [tasks, points, features], got shape {s:?}"),
            ));
        }
        let ones = host_tensor(
            &vec![1.0; s[0] * s[1]],
            &[s[0], s[1], 1],
            &x.device(),
            x.dtype(),
        )?;
        self.forward_with_ones(params, x, &ones)
    }

    /// [`Mlp::forward`] given `ones`, a `[B, N, 1]` tensor of ones. The bias is added as
    /// the product `ones · b` (a batched matmul with inner dimension 1) rather than by
    /// broadcasting b over the points: a broadcast along the middle axis is fused
    /// differently for B = 1 than for B > 1, and the number of kernels must not depend
    /// on B.
    pub fn forward_with_ones(
        &self,
        params: &[Tensor],
        x: &Tensor,
        ones: &Tensor,
    ) -> Result<Tensor> {
        self.forward_inserted(params, x, ones, &[], &[])
    }

    /// [`Mlp::forward_with_ones`] with square matrices multiplied in after layers:
    /// `after_affine[l]` (MT-Net's T) right after layer l's affine map, before its
    /// activation, and `after_activation[l]` (WarpGrad's warp Ω) after its activation.
    /// Either list may be empty (nothing inserted); a matrix is shared by every task
    /// (`[w, w]`), w being layer l's output width.
    pub(crate) fn forward_inserted(
        &self,
        params: &[Tensor],
        x: &Tensor,
        ones: &Tensor,
        after_affine: &[Option<&Tensor>],
        after_activation: &[Option<&Tensor>],
    ) -> Result<Tensor> {
        if params.len() != 2 * self.layers() {
            return Err(invalid(
                "mlp forward",
                format!(
                    "expected {} parameter pieces (W and b per layer), got {}",
                    2 * self.layers(),
                    params.len()
                ),
            ));
        }
        let mut h = x.clone();
        for (l, wb) in params.chunks(2).enumerate() {
            h = h.matmul(&wb[0])?.add(&ones.matmul(&wb[1])?)?;
            if let Some(Some(t)) = after_affine.get(l) {
                h = h.matmul(t)?;
            }
            if l + 1 < self.layers() {
                h = match self.activation {
                    Activation::Relu => h.relu()?,
                    Activation::Tanh => h.tanh()?,
                };
            }
            if let Some(Some(w)) = after_activation.get(l) {
                h = h.matmul(w)?;
            }
        }
        Ok(h)
    }
}

/// One shared piece repeated for B tasks: `[r, c]` → `[B, r, c]` (recorded).
pub(crate) fn batched(piece: &Tensor, tasks: usize) -> Result<Tensor> {
    let s = piece.shape();
    if s.len() != 2 {
        return Err(Error::ShapeMismatch {
            op: "batched parameters",
            lhs: s.to_vec(),
            rhs: vec![0, 0],
        });
    }
    // A product with a column of ones, [B, 1]·[1, r·c], rather than a broadcast: a
    // broadcast to the same shape is skipped, so B = 1 would run fewer kernels than B > 1.
    let ones = host_tensor(
        &vec![1.0; tasks],
        &[tasks, 1],
        &piece.device(),
        piece.dtype(),
    )?;
    ones.matmul(&piece.reshape(&[1, s[0] * s[1]])?)?
        .reshape(&[tasks, s[0], s[1]])
}

/// A tensor from f64 host values in `dtype`.
pub(crate) fn host_tensor(
    data: &[f64],
    shape: &[usize],
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    match dtype {
        DType::F64 => Tensor::from_vec(data.to_vec(), shape, device),
        DType::F32 => Tensor::from_vec(
            data.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            shape,
            device,
        ),
    }
}
