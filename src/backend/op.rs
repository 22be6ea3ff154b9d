//! What the kernels compute: the op codes both backends implement (their discriminants
//! are the `OP` constants of the WGSL kernels, which see them as named constants
//! generated from these enums by `backend/gpu/codes.rs`) and the argument types of the
//! kernel families, shared by the public ops (`ops/`) and the backends.

// ---- unary -------------------------------------------------------------------------

/// An elementwise function of one tensor. The discriminant is the `OP` constant of
/// `shaders/unary.wgsl`, where it is named `UNARY_<NAME>` (`UNARY_RELU_MASK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum UnaryOp {
    /// −x
    Neg = 0,
    /// eˣ
    Exp = 1,
    /// ln x (NaN for x < 0)
    Log = 2,
    /// √x
    Sqrt = 3,
    /// x²
    Square = 4,
    /// |x|; derivative sign(x), so 0 at x = 0.
    Abs = 5,
    /// sin x
    Sin = 6,
    /// cos x
    Cos = 7,
    /// tanh x
    Tanh = 8,
    /// 1 / (1 + e⁻ˣ)
    Sigmoid = 9,
    /// max(x, 0); derivative 1 for x > 0 and 0 for x ≤ 0 (0 at x = 0).
    Relu = 10,
    /// 1 where x > 0, else 0: ReLU's derivative.
    ReluMask = 11,
    /// a·x + b with host scalars a, b.
    ScaleShift = 12,
    /// −1, 0 or 1 (0 for ±0): the derivative of |x| away from 0. Its own derivative is
    /// 0 everywhere (no gradient flows through it).
    Sign = 13,
    /// 1 / x
    Recip = 14,
    /// softplus(x) = ln(1 + eˣ), computed as max(x, 0) + ln(1 + e^−|x|) so that it
    /// neither overflows nor loses its small values; derivative sigmoid(x) everywhere.
    Softplus = 15,
    /// log sigmoid(x) = −softplus(−x), computed as min(x, 0) − ln(1 + e^−|x|);
    /// derivative sigmoid(−x) everywhere.
    LogSigmoid = 16,
}

/// Every unary op, for tests and `blo check`.
pub const ALL_UNARY: [UnaryOp; 17] = [
    UnaryOp::Neg,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Square,
    UnaryOp::Abs,
    UnaryOp::Sin,
    UnaryOp::Cos,
    UnaryOp::Tanh,
    UnaryOp::Sigmoid,
    UnaryOp::Relu,
    UnaryOp::ReluMask,
    UnaryOp::ScaleShift,
    UnaryOp::Sign,
    UnaryOp::Recip,
    UnaryOp::Softplus,
    UnaryOp::LogSigmoid,
];

// ---- binary ------------------------------------------------------------------------

/// An elementwise function of two tensors. The discriminant is the `OP` constant of
/// `shaders/binary.wgsl`, where it is named `BINARY_<NAME>`. Comparisons return 1.0 where they hold and 0.0 elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum BinaryOp {
    /// a + b
    Add = 0,
    /// a − b
    Sub = 1,
    /// a · b
    Mul = 2,
    /// a / b
    Div = 3,
    /// max(a, b)
    Max = 4,
    /// min(a, b)
    Min = 5,
    /// a > b
    Gt = 6,
    /// a ≥ b
    Ge = 7,
    /// a < b
    Lt = 8,
    /// a ≤ b
    Le = 9,
    /// a = b
    Eq = 10,
}

/// Every binary op, for tests and `blo check`.
pub const ALL_BINARY: [BinaryOp; 11] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Max,
    BinaryOp::Min,
    BinaryOp::Gt,
    BinaryOp::Ge,
    BinaryOp::Lt,
    BinaryOp::Le,
    BinaryOp::Eq,
];

/// Number of elements of a tensor of `shape`. Only for shapes already checked by
/// [`checked_numel`] (every tensor's shape is, when it is made).
pub(crate) fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// The number of elements of a tensor of `shape`, as a typed error when it could not
/// exist: its element count overflows, or its f64 bytes exceed what the platform can
/// address (`isize::MAX`). A shape with a zero extent has no elements whatever the
/// others are, but they must still multiply without overflow, so that a later reshape
/// or broadcast cannot wrap around.
pub(crate) fn checked_numel(op: &'static str, shape: &[usize]) -> crate::error::Result<usize> {
    let too_large = |what: String| crate::error::Error::InvalidArgument {
        op,
        msg: format!("shape {shape:?}: {what}; no tensor that large can exist"),
    };
    let mut n: usize = 1;
    let mut nonzero: usize = 1;
    for &d in shape {
        n = n.saturating_mul(d);
        nonzero = nonzero
            .checked_mul(d.max(1))
            .ok_or_else(|| too_large("the product of its extents overflows".into()))?;
    }
    if n.checked_mul(8).is_none_or(|b| b > isize::MAX as usize) {
        return Err(too_large(format!(
            "{n} elements are more bytes than this platform can address"
        )));
    }
    Ok(n)
}

