//! The `elementwise` kernel family: unary ops, binary ops (and broadcasting) and fill,
//! chosen together since they share a layout (vec4 streams, one invocation per four
//! elements). One variant, `elementwise/vec4` ([`VEC4`]); the dispatch plans are in
//! `unary.rs`, `binary.rs` and `fill.rs`.

use crate::backend::gpu::registry::{self, Variant};
use crate::backend::gpu::{Kernel, shaders};

/// Invocations per workgroup of every elementwise kernel.
pub(crate) const WG: u32 = 256;

/// What an elementwise variant gives the dispatch code: its entry points, with the
/// parameters and bindings of `shaders/unary.wgsl`, `binary.wgsl` and `fill.wgsl`.
pub(crate) struct Plan {
    pub(super) unary: Kernel,
    pub(super) binary: Kernel,
    pub(super) fill: Kernel,
}

pub(crate) static VEC4: Variant<Plan> = Variant {
    name: "vec4",
    summary: "four elements per invocation as one vec4, 256 invocations per workgroup",
    requires: |facts| registry::workgroup(facts, WG, 0),
    suits: registry::everywhere,
    plan: Plan {
        unary: Kernel {
            shader: &shaders::UNARY,
            entry: "main",
            reads: 1,
            writes: 1,
        },
        binary: Kernel {
            shader: &shaders::BINARY,
            entry: "main",
            reads: 2,
            writes: 1,
        },
        fill: Kernel {
            shader: &shaders::FILL,
            entry: "main",
            reads: 0,
            writes: 1,
        },
    },
};
