//! Hostile but realistic inputs to `blo run` (issue #13): each must give exit code 2 (the
//! config or an output is wrong: nothing ran, nothing written) with a message naming the
//! key, or exit 1 for a failure inside blo, never a panic or an abort; and the file
//! system must be as it was: no partial output, no pre-existing file removed or
//! overwritten.

mod common;

use std::path::Path;

use common::{blo, run, scratch, text};

/// A small ridge run on the CPU with `extra` lines at the top level and `table` lines
/// replacing the default tables' keys.
fn config(top: &str, data: &str, inner: &str, method: &str) -> String {
    format!(
        "device = \"cpu\"\ndtype = \"f64\"\n{top}\n[problem]\nkind = \"ridge\"\n\n[data]\nsource = \"synthetic\"\n{data}\n\n[inner]\nkind = \"gd\"\nlr = 0.4\n{inner}\n\n[method]\n{method}\n\n[outer]\nsteps = 1\nkind = \"sgd\"\nlr = 0.5\n"
    )
}

const SMALL_DATA: &str = "n_train = 20\nn_val = 10\nfeatures = 3";

/// Every file in `dir`, with its contents.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let bytes = if e.path().is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                b"<dir>".to_vec()
            };
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    v.sort();
    v
}

/// Runs `cfg` with `--out out` and checks exit code 2, the message (all of `want`), and
/// that the directory is exactly as before.
fn rejected(dir: &Path, name: &str, cfg: &str, out: &Path, want: &[&str]) {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, cfg).unwrap();
    let before = snapshot(dir);
    let o = run(&path, out);
    let shown = text(&o);
    assert_eq!(o.status.code(), Some(2), "{name}: {shown}");
    for w in want {
        assert!(
            shown.contains(w),
            "{name}: the message lacks `{w}`: {shown}"
        );
    }
    assert!(!shown.contains("panicked"), "{name}: {shown}");
    assert_eq!(snapshot(dir), before, "{name}: the directory changed");
}

