//! `blo run` and the demo, through the binary: every example config runs and writes
//! its results; `hypergradient_out` equals the library's hypergradient for the same
//! problem; every kind of config error exits with code 2, names the key and writes
//! nothing; a failure inside blo exits with 1.

use std::path::{Path, PathBuf};

use blo::bilevel::{
    Inner, InnerOptimizer, Method, OuterConfig, OuterOptimizer, WarmStart, hypergradient,
    hypergradient_from, optimize,
};
use blo::experiment::{Config, DeviceSpec};
use blo::problems::data::{CleaningData, Matrix, Split, read_npy, synthetic_classification};
use blo::problems::{HyperCleaning, Logistic, Ridge};
use blo::testing::{gpu_or_skip, worst_violation};
use blo::{DType, Device, Tensor};

mod common;
use common::{blo, json, run, scratch, text};

fn examples() -> PathBuf {
    common::configs("")
}

const CPU: Device = Device::Cpu;

fn assert_same(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    // Same f64 computation on the CPU in both; 1e-6 relative leaves room for nothing
    // but summation-order differences. atol covers elements that are exactly 0.
    let (ratio, i) = worst_violation(got, want, 1e-6, 1e-14);
    assert!(
        ratio <= 1.0,
        "{what}: element {i}: {} vs library {}",
        got[i],
        want[i]
    );
}

#[test]
fn every_example_config_runs_and_writes_its_results() {
    let dir = scratch("examples");
    let mut configs: Vec<PathBuf> = std::fs::read_dir(examples())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    configs.sort();
    assert!(
        configs.len() >= 12,
        "expected the example configs, found {configs:?}"
    );
    let mut methods = std::collections::BTreeSet::new();
    let mut problems = std::collections::BTreeSet::new();
    for path in &configs {
        let config = Config::from_file(path).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if config.device != DeviceSpec::Cpu && gpu_or_skip().is_none() {
            eprintln!("notice: skipping {name}: it needs a GPU adapter");
            continue;
        }
        methods.insert(config.method.name());
        problems.insert(config.problem.kind.name());
        let out = dir.join(format!("{name}.json"));
        let o = run(path, &out);
        assert!(o.status.success(), "{name} failed: {}", text(&o));
        let r = json(&out);
        for key in [
            "blo_version",
            "config",
            "device",
            "problem",
            "method",
            "lambda_len",
            "trace",
            "metrics",
            "final_lambda",
            "hypergradient_out",
            "gpu_profile",
        ] {
            assert!(r.get(key).is_some(), "{name}: results lack `{key}`");
        }
        let trace = r["trace"].as_array().unwrap();
        assert_eq!(trace.len(), config.outer.steps + 1, "{name}: trace length");
        for step in trace {
            // With inner.tol, each solve reports its final gradient norm, within tol.
            match config.inner.tol {
                Some(tol) => assert!(step["inner_grad_norm"].as_f64().unwrap() <= tol),
                None => assert!(step["inner_grad_norm"].is_null(), "{name}"),
            }
            for key in [
                "outer_loss",
                "hypergrad_norm",
                "elapsed_s",
                "hypergradient_s",
            ] {
                assert!(step[key].as_f64().unwrap().is_finite(), "{name}: {key}");
            }
        }
        let m = &r["metrics"];
        assert!(m["final_outer_loss"].as_f64().unwrap().is_finite());
        match config.problem.kind.name() {
            "hyper-cleaning" => {
                for key in ["test_accuracy", "val_accuracy", "train_accuracy"] {
                    let acc = m[key].as_f64().unwrap();
                    assert!((0.0..=1.0).contains(&acc), "{name}: {key} {acc}");
                }
                assert!(m["corruption_f1"].as_f64().is_some(), "{name}: F1");
            }
            "logistic" => {
                for key in ["val_accuracy", "train_accuracy"] {
                    let acc = m[key].as_f64().unwrap();
                    assert!((0.0..=1.0).contains(&acc), "{name}: {key} {acc}");
                }
                assert!(m["test_accuracy"].is_null() && m["corruption_f1"].is_null());
            }
            _ => {
                for key in [
                    "test_accuracy",
                    "val_accuracy",
                    "train_accuracy",
                    "corruption_f1",
                ] {
                    assert!(m[key].is_null(), "{name}: {key}");
                }
            }
        }
        assert_eq!(r["config"]["method"]["kind"], config.method.name());
        let lambda_len = r["lambda_len"].as_u64().unwrap() as usize;
        match &config.hypergradient_out {
            Some(p) => {
                let h = read_npy(&dir.join(p)).unwrap();
                assert_eq!(h.shape, vec![lambda_len], "{name}: hypergradient shape");
                assert!(h.data.iter().all(|v| v.is_finite()));
            }
            None => assert!(r["hypergradient_out"].is_null()),
        }
    }
    for m in [
        "rad",
        "trad",
        "forward",
        "cg",
        "neumann",
        "fixed_point",
        "one_step",
        "implicit",
        "hoag",
    ] {
        assert!(methods.contains(m), "no example config uses method {m}");
    }
    assert!(problems.len() == 3, "examples cover {problems:?}");
    std::fs::remove_dir_all(&dir).ok();
}

