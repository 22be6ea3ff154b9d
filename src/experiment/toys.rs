//! Experiments on the problems with known optima beyond a unique inner minimiser
//! ([`crate::problems::toys`]): a TOML file whose `[problem] kind` is `"bda-toy"` (T1),
//! `"quadratic-toy"` (T2) or `"iaptt-toy"` (T3) ([`is_toy_config`]). It runs several
//! methods side by side from the same start and records, per outer step and method,
//! F(x_k, y_K), ‖x_k − x*‖ and the inner objective f(x_k, y_K).
//!
//! ```toml
//! device = "cpu"
//! dtype = "f64"
//! plot_out = "t1.svg"      # optional: the three curves per method, stacked
//! [problem]
//! kind = "bda-toy"         # or "quadratic-toy", "iaptt-toy"
//! n = 10                   # dimension (default: 100, 5 and 1)
//! y2_start = 0.0           # bda-toy: y₂⁰
//! x0 = 0.0                 # every element of x⁰ (default: 0, iaptt-toy 1)
//! [inner]
//! lr = 0.5                 # gradient descent on y
//! steps = 20
//! [outer]
//! steps = 300
//! lr = 0.5                 # SGD on x (IAPTT-GM: on x and z)
//! warm_start = true        # start each inner run at the last y (not IAPTT-GM)
//! decay_after = 400        # optional: lr × decay per step after this many steps
//! decay = 0.95
//! [[method]]
//! kind = "bda"             # any `[method]` of a bilevel config
//! mu = 0.5
//! [[method]]
//! kind = "iaptt_gm"        # IAPTT-GM; `truncate` (default true)
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::config::{DTypeName, DeviceSpec, MethodConfig};
use super::meta::{err, parse};
use crate::autodiff::no_grad;
use crate::bilevel::{
    IapttConfig, Inner, InnerOptimizer, Problem, hypergradient_from, iaptt_gradient,
};
use crate::device::Device;
use crate::error::Result;
use crate::problems::{BdaToy, IapttToy, QuadraticToy};
use crate::tensor::{DType, Tensor};

/// Whether the TOML text is a toy experiment (its `problem.kind` is one of the toys).
pub fn is_toy_config(text: &str) -> bool {
    let Ok(v) = text.parse::<toml::Table>() else {
        return false;
    };
    matches!(
        v.get("problem")
            .and_then(|p| p.get("kind"))
            .and_then(|k| k.as_str()),
        Some("bda-toy" | "quadratic-toy" | "iaptt-toy")
    )
}

/// A toy experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToyConfig {
    /// Where to run.
    #[serde(default)]
    pub device: DeviceSpec,
    /// `"f32"` (default) or `"f64"` (CPU only).
    #[serde(default)]
    pub dtype: DTypeName,
    /// `.svg` with F, ‖x − x*‖ and f per outer step, one line per method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plot_out: Option<PathBuf>,
    /// The problem.
    pub problem: ToyProblemConfig,
    /// Gradient descent on y.
    pub inner: ToyInnerConfig,
    /// The outer loop.
    pub outer: ToyOuterConfig,
    /// The methods, each run from the same start.
    pub method: Vec<toml::Table>,
}

/// `problem.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ToyKind {
    /// [`BdaToy`], T1.
    BdaToy,
    /// [`QuadraticToy`], T2.
    QuadraticToy,
    /// [`IapttToy`], T3.
    IapttToy,
}

/// `[problem]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToyProblemConfig {
    /// Which toy.
    pub kind: ToyKind,
    /// The dimension n (default 100 for T1, 5 for T2, 1 for T3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// bda-toy: every element of y₂⁰ (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y2_start: Option<f64>,
    /// Every element of x⁰ (default 0; iaptt-toy: the paper's 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x0: Option<f64>,
}

/// `[inner]`: gradient descent on y.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToyInnerConfig {
    /// Step size.
    pub lr: f64,
    /// Steps per outer step.
    pub steps: usize,
}