#[test]
fn outputs_are_checked_before_the_run_and_never_destroy_a_file() {
    let dir = scratch("outputs");
    // A hypergradient file from an earlier run, which a failing run must not touch.
    std::fs::write(dir.join("old.npy"), b"precious").unwrap();
    let cg = "kind = \"cg\"\niters = 3";
    let steps = "steps = 5";
    let with_hg = |hg: &str| {
        config(
            &format!("hypergradient_out = \"{hg}\""),
            SMALL_DATA,
            steps,
            cg,
        )
    };

    // --out is a directory: refused before the run; old.npy survives.
    std::fs::create_dir_all(dir.join("results.json")).unwrap();
    rejected(
        &dir,
        "out-is-dir",
        &with_hg("old.npy"),
        &dir.join("results.json"),
        &["is a directory"],
    );
    std::fs::remove_dir(dir.join("results.json")).unwrap();
    // The same file for both outputs.
    rejected(
        &dir,
        "same-file",
        &with_hg("r.json"),
        &dir.join("r.json"),
        &["same file", "hypergradient_out"],
    );
    // --out naming the config itself.
    let cfg_path = dir.join("self.toml");
    rejected(
        &dir,
        "self",
        &with_hg("h.npy"),
        &cfg_path,
        &["input of the run"],
    );
    // An empty hypergradient_out.
    rejected(
        &dir,
        "empty-hg",
        &with_hg(""),
        &dir.join("e.json"),
        &["hypergradient_out", "does not name a file"],
    );
    // --out in a directory that does not exist.
    rejected(
        &dir,
        "no-dir",
        &with_hg("h2.npy"),
        &dir.join("missing/r.json"),
        &["does not exist"],
    );

    // A good run replaces both files together.
    let good = dir.join("good.toml");
    std::fs::write(&good, with_hg("old.npy")).unwrap();
    let o = run(&good, &dir.join("good.json"));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_ne!(std::fs::read(dir.join("old.npy")).unwrap(), b"precious");
    let leftovers: Vec<_> = snapshot(&dir)
        .into_iter()
        .filter(|(n, _)| n.contains(".tmp") || n.contains(".old") || n.contains("probe"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn huge_counts_in_a_config_are_config_errors_naming_the_key() {
    let dir = scratch("sizes");
    let out = dir.join("r.json");
    let cg = "kind = \"cg\"\niters = 3";
    let cases = [
        (
            "features-2^62",
            config(
                "",
                "n_train = 20\nn_val = 10\nfeatures = 4611686018427387904",
                "steps = 5",
                cg,
            ),
            "data.features",
        ),
        (
            "n_train-1e12",
            config(
                "",
                "n_train = 1000000000000\nn_val = 10\nfeatures = 3",
                "steps = 5",
                cg,
            ),
            "data.n_train",
        ),
        (
            "n_train-overflows",
            config(
                "",
                "n_train = 18446744073709551615\nn_val = 10\nfeatures = 3",
                "steps = 5",
                cg,
            ),
            "data.n_train",
        ),
        (
            "rad-1e12-steps",
            config("", SMALL_DATA, "steps = 1000000000000", "kind = \"rad\""),
            "inner.steps",
        ),
        (
            "rad-max-steps",
            config(
                "",
                SMALL_DATA,
                "steps = 9223372036854775807",
                "kind = \"rad\"",
            ),
            "inner.steps",
        ),
    ];
    for (name, cfg, key) in &cases {
        let estimate = if name.contains("overflows") {
            "past 2⁶⁴"
        } else {
            "GiB"
        };
        rejected(&dir, name, cfg, &out, &[&format!("`{key}`"), estimate]);
    }
    // Classification: classes = 10¹², and a stray label of 10⁸ without `classes`.
    let logistic = |data: &str| {
        format!(
            "device = \"cpu\"\n[problem]\nkind = \"logistic\"\n[data]\n{data}\n[inner]\nkind = \"gd\"\nlr = 0.1\nsteps = 3\n[method]\nkind = \"cg\"\niters = 2\n[outer]\nsteps = 0\n"
        )
    };
    rejected(
        &dir,
        "classes-1e12",
        &logistic(
            "source = \"synthetic\"\nn_train = 20\nn_val = 10\nfeatures = 3\nclasses = 1000000000000",
        ),
        &out,
        &["`data.classes`"],
    );
    let npy = |name: &str, data: &[f64], shape: &[usize]| {
        blo::problems::data::write_npy(&dir.join(name), data, shape).unwrap();
    };
    npy("x.npy", &[0.5; 12], &[4, 3]);
    npy("y.npy", &[0.0, 1.0, 1e8, 0.0], &[4]);
    npy("yv.npy", &[0.0, 1.0, 1.0, 0.0], &[4]);
    rejected(
        &dir,
        "stray-label",
        &logistic(
            "source = \"npy\"\nx_train = \"x.npy\"\ny_train = \"y.npy\"\nx_val = \"x.npy\"\ny_val = \"yv.npy\"",
        ),
        &out,
        &["`data.y_train`", "100000000", "data.classes"],
    );
    // A crafted .npy whose shape's product wraps to 0.
    let mut bad = b"\x93NUMPY\x01\x00".to_vec();
    let mut header =
        "{'descr': '<f8', 'fortran_order': False, 'shape': (40, 4611686018427387904), }"
            .to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    bad.extend((header.len() as u16).to_le_bytes());
    bad.extend(header.as_bytes());
    std::fs::write(dir.join("wrap.npy"), bad).unwrap();
    rejected(
        &dir,
        "wrapping-npy",
        &logistic(
            "source = \"npy\"\nx_train = \"wrap.npy\"\ny_train = \"y.npy\"\nx_val = \"x.npy\"\ny_val = \"yv.npy\"",
        ),
        &out,
        &["`data.x_train`", "more elements than any array"],
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The demo's two outputs: one of them blocked (a directory where the plot goes) is a
/// usage error before anything runs, and the other is not written either.
#[test]
fn the_demo_writes_both_outputs_or_neither() {
    let dir = scratch("demo");
    std::fs::create_dir_all(dir.join("blo-demo.svg")).unwrap();
    let o = blo()
        .args([
            "--device",
            "cpu",
            "--outer-steps",
            "1",
            "--inner-steps",
            "2",
        ])
        .arg("--out-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let shown = text(&o);
    assert_eq!(o.status.code(), Some(2), "{shown}");
    assert!(
        shown.contains("blo-demo.svg") && shown.contains("is a directory"),
        "{shown}"
    );
    assert!(!dir.join("blo-demo.json").exists(), "{shown}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Every integer and float key of a config, one at a time, set to extremes: each config
/// is checked into an experiment or rejected with a config error naming a key, never a
/// panic. (Values between "small" and "huge" are left out on purpose: a count of 2²⁷
/// is legal and would allocate gigabytes here.)
#[test]
fn extreme_values_of_every_key_are_ok_or_config_errors() {
    use blo::experiment::{Config, Experiment};
    let ints = [
        "0",
        "1",
        "2",
        "1099511627776",
        "4611686018427387904",
        "9223372036854775807",
        "-1",
    ];
    let floats = [
        "0.0", "-0.0", "1e-300", "1e300", "-1.0", "inf", "-inf", "nan", "0.5", "1.0", "1000.0",
    ];
    // (table, key, values, the base config's kind lines for it)
    let bases = [
        (
            "ridge cg",
            "[problem]\nkind = \"ridge\"\nmu = 0.001\n[data]\nsource = \"synthetic\"\nseed = 1\nn_train = 20\nn_val = 10\nfeatures = 3\nnoise = 0.5\n[inner]\nkind = \"momentum\"\nlr = 0.1\nmomentum = 0.5\nsteps = 5\n[method]\nkind = \"cg\"\niters = 3\ntol = 0.001\ndamping = 0.0\n[outer]\nsteps = 2\nkind = \"adam\"\nlr = 0.1\nbeta1 = 0.9\nbeta2 = 0.99\neps = 1e-8\n[lambda]\ninit = 0.0\n",
        ),
        (
            "cleaning neumann",
            "[problem]\nkind = \"hyper-cleaning\"\nmu = 0.001\n[data]\nsource = \"synthetic\"\nseed = 1\nn_train = 20\nn_val = 10\nn_test = 10\nfeatures = 3\nclasses = 3\nsep = 1.5\ncorruption = 0.3\n[inner]\nkind = \"gd\"\nlr = 0.1\nsteps = 5\n[method]\nkind = \"neumann\"\nk = 3\neta = 0.1\n[outer]\nsteps = 2\nkind = \"sgd\"\nlr = 0.1\n",
        ),
        (
            "logistic trad",
            "[problem]\nkind = \"logistic\"\nmu = 0.001\n[data]\nsource = \"synthetic\"\nseed = 1\nn_train = 20\nn_val = 10\nfeatures = 3\nclasses = 3\nsep = 1.5\n[inner]\nkind = \"gd\"\nlr = 0.1\nsteps = 5\n[method]\nkind = \"trad\"\nk = 2\n[outer]\nsteps = 1\nkind = \"sgd\"\nlr = 0.1\n",
        ),
        (
            "ridge hoag",
            "[problem]\nkind = \"ridge\"\n[data]\nsource = \"synthetic\"\nn_train = 20\nn_val = 10\nfeatures = 3\n[inner]\nkind = \"gd\"\nlr = 0.1\nsteps = 5\n[method]\nkind = \"hoag\"\niters = 4\neps0 = 0.1\ndecay = 0.9\ncheck_every = 2\n[outer]\nsteps = 2\nkind = \"sgd\"\nlr = 0.1\n",
        ),
    ];
    let dir = scratch("extremes");
    let file = dir.join("c.toml");
    let mut checked = 0;
    for (name, base) in bases {
        let lines: Vec<&str> = base.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some((key, value)) = line.split_once(" = ") else {
                continue;
            };
            if value.starts_with('"') {
                continue;
            }
            let values: &[&str] = if value.contains('.') || value.contains('e') {
                &floats
            } else {
                &ints
            };
            for v in values {
                let mut edited = lines.clone();
                let replaced = format!("{key} = {v}");
                edited[i] = &replaced;
                let text = format!("device = \"cpu\"\ndtype = \"f64\"\n{}\n", edited.join("\n"));
                let outcome = std::panic::catch_unwind(|| {
                    Config::from_toml_str(&text, &file)
                        .and_then(|c| Experiment::from_config(c, &file, &dir).map(drop))
                });
                match outcome {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        let msg = e.to_string();
                        assert!(msg.contains("c.toml"), "{name} {key} = {v}: {msg}");
                    }
                    Err(_) => panic!("{name}: {key} = {v} panicked"),
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 300, "{checked}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Messages that used to mislead: an overflowing λ blamed the inner step size, a huge
/// label read as a negative one, and `device = "GPU"` in a config was refused.
#[test]
fn messages_name_the_real_cause() {
    let dir = scratch("messages");
    let out = dir.join("r.json");
    let cfg = dir.join("lambda.toml");
    let body = config("", SMALL_DATA, "steps = 5", "kind = \"cg\"\niters = 3")
        + "[lambda]\ninit = 1000.0\n";
    std::fs::write(&cfg, body).unwrap();
    let o = run(&cfg, &out);
    let shown = text(&o);
    assert_eq!(o.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("λ") && !shown.contains("lower its step size"),
        "{shown}"
    );
    assert!(!out.exists());

    // An exploding outer step: the message names the outer step and its learning rate.
    let body = config("", SMALL_DATA, "steps = 5", "kind = \"cg\"\niters = 3").replace(
        "steps = 1\nkind = \"sgd\"\nlr = 0.5",
        "steps = 3\nkind = \"sgd\"\nlr = 1e300",
    );
    std::fs::write(&cfg, body).unwrap();
    let o = run(&cfg, &out);
    let shown = text(&o);
    assert_eq!(o.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("outer step") && shown.contains("1e300"),
        "{shown}"
    );
    assert!(!out.exists());

    blo::problems::data::write_npy(&dir.join("x.npy"), &[0.5; 12], &[4, 3]).unwrap();
    blo::problems::data::write_npy(&dir.join("y.npy"), &[0.0, 1.0, 1e9, 0.0], &[4]).unwrap();
    let labels = "device = \"cpu\"\n[problem]\nkind = \"logistic\"\n[data]\nsource = \"npy\"\nx_train = \"x.npy\"\ny_train = \"y.npy\"\nx_val = \"x.npy\"\ny_val = \"y.npy\"\n[inner]\nkind = \"gd\"\nlr = 0.1\nsteps = 3\n[method]\nkind = \"cg\"\niters = 2\n";
    rejected(
        &dir,
        "label-1e9",
        labels,
        &out,
        &["`data.y_train`", "10⁹", "1000000000"],
    );

    let upper = blo::experiment::Config::from_toml_str(
        &config("", SMALL_DATA, "steps = 5", "kind = \"cg\"\niters = 3")
            .replace("device = \"cpu\"", "device = \"GPU\""),
        &cfg,
    )
    .unwrap();
    assert_eq!(upper.device, blo::experiment::DeviceSpec::Gpu);
    let _ = std::fs::remove_dir_all(dir);
}
