//! `blo tune`: tunes the tunable kernel families ahead of time on one adapter, for the
//! shape classes blo's benchmarks and problems use, and prints the table (also kept in
//! the adapter's tuning cache, which later runs read).

use std::process::ExitCode;

use blo::{Device, DeviceSpec, Tensor, TuneMode};

/// Arguments of `blo tune`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// cpu is refused (nothing to tune); gpu (the default), best, an adapter index from
    /// `blo devices`, or part of an adapter's name.
    #[arg(long, value_name = "DEVICE")]
    device: Option<DeviceSpec>,
    /// quick: 3 timed runs per candidate, square products up to 1024 and X·w, Xᵀ·r for
    /// X [4096, 4096]; full: 10 runs, up to 4096, batched products and X [20000, 1000] too.
    #[arg(long, value_name = "MODE", default_value = "quick")]
    mode: TuneMode,
    /// Tune again even for classes the cache already holds.
    #[arg(long)]
    retune: bool,
    /// Skip products larger than N in any dimension (a slow adapter's 4096³ products
    /// take minutes per candidate).
    #[arg(long, value_name = "N")]
    max_size: Option<usize>,
}

/// The products tuned: (batch, m, k, n), each with every transpose flag.
fn shapes(mode: TuneMode) -> Vec<(usize, usize, usize, usize)> {
    let sizes: &[usize] = match mode {
        TuneMode::Full => &[256, 512, 1024, 2048, 4096],
        _ => &[256, 1024],
    };
    let mut v: Vec<_> = sizes.iter().map(|&s| (1, s, s, s)).collect();
    if mode == TuneMode::Full {
        v.push((8, 256, 256, 256));
    }
    v
}

/// Runs `blo tune`.
pub fn run(args: Args) -> ExitCode {
    if args.mode == TuneMode::Off {
        eprintln!("error: --mode off tunes nothing: use quick or full");
        return ExitCode::from(2);
    }
    let device = match args.device.clone().unwrap_or(DeviceSpec::Gpu).open() {
        Ok(c) => c.device,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(ctx) = device.gpu_context().cloned() else {
        eprintln!("error: the CPU backend has no kernel variants to tune: choose a GPU device");
        return ExitCode::from(2);
    };
    ctx.set_tune_mode(args.mode);
    if args.retune
        && let Some(path) = ctx.tune_cache()
        && path.exists()
        && let Err(e) = std::fs::remove_file(&path)
    {
        eprintln!("error: cannot remove {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    eprintln!(
        "tuning {device} ({:?}), cache {}",
        args.mode,
        ctx.tune_cache()
            .map_or("none (no cache directory)".into(), |p| p
                .display()
                .to_string())
    );
    let max = args.max_size.unwrap_or(usize::MAX);
    for (batch, m, k, n) in shapes(args.mode)
        .into_iter()
        .filter(|&(_, m, k, n)| m.max(k).max(n) <= max)
    {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            eprintln!(
                "  matmul {batch}×{m}×{k}×{n} ta{} tb{}",
                u8::from(ta),
                u8::from(tb)
            );
            let run = || -> blo::Result<()> {
                let stack = |rows, cols, seed| {
                    let shape: Vec<usize> = if batch > 1 {
                        vec![batch, rows, cols]
                    } else {
                        vec![rows, cols]
                    };
                    Tensor::rand_uniform(&shape, -1.0, 1.0, seed, &device)
                };
                let a = if ta { stack(k, m, 1)? } else { stack(m, k, 1)? };
                let b = if tb { stack(n, k, 2)? } else { stack(k, n, 2)? };
                a.matmul_t(&b, ta, tb)?;
                device.sync()
            };
            if let Err(e) = run() {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    // Matrix–vector products, X·w and Xᵀ·r.
    let narrow: &[(usize, usize)] = match args.mode {
        TuneMode::Full => &[(4096, 4096), (20000, 1000)],
        _ => &[(4096, 4096)],
    };
    for &(m, k) in narrow.iter().filter(|&&(m, k)| m.max(k) <= max) {
        for trans in [false, true] {
            eprintln!("  matvec {m}×{k}{}", if trans { " transposed" } else { "" });
            let run = || -> blo::Result<()> {
                let x = Tensor::rand_uniform(&[m, k], -1.0, 1.0, 1, &device)?;
                let v =
                    Tensor::rand_uniform(&[if trans { m } else { k }, 1], -1.0, 1.0, 2, &device)?;
                x.matmul_t(&v, trans, false)?;
                device.sync()
            };
            if let Err(e) = run() {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    print!("{}", table(&ctx.tuned(), &device));
    ExitCode::SUCCESS
}

fn table(results: &[blo::TuneResult], device: &Device) -> String {
    let mut s = format!("tuned on {device}:\n");
    s += &format!(
        "{:<40} {:<14} candidates (µs per run)\n",
        "shape class", "winner"
    );
    for r in results {
        let times: Vec<String> = r
            .times_us
            .iter()
            .map(|(n, t)| match t {
                Some(t) => format!("{n} {t:.1}"),
                None => format!("{n} -"),
            })
            .collect();
        s += &format!(
            "{:<40} {:<14} {}{}\n",
            r.class,
            r.winner,
            times.join(", "),
            if r.timestamps { "" } else { " (wall time)" }
        );
    }
    s
}