/// A host vector of `n` values, reserved fallibly: an allocation the machine cannot
/// make is a typed error instead of an abort.
pub(crate) fn try_host_vec<T>(op: &'static str, n: usize) -> crate::error::Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|e| crate::error::Error::InvalidArgument {
            op,
            msg: format!(
                "cannot allocate {n} values of {} bytes on the host: {e}",
                std::mem::size_of::<T>()
            ),
        })?;
    Ok(v)
}

/// Element strides of an operand of `shape` read along `out` (0 on broadcast dims).
pub(crate) fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; out.len()];
    let mut stride = 1;
    for k in 0..shape.len() {
        let d = shape.len() - 1 - k;
        let od = out.len() - 1 - k;
        if shape[d] != 1 {
            strides[od] = stride;
        }
        stride *= shape[d];
    }
    strides
}

// ---- reduce ------------------------------------------------------------------------

/// What a full reduction adds up; the discriminant is the `OP` constant of `full`
/// (`FULL_<NAME>` in WGSL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum FullOp {
    /// Σ a
    Sum = 0,
    /// Σ a²
    SumSq = 1,
    /// Σ a·b
    Dot = 2,
    /// Σ (a − b)²
    SqDiff = 3,
}

impl FullOp {
    /// Every full reduction, for the WGSL constants.
    pub(crate) const ALL: [FullOp; 4] = [FullOp::Sum, FullOp::SumSq, FullOp::Dot, FullOp::SqDiff];
}

/// What an axis reduction combines with; the discriminant is the `OP` constant of
/// `rows` and `cols` (`AXIS_<NAME>` in WGSL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum AxisOp {
    Sum = 0,
    Max = 1,
}

impl AxisOp {
    /// Every axis reduction, for the WGSL constants.
    pub(crate) const ALL: [AxisOp; 2] = [AxisOp::Sum, AxisOp::Max];
}

// ---- update ------------------------------------------------------------------------

/// A coefficient of a fused update: a host number, or a one-element storage `S` on the
/// device of the operands (read there, without a readback).
#[derive(Debug)]
pub(crate) enum Coef<'a, S> {
    Host(f64),
    Device(&'a S),
}

/// The coefficients of `out = b·y + a·x`. The ratio form has b = 1, which keeps the
/// kernel to two scalar bindings.
#[derive(Debug)]
pub(crate) enum Coefs<'a, S> {
    /// `b·y + a·x`
    Linear { b: Coef<'a, S>, a: Coef<'a, S> },
    /// `y + sign·(num/den)·x`
    Ratio { sign: f64, num: &'a S, den: &'a S },
}

// By hand: derived impls would ask for `S: Clone`, but only references are copied.
impl<S> Clone for Coef<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S> Copy for Coef<'_, S> {}
impl<S> Clone for Coefs<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S> Copy for Coefs<'_, S> {}

impl<'a, S> Coefs<'a, S> {
    /// The device scalars, in the order (b, a) or (num, den).
    pub(crate) fn scalars(&self) -> [Option<&'a S>; 2] {
        let dev = |c: &Coef<'a, S>| match *c {
            Coef::Device(s) => Some(s),
            Coef::Host(_) => None,
        };
        match self {
            Coefs::Linear { b, a } => [dev(b), dev(a)],
            Coefs::Ratio { num, den, .. } => [Some(*num), Some(*den)],
        }
    }

    /// The same coefficients with each device scalar replaced by `f` of it.
    pub(crate) fn map<T>(self, f: impl Fn(&'a S) -> &'a T) -> Coefs<'a, T> {
        let coef = |c: Coef<'a, S>| match c {
            Coef::Host(v) => Coef::Host(v),
            Coef::Device(s) => Coef::Device(f(s)),
        };
        match self {
            Coefs::Linear { b, a } => Coefs::Linear {
                b: coef(b),
                a: coef(a),
            },
            Coefs::Ratio { sign, num, den } => Coefs::Ratio {
                sign,
                num: f(num),
                den: f(den),
            },
        }
    }

    /// The same coefficients with each device scalar seen as a `T` (one backend's
    /// storage), or `None` when `f` refuses one.
    pub(crate) fn try_map<T>(self, f: impl Fn(&'a S) -> Option<&'a T>) -> Option<Coefs<'a, T>> {
        let coef = |c: Coef<'a, S>| -> Option<Coef<'a, T>> {
            Some(match c {
                Coef::Host(v) => Coef::Host(v),
                Coef::Device(s) => Coef::Device(f(s)?),
            })
        };
        Some(match self {
            Coefs::Linear { b, a } => Coefs::Linear {
                b: coef(b)?,
                a: coef(a)?,
            },
            Coefs::Ratio { sign, num, den } => Coefs::Ratio {
                sign,
                num: f(num)?,
                den: f(den)?,
            },
        })
    }
}

// ---- matmul ------------------------------------------------------------------------

/// The shapes of one product: `batch` products of [m, k]·[k, n]. An operand with
/// `*_batched == false` is one matrix shared by every product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MatmulDims {
    pub(crate) batch: usize,
    pub(crate) m: usize,
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) a_batched: bool,
    pub(crate) b_batched: bool,
}
