use super::*;
use crate::Tensor;
use crate::testing::{assert_close, fresh_gpu_or_skip};

fn info(name: &str) -> AdapterInfo {
    AdapterInfo {
        name: name.into(),
        vendor: 0x10de,
        backend: "Vulkan".into(),
        device_type: "DiscreteGpu".into(),
        driver: "NVIDIA".into(),
        driver_info: "580.159".into(),
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("blo-tune-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn entry(class: &str, winner: &str) -> TuneResult {
    TuneResult {
        class: class.into(),
        winner: winner.into(),
        times_us: vec![("tiled".into(), Some(10.0)), ("portable".into(), None)],
        timestamps: true,
    }
}

#[test]
fn shape_classes_round_up_to_powers_of_two() {
    assert_eq!(
        matmul_class(1000, 3, 17, false, true, false),
        "matmul m1024 k16 n32 ta0 tb1 b1"
    );
    assert_eq!(
        matmul_class(1024, 1025, 16, true, false, true),
        "matmul m1024 k2048 n16 ta1 tb0 bn"
    );
}

#[test]
fn modes_parse_or_say_what_is_valid() {
    assert_eq!("off".parse::<TuneMode>().unwrap(), TuneMode::Off);
    assert_eq!(" quick ".parse::<TuneMode>().unwrap(), TuneMode::Quick);
    assert_eq!("full".parse::<TuneMode>().unwrap(), TuneMode::Full);
    let e = "fast".parse::<TuneMode>().unwrap_err().to_string();
    assert!(
        e.contains("`fast`") && e.contains("off, quick or full"),
        "{e}"
    );
    assert!(TuneMode::Quick.budget() < TuneMode::Full.budget());
    assert!(TuneMode::Quick.reps() < TuneMode::Full.reps());
}

/// What a state saves, a state of the same adapter reads back; a corrupt file, one of
/// another adapter or version, or of another format is ignored with the reason.
#[test]
fn the_cache_round_trips_and_ignores_foreign_or_corrupt_files() {
    let dir = scratch("roundtrip");
    let me = info("NVIDIA H200");
    let path = cache_file(&dir, &me);
    assert_eq!(path, cache_file(&dir, &me), "the file name is stable");
    assert_ne!(path, cache_file(&dir, &info("AMD RX 7600")));
    assert_eq!(read_cache(&path, &me), Ok(None), "no file yet");
    let mut state = State {
        mode: TuneMode::Quick,
        path: Some(path.clone()),
        loaded: true,
        entries: BTreeMap::new(),
    };
    for class in [
        "matmul m256 k256 n256 ta0 tb0 b1",
        "matmul m1024 k16 n32 ta1 tb0 bn",
    ] {
        state.entries.insert(class.into(), entry(class, "tiled"));
    }
    state.save(&me);
    assert_eq!(read_cache(&path, &me), Ok(Some(state.entries.clone())));
    // Loading merges the file under what this process tuned.
    let mut fresh = State {
        mode: TuneMode::Quick,
        path: Some(path.clone()),
        loaded: false,
        entries: BTreeMap::from([(
            "matmul m256 k256 n256 ta0 tb0 b1".to_string(),
            entry("matmul m256 k256 n256 ta0 tb0 b1", "portable"),
        )]),
    };
    fresh.load(&me);
    assert_eq!(fresh.entries.len(), 2);
    assert_eq!(
        fresh.entries["matmul m256 k256 n256 ta0 tb0 b1"].winner,
        "portable"
    );

    let other = info("AMD RX 7600");
    let why = read_cache(&path, &other).unwrap_err();
    assert!(
        why.contains("belongs to") && why.contains("NVIDIA H200"),
        "{why}"
    );
    std::fs::write(&path, "{\"format\": 1, \"entries\": [").unwrap();
    let why = read_cache(&path, &me).unwrap_err();
    assert!(why.contains("not a blo tuning cache"), "{why}");
    let text = serde_json::to_string(&CacheFile {
        format: FORMAT + 1,
        blo_version: env!("CARGO_PKG_VERSION").into(),
        adapter: me.clone(),
        entries: BTreeMap::new(),
    })
    .unwrap();
    std::fs::write(&path, text).unwrap();
    let why = read_cache(&path, &me).unwrap_err();
    assert!(why.contains("format 2"), "{why}");
    // An ignored file does not stop loading, and the next save replaces it.
    let mut state2 = State {
        mode: TuneMode::Quick,
        path: Some(path.clone()),
        loaded: false,
        entries: BTreeMap::new(),
    };
    state2.load(&me);
    assert!(state2.entries.is_empty());
    state2.entries.insert("c".into(), entry("c", "tiled"));
    state2.save(&me);
    assert_eq!(read_cache(&path, &me).unwrap().unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(dir);
}

/// On the adapter: the first product of a class tunes it (every runnable variant timed,
/// the winner one of them, the result still the CPU's), the second reuses it, a new
/// context reads it from the file, and a forced family is never tuned.
#[test]
fn tuning_picks_a_checked_variant_and_remembers_it() {
    let Some(gpu) = fresh_gpu_or_skip() else {
        return;
    };
    let ctx = gpu.gpu_context().unwrap().clone();
    // Forced families are not tuned (BLO_KERNELS may force matmul for the whole suite).
    ctx.force_kernel("matmul", None).unwrap();
    let dir = scratch("gpu");
    ctx.set_tune_cache(Some(&dir));
    ctx.set_tune_mode(TuneMode::Quick);
    assert!(ctx.tuned().is_empty());
    let runnable: Vec<&str> = ctx
        .kernel_variants()
        .into_iter()
        .filter(|v| v.family == "matmul" && v.runnable())
        .map(|v| v.name)
        .collect();
    let (m, k, n) = (200, 256, 300);
    let a = Tensor::rand_uniform(&[m, k], -1.0, 1.0, 1, &gpu).unwrap();
    let b = Tensor::rand_uniform(&[k, n], -1.0, 1.0, 2, &gpu).unwrap();
    let want = a
        .to_device(&crate::Device::Cpu)
        .unwrap()
        .to_dtype(crate::DType::F64)
        .unwrap()
        .matmul(
            &b.to_device(&crate::Device::Cpu)
                .unwrap()
                .to_dtype(crate::DType::F64)
                .unwrap(),
        )
        .unwrap();
    let got = a.matmul(&b).unwrap();
    assert_close(
        &got.to_vec::<f64>().unwrap(),
        &want.to_vec::<f64>().unwrap(),
        1e-4,
        1e-4,
        "tuned matmul",
    );
    let tuned = ctx.tuned();
    assert_eq!(tuned.len(), 1, "{tuned:?}");
    let t = &tuned[0];
    assert_eq!(t.class, matmul_class(m, k, n, false, false, false));
    let timed: Vec<&str> = t.times_us.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(timed, runnable, "every runnable variant is a candidate");
    assert!(runnable.contains(&t.winner.as_str()));
    let best = t
        .times_us
        .iter()
        .filter_map(|(n, t)| t.map(|t| (n, t)))
        .min_by(|x, y| x.1.total_cmp(&y.1))
        .unwrap();
    assert_eq!(best.0, &t.winner);

    // Same class again: no tuning, one product's dispatch (poison fills off).
    ctx.set_poison(false);
    let before = ctx.dispatch_count();
    let again = a.matmul(&b).unwrap();
    ctx.sync().unwrap();
    assert_eq!(ctx.dispatch_count() - before, 1);
    assert_eq!(again.to_vec::<f32>().unwrap(), got.to_vec::<f32>().unwrap());

    // Another context on the same adapter reads the file.
    let Some(other) = fresh_gpu_or_skip() else {
        return;
    };
    let octx = other.gpu_context().unwrap();
    octx.set_tune_cache(Some(&dir));
    // (Times compare loosely: JSON may round a float's last digit.)
    let key = |r: &[TuneResult]| -> Vec<(String, String)> {
        r.iter()
            .map(|t| (t.class.clone(), t.winner.clone()))
            .collect()
    };
    assert_eq!(key(&octx.tuned()), key(&tuned));

    // A forced family is not tuned.
    octx.set_tune_mode(TuneMode::Quick);
    octx.force_kernel("matmul", Some("portable")).unwrap();
    let c = Tensor::rand_uniform(&[512, 512], -1.0, 1.0, 3, &other).unwrap();
    c.matmul(&c).unwrap();
    assert_eq!(octx.tuned().len(), 1);
    let _ = std::fs::remove_dir_all(dir);
}

/// A class's tuning is bounded: every candidate is measured once (a warm-up and one
/// timed run), and further rounds stop once the budget is spent. With runs of 0.2 s and
/// quick's 1 s budget, that first pass (3 × 0.4 s) already spends it.
#[test]
fn tuning_a_class_is_bounded_in_time() {
    let Some(gpu) = fresh_gpu_or_skip() else {
        return;
    };
    let ctx = gpu.gpu_context().unwrap();
    let candidates: Vec<_> = crate::backend::gpu::registry::MATMUL.variants.to_vec();
    assert!(candidates.len() >= 3);
    let mut calls = vec![0; candidates.len()];
    // An open profile makes the tuner time by the wall clock, which is what the sleeps
    // below spend (they dispatch nothing for timestamps to see).
    ctx.start_profile().unwrap();
    let r = ctx
        .tune_class("slow", &candidates, TuneMode::Quick, &mut |v| {
            let i = candidates.iter().position(|c| c.name == v.name).unwrap();
            calls[i] += 1;
            // The last candidate is the fastest.
            let ms = if i + 1 == candidates.len() { 200 } else { 250 };
            std::thread::sleep(Duration::from_millis(ms));
            Ok(())
        })
        .unwrap();
    ctx.finish_profile().unwrap();
    assert!(!r.timestamps);
    assert!(calls.iter().all(|&c| c == 2), "{calls:?}");
    assert!(r.times_us.iter().all(|(_, t)| t.is_some()), "{r:?}");
    assert_eq!(r.winner, candidates.last().unwrap().name, "{r:?}");
}

/// Narrow products are tuned too: the first large X·w of a class times every runnable
/// matvec variant and keeps the fastest; the product still matches the CPU.
#[test]
fn matvec_classes_are_tuned_among_the_runnable_variants() {
    let Some(gpu) = fresh_gpu_or_skip() else {
        return;
    };
    let ctx = gpu.gpu_context().unwrap().clone();
    ctx.force_kernel("matvec", None).unwrap();
    let dir = scratch("matvec");
    ctx.set_tune_cache(Some(&dir));
    ctx.set_tune_mode(TuneMode::Quick);
    let runnable: Vec<&str> = ctx
        .kernel_variants()
        .into_iter()
        .filter(|v| v.family == "matvec" && v.runnable())
        .map(|v| v.name)
        .collect();
    // 2·m·k ≥ 2²⁴ flops: large enough to be tuned.
    let (m, k) = (4099, 2048);
    let x = Tensor::rand_uniform(&[m, k], -1.0, 1.0, 5, &gpu).unwrap();
    let w = Tensor::rand_uniform(&[k, 1], -1.0, 1.0, 6, &gpu).unwrap();
    let got = x.matmul(&w).unwrap().to_vec::<f64>().unwrap();
    let cpu = |t: &Tensor| {
        t.to_device(&crate::Device::Cpu)
            .unwrap()
            .to_dtype(crate::DType::F64)
            .unwrap()
    };
    let want = cpu(&x).matmul(&cpu(&w)).unwrap().to_vec::<f64>().unwrap();
    assert_close(&got, &want, 1e-4, 1e-4, "tuned matvec");
    let tuned = ctx.tuned();
    if runnable.len() < 2 {
        assert!(tuned.is_empty(), "one candidate is not tuned: {tuned:?}");
        return;
    }
    assert_eq!(tuned.len(), 1, "{tuned:?}");
    assert_eq!(
        tuned[0].class,
        shape_class("matvec", m, k, 1, false, false, false)
    );
    let timed: Vec<&str> = tuned[0].times_us.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(timed, runnable);
    let _ = std::fs::remove_dir_all(dir);
}
