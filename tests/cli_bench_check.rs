//! The `blo` command's `devices`, `bench` (with `--json` and `--compare`) and `check`
//! subcommands, run as a user runs them, plus the check machinery's ability to catch
//! a wrong kernel.

use std::path::PathBuf;
use std::process::{Command, Output};

use blo::check::{Check, Input, KERNEL_TOL, checks};
use blo::testing::gpu_or_skip;
use blo::{DType, Device, Error, Tensor};

fn blo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blo"))
        .args(args)
        .output()
        .expect("the blo binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A path in the temp dir unique to this process and `name`.
fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("blo-cli-{}-{name}", std::process::id()))
}

#[test]
fn devices_lists_the_cpu_backend() {
    let o = blo(&["devices"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("[cpu]"), "{out}");
    assert!(out.contains("best available:"), "{out}");
}

#[test]
fn check_on_the_cpu_passes_every_check() {
    let o = blo(&["check", "--device", "cpu"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    let passes = out.lines().filter(|l| l.ends_with(" pass")).count();
    assert_eq!(passes, checks().len(), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    // One line per check: name, relative error, tolerance, verdict.
    let line = out
        .lines()
        .find(|l| l.starts_with("matmul/tn "))
        .expect("a matmul/tn line");
    assert!(
        line.contains("rel err") && line.contains("tol 1e-4"),
        "{line}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("hypergrad/ridge/cg "))
        .expect("a hypergradient line");
    assert!(line.contains("tol 1e-3"), "{line}");
}

#[test]
fn check_on_the_gpu_passes_every_check() {
    let Some(gpu) = gpu_or_skip() else { return };
    let o = blo(&["check"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    assert!(out.contains("checking gpu:"), "{out}");
    // Every check once, and each family's checks again per other variant it can run.
    let all = checks();
    let variant_runs: usize = gpu
        .gpu_context()
        .expect("a GPU device")
        .kernel_variants()
        .iter()
        .filter(|v| v.runnable() && !v.default)
        .map(|v| {
            all.iter()
                .filter(|c| c.kernel_family() == Some(v.family))
                .count()
        })
        .sum();
    // With fusion on (the default), the elementwise, reduce and update checks run once
    // more unfused.
    let unfused_runs = all
        .iter()
        .filter(|c| matches!(c.kernel_family(), Some("elementwise" | "reduce" | "update")))
        .count();
    assert!(out.contains("@unfused"), "{out}");
    let passes = out.lines().filter(|l| l.ends_with(" pass")).count();
    assert_eq!(passes, all.len() + variant_runs + unfused_runs, "{out}");
}

#[test]
fn check_filter_and_bad_device_are_reported() {
    let o = blo(&["check", "--device", "cpu", "--only", "matmul/"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.lines().filter(|l| l.ends_with(" pass")).count() >= 4);
    assert!(out.lines().all(|l| !l.starts_with("unary/")), "{out}");
    let o = blo(&["check", "--device", "cpu", "--only", "no such check"]);
    assert_eq!(o.status.code(), Some(2));
    let o = blo(&["check", "--device", "tpu"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("cpu, gpu or an adapter index"),
        "{}",
        stderr(&o)
    );
    let o = blo(&["bench", "--device", "999"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// `--device` of `blo check`, `blo bench` and the demo takes the one grammar of
/// `blo::DeviceSpec`, the same as a config's `device` key.
#[test]
fn every_command_takes_the_same_device_spellings() {
    let check = |device: &str| blo(&["check", "--device", device, "--only", "unary/exp"]);
    let o = check(" CPU ");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("checking cpu "), "{}", stdout(&o));
    // `best` never fails: a hardware GPU, else the CPU.
    let o = check("best");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for args in [
        &["check", "--device", ""][..],
        &["bench", "--quick", "--device", " "],
        &["--device", "", "--outer-steps", "1"],
    ] {
        let o = blo(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("best, cpu, gpu"), "{}", stderr(&o));
    }
    // A name no adapter has: an error that spells out the grammar.
    let o = blo(&["bench", "--quick", "--device", "no such adapter"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("\"no such adapter\"") && stderr(&o).contains("an adapter index"),
        "{}",
        stderr(&o)
    );
    if let Some(dev) = gpu_or_skip() {
        // Part of the adapter's name, in another case, and its index.
        let name = dev.gpu_context().unwrap().info().name.clone();
        let word = name.split_whitespace().next().unwrap().to_uppercase();
        for device in [word.as_str(), "0"] {
            let o = check(device);
            assert_eq!(o.status.code(), Some(0), "{device}: {}", stderr(&o));
            assert!(stdout(&o).starts_with("checking gpu:"), "{}", stdout(&o));
        }
    }
}

/// Runs `blo bench --quick` on `device` and returns the JSON file it wrote, after
/// checking that every record holds the documented keys.
fn quick_bench(device: &str, name: &str) -> (PathBuf, Vec<String>) {
    let path = temp(name);
    let o = blo(&[
        "bench",
        "--quick",
        "--device",
        device,
        "--json",
        path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let text = std::fs::read_to_string(&path).expect("the JSON file was written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    for key in ["blo_version", "git_commit", "date", "device"] {
        assert!(v[key].is_string(), "{key} in {text}");
    }
    assert_eq!(v["blo_version"], env!("CARGO_PKG_VERSION"));
    for key in ["name", "backend", "device_type", "driver"] {
        assert!(v["adapter"][key].is_string(), "adapter.{key} in {text}");
    }
    assert!(v["adapter"]["vendor"].is_u64());
    let results = v["results"].as_array().expect("a results array");
    assert!(results.len() >= 10, "{text}");
    let mut names = Vec::new();
    for r in results {
        assert!(r["name"].is_string(), "{r}");
        assert!(r["device"].is_string(), "{r}");
        let size = r["size"].as_array().expect("size is an array");
        assert!(!size.is_empty() && size.iter().all(|s| s.is_u64()), "{r}");
        assert!(r["median_ms"].as_f64().is_some_and(|t| t > 0.0), "{r}");
        for key in ["gflops", "gbps"] {
            assert!(r[key].is_null() || r[key].is_f64(), "{key} in {r}");
        }
        names.push(r["name"].as_str().unwrap().to_string());
    }
    for want in [
        "ceiling_fma",
        "ceiling_copy",
        "matmul",
        "add",
        "exp",
        "sum",
        "dispatch_overhead",
        "hvp_mlp",
        "cg_iteration_mlp",
        "hypergrad_ridge_rad",
        "hypergrad_ridge_cg",
        "hypergrad_cleaning_rad",
        "hypergrad_cleaning_cg",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    (path, names)
}

#[test]
fn bench_quick_writes_json_and_compare_tables_it() {
    let (cpu, mut names) = quick_bench("cpu", "cpu.json");
    let second = match gpu_or_skip() {
        Some(_) => {
            let (gpu, gpu_names) = quick_bench("gpu", "gpu.json");
            names.extend(gpu_names);
            gpu
        }
        None => cpu.clone(),
    };
    let o = blo(&[
        "bench",
        "--compare",
        cpu.to_str().unwrap(),
        second.to_str().unwrap(),
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    for n in &names {
        assert!(
            out.lines().any(|l| l.starts_with(n.as_str())),
            "{n}:\n{out}"
        );
    }
    assert!(out.contains("[2]/[1]"), "{out}");

    // A corrupted file, or a missing one, is a clear error with exit code 2.
    let bad = temp("corrupt.json");
    std::fs::write(&bad, "{\"blo_version\": \"0.1.0\", \"results\": [").unwrap();
    let o = blo(&[
        "bench",
        "--compare",
        cpu.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains(bad.to_str().unwrap()) && err.contains("not a blo bench JSON file"),
        "{err}"
    );
    let missing = temp("missing.json");
    let o = blo(&["bench", "--compare", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read"), "{}", stderr(&o));
    for p in [cpu, second, bad] {
        let _ = std::fs::remove_file(p);
    }
}

/// The dispatch results (issue #12): on a GPU, dispatches per step with fusion on and
/// off, the host time per recorded dispatch and the raw wgpu dispatch floor as a third
/// ceiling; on the CPU the counts are skipped, not an error; and a file written before
/// these fields existed still loads in `--compare`.
#[test]
fn bench_reports_dispatches_per_step_and_the_dispatch_floor() {
    let o = blo(&[
        "bench",
        "--quick",
        "--device",
        "cpu",
        "--only",
        "dispatches",
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    for name in ["dispatches_ridge", "dispatches_cleaning"] {
        assert!(out.contains(&format!("skipped {name} ")), "{out}");
    }
    if gpu_or_skip().is_none() {
        return;
    }
    let path = temp("dispatches.json");
    let o = blo(&[
        "bench",
        "--quick",
        "--device",
        "gpu",
        "--only",
        "dispatch",
        "--json",
        path.to_str().unwrap(),
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    for line in [
        "µs per dispatch (raw wgpu chain)",
        "└ dispatches fused / unfused: per inner GD step",
        "µs per recorded dispatch",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let record = |name: &str| {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {v}"))
            .clone()
    };
    let positive = |x: &serde_json::Value| x.as_f64().is_some_and(|x| x > 0.0 && x.is_finite());
    let floor = &v["ceilings"]["dispatch_us"];
    assert!(positive(floor), "{v}");
    assert_eq!(&record("ceiling_dispatch")["per_op_us"], floor);
    let overhead = record("dispatch_overhead");
    for key in ["host_us_per_dispatch", "per_op_us", "fraction_of_ceiling"] {
        assert!(positive(&overhead[key]), "{key}: {overhead}");
    }
    // The fraction is the raw floor over blo's time per dispatch.
    let fraction = floor.as_f64().unwrap() / overhead["per_op_us"].as_f64().unwrap();
    assert!((overhead["fraction_of_ceiling"].as_f64().unwrap() - fraction).abs() < 1e-9);
    for name in ["dispatches_ridge", "dispatches_cleaning"] {
        let counts = &record(name)["dispatch_counts"];
        for step in ["gd_step", "cg_iteration", "rad_step"] {
            let (fused, unfused) = (&counts["fused"][step], &counts["unfused"][step]);
            assert!(
                positive(fused) && positive(unfused),
                "{name}.{step}: {counts}"
            );
            assert!(
                fused.as_f64() <= unfused.as_f64(),
                "{name}.{step}: fusion adds dispatches: {counts}"
            );
        }
    }

    // The same file as blo wrote it before these fields: no dispatch floor, counts or
    // host time, no results that carry them.
    let mut old = v.clone();
    old["ceilings"]
        .as_object_mut()
        .unwrap()
        .remove("dispatch_us");
    let results = old["results"].as_array_mut().unwrap();
    results.retain(|r| {
        let name = r["name"].as_str().unwrap();
        !name.starts_with("dispatches_") && name != "ceiling_dispatch"
    });
    for r in results.iter_mut() {
        r.as_object_mut().unwrap().remove("host_us_per_dispatch");
    }
    let old_path = temp("dispatches-old.json");
    std::fs::write(&old_path, serde_json::to_string(&old).unwrap()).unwrap();
    let o = blo(&[
        "bench",
        "--compare",
        old_path.to_str().unwrap(),
        path.to_str().unwrap(),
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    let line = |start: &str| {
        out.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("{start}: {out}"))
            .to_string()
    };
    assert!(
        !line("[1]").contains("raw wgpu") && line("[2]").contains("raw wgpu"),
        "{out}"
    );
    assert!(line("dispatches_ridge").contains(" fused"), "{out}");
    // The old file has no floor, so no percentage for dispatch_overhead; the new one does.
    assert_eq!(line("dispatch_overhead").matches('%').count(), 1, "{out}");
    for p in [path, old_path] {
        let _ = std::fs::remove_file(p);
    }
}

/// Hostile uses of `blo bench` (issue #13): an `--only` that matches nothing and an
/// unwritable `--json` are usage errors before anything is measured; `--compare`
/// recomputes fractions from each file's figures and never prints a file's control
/// characters.
#[test]
fn bench_rejects_bad_arguments_up_front_and_compare_is_safe() {
    let o = blo(&[
        "bench",
        "--quick",
        "--device",
        "cpu",
        "--only",
        "no_such_result",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("matches no result") && stderr(&o).contains("matmul"));
    let o = blo(&[
        "bench",
        "--quick",
        "--device",
        "cpu",
        "--json",
        "/nonexistent-dir/x.json",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    assert!(
        !stdout(&o).contains("ceiling"),
        "it measured before failing"
    );

    // A report whose stored fraction lies and whose names carry terminal escapes.
    let path = temp("hostile.json");
    let o = blo(&[
        "bench",
        "--quick",
        "--device",
        "cpu",
        "--only",
        "ceiling",
        "--json",
        path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let gflops = v["ceilings"]["gflops"].as_f64().unwrap();
    let fake = serde_json::json!({
        "name": "matmul\u{1b}[31m", "size": [8, 8, 8], "device": "cpu",
        "median_ms": 1.0, "gflops": gflops / 4.0, "gbps": null,
        "fraction_of_ceiling": 0.99, "per_op_us": null, "repeats": 3,
        "min_ms": 1.0, "max_ms": 1.0
    });
    v["results"].as_array_mut().unwrap().push(fake);
    v["adapter"]["name"] = serde_json::json!("evil\u{1b}]0;title\u{7}");
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
    let o = blo(&["bench", "--compare", path.to_str().unwrap()]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    assert!(out.contains("\\u{1b}"), "{out}");
    assert!(out.contains(" 25%") && !out.contains(" 99%"), "{out}");
    let _ = std::fs::remove_file(path);
}

/// `blo tune` times every runnable matmul variant per class, prints the winners and
/// keeps them in the cache a later context reads; the CPU and `--mode off` are usage
/// errors.
#[test]
fn tune_prints_and_caches_the_winners() {
    let o = blo(&["tune", "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("choose a GPU device"), "{}", stderr(&o));
    let o = blo(&["tune", "--mode", "off"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = blo(&["tune", "--mode", "fast"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("off, quick or full"), "{}", stderr(&o));
    if gpu_or_skip().is_none() {
        return;
    }
    let dir = temp("tune-cache");
    let _ = std::fs::remove_dir_all(&dir);
    let tune = || {
        Command::new(env!("CARGO_BIN_EXE_blo"))
            .args(["tune", "--max-size", "256"])
            .env("BLO_CACHE_DIR", &dir)
            .output()
            .unwrap()
    };
    let o = tune();
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    for flags in ["ta0 tb0", "ta1 tb0", "ta0 tb1", "ta1 tb1"] {
        assert!(
            out.contains(&format!("matmul m256 k256 n256 {flags} b1")),
            "{flags}: {out}"
        );
    }
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(files.len(), 1, "one cache file per adapter");
    // A second run finds everything in the cache: the same table.
    let again = tune();
    assert_eq!(stdout(&again), out);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--profile` adds each result's per-kernel profile to the table and the JSON, and is a
/// usage error on the CPU backend.
#[test]
fn bench_profile_reports_kernels_per_family() {
    let o = blo(&["bench", "--quick", "--device", "cpu", "--profile"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--profile needs a GPU"),
        "{}",
        stderr(&o)
    );
    let Some(gpu) = gpu_or_skip() else {
        return;
    };
    let timed = gpu.gpu_context().unwrap().has_timestamps();
    let path = temp("profile.json");
    let o = blo(&[
        "bench",
        "--quick",
        "--device",
        "gpu",
        "--only",
        "hypergrad_ridge_cg",
        "--profile",
        "--json",
        path.to_str().unwrap(),
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains("└ "), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let rec = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "hypergrad_ridge_cg")
        .expect("the result ran");
    let kernels = rec["profile"]["kernels"].as_array().expect("a profile");
    assert_eq!(rec["profile"]["timestamps"], timed);
    let families: Vec<&str> = kernels
        .iter()
        .map(|k| k["family"].as_str().unwrap())
        .collect();
    // Ridge's hypergradient multiplies by X and Xᵀ and fuses the rest.
    for want in ["matvec", "fused"] {
        assert!(families.contains(&want), "{want}: {families:?}");
    }
    // The losses' reductions run inside fused kernels, named by their ops.
    assert!(
        kernels
            .iter()
            .any(|k| k["kernel"].as_str().unwrap().contains("sum_sq")),
        "{kernels:?}"
    );
    for k in kernels {
        assert!(k["dispatches"].as_u64().unwrap() >= 1, "{k}");
        assert_eq!(k["gpu_ms"].is_f64(), timed, "{k}");
    }
    let _ = std::fs::remove_file(path);
}

/// A "kernel" that computes exp and then corrupts its f32 result the way a broken
/// driver might; the f64 oracle side computes it correctly.
fn broken_exp(kind: &'static str) -> Check {
    Check::new(
        format!("broken/{kind}"),
        KERNEL_TOL,
        vec![Input::Uniform(vec![7, 37], 1)],
        move |t| {
            let y = t[0].exp()?;
            if t[0].dtype() == DType::F64 {
                return Ok(vec![y]);
            }
            let dev = t[0].device();
            let n = y.numel();
            let mut v = y.to_vec::<f32>()?;
            match kind {
                // Half the elements off by 1e-3 relative: invisible in a plot, ten
                // times the tolerance.
                "perturbed" => {
                    for x in v.iter_mut().take(n / 2) {
                        *x *= 1.0 + 1e-3;
                    }
                }
                "unwritten" => v[n - 1] = f32::NAN,
                "wrong_shape" => return Ok(vec![y.slice(0, n - 1)?]),
                "error" => {
                    return Err(Error::InvalidArgument {
                        op: "broken",
                        msg: "the device failed".into(),
                    });
                }
                "panic" => panic!("a broken kernel panicked"),
                _ => {}
            }
            Ok(vec![Tensor::from_vec(v, &[7, 37], &dev)?])
        },
    )
}

#[test]
fn a_wrong_kernel_is_caught_by_the_check_machinery() {
    let mut devices = vec![Device::Cpu];
    devices.extend(gpu_or_skip());
    for dev in &devices {
        let ok = broken_exp("none").run(dev);
        assert!(ok.passed, "{dev}: the unbroken control must pass: {ok:?}");
        for kind in ["perturbed", "unwritten", "wrong_shape", "error", "panic"] {
            let r = broken_exp(kind).run(dev);
            assert!(!r.passed, "{dev}: {kind} passed: {r:?}");
            assert!(
                r.line().ends_with("FAIL") || r.error.is_some(),
                "{}",
                r.line()
            );
        }
        let r = broken_exp("perturbed").run(dev);
        assert!(r.rel_err > KERNEL_TOL && r.rel_err < 1e-2, "{r:?}");
        assert!(broken_exp("unwritten").run(dev).rel_err.is_nan());
        let e = broken_exp("error").run(dev).error.unwrap_or_default();
        assert!(e.contains("the device failed"), "{e}");
    }
}

/// exp with a 1e-3 relative bias in every backend (`shared`), in the CPU's f64 path only
/// (`f64_only`), or none, with or without a naive reference.
fn biased_exp(kind: &'static str, reference: bool) -> Check {
    let check = Check::new(
        format!("biased/{kind}"),
        KERNEL_TOL,
        vec![Input::Uniform(vec![7, 37], 1)],
        move |t| {
            let y = t[0].exp()?;
            let biased = match kind {
                "shared" => true,
                "f64_only" => t[0].dtype() == DType::F64,
                _ => false,
            };
            Ok(vec![if biased { y.scale(1.0 + 1e-3)? } else { y }])
        },
    );
    if reference {
        check.with_reference(|x| vec![x[0].iter().map(|v| v.exp()).collect()])
    } else {
        check
    }
}

#[test]
fn a_naive_reference_sees_what_the_f64_oracle_shares_with_the_device() {
    let mut devices = vec![Device::Cpu];
    devices.extend(gpu_or_skip());
    for dev in &devices {
        assert!(biased_exp("none", true).run(dev).passed, "{dev}: control");
        // A bug in the op itself is invisible against the same op in f64...
        let r = biased_exp("shared", false).run(dev);
        assert!(r.passed, "{dev}: {r:?}");
        // ...but not against the naive reference.
        let r = biased_exp("shared", true).run(dev);
        assert!(!r.passed && r.rel_err > KERNEL_TOL, "{dev}: {r:?}");
        // A bug in the f64 oracle alone fails the check although the device is right.
        let r = biased_exp("f64_only", true).run(dev);
        assert!(!r.passed && r.rel_err <= KERNEL_TOL, "{dev}: {r:?}");
        let e = r.error.unwrap_or_default();
        assert!(e.contains("CPU backend in f64"), "{e}");
    }
}