/// `[outer]`: projected SGD on x (and IAPTT-GM's z).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToyOuterConfig {
    /// Outer steps.
    pub steps: usize,
    /// Step size.
    pub lr: f64,
    /// Start each inner run at the previous run's last y (default false); IAPTT-GM
    /// learns its start instead.
    #[serde(default)]
    pub warm_start: bool,
    /// Steps at `lr` before it decays (default: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decay_after: Option<usize>,
    /// Factor per step after `decay_after`, in (0, 1] (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decay: Option<f64>,
}

/// `kind = "iaptt_gm"` in a `[[method]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IapttSettings {
    kind: String,
    /// Pessimistic trajectory truncation (default true).
    #[serde(default = "yes")]
    truncate: bool,
}

fn yes() -> bool {
    true
}

/// One method of a toy experiment.
#[derive(Debug, Clone, PartialEq)]
enum ToyMethod {
    Hypergradient(MethodConfig),
    Iaptt { truncate: bool },
}

impl ToyMethod {
    fn name(&self) -> String {
        match self {
            ToyMethod::Hypergradient(m) => m.name().to_string(),
            ToyMethod::Iaptt { truncate: true } => "iaptt_gm".into(),
            ToyMethod::Iaptt { truncate: false } => "iaptt_gm (no truncation)".into(),
        }
    }
}

/// A checked toy experiment.
#[derive(Debug, Clone)]
pub struct ToyExperiment {
    config: ToyConfig,
    file: PathBuf,
    methods: Vec<ToyMethod>,
}

/// One outer step of one method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToyStep {
    /// 0-based outer step.
    pub step: usize,
    /// F(x_k, y_K).
    pub outer_loss: f64,
    /// ‖x_k − x*‖.
    pub distance: f64,
    /// f(x_k, y_K).
    pub inner_loss: f64,
}

/// One method's run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToyRun {
    /// The method's name.
    pub method: String,
    /// Per outer step, before its update, then the final point.
    pub steps: Vec<ToyStep>,
    /// x at the end.
    pub x: Vec<f64>,
    /// F at the end.
    pub final_outer_loss: f64,
    /// ‖x − x*‖ at the end.
    pub final_distance: f64,
    /// Seconds the run took.
    pub seconds: f64,
}

/// The results file of a toy experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToyResults {
    /// blo's version.
    pub blo_version: String,
    /// The problem's config name.
    pub problem: String,
    /// The dimension n.
    pub n: usize,
    /// x*.
    pub optimum: Vec<f64>,
    /// The device used, and why.
    pub device: String,
    /// One entry per method, in config order.
    pub runs: Vec<ToyRun>,
}