fn vector(values: &[f64], dev: &Device) -> Vec<Tensor> {
    vec![Tensor::from_vec(values.to_vec(), &[values.len()], dev).unwrap()]
}

fn flat(ts: &[Tensor]) -> Vec<f64> {
    ts.iter().flat_map(|t| t.to_vec::<f64>().unwrap()).collect()
}

fn npy_matrix(name: &str) -> Matrix {
    let a = read_npy(&examples().join("data").join(name)).unwrap();
    Matrix {
        data: a.data,
        rows: a.shape[0],
        cols: a.shape[1],
    }
}

fn npy_vec(name: &str) -> Vec<f64> {
    read_npy(&examples().join("data").join(name)).unwrap().data
}

fn npy_labels(name: &str) -> Vec<usize> {
    npy_vec(name).iter().map(|&v| v as usize).collect()
}

/// Runs an example config and returns the hypergradient it wrote.
fn written_hypergradient(example: &str, dir: &Path) -> Vec<f64> {
    let out = dir.join(format!("{example}.json"));
    let o = run(&examples().join(format!("{example}.toml")), &out);
    assert!(o.status.success(), "{example}: {}", text(&o));
    let path = json(&out)["hypergradient_out"]
        .as_str()
        .unwrap()
        .to_string();
    read_npy(Path::new(&path)).unwrap().data
}

