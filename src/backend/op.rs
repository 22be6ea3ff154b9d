//! What the kernels compute: the op codes both backends implement (their discriminants
//! are the `OP` constants of the WGSL kernels) and the argument types of the kernel
//! families, shared by the public ops (`ops/`) and the backends.

// ---- unary -------------------------------------------------------------------------

/// An elementwise function of one tensor. The discriminant is the `OP` constant of
/// `shaders/unary.wgsl`.
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
    /// |x|
    Abs = 5,
    /// sin x
    Sin = 6,
    /// cos x
    Cos = 7,
    /// tanh x
    Tanh = 8,
    /// 1 / (1 + e⁻ˣ)
    Sigmoid = 9,
    /// max(x, 0)
    Relu = 10,
    /// 1 where x > 0, else 0: ReLU's derivative.
    ReluMask = 11,
    /// a·x + b with host scalars a, b.
    ScaleShift = 12,
    /// −1, 0 or 1 (0 for ±0): the derivative of |x| away from 0.
    Sign = 13,
    /// 1 / x
    Recip = 14,
}

/// Every unary op, for tests and `blo check`.
pub const ALL_UNARY: [UnaryOp; 15] = [
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
];
