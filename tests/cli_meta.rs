//! `blo run` with meta-learning configs, through the binary: every example under
//! examples/configs/meta runs and writes its results; `metagradient_out` and
//! `metagradient_alpha_out` equal the library's Meta-SGD meta-gradient on the same
//! `.npy` tasks; bad input exits with code 2, names the key and writes nothing.

use std::path::{Path, PathBuf};

use blo::meta::{Activation, Mlp, TaskBatch, TaskLoss, meta_sgd};
use blo::problems::data::{read_npy, write_npy};
use blo::testing::assert_close;
use blo::{Device, Tensor};

mod common;
use common::{run, scratch, text};

fn examples() -> PathBuf {
    common::configs("meta")
}

#[test]
fn every_meta_example_config_runs_and_writes_its_results() {
    let dir = scratch("examples");
    let mut configs: Vec<PathBuf> = std::fs::read_dir(examples())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    configs.sort();
    let mut methods = std::collections::BTreeSet::new();
    for path in &configs {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let out = dir.join(format!("{name}.json"));
        let o = run(path, &out);
        assert!(o.status.success(), "{name} failed: {}", text(&o));
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        let steps = r["config"]["outer"]["steps"].as_u64().unwrap_or(0) as usize;
        let trace = r["trace"].as_array().unwrap();
        assert_eq!(trace.len(), steps + 1, "{name}: trace length");
        for s in trace {
            assert!(s["meta_loss"].as_f64().unwrap().is_finite(), "{name}");
        }
        if steps > 0 {
            let (first, last) = (
                r["initial_meta_loss"].as_f64().unwrap(),
                r["final_meta_loss"].as_f64().unwrap(),
            );
            assert!(
                last < first,
                "{name}: the meta-loss did not fall ({first} → {last})"
            );
        }
        for e in r["evaluation"].as_array().unwrap() {
            assert!(e["loss"].as_f64().unwrap().is_finite(), "{name}: {e}");
            if r["problem"] == "digits-fewshot" {
                let a = e["accuracy"].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&a), "{name}: accuracy {a}");
            }
        }
        let compared = r["comparison"].as_array().unwrap();
        assert_eq!(
            compared.len(),
            r["config"]["compare"].as_array().map_or(0, Vec::len),
            "{name}: one comparison per [[compare]]"
        );
        for c in compared {
            assert!(c["final_meta_loss"].as_f64().unwrap().is_finite(), "{name}");
            methods.insert(c["method"].as_str().unwrap().to_string());
        }
        if let Some(p) = r["config"]["plot_out"].as_str() {
            let svg = std::fs::read_to_string(dir.join(p)).unwrap();
            assert!(svg.starts_with("<svg"), "{name}: plot");
            // One curve per method.
            assert_eq!(
                svg.matches("<polyline").count(),
                1 + compared.len(),
                "{name}"
            );
        }
        methods.insert(r["method"].as_str().unwrap().to_string());
    }
    for m in [
        "maml", "fomaml", "meta-sgd", "imaml", "anil", "reptile", "l2f", "mt-net", "t-net",
        "warpgrad",
    ] {
        assert!(
            methods.contains(m),
            "no example config for {m}: {methods:?}"
        );
    }
}

fn npy(name: &str) -> (Vec<f64>, Vec<usize>) {
    let a = read_npy(&examples().join("../data").join(name)).unwrap();
    (a.data, a.shape)
}

#[test]
fn metagradient_out_equals_the_library_meta_gradient() {
    let dir = scratch("npy");
    let out = dir.join("r.json");
    let o = run(&examples().join("sinusoid-npy.toml"), &out);
    assert!(o.status.success(), "{}", text(&o));
    let got = read_npy(&dir.join("sinusoid-npy.metagradient.npy")).unwrap();
    let got_a = read_npy(&dir.join("sinusoid-npy.metagradient-alpha.npy")).unwrap();
    let dev = Device::cpu();
    let t = |(v, s): (Vec<f64>, Vec<usize>)| {
        let mut s = s;
        if s.len() == 2 {
            s.push(1);
        }
        Tensor::from_vec(v, &s, &dev).unwrap()
    };
    let tasks = TaskBatch::new(
        t(npy("meta_support_x.npy")),
        t(npy("meta_support_y.npy")),
        t(npy("meta_query_x.npy")),
        t(npy("meta_query_y.npy")),
        TaskLoss::Mse,
    )
    .unwrap();
    let model = Mlp::new(&[1, 8, 8, 1], Activation::Tanh).unwrap();
    let theta = t(npy("meta_theta0.npy"));
    let alpha = t(npy("meta_alpha0.npy"));
    let g = meta_sgd(&model, &tasks, &theta, &alpha, 3).unwrap();
    assert_eq!(got.shape, vec![97]);
    // The same f64 computation on the same inputs.
    assert_close(
        &got.data,
        &g.theta.to_vec::<f64>().unwrap(),
        1e-12,
        1e-14,
        "∂M/∂θ",
    );
    let want_a = g.alpha.unwrap().to_vec::<f64>().unwrap();
    assert_close(&got_a.data, &want_a, 1e-12, 1e-14, "∂M/∂α");
}