impl ToyExperiment {
    /// Reads and checks a toy experiment file. Nothing runs.
    pub fn from_file(path: &Path) -> std::result::Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(path, "", format!("cannot read the config: {e}")))?;
        let config: ToyConfig = parse(&text, path)?;
        let e = |key: &str, msg: String| err(path, key, msg);
        if config.method.is_empty() {
            return Err(e("method", "give at least one [[method]]".into()));
        }
        let positive = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(e(key, format!("must be finite and > 0, got {v}")))
            }
        };
        positive("inner.lr", config.inner.lr)?;
        positive("outer.lr", config.outer.lr)?;
        if let Some(d) = config.outer.decay
            && !(d > 0.0 && d <= 1.0)
        {
            return Err(e("outer.decay", format!("must be in (0, 1], got {d}")));
        }
        if config.problem.n == Some(0) {
            return Err(e("problem.n", "must be at least 1".into()));
        }
        if config.problem.y2_start.is_some() && config.problem.kind != ToyKind::BdaToy {
            return Err(e("problem.y2_start", "only bda-toy has y₂".into()));
        }
        for (key, v) in [
            ("problem.y2_start", config.problem.y2_start),
            ("problem.x0", config.problem.x0),
        ] {
            if let Some(v) = v
                && !v.is_finite()
            {
                return Err(e(key, format!("must be finite, got {v}")));
            }
        }
        if config.problem.kind == ToyKind::IapttToy
            && let Some(x0) = config.problem.x0
            && !(1.0..=10.0).contains(&x0)
        {
            return Err(e(
                "problem.x0",
                format!(
                    "iaptt-toy's x lies in [1, 10]; x⁰ = {x0} is outside: start inside the box"
                ),
            ));
        }
        let inner = Inner {
            optimizer: InnerOptimizer::Gd {
                lr: config.inner.lr,
            },
            steps: config.inner.steps,
        };
        let mut methods = Vec::new();
        for (i, table) in config.method.iter().enumerate() {
            let key = format!("method[{i}]");
            let kind = table.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            let m = if kind == "iaptt_gm" {
                let s: IapttSettings = parse(&toml::to_string(table).unwrap_or_default(), path)
                    .map_err(|mut x| {
                        x.key = format!("{key}.{}", x.key).trim_end_matches('.').into();
                        x
                    })?;
                ToyMethod::Iaptt {
                    truncate: s.truncate,
                }
            } else {
                let m: MethodConfig = parse(&toml::to_string(table).unwrap_or_default(), path)
                    .map_err(|mut x| {
                        x.key = format!("{key}.{}", x.key).trim_end_matches('.').into();
                        x
                    })?;
                if m.hypergradient_method().is_none() {
                    return Err(e(
                        &key,
                        format!("`{}` is not a hypergradient method", m.name()),
                    ));
                }
                m.check(&inner)
                    .map_err(|b| e(&format!("{key}.{}", b.key), b.error.to_string()))?;
                ToyMethod::Hypergradient(m)
            };
            methods.push(m);
        }
        Ok(ToyExperiment {
            config,
            file: path.to_path_buf(),
            methods,
        })
    }

    /// The parsed config.
    pub fn config(&self) -> &ToyConfig {
        &self.config
    }

    /// Files the experiment reads (the config).
    pub fn input_files(&self) -> Vec<PathBuf> {
        vec![self.file.clone()]
    }

    /// Opens the config's device.
    pub fn open_device(&self) -> Result<(Device, String)> {
        super::open_device(&self.config.device)
    }

    /// The problem's config name.
    pub fn problem_name(&self) -> &'static str {
        match self.config.problem.kind {
            ToyKind::BdaToy => "bda-toy",
            ToyKind::QuadraticToy => "quadratic-toy",
            ToyKind::IapttToy => "iaptt-toy",
        }
    }

    /// The methods' names, in config order.
    pub fn method_names(&self) -> Vec<String> {
        self.methods.iter().map(ToyMethod::name).collect()
    }

    /// Runs every method; `observe` sees (method index, step) as they finish.
    pub fn run(
        &self,
        device: &Device,
        reason: &str,
        observe: &mut dyn FnMut(usize, &ToyStep),
    ) -> Result<ToyResults> {
        let c = &self.config;
        let dtype = match c.dtype {
            DTypeName::F32 => DType::F32,
            DTypeName::F64 => DType::F64,
        };
        let p = &c.problem;
        let (problem, optimum, x0): (Box<dyn Problem>, Vec<f64>, f64) = match p.kind {
            ToyKind::BdaToy => {
                let t = BdaToy::new(p.n.unwrap_or(100), device, dtype)?
                    .with_y2_start(p.y2_start.unwrap_or(0.0));
                let o = t.solution();
                (Box::new(t), o, p.x0.unwrap_or(0.0))
            }
            ToyKind::QuadraticToy => {
                let t = QuadraticToy::new(p.n.unwrap_or(5), device, dtype)?;
                let o = t.solution();
                (Box::new(t), o, p.x0.unwrap_or(0.0))
            }
            ToyKind::IapttToy => {
                let t = IapttToy::new(p.n.unwrap_or(1), device, dtype)?;
                let o = t.solution();
                (Box::new(t), o, p.x0.unwrap_or(1.0))
            }
        };
        let n = optimum.len();
        let inner = Inner {
            optimizer: InnerOptimizer::Gd { lr: c.inner.lr },
            steps: c.inner.steps,
        };
        let schedule = IapttConfig {
            steps: c.outer.steps,
            lr: c.outer.lr,
            decay_after: c.outer.decay_after.unwrap_or(usize::MAX),
            decay: c.outer.decay.unwrap_or(1.0),
            truncate: true,
        };
        let mut runs = Vec::new();
        for (index, method) in self.methods.iter().enumerate() {
            let start = std::time::Instant::now();
            let mut x = vec![Tensor::from_f64(&vec![x0; n], &[n], device, dtype)?];
            let mut w = problem.init_w()?;
            let mut steps = Vec::new();
            let distance = |x: &[Tensor]| -> Result<f64> {
                let v = x[0].to_vec::<f64>()?;
                Ok(v.iter()
                    .zip(&optimum)
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>()
                    .sqrt())
            };
            let inner_at = |x: &[Tensor], w: &[Tensor]| -> Result<f64> {
                no_grad(|| problem.inner_loss(w, x)?.to_scalar::<f64>())
            };
            let step_all = |ts: &[Tensor], gs: &[Tensor], lr: f64| -> Result<Vec<Tensor>> {
                no_grad(|| ts.iter().zip(gs).map(|(t, g)| t.axpy(-lr, g)).collect())
            };
            let project_x = |x: Vec<Tensor>| -> Result<Vec<Tensor>> {
                match problem.lambda_bounds() {
                    Some((lo, hi)) => no_grad(|| x.iter().map(|t| t.clamp(lo, hi)).collect()),
                    None => Ok(x),
                }
            };
            let project_w = |w: Vec<Tensor>| -> Result<Vec<Tensor>> {
                match problem.inner_bounds() {
                    Some((lo, hi)) => no_grad(|| w.iter().map(|t| t.clamp(lo, hi)).collect()),
                    None => Ok(w),
                }
            };
            // The loop records λ at every step, which the library's outer loops do not
            // hand out; the toys are small enough to read it back each step.
            for step in 0..=c.outer.steps {
                let lr = schedule.lr_at(step);
                let last = step == c.outer.steps;
                let (grad_x, next_w, outer_loss, w_end) = match method {
                    ToyMethod::Hypergradient(m) => {
                        let hm = m.hypergradient_method().expect("checked in from_file");
                        let hg = hypergradient_from(problem.as_ref(), &x, &w, &inner, hm)?;
                        let keep = c.outer.warm_start && hm.warm_starts();
                        let next = if keep { hg.w.clone() } else { w.clone() };
                        (hg.grad, next, hg.report.outer_loss, hg.w)
                    }
                    ToyMethod::Iaptt { truncate } => {
                        let g = iaptt_gradient(problem.as_ref(), &x, &w, &inner, *truncate)?;
                        let z = project_w(step_all(&w, &g.dz, lr)?)?;
                        (g.dlambda, z, g.outer_loss, g.w)
                    }
                };
                let record = ToyStep {
                    step,
                    outer_loss,
                    distance: distance(&x)?,
                    inner_loss: inner_at(&x, &w_end)?,
                };
                observe(index, &record);
                steps.push(record);
                if last {
                    break;
                }
                x = project_x(step_all(&x, &grad_x, lr)?)?;
                w = next_w;
            }
            let end = steps.last().expect("at least the final point").clone();
            runs.push(ToyRun {
                method: method.name(),
                steps,
                x: x[0].to_vec::<f64>()?,
                final_outer_loss: end.outer_loss,
                final_distance: end.distance,
                seconds: start.elapsed().as_secs_f64(),
            });
        }
        Ok(ToyResults {
            blo_version: env!("CARGO_PKG_VERSION").into(),
            problem: self.problem_name().into(),
            n,
            optimum,
            device: reason.into(),
            runs,
        })
    }
}
