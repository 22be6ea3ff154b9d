//! Every WGSL shader of blo, embedded at compile time and listed in one place.
//!
//! One file per op family in `shaders/`; `src/ops/<family>.rs` holds the ops that
//! dispatch its entry points. A unit test below parses and validates every shader with
//! naga, so a broken kernel fails `cargo test` even on a machine without an adapter.

/// A WGSL source file.
#[derive(Debug)]
pub struct Shader {
    /// Family name, equal to the file stem in `shaders/`.
    pub name: &'static str,
    /// WGSL source text.
    pub source: &'static str,
}

macro_rules! shaders {
    ($($konst:ident => $name:literal),* $(,)?) => {
        $(
            #[doc = concat!("`shaders/", $name, ".wgsl`")]
            pub static $konst: Shader = Shader {
                name: $name,
                source: include_str!(concat!("../../../shaders/", $name, ".wgsl")),
            };
        )*
        /// All shaders, for validation and for `blo check`.
        pub static ALL: &[&Shader] = &[$(&$konst),*];
    };
}

shaders! {
    FILL => "fill",
    UNARY => "unary",
    BINARY => "binary",
    INDEX => "index",
    UPDATE => "update",
    REDUCE => "reduce",
    LOSS => "loss",
    MATMUL => "matmul",
    MATMUL_PORTABLE => "matmul_portable",
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses and validates a shader with naga, with every `override` given its default.
    pub(crate) fn validate(shader: &Shader) -> Result<(), String> {
        let module = naga::front::wgsl::parse_str(shader.source)
            .map_err(|e| e.emit_to_string(shader.source))?;
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .map_err(|e| e.emit_to_string(shader.source))?;
        Ok(())
    }

    #[test]
    fn every_shader_parses_and_validates() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
        let on_disk = std::fs::read_dir(&dir)
            .expect("shaders/ exists")
            .filter(|e| {
                e.as_ref()
                    .map(|e| e.path().extension().is_some_and(|x| x == "wgsl"))
                    .unwrap_or(false)
            })
            .count();
        assert_eq!(
            on_disk,
            ALL.len(),
            "every file in shaders/ must be registered in src/backend/gpu/shaders.rs"
        );
        let mut failures = Vec::new();
        for shader in ALL {
            if let Err(e) = validate(shader) {
                failures.push(format!("{}: {e}", shader.name));
            }
        }
        assert!(
            failures.is_empty(),
            "invalid shaders:\n{}",
            failures.join("\n")
        );
    }

    #[test]
    fn validation_rejects_a_broken_shader() {
        let broken = Shader {
            name: "broken",
            source: "@compute @workgroup_size(1) fn main() { let x: f32 = 1u; }",
        };
        assert!(validate(&broken).is_err());
    }
}