#[test]
fn hypergradient_out_equals_the_library_hypergradient() {
    let dir = scratch("hypergradient");

    // ridge-rad.toml: synthetic ridge, λ = 0, 40 GD steps (lr 0.4), RAD, outer.steps = 0.
    let p = Ridge::synthetic(40, 30, 5, 3, &CPU, DType::F64).unwrap();
    let inner = Inner {
        optimizer: InnerOptimizer::Gd { lr: 0.4 },
        steps: 40,
    };
    let want = hypergradient(&p, &vector(&[0.0; 5], &CPU), &inner, &Method::Rad).unwrap();
    assert_same(
        &written_hypergradient("ridge-rad", &dir),
        &flat(&want.grad),
        "ridge-rad",
    );

    // ridge-implicit.toml: the implicit hypergradient at the closed-form w*.
    let want = hypergradient(&p, &vector(&[0.0; 5], &CPU), &inner, &Method::Implicit).unwrap();
    assert_same(
        &written_hypergradient("ridge-implicit", &dir),
        &flat(&want.grad),
        "ridge-implicit",
    );

    // ridge-npy.toml: .npy data and λ₀, momentum (lr 0.2, μ 0.5, 40 steps), RAD.
    let p = Ridge::new(
        &npy_matrix("ridge_x_train.npy"),
        &npy_vec("ridge_y_train.npy"),
        &npy_matrix("ridge_x_val.npy"),
        &npy_vec("ridge_y_val.npy"),
        &CPU,
        DType::F64,
    )
    .unwrap();
    let inner = Inner {
        optimizer: InnerOptimizer::Momentum {
            lr: 0.2,
            momentum: 0.5,
        },
        steps: 40,
    };
    let want = hypergradient(
        &p,
        &vector(&npy_vec("ridge_lambda0.npy"), &CPU),
        &inner,
        &Method::Rad,
    )
    .unwrap();
    assert_same(
        &written_hypergradient("ridge-npy", &dir),
        &flat(&want.grad),
        "ridge-npy",
    );

    // logistic-forward.toml: synthetic binary classes (first 50 rows train, next 30
    // validate), scalar λ = −1, momentum (0.3, 0.8, 30 steps), forward mode.
    let (x, y) = synthetic_classification(80, 4, 2, 1.5, 4);
    let rows = |r: std::ops::Range<usize>| Split {
        x: x.select_rows(&r.clone().collect::<Vec<_>>()),
        labels: y[r].to_vec(),
    };
    let p = Logistic::new(&rows(0..50), &rows(50..80), 2, false, &CPU, DType::F64).unwrap();
    let inner = Inner {
        optimizer: InnerOptimizer::Momentum {
            lr: 0.3,
            momentum: 0.8,
        },
        steps: 30,
    };
    let want = hypergradient(&p, &vector(&[-1.0], &CPU), &inner, &Method::Forward).unwrap();
    assert_same(
        &written_hypergradient("logistic-forward", &dir),
        &flat(&want.grad),
        "logistic-forward",
    );

    // hyper-cleaning-npy.toml: outer.steps = 3 (SGD lr 2), so the file holds the last
    // hypergradient, at the final λ.
    let data = CleaningData {
        train: Split {
            x: npy_matrix("hc_x_train.npy"),
            labels: npy_labels("hc_y_train.npy"),
        },
        corrupted: npy_vec("hc_corrupted.npy")
            .iter()
            .map(|&f| f == 1.0)
            .collect(),
        val: Split {
            x: npy_matrix("hc_x_val.npy"),
            labels: npy_labels("hc_y_val.npy"),
        },
        test: Split {
            x: npy_matrix("hc_x_test.npy"),
            labels: npy_labels("hc_y_test.npy"),
        },
        classes: 3,
    };
    let p = HyperCleaning::new(&data, 1e-3, &CPU, DType::F64).unwrap();
    let trace = optimize(
        &p,
        &vector(&[0.0; 40], &CPU),
        &Inner {
            optimizer: InnerOptimizer::Gd { lr: 0.5 },
            steps: 20,
        },
        &Method::Neumann { k: 10, eta: 0.5 },
        &OuterConfig {
            steps: 3,
            optimizer: OuterOptimizer::Sgd { lr: 2.0 },
            warm_start: WarmStart::Warm,
        },
    )
    .unwrap();
    assert_same(
        &written_hypergradient("hyper-cleaning-npy", &dir),
        &flat(&trace.last.grad),
        "hyper-cleaning-npy",
    );

    // hyper-cleaning-at-w.toml: CG at the w of data/hc_w0.npy (W [5, 3] row-major, then
    // b [3]) with no inner step.
    let w0 = npy_vec("hc_w0.npy");
    let w0 = vec![
        Tensor::from_vec(w0[..15].to_vec(), &[5, 3], &CPU).unwrap(),
        Tensor::from_vec(w0[15..].to_vec(), &[3], &CPU).unwrap(),
    ];
    let want = hypergradient_from(
        &p,
        &vector(&[0.0; 40], &CPU),
        &w0,
        &Inner {
            optimizer: InnerOptimizer::Gd { lr: 0.5 },
            steps: 0,
        },
        &Method::Cg {
            iters: 20,
            tol: None,
            damping: 0.01,
        },
    )
    .unwrap();
    assert_eq!(want.report.inner_steps, 0);
    assert_same(
        &written_hypergradient("hyper-cleaning-at-w", &dir),
        &flat(&want.grad),
        "hyper-cleaning-at-w",
    );
    std::fs::remove_dir_all(&dir).ok();
}

const RIDGE: &str = r#"
device = "cpu"
dtype = "f64"
hypergradient_out = "h.npy"