/// A copy of the npy example with `edit` applied, and data paths made absolute.
fn variant(dir: &Path, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(examples().join("sinusoid-npy.toml")).unwrap();
    let data = examples().join("../data");
    let text = text.replace("\"../data/", &format!("\"{}/", data.display()));
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, edit(text)).unwrap();
    path
}

/// The npy example with `[method]`'s body replaced and Meta-SGD's α keys dropped.
fn as_method(t: String, body: &str) -> String {
    t.replace("kind = \"meta-sgd\"", body)
        .replace("alpha_init", "# alpha_init")
        .replace("metagradient_alpha_out", "# metagradient_alpha_out")
}

#[test]
fn bad_meta_configs_exit_2_name_the_key_and_write_nothing() {
    let dir = scratch("bad");
    let bad_x = dir.join("bad_query_x.npy");
    write_npy(&bad_x, &[0.5; 3 * 6], &[3, 6]).unwrap();
    let short = dir.join("short.npy");
    write_npy(&short, &[0.01; 96], &[96]).unwrap();
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        (
            "widths",
            variant(&dir, "widths", |t| {
                t.replace("[1, 8, 8, 1]", "[1, 8, 9, 1]")
            }),
            "model.init",
        ),
        (
            "shapes",
            variant(&dir, "shapes", |t| {
                let q = examples().join("../data/meta_query_x.npy");
                t.replace(&q.display().to_string(), &bad_x.display().to_string())
            }),
            "data",
        ),
        (
            "alpha",
            variant(&dir, "alpha", |t| {
                let a = examples().join("../data/meta_alpha0.npy");
                t.replace(&a.display().to_string(), &short.display().to_string())
            }),
            "inner.alpha_init",
        ),
        (
            "zero-steps",
            variant(&dir, "zero", |t| {
                t.replace("steps = 3", "steps = 0")
                    .replace("kind = \"meta-sgd\"", "kind = \"reptile\"")
                    .replace("alpha_init", "# alpha_init")
                    .replace("metagradient_alpha_out", "# metagradient_alpha_out")
            }),
            "inner.steps",
        ),
        (
            "unknown-method-key",
            variant(&dir, "unknown-method", |t| {
                t.replace("kind = \"meta-sgd\"", "kind = \"meta-sgd\"\nlambda = 1.0")
            }),
            "method",
        ),
        (
            "warp-layers",
            variant(&dir, "warp-layers", |t| {
                as_method(t, "kind = \"warpgrad\"\nwarp_layers = [1, 3]")
            }),
            "method",
        ),
        (
            "warp-layers-twice",
            variant(&dir, "warp-twice", |t| {
                as_method(t, "kind = \"warpgrad\"\nwarp_layers = [1, 1]")
            }),
            "method",
        ),
        (
            "l2f-hidden",
            variant(&dir, "l2f-hidden", |t| {
                as_method(t, "kind = \"l2f\"\nhidden = 0")
            }),
            "method",
        ),
        (
            "mt-net-temperature",
            variant(&dir, "mt-net-temperature", |t| {
                as_method(t, "kind = \"mt-net\"\ntemperature = 0.0")
            }),
            "method",
        ),
        (
            "t-net-temperature",
            variant(&dir, "t-net-temperature", |t| {
                as_method(t, "kind = \"t-net\"\ntemperature = 1.0")
            }),
            "method",
        ),
        (
            "compared-warp-layers",
            variant(&dir, "compared-warp", |t| {
                format!(
                    "{}\n[[compare]]\nkind = \"warpgrad\"\nwarp_layers = [4]\n",
                    as_method(t, "kind = \"maml\"")
                )
            }),
            "compare[0]",
        ),
        (
            "unknown-key",
            variant(&dir, "unknown", |t| {
                t.replace("[inner]", "[inner]\nlr_typo = 1")
            }),
            "inner",
        ),
    ];
    for (what, config, key) in cases {
        let out = dir.join(format!("{what}-results.json"));
        let before: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let o = run(&config, &out);
        assert_eq!(o.status.code(), Some(2), "{what}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(key),
            "{what}: the error does not name `{key}`: {err}"
        );
        let after: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(before.len(), after.len(), "{what}: something was written");
    }
}

