//! What the `blo run` CLI tests share: the binary, scratch directories, a run and its
//! printed output. Each test file uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `blo` binary of this build.
pub fn blo() -> Command {
    Command::new(env!("CARGO_BIN_EXE_blo"))
}

/// `examples/configs/<sub>` of the checkout.
pub fn configs(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/configs")
        .join(sub)
}

/// A fresh, empty scratch directory per test (named after the test file, the process
/// and `name`, so parallel tests and runs do not share one).
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "blo-{}-{}-{name}",
        env!("CARGO_CRATE_NAME"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `blo run CONFIG --out OUT`.
pub fn run(config: &Path, out: &Path) -> Output {
    blo()
        .arg("run")
        .arg(config)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// A run's exit code, stdout and stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A JSON file, parsed.
pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}
