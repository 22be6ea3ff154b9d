//! Captures the git commit blo is built from as `BLO_GIT_COMMIT`, which `blo bench
//! --json` records. Build time, not run time: the commit that matters is the one the
//! binary was compiled from, wherever it is later run. Falls back to "unknown" without
//! git or outside a checkout (e.g. a crates.io download).

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BLO_GIT_COMMIT={commit}");
    // Rerun when HEAD moves (a commit, checkout or reset appends to logs/HEAD), not on
    // every source edit, which the default rule would do.
    println!("cargo:rerun-if-changed=build.rs");
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        for file in ["HEAD", "logs/HEAD"] {
            let path = Path::new(&dir).join(file);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}