[problem]
kind = "ridge"

[data]
source = "synthetic"
n_train = 20
n_val = 10
features = 3

[inner]
kind = "gd"
lr = 0.4
steps = 5

[method]
kind = "cg"
iters = 3

[outer]
steps = 2
kind = "sgd"
lr = 0.5
"#;

/// `RIDGE` with `key = value` in `[table]` replaced (or added), or the table removed.
fn edit(table: &str, key: &str, value: Option<&str>) -> String {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut done = false;
    let lines: Vec<&str> = RIDGE.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with('[') {
            current = line.trim_matches(['[', ']']).to_string();
        }
        let is_key = line.split('=').next().map(str::trim) == Some(key);
        if current == table && is_key {
            if let Some(v) = value {
                out.push(format!("{key} = {v}"));
            }
            done = true;
            continue;
        }
        out.push(line.to_string());
        let table_ends = lines.get(i + 1).is_none_or(|l| l.starts_with('['));
        if current == table && table_ends && !done {
            if let Some(v) = value {
                out.push(format!("{key} = {v}"));
            }
            done = true;
        }
    }
    out.join("\n") + "\n"
}

fn npy_config(dir: &Path, data_lines: &str, lambda: &str) -> String {
    format!(
        r#"
device = "cpu"
dtype = "f64"

[problem]
kind = "ridge"

[data]
source = "npy"
{data_lines}

[lambda]
init = {lambda}

[inner]
kind = "gd"
lr = 0.2
steps = 5

[method]
kind = "rad"
"#
    )
    .replace("DIR", &dir.display().to_string())
}

