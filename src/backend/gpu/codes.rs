//! The numeric codes Rust and WGSL share, from one table: the op enums of
//! `backend/op.rs` ([`UnaryOp`], [`BinaryOp`], [`FullOp`], [`AxisOp`]) and the few
//! GPU-only codes their kernel files declare (`kernels/binary.rs`, `kernels/update.rs`).
//!
//! A shader that switches on a code writes `//#include op_codes` (see `shaders.rs`) and
//! names the cases: `case UNARY_RELU_MASK: { ... }`. The numbers exist only on the Rust
//! side; the WGSL constants are generated from them, so the two cannot drift apart, and
//! a misspelt name fails naga validation (`cargo test`) rather than dispatching the
//! wrong op.
//!
//! Names: an enum's codes are `<PREFIX>_<VARIANT>` with the variant in SCREAMING_SNAKE
//! case (`UnaryOp::ReluMask` → `UNARY_RELU_MASK`, `FullOp::SqDiff` → `FULL_SQ_DIFF`).

use std::sync::LazyLock;

use super::kernels;
use crate::backend::{ALL_BINARY, ALL_UNARY, AxisOp, FullOp};

/// Every shared code as (WGSL constant name, value).
pub(crate) fn table() -> Vec<(String, u32)> {
    fn named<T: std::fmt::Debug>(prefix: &str, op: T) -> String {
        format!("{prefix}_{}", screaming_snake(&format!("{op:?}")))
    }
    let mut t = Vec::new();
    t.extend(ALL_UNARY.map(|op| (named("UNARY", op), op as u32)));
    t.extend(ALL_BINARY.map(|op| (named("BINARY", op), op as u32)));
    t.extend(FullOp::ALL.map(|op| (named("FULL", op), op as u32)));
    t.extend(AxisOp::ALL.map(|op| (named("AXIS", op), op as u32)));
    for codes in [kernels::binary::CODES, kernels::update::CODES] {
        t.extend(codes.iter().map(|&(name, v)| (name.to_string(), v)));
    }
    t
}

/// The table as WGSL `const` declarations: the text of `//#include op_codes`.
pub(crate) fn wgsl() -> &'static str {
    static TEXT: LazyLock<String> = LazyLock::new(|| {
        let mut s = String::from(
            "// Generated from the op enums by src/backend/gpu/codes.rs: the numbers live in Rust.\n",
        );
        for (name, value) in table() {
            s.push_str(&format!("const {name}: u32 = {value}u;\n"));
        }
        s
    });
    &TEXT
}

/// `ReluMask` → `RELU_MASK`.
fn screaming_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BinaryOp, UnaryOp};

    #[test]
    fn names_are_screaming_snake_case() {
        assert_eq!(screaming_snake("ReluMask"), "RELU_MASK");
        assert_eq!(screaming_snake("Neg"), "NEG");
        assert_eq!(screaming_snake("SqDiff"), "SQ_DIFF");
    }

    #[test]
    fn the_table_holds_every_op_once_with_its_discriminant() {
        let t = table();
        let value = |name: &str| {
            let hits: Vec<u32> = t.iter().filter(|(n, _)| n == name).map(|e| e.1).collect();
            assert_eq!(hits.len(), 1, "{name} appears {} times", hits.len());
            hits[0]
        };
        assert_eq!(value("UNARY_RELU_MASK"), UnaryOp::ReluMask as u32);
        assert_eq!(value("UNARY_RECIP"), UnaryOp::Recip as u32);
        assert_eq!(value("BINARY_GE"), BinaryOp::Ge as u32);
        assert_eq!(value("FULL_SQ_DIFF"), FullOp::SqDiff as u32);
        assert_eq!(value("AXIS_MAX"), AxisOp::Max as u32);
        for (name, _) in &t {
            value(name);
        }
        // The codes a kernel switches on are distinct within their group (a `switch` with
        // two equal cases does not validate, but a copy-paste in the GPU-only codes of
        // another group would not be caught there).
        for prefix in ["UNARY_", "BINARY_", "FULL_", "AXIS_", "MODE_", "COEF_"] {
            let mut values: Vec<u32> = t
                .iter()
                .filter(|(n, _)| n.starts_with(prefix))
                .map(|e| e.1)
                .collect();
            let n = values.len();
            values.sort_unstable();
            values.dedup();
            assert_eq!(values.len(), n, "{prefix}* codes repeat a value");
        }
        // The broadcast copy must not collide with a real binary op.
        assert!(
            ALL_BINARY
                .iter()
                .all(|&op| op as u32 != value("BINARY_FIRST"))
        );
    }

    #[test]
    fn the_generated_wgsl_declares_every_code() {
        let text = wgsl();
        assert!(text.contains("const UNARY_NEG: u32 = 0u;\n"), "{text}");
        assert_eq!(text.matches("const ").count(), table().len());
    }
}