/// The six-method config prints one table: a header with the 10-shot columns after 1
/// and 10 steps, and one row per meta-learner with a finite MSE in each.
#[test]
fn the_six_meta_learners_print_one_table() {
    let dir = scratch("six");
    let o = run(&examples().join("sinusoid-six.toml"), &dir.join("r.json"));
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let header = out
        .lines()
        .find(|l| l.starts_with("method "))
        .unwrap_or_else(|| panic!("no table: {out}"));
    assert!(header.contains("MSE K=10 S=1") && header.contains("MSE K=10 S=10"));
    for m in ["maml", "fomaml", "meta-sgd", "l2f", "mt-net", "warpgrad"] {
        let row = out
            .lines()
            .find(|l| l.split(" | ").next().map(str::trim) == Some(m))
            .unwrap_or_else(|| panic!("no row for {m}: {out}"));
        let cells: Vec<&str> = row.split(" | ").collect();
        assert_eq!(cells.len(), 7, "{row}");
        assert_eq!(cells[1].trim(), "0.01 × 2", "{m}: the shared inner loop");
        for c in &cells[5..] {
            let mse: f64 = c.split(" ± ").next().unwrap().trim().parse().unwrap();
            assert!(mse.is_finite() && mse > 0.0, "{m}: {c}");
        }
    }
}

/// A `[[compare]]` table with `inner_lr` and `inner_steps` trains and evaluates with
/// them: its results equal those of the same method run as the main one with that
/// `[inner]`, and differ from the shared inner loop's; a bad `inner_lr` exits 2 naming
/// its key.
#[test]
fn compared_methods_take_their_own_inner_loop() {
    let dir = scratch("compare-inner");
    let base = std::fs::read_to_string(examples().join("sinusoid-fomaml.toml"))
        .unwrap()
        .replace("plot_out = \"sinusoid-fomaml.svg\"", "");
    let write = |name: &str, config: String| {
        let p = dir.join(format!("{name}.toml"));
        std::fs::write(&p, config).unwrap();
        p
    };
    let results = |name: &str, config: String| -> serde_json::Value {
        let out = dir.join(format!("{name}.json"));
        let o = run(&write(name, config), &out);
        assert!(o.status.success(), "{name}: {}", text(&o));
        serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
    };
    let compared = results(
        "compared",
        base.clone().replace(
            "[outer]",
            "[[compare]]\nkind = \"maml\"\ninner_lr = 0.02\ninner_steps = 3\n\n[[compare]]\nkind = \"maml\"\n\n[outer]",
        ),
    );
    let alone = results(
        "alone",
        base.replace("kind = \"fomaml\"", "kind = \"maml\"")
            .replace("lr = 0.01\nsteps = 2", "lr = 0.02\nsteps = 3"),
    );
    let own = &compared["comparison"][0];
    let shared = &compared["comparison"][1];
    assert_eq!(own["inner_lr"], 0.02);
    assert_eq!(own["inner_steps"], 3);
    assert_eq!(shared["inner_lr"], 0.01);
    assert_eq!(shared["inner_steps"], 2);
    assert_eq!(own["final_meta_loss"], alone["final_meta_loss"]);
    assert_eq!(own["evaluation"], alone["evaluation"]);
    assert_ne!(own["final_meta_loss"], shared["final_meta_loss"]);

    let bad = write(
        "bad",
        std::fs::read_to_string(dir.join("compared.toml"))
            .unwrap()
            .replace("inner_lr = 0.02", "inner_lr = -1.0"),
    );
    let out = dir.join("bad.json");
    let o = run(&bad, &out);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("compare[0].inner_lr"),
        "{}",
        text(&o)
    );
    assert!(!out.exists());
}
