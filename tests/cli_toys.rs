//! `blo run` with the toy configs of issue #17 (examples/configs/toys), through the
//! binary: each runs every method it lists and reaches what the papers report (BDA the
//! optimum of T1 where RAD stalls, every method T2's closed form, IAPTT-GM the optimum of
//! T3 where RAD does not); bad input exits with code 2, names the key and writes
//! nothing.

use std::path::PathBuf;

mod common;
use common::{run, scratch, text};

fn examples() -> PathBuf {
    common::configs("toys")
}

/// Final ‖x − x*‖ per method name.
fn distances(results: &serde_json::Value) -> Vec<(String, f64)> {
    results["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap().to_string(),
                r["final_distance"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_toy_config_runs_and_reaches_what_the_papers_report() {
    let dir = scratch("examples");
    for (name, want) in [
        // (method, bound on the final distance: below it when positive, above when negative)
        (
            "t1-bda-toy",
            vec![("bda", 1e-2), ("rad", -1.0), ("cg", -1.0)],
        ),
        (
            "t2-quadratic-toy",
            vec![("bda", 1e-3), ("rad", 1e-3), ("cg", 1e-3)],
        ),
        (
            "t3-iaptt-toy",
            vec![
                ("iaptt_gm", 1e-2),
                ("iaptt_gm (no truncation)", 1e-2),
                ("rad", -1.0),
            ],
        ),
    ] {
        let config = examples().join(format!("{name}.toml"));
        let out = dir.join(format!("{name}.json"));
        let o = run(&config, &out);
        assert!(o.status.success(), "{name} failed: {}", text(&o));
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        let got = distances(&r);
        assert_eq!(got.len(), want.len(), "{name}: {got:?}");
        for ((method, d), (want_method, bound)) in got.iter().zip(&want) {
            assert_eq!(method, want_method, "{name}");
            if *bound > 0.0 {
                assert!(d <= bound, "{name}: {method} ended {d} from x*");
            } else {
                assert!(*d > -bound, "{name}: {method} ended only {d} from x*");
            }
        }
        // Every run records each outer step and the final point, all finite.
        let steps = r["runs"][0]["steps"].as_array().unwrap();
        assert!(steps.len() > 100, "{name}");
        for key in ["outer_loss", "distance", "inner_loss"] {
            assert!(
                steps.iter().all(|s| s[key].as_f64().unwrap().is_finite()),
                "{key}"
            );
        }
        let optimum = r["optimum"].as_array().unwrap();
        assert_eq!(optimum.len(), r["n"].as_u64().unwrap() as usize);
    }
    // The plot of the configs that ask for one: three stacked panels, one line each per
    // method.
    let svg = std::fs::read_to_string(dir.join("t3-iaptt-toy.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 9, "{svg}");
}

#[test]
fn bad_toy_configs_exit_2_naming_the_key_and_write_nothing() {
    let dir = scratch("bad");
    let base = std::fs::read_to_string(examples().join("t3-iaptt-toy.toml")).unwrap();
    for (edit, key) in [
        (("decay = 0.95", "decay = 1.5"), "outer.decay"),
        (("n = 1", "n = 1\nx0 = 0.5"), "problem.x0"),
        (("n = 1", "n = 0"), "problem.n"),
        (("lr = 5e-4", "lr = -1.0"), "inner.lr"),
        (
            ("kind = \"rad\"", "kind = \"bda\"\nmu = 2.0"),
            "method[2].mu",
        ),
        (
            (
                "kind = \"iaptt_gm\"\n\n",
                "kind = \"iaptt_gm\"\ntruncte = true\n\n",
            ),
            "truncte",
        ),
    ] {
        assert!(base.contains(edit.0), "{edit:?}");
        let text_in = base.replacen(edit.0, edit.1, 1);
        let config = dir.join("bad.toml");
        std::fs::write(&config, text_in).unwrap();
        let out = dir.join("bad.json");
        let o = run(&config, &out);
        assert_eq!(o.status.code(), Some(2), "{key}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(key), "{key}: {err}");
        assert!(!out.exists(), "{key}: results written");
        assert!(
            !dir.join("t3-iaptt-toy.svg").exists(),
            "{key}: plot written"
        );
    }
}