#[test]
fn config_errors_exit_2_name_the_key_and_write_nothing() {
    let dir = scratch("errors");
    // Valid npy data, plus broken variants.
    let save = |name: &str, data: &[f64], shape: &[usize]| {
        blo::problems::data::write_npy(&dir.join(name), data, shape).unwrap();
    };
    let x: Vec<f64> = (0..24).map(|i| (i as f64 * 0.37).sin()).collect();
    save("x.npy", &x, &[8, 3]);
    save("y.npy", &[0.5; 8], &[8]);
    save("y7.npy", &[0.5; 7], &[7]);
    save("x4.npy", &[0.1; 32], &[8, 4]);
    let mut with_nan = x.clone();
    with_nan[5] = f64::NAN;
    save("xnan.npy", &with_nan, &[8, 3]);
    save("lam2.npy", &[0.0, 1.0], &[2]);
    std::fs::write(dir.join("junk.npy"), b"not an npy file").unwrap();
    let good = "x_train = \"DIR/x.npy\"\ny_train = \"DIR/y.npy\"\nx_val = \"DIR/x.npy\"\ny_val = \"DIR/y.npy\"";
    // Sanity: the unbroken configs run.
    for (name, cfg) in [
        ("ok-synthetic", RIDGE.to_string()),
        ("ok-npy", npy_config(&dir, good, "0.0")),
    ] {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, cfg).unwrap();
        let o = run(&path, &dir.join(format!("{name}.json")));
        assert!(o.status.success(), "{name}: {}", text(&o));
        std::fs::remove_file(dir.join(format!("{name}.json"))).unwrap();
    }
    let _ = std::fs::remove_file(dir.join("h.npy"));

    let cases: Vec<(&str, String, &str)> = vec![
        // Unknown keys, at the top level and in a table.
        (
            "unknown-top",
            format!("colour = \"red\"\n{RIDGE}"),
            "colour",
        ),
        ("unknown-key", edit("method", "kk", Some("3")), "method.kk"),
        // Wrong types.
        (
            "type-int",
            edit("inner", "steps", Some("\"ten\"")),
            "inner.steps",
        ),
        ("type-float", edit("inner", "lr", Some("true")), "inner.lr"),
        (
            "type-device",
            format!("device = 1.5\n{}", RIDGE.replace("device = \"cpu\"\n", "")),
            "device",
        ),
        (
            "type-kind",
            edit("method", "kind", Some("\"newton\"")),
            "method.kind",
        ),
        // Missing keys and tables.
        ("missing-key", edit("method", "iters", None), "method.iters"),
        (
            "missing-table",
            RIDGE.replace("[problem]\nkind = \"ridge\"\n", ""),
            "problem",
        ),
        // Non-positive step sizes and NaN.
        ("lr-zero", edit("inner", "lr", Some("0.0")), "inner.lr"),
        ("lr-negative", edit("outer", "lr", Some("-1.0")), "outer.lr"),
        ("lr-nan", edit("inner", "lr", Some("nan")), "inner.lr"),
        (
            "momentum-range",
            edit("inner", "kind", Some("\"momentum\"\nmomentum = 1.5")),
            "inner.momentum",
        ),
        (
            "lambda-nan",
            format!("{RIDGE}\n[lambda]\ninit = nan\n"),
            "lambda.init",
        ),
        // K = 0.
        (
            "cg-iters-0",
            edit("method", "iters", Some("0")),
            "method.iters",
        ),
        (
            "trad-k-0",
            edit("method", "kind", Some("\"trad\"\nk = 0")).replace("iters = 3\n", ""),
            "method.k",
        ),
        (
            "neumann-k-0",
            edit("method", "kind", Some("\"neumann\"\nk = 0\neta = 0.5"))
                .replace("iters = 3\n", ""),
            "method.k",
        ),
        (
            "neumann-eta-0",
            edit("method", "kind", Some("\"neumann\"\nk = 3\neta = 0.0"))
                .replace("iters = 3\n", ""),
            "method.eta",
        ),
        (
            "trad-k-above-T",
            edit("method", "kind", Some("\"trad\"\nk = 6")).replace("iters = 3\n", ""),
            "method.k",
        ),
        // Keys that exist but do not apply, and impossible combinations.
        (
            "not-applicable",
            edit("method", "eta", Some("0.5")),
            "method.eta",
        ),
        (
            "data-not-applicable",
            edit("data", "corruption", Some("0.5")),
            "data.corruption",
        ),
        (
            "f64-on-gpu",
            RIDGE.replace("device = \"cpu\"", "device = \"gpu\""),
            "dtype",
        ),
        (
            "implicit-too-large",
            RIDGE
                .replace("features = 3", "features = 1100")
                .replace("kind = \"cg\"\niters = 3", "kind = \"implicit\""),
            "data.features",
        ),
        (
            "outer-needs-kind",
            edit("outer", "kind", None),
            "outer.kind",
        ),
        // Files: missing, unreadable, wrong shapes, NaN inside, λ of the wrong length.
        (
            "npy-missing",
            npy_config(
                &dir,
                &good.replace("DIR/x.npy\"\ny_train", "DIR/nope.npy\"\ny_train"),
                "0.0",
            ),
            "data.x_train",
        ),
        (
            "npy-junk",
            npy_config(
                &dir,
                &good.replace("y_val = \"DIR/y.npy\"", "y_val = \"DIR/junk.npy\""),
                "0.0",
            ),
            "data.y_val",
        ),
        (
            "npy-rows",
            npy_config(
                &dir,
                &good.replace("y_train = \"DIR/y.npy\"", "y_train = \"DIR/y7.npy\""),
                "0.0",
            ),
            "data.y_train",
        ),
        (
            "npy-cols",
            npy_config(
                &dir,
                &good.replace("x_val = \"DIR/x.npy\"", "x_val = \"DIR/x4.npy\""),
                "0.0",
            ),
            "data.x_val",
        ),
        (
            "npy-rank",
            npy_config(
                &dir,
                &good.replace("x_train = \"DIR/x.npy\"", "x_train = \"DIR/y.npy\""),
                "0.0",
            ),
            "data.x_train",
        ),
        (
            "npy-nan",
            npy_config(
                &dir,
                &good.replace("x_train = \"DIR/x.npy\"", "x_train = \"DIR/xnan.npy\""),
                "0.0",
            ),
            "data.x_train",
        ),
        (
            "npy-missing-key",
            npy_config(&dir, &good.replace("y_val = \"DIR/y.npy\"", ""), "0.0"),
            "data.y_val",
        ),
        (
            "lambda-length",
            npy_config(&dir, good, "\"DIR/lam2.npy\""),
            "lambda.init",
        ),
        (
            "lambda-file-missing",
            npy_config(&dir, good, "\"DIR/nope.npy\""),
            "lambda.init",
        ),
        // The inner starting point: a file of the wrong length, a missing file; and
        // zero inner steps for a method that differentiates through them.
        (
            "init-length",
            edit("inner", "init", Some("\"DIR/lam2.npy\""))
                .replace("DIR", &dir.display().to_string()),
            "inner.init",
        ),
        (
            "init-missing",
            edit("inner", "init", Some("\"DIR/nope.npy\""))
                .replace("DIR", &dir.display().to_string()),
            "inner.init",
        ),
        (
            "steps-0-rad",
            RIDGE
                .replace("steps = 5", "steps = 0")
                .replace("kind = \"cg\"\niters = 3", "kind = \"rad\""),
            "inner.steps",
        ),
        // The inner solve to tolerance: tol ≤ 0, with a method that differentiates
        // through the steps, without max_steps, with steps too; max_steps without tol.
        (
            "tol-zero",
            RIDGE.replace("steps = 5", "tol = 0.0\nmax_steps = 100"),
            "inner.tol",
        ),
        (
            "tol-with-rad",
            RIDGE
                .replace("steps = 5", "tol = 1e-6\nmax_steps = 100")
                .replace("kind = \"cg\"\niters = 3", "kind = \"rad\""),
            "inner.tol",
        ),
        (
            "tol-needs-max-steps",
            RIDGE.replace("steps = 5", "tol = 1e-6"),
            "inner.max_steps",
        ),
        (
            "tol-and-steps",
            RIDGE.replace("steps = 5", "steps = 5\ntol = 1e-6\nmax_steps = 100"),
            "inner.steps",
        ),
        (
            "max-steps-without-tol",
            RIDGE.replace("steps = 5", "steps = 5\nmax_steps = 100"),
            "inner.max_steps",
        ),
        (
            "solver-without-tol",
            RIDGE.replace("steps = 5", "steps = 5\nsolver = \"newton\""),
            "inner.solver",
        ),
        (
            "solver-unknown",
            RIDGE.replace(
                "steps = 5",
                "tol = 1e-6\nmax_steps = 100\nsolver = \"lbfgs\"",
            ),
            "inner.solver",
        ),
        // Output next to a directory that does not exist.
        (
            "out-dir",
            RIDGE.replace("\"h.npy\"", "\"no/such/dir/h.npy\""),
            "hypergradient_out",
        ),
    ];
    for (name, cfg, key) in &cases {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, cfg).unwrap();
        let out = dir.join(format!("{name}.json"));
        let o = run(&path, &out);
        let stderr = String::from_utf8_lossy(&o.stderr);
        eprintln!("{name}: {}", stderr.trim());
        assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o));
        assert!(
            stderr.contains(&format!("`{key}`")),
            "{name}: the message must name `{key}`: {stderr}"
        );
        assert!(
            stderr.contains(&path.display().to_string()),
            "{name}: the message must name the file: {stderr}"
        );
        assert!(!out.exists(), "{name}: wrote a results file");
        assert!(!dir.join("h.npy").exists(), "{name}: wrote a hypergradient");
    }
    // A syntax error names the line; a missing config file is a config error too.
    let path = dir.join("syntax.toml");
    std::fs::write(&path, "device = \"cpu\"\n[method\n").unwrap();
    let o = run(&path, &dir.join("syntax.json"));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("syntax.toml:2:"),
        "{}",
        text(&o)
    );
    let o = run(&dir.join("absent.toml"), &dir.join("absent.json"));
    assert_eq!(o.status.code(), Some(2));
    assert!(!dir.join("absent.json").exists() && !dir.join("syntax.json").exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_failure_inside_blo_exits_1_and_writes_nothing() {
    let dir = scratch("diverge");
    // A valid config whose inner optimizer diverges (the step size is far above 2/L).
    let path = dir.join("diverge.toml");
    std::fs::write(
        &path,
        edit("inner", "lr", Some("1e6")).replace("steps = 5", "steps = 40"),
    )
    .unwrap();
    let out = dir.join("diverge.json");
    let o = run(&path, &out);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("diverged"),
        "{}",
        text(&o)
    );
    assert!(!out.exists() && !dir.join("h.npy").exists());

    // An inner solve to a tolerance it cannot reach within max_steps.
    let path = dir.join("max-steps.toml");
    std::fs::write(
        &path,
        RIDGE.replace("steps = 5", "tol = 1e-14\nmax_steps = 10\ncheck_every = 5"),
    )
    .unwrap();
    let out = dir.join("max-steps.json");
    let o = run(&path, &out);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("max_steps = 10"), "{}", text(&o));
    assert!(!out.exists() && !dir.join("h.npy").exists());
    std::fs::remove_dir_all(&dir).ok();
}

