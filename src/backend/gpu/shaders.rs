//! Every WGSL shader of blo, embedded at compile time and listed in one place, and the
//! shared WGSL they are composed from.
//!
//! One file per op family in `shaders/`, and one per further variant as
//! `<family>_<variant>.wgsl` (matmul has four: `matmul_tiled.wgsl` and
//! `matmul_tiled_large.wgsl` for GPUs, `matmul.wgsl` for adapters with subgroups,
//! `matmul_portable.wgsl` for the others; `reduce_subgroup.wgsl` and `reduce_tree.wgsl`
//! share their kernels, `common/reduce_workgroup.wgsl`, and differ in the lane reduction
//! they include: `common/seg_reduce_subgroup.wgsl` or `common/seg_reduce_tree.wgsl`);
//! `backend/gpu/kernels/<family>.rs`
//! declares its entry points and `backend/gpu/registry.rs` says which variant runs where.
//! A unit test below composes, parses and validates every shader with naga, so a broken
//! kernel fails `cargo test` even on a machine without an adapter.
//!
//! ## Shared WGSL: `//#include`
//! WGSL has no includes, so blo has one directive of its own, expanded in Rust when a
//! shader's source is first asked for ([`Shader::source`]). A line
//!
//! ```text
//! //#include common/linear_id.wgsl
//! ```
//!
//! is replaced by the text of `shaders/common/linear_id.wgsl` (itself expanded), between
//! two comment lines naming it. A part is included once per shader: a second include of
//! it is dropped, so parts may include what they need. The parts:
//! - `common/*.wgsl`: the files in [`COMMON`] (index helpers, the cross-entropy gradient's
//!   row factor, the matmul parameters and
//!   loaders, the workgroup sum, the segment reductions and the one-dispatch grid sum
//!   of the GPU reductions and losses, their shared kernels);
//! - `op_codes`: the numeric op codes as WGSL constants (`const UNARY_EXP: u32 = 1u;`),
//!   generated from the Rust enums by `backend/gpu/codes.rs`, so no number is written in
//!   both languages.
//!
//! A part may use what the including shader declares before the include (most use its
//! `override WG`). The composed text is what is compiled on the device and what the test
//! validates. Any other line starting with `//#`, or an include of an unknown part, makes
//! [`Shader::source`] an error (the test catches it before a device would).

use std::sync::LazyLock;

use crate::error::{Error, Result};

/// A WGSL shader: a file of `shaders/` and its composed source.
#[derive(Debug)]
pub struct Shader {
    /// Family name, equal to the file stem in `shaders/`.
    pub name: &'static str,
    /// The file's text as written, `//#include` lines and all.
    pub file: &'static str,
    composed: LazyLock<Result<String, String>>,
}

impl Shader {
    /// The WGSL that is compiled: the file with its `//#include` lines expanded (see the
    /// module documentation). Composed once, on first use.
    pub fn source(&self) -> Result<&str> {
        self.composed.as_deref().map_err(|message| Error::Gpu {
            context: format!("composing shaders/{}.wgsl", self.name),
            message: message.clone(),
        })
    }
}

macro_rules! shaders {
    ($($konst:ident => $name:literal),* $(,)?) => {
        $(
            #[doc = concat!("`shaders/", $name, ".wgsl`")]
            pub static $konst: Shader = Shader {
                name: $name,
                file: include_str!(concat!("../../../shaders/", $name, ".wgsl")),
                composed: LazyLock::new(|| {
                    compose(
                        concat!($name, ".wgsl"),
                        include_str!(concat!("../../../shaders/", $name, ".wgsl")),
                    )
                }),
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
    REDUCE_TREE => "reduce_tree",
    REDUCE_SUBGROUP => "reduce_subgroup",
    LOSS => "loss",
    LOSS_WORKGROUP => "loss_workgroup",
    MATMUL => "matmul",
    MATMUL_PORTABLE => "matmul_portable",
    MATMUL_TILED => "matmul_tiled",
    MATMUL_TILED_LARGE => "matmul_tiled_large",
    MATVEC => "matvec",
    MATVEC_SUBGROUP => "matvec_subgroup",
}

macro_rules! common {
    ($($path:literal),* $(,)?) => {
        /// The shared parts of `shaders/common/` as (include path, text).
        pub static COMMON: &[(&str, &str)] = &[
            $(($path, include_str!(concat!("../../../shaders/", $path)))),*
        ];
    };
}

common! {
    "common/linear_id.wgsl",
    "common/matmul_operands.wgsl",
    "common/matvec.wgsl",
    "common/workgroup_sum.wgsl",
    "common/seg_reduce_tree.wgsl",
    "common/seg_reduce_subgroup.wgsl",
    "common/grid_sum.wgsl",
    "common/reduce_workgroup.wgsl",
    "common/ce_grad.wgsl",
}

/// The include name of the generated op-code constants.
const OP_CODES: &str = "op_codes";

/// The text of the part `path`, or `None` for an unknown part.
fn part(path: &str) -> Option<&'static str> {
    if path == OP_CODES {
        return Some(super::codes::wgsl());
    }
    COMMON
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, text)| *text)
}

/// `text` (the file `file`) with its `//#include` lines expanded.
pub(crate) fn compose(file: &str, text: &str) -> Result<String, String> {
    compose_with(file, text, &part)
}

fn compose_with(
    file: &str,
    text: &str,
    part: &dyn Fn(&str) -> Option<&'static str>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len() * 2);
    let mut seen = Vec::new();
    expand(file, text, part, &mut seen, &mut out)?;
    Ok(out)
}