/// `--profile` prints the run's GPU profile per family and writes it into the results,
/// with the same outcome as an unprofiled run; on the CPU it is a usage error (exit 2,
/// nothing written).
#[test]
fn run_profile_reports_the_kernels_of_the_run() {
    let dir = scratch("profile");
    let cpu_config = examples().join("ridge-cg.toml");
    let out = dir.join("cpu.json");
    let o = blo()
        .arg("run")
        .arg(&cpu_config)
        .arg("--out")
        .arg(&out)
        .arg("--profile")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--profile needs a GPU device"),
        "{}",
        text(&o)
    );
    assert!(!out.exists());
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let timed = gpu.gpu_context().unwrap().has_timestamps();
    let config = examples().join("hyper-cleaning-gpu.toml");
    let plain = dir.join("plain.json");
    assert!(run(&config, &plain).status.success());
    let profiled = dir.join("profiled.json");
    let o = blo()
        .arg("run")
        .arg(&config)
        .arg("--out")
        .arg(&profiled)
        .arg("--profile")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let shown = text(&o);
    assert!(shown.contains("GPU profile of the run"), "{shown}");
    for family in ["matvec", "loss", "fused", "reduce"] {
        assert!(
            shown.lines().any(|l| l.starts_with(family)),
            "{family}: {shown}"
        );
    }
    let (p, r) = (json(&profiled), json(&plain));
    assert!(r["gpu_profile"].is_null());
    assert_eq!(
        p["final_lambda"], r["final_lambda"],
        "profiling changed the result"
    );
    assert_eq!(p["gpu_profile"]["timestamps"], timed);
    let kernels = p["gpu_profile"]["kernels"].as_array().unwrap();
    let dispatches: u64 = kernels
        .iter()
        .map(|k| k["dispatches"].as_u64().unwrap())
        .sum();
    assert!(dispatches > 100, "{kernels:?}");
}

#[test]
fn the_demo_code_path_runs_at_tiny_size() {
    let dir = scratch("demo");
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
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    for m in ["rad", "trad", "forward", "cg", "neumann", "uniform"] {
        assert!(stdout.contains(m), "the table lacks {m}: {stdout}");
    }
    let r = json(&dir.join("blo-demo.json"));
    let methods = r["methods"].as_array().unwrap();
    assert!(methods.len() >= 5);
    for m in methods {
        assert_eq!(m["results"]["trace"].as_array().unwrap().len(), 2);
        assert!(m["results"]["metrics"]["test_accuracy"].as_f64().is_some());
    }
    assert!(
        r["baseline"]["results"]["metrics"]["test_accuracy"]
            .as_f64()
            .is_some()
    );
    let svg = std::fs::read_to_string(dir.join("blo-demo.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.matches("<polyline").count() == methods.len());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_readme_config_example_is_valid() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("## The experiment config format")
        .nth(1)
        .expect("the README has the config section");
    let toml = section
        .split("```toml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("the section has a toml example");
    let file = Path::new("README.md");
    let config = Config::from_toml_str(toml, file).unwrap();
    blo::experiment::Experiment::from_config(config, file, Path::new(".")).unwrap();
}