fn expand(
    file: &str,
    text: &str,
    part: &dyn Fn(&str) -> Option<&'static str>,
    seen: &mut Vec<String>,
    out: &mut String,
) -> Result<(), String> {
    for (i, line) in text.lines().enumerate() {
        let Some(directive) = line.trim().strip_prefix("//#") else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let words: Vec<&str> = directive.split_whitespace().collect();
        let path = match words[..] {
            ["include", path] => path,
            _ => {
                return Err(format!(
                    "{file}:{}: `{}` is not a directive; the one directive is `//#include <part>`",
                    i + 1,
                    line.trim()
                ));
            }
        };
        if seen.iter().any(|s| s == path) {
            continue;
        }
        let Some(body) = part(path) else {
            let known: Vec<&str> = COMMON.iter().map(|(p, _)| *p).collect();
            return Err(format!(
                "{file}:{}: `//#include {path}`: no such part (parts: {OP_CODES}, {})",
                i + 1,
                known.join(", ")
            ));
        };
        seen.push(path.to_string());
        out.push_str(&format!("// ---- begin {path} (included by {file})\n"));
        expand(path, body, part, seen, out)?;
        out.push_str(&format!("// ---- end {path}\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses and validates WGSL with naga, with every `override` given its default.
    pub(crate) fn validate(source: &str) -> Result<(), String> {
        let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .map_err(|e| e.emit_to_string(source))?;
        Ok(())
    }

    /// Every `.wgsl` file under `dir`, as paths relative to `root` with `/` separators.
    fn wgsl_files(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("shaders/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                wgsl_files(root, &path, out);
            } else if path.extension().is_some_and(|x| x == "wgsl") {
                let rel = path.strip_prefix(root).expect("under shaders/");
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
    }

    #[test]
    fn every_file_in_shaders_is_registered() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
        let mut on_disk = Vec::new();
        wgsl_files(&root, &root, &mut on_disk);
        on_disk.sort();
        let mut registered: Vec<String> = ALL
            .iter()
            .map(|s| format!("{}.wgsl", s.name))
            .chain(COMMON.iter().map(|(p, _)| p.to_string()))
            .collect();
        registered.sort();
        assert_eq!(
            on_disk, registered,
            "every file in shaders/ must be registered in src/backend/gpu/shaders.rs \
             (ALL for shaders, COMMON for shaders/common/)"
        );
    }

    #[test]
    fn every_shader_composes_parses_and_validates() {
        let mut failures = Vec::new();
        for shader in ALL {
            match shader.source() {
                Ok(source) => {
                    if let Err(e) = validate(source) {
                        failures.push(format!("{}: {e}", shader.name));
                    }
                }
                Err(e) => failures.push(format!("{}: {e}", shader.name)),
            }
        }
        assert!(
            failures.is_empty(),
            "invalid shaders:\n{}",
            failures.join("\n")
        );
    }

    #[test]
    fn every_common_part_is_used_and_no_number_is_an_op_code() {
        for (path, _) in COMMON {
            let line = format!("//#include {path}");
            assert!(
                ALL.iter().any(|s| s.file.contains(&line)),
                "{path} is included by no shader"
            );
        }
        // The composed text holds each part once, and the op codes where they are used.
        let binary = BINARY.source().unwrap();
        assert_eq!(binary.matches("fn linear_id(").count(), 1);
        assert!(binary.contains("const BINARY_GE: u32 = 7u;"));
        assert!(!BINARY.file.contains("case 7u"));
    }

    #[test]
    fn validation_rejects_a_broken_shader() {
        assert!(validate("@compute @workgroup_size(1) fn main() { let x: f32 = 1u; }").is_err());
    }

    #[test]
    fn includes_expand_once_and_recursively() {
        let parts = |p: &str| match p {
            "common/a.wgsl" => Some("//#include common/b.wgsl\nconst A: u32 = B;"),
            "common/b.wgsl" => Some("const B: u32 = 1u;"),
            _ => None,
        };
        let text = "//#include common/a.wgsl\n  //#include common/b.wgsl\nconst C: u32 = A;\n";
        let out = compose_with("t.wgsl", text, &parts).unwrap();
        assert_eq!(out.matches("const B").count(), 1, "{out}");
        assert!(out.find("const B").unwrap() < out.find("const A").unwrap());
        assert!(out.contains("// ---- begin common/a.wgsl (included by t.wgsl)"));
        validate(&out).unwrap();
    }

    #[test]
    fn an_include_of_a_missing_part_is_an_error() {
        let e = compose(
            "t.wgsl",
            "const X: u32 = 1u;\n//#include common/missing.wgsl\n",
        )
        .unwrap_err();
        assert!(
            e.contains("t.wgsl:2") && e.contains("common/missing.wgsl"),
            "{e}"
        );
        assert!(e.contains("common/linear_id.wgsl"), "names the parts: {e}");
        // A nested one names the part that includes it.
        let parts = |p: &str| (p == "common/a.wgsl").then_some("//#include common/gone.wgsl");
        let e = compose_with("t.wgsl", "//#include common/a.wgsl", &parts).unwrap_err();
        assert!(e.starts_with("common/a.wgsl:1"), "{e}");
        // A misspelt directive is an error too, not a silently kept comment.
        for bad in [
            "//#inclde common/linear_id.wgsl",
            "//#include",
            "//#include a b",
        ] {
            assert!(compose("t.wgsl", bad).is_err(), "{bad}");
        }
        // Through the public type, a bad shader is an error, not a panic.
        static BAD: Shader = Shader {
            name: "bad",
            file: "//#include nowhere.wgsl",
            composed: LazyLock::new(|| compose("bad.wgsl", "//#include nowhere.wgsl")),
        };
        assert!(matches!(BAD.source(), Err(Error::Gpu { .. })));
    }
}
