//! Meta-learning experiments: a TOML file whose `[problem] kind` is `"sinusoid"` or
//! `"digits-fewshot"` ([`is_meta_config`]), run by `blo run` like the bilevel ones.
//!
//! ```toml
//! device = "cpu"
//! dtype = "f64"
//! metagradient_out = "g.npy"        # ∂M/∂θ (f64, flat layout); needs outer.steps = 0
//! metagradient_alpha_out = "ga.npy" # Meta-SGD's ∂M/∂α; needs outer.steps = 0
//! [problem]
//! kind = "sinusoid"    # or "digits-fewshot" (then `ways`)
//! tasks = 32           # tasks per meta-batch
//! support = 10         # K: support points per task (digits: images per class)
//! query = 10           # query points per task (default: support)
//! seed = 0
//! [model]
//! widths = [1, 40, 40, 1]
//! activation = "relu"  # or "tanh"
//! init = "theta0.npy"  # optional initial θ (flat layout); default: seeded PyTorch init
//! [data]               # optional: one fixed task batch from .npy files
//! support_x = "sx.npy" # [tasks, points] or [tasks, points, features]
//! support_y = "sy.npy"
//! query_x = "qx.npy"
//! query_y = "qy.npy"
//! [inner]
//! lr = 0.01            # α (Meta-SGD: every α_i's initial value)
//! steps = 5            # S
//! alpha_init = "a.npy" # Meta-SGD: α's initial value from .npy (flat layout)
//! [method]
//! kind = "maml"        # fomaml, meta-sgd, imaml (lambda, cg_iters), anil, reptile,
//!                      # l2f, mt-net, t-net, warpgrad, with their keys:
//! # hidden = 6         # l2f: the γ-network's hidden width (default 2 × layers)
//! # temperature = 1.0  # mt-net: τ of the Gumbel-sigmoid mask (default 1)
//! # warp_layers = [1, 2] # warpgrad: hidden layers followed by a warp layer (default all)
//! [outer]
//! steps = 100
//! kind = "adam"        # or "sgd" (Reptile's ε is its lr)
//! lr = 0.001
//! [eval]
//! tasks = 1000         # held-out test tasks (a separate seed)
//! support = [5, 10, 20]
//! steps = [1, 10]
//! every = 10           # meta-iterations between points of the post-adaptation curve
//! [[compare]]          # optional, repeatable: another method (keys as in [method])
//! kind = "fomaml"      # trained from the same θ on the same tasks; results' comparison
//! inner_lr = 0.01      # optional: this method's own α and S (default: [inner]'s)
//! inner_steps = 5
//! ```

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::config::{DTypeName, DeviceSpec, LambdaInit, OuterKind};
use crate::bilevel::OuterOptimizer;
use crate::device::Device;
use crate::error::Result;
use crate::meta::{
    Activation, MetaMethod, MetaParams, MetaStep, MetaTrainConfig, Mlp, StepSize, TaskBatch,
    TaskLoss, TaskSampler, WarpLayers, evaluate_with, meta_train_with,
};
use crate::problems::data::read_npy;
use crate::problems::fewshot::HostTasks;
use crate::problems::{ClassSplit, DigitsFewShot, Sinusoid};
use crate::tensor::DType;

/// Whether the TOML text is a meta-learning experiment (its `problem.kind` is
/// `"sinusoid"` or `"digits-fewshot"`).
pub fn is_meta_config(text: &str) -> bool {
    let Ok(v) = text.parse::<toml::Table>() else {
        return false;
    };
    matches!(
        v.get("problem")
            .and_then(|p| p.get("kind"))
            .and_then(|k| k.as_str()),
        Some("sinusoid" | "digits-fewshot")
    )
}

/// A meta-learning experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaConfig {
    /// Where to run (as for bilevel experiments).
    #[serde(default)]
    pub device: DeviceSpec,
    /// `"f32"` (default) or `"f64"` (CPU only).
    #[serde(default)]
    pub dtype: DTypeName,
    /// `.npy` for ∂M/∂θ at the initial θ (f64, flat layout); needs `outer.steps = 0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metagradient_out: Option<PathBuf>,
    /// `.npy` for Meta-SGD's ∂M/∂α at the initial α; needs `outer.steps = 0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metagradient_alpha_out: Option<PathBuf>,
    /// `.svg` plot of the post-adaptation test loss against meta-iterations (written by
    /// `blo run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plot_out: Option<PathBuf>,
    /// The task distribution.
    pub problem: MetaProblemConfig,
    /// The model.
    pub model: ModelConfig,
    /// A fixed task batch from `.npy` files instead of the generator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<TaskDataConfig>,
    /// The inner loop.
    pub inner: MetaInnerConfig,
    /// The meta-gradient.
    pub method: MetaMethodConfig,
    /// The meta-optimizer.
    #[serde(default)]
    pub outer: MetaOuterConfig,
    /// More methods (`[[compare]]` tables like `[method]`) trained the same way from the
    /// same θ on the same tasks, for the results' `comparison` and the plot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compare: Vec<CompareConfig>,
    /// Post-adaptation evaluation on held-out tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalConfig>,
}

/// `problem.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetaProblemKind {
    /// [`Sinusoid`].
    Sinusoid,
    /// [`DigitsFewShot`].
    DigitsFewshot,
}

/// `[problem]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaProblemConfig {
    /// The task distribution.
    pub kind: MetaProblemKind,
    /// Tasks per meta-batch (default 32).
    #[serde(default = "default_tasks")]
    pub tasks: usize,
    /// Support points per task (digits: images per class, the K of N-way K-shot).
    pub support: usize,
    /// Query points per task (digits: per class); default `support`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<usize>,
    /// digits-fewshot: N, classes per episode (2..=4, the meta-test split's size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ways: Option<usize>,
    /// Seed of the training tasks and of θ's initialization (default 0); test tasks use
    /// seed + 1.
    #[serde(default)]
    pub seed: u64,
}

fn default_tasks() -> usize {
    32
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Layer widths, input first, output last.
    pub widths: Vec<usize>,
    /// `"relu"` (default) or `"tanh"`.
    #[serde(default)]
    pub activation: ActivationName,
    /// `.npy` initial θ in the flat layout; default: [`Mlp::init`] with the problem's seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
}

/// `model.activation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActivationName {
    /// ReLU.
    #[default]
    Relu,
    /// tanh.
    Tanh,
}

/// `[data]`: the four task arrays, `[tasks, points]` or `[tasks, points, features]`;
/// targets `[tasks, points]` (regression values or class labels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDataConfig {
    /// Support inputs.
    pub support_x: PathBuf,
    /// Support targets.
    pub support_y: PathBuf,
    /// Query inputs.
    pub query_x: PathBuf,
    /// Query targets.
    pub query_y: PathBuf,
}

/// `[inner]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaInnerConfig {
    /// The inner step size α > 0 (Meta-SGD: every α_i's initial value).
    pub lr: f64,
    /// Inner steps S.
    pub steps: usize,
    /// Meta-SGD: α's initial value, a number or a `.npy` vector in the flat layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha_init: Option<LambdaInit>,
}

/// `[method]`: `kind`, and for iMAML its keys; any other key is an error naming it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum MetaMethodConfig {
    /// [`crate::meta::maml`], no keys.
    Maml(NoKeys),
    /// [`crate::meta::fomaml`], no keys.
    Fomaml(NoKeys),
    /// [`crate::meta::meta_sgd`], no keys (α's initial value is `inner.alpha_init`).
    #[serde(alias = "meta_sgd")]
    MetaSgd(NoKeys),
    /// [`crate::meta::imaml`]: `lambda`, `cg_iters`.
    Imaml(ImamlKeys),
    /// [`crate::meta::anil`], no keys.
    Anil(NoKeys),
    /// [`crate::meta::reptile`], no keys (its ε is `outer.lr` with `outer.kind = "sgd"`).
    Reptile(NoKeys),
    /// [`crate::meta::l2f`]: `hidden`, the γ-network's hidden width (default L, twice the
    /// number of layers).
    L2f(L2fKeys),
    /// [`crate::meta::mt_net`] with its mask: `temperature` (τ, default 1).
    MtNet(MtNetKeys),
    /// [`crate::meta::mt_net`] without the mask (T-Net), no keys.
    TNet(NoKeys),
    /// [`crate::meta::warpgrad`]: `warp_layers`, the hidden layers (1-based) followed by
    /// a warp layer (default: every hidden layer).
    Warpgrad(WarpKeys),
}

/// L2F's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L2fKeys {
    /// The γ-network's hidden width (default L = 2 × layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<usize>,
}

/// MT-Net's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtNetKeys {
    /// τ > 0 of the straight-through Gumbel-sigmoid mask (default 1).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
}

fn default_temperature() -> f64 {
    1.0
}

/// WarpGrad's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarpKeys {
    /// Hidden layers (1-based) followed by a warp layer (default: every hidden layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warp_layers: Option<WarpLayers>,
}

/// The settings of a method that has none: `kind` alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoKeys {}

/// iMAML's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImamlKeys {
    /// λ > 0 of the proximal term (λ/2)‖φ − θ‖².
    pub lambda: f64,
    /// CG iterations (default 10).
    #[serde(default = "default_cg")]
    pub cg_iters: usize,
}

fn default_cg() -> usize {
    10
}

impl MetaMethodConfig {
    /// The library's method.
    pub fn method(&self) -> MetaMethod {
        match *self {
            MetaMethodConfig::Maml(_) => MetaMethod::Maml,
            MetaMethodConfig::Fomaml(_) => MetaMethod::Fomaml,
            MetaMethodConfig::MetaSgd(_) => MetaMethod::MetaSgd,
            MetaMethodConfig::Imaml(k) => MetaMethod::Imaml {
                lambda: k.lambda,
                cg_iters: k.cg_iters,
            },
            MetaMethodConfig::Anil(_) => MetaMethod::Anil,
            MetaMethodConfig::Reptile(_) => MetaMethod::Reptile,
            MetaMethodConfig::L2f(k) => MetaMethod::L2f { hidden: k.hidden },
            MetaMethodConfig::MtNet(k) => MetaMethod::MtNet {
                temperature: k.temperature,
                masked: true,
            },
            MetaMethodConfig::TNet(_) => MetaMethod::MtNet {
                temperature: 1.0,
                masked: false,
            },
            MetaMethodConfig::Warpgrad(k) => MetaMethod::WarpGrad {
                layers: k.warp_layers,
            },
        }
    }
}

/// `[outer]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaOuterConfig {
    /// Meta-iterations; 0 (default) computes the meta-gradient once.
    #[serde(default)]
    pub steps: usize,
    /// `"sgd"` or `"adam"` (required when steps > 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<OuterKind>,
    /// Step size > 0 (required when steps > 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
}

/// `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Held-out test tasks (default 1000).
    #[serde(default = "default_eval_tasks")]
    pub tasks: usize,
    /// Support sizes K to adapt with (default: the problem's).
    #[serde(default)]
    pub support: Vec<usize>,
    /// Inner step counts to adapt with (default: the inner loop's).
    #[serde(default)]
    pub steps: Vec<usize>,
    /// Meta-iterations between points of the post-adaptation curve (default: about 10
    /// points).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<usize>,
}

fn default_eval_tasks() -> usize {
    1000
}

/// One post-adaptation evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Support size K.
    pub support: usize,
    /// Inner steps.
    pub steps: usize,
    /// Mean post-adaptation query loss over the test tasks (`null` when the adaptation
    /// diverged).
    pub loss: Option<f64>,
    /// Its 95 % confidence half-width.
    pub loss_ci95: Option<f64>,
    /// Mean query accuracy (classification).
    pub accuracy: Option<f64>,
    /// Its 95 % confidence half-width.
    pub accuracy_ci95: Option<f64>,
    /// Why the adaptation failed (it diverged), if it did.
    pub error: Option<String>,
}

/// A point of the post-adaptation curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Meta-iteration.
    pub iteration: usize,
    /// Mean post-adaptation query loss on the test tasks (the config's K and S).
    pub loss: f64,
}

/// The results JSON of a meta-learning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetaResults {
    /// blo's version.
    pub blo_version: String,
    /// The config file.
    pub config_file: String,
    /// The parsed config, echoed.
    pub config: MetaConfig,
    /// The device.
    pub device: super::DeviceRecord,
    /// Problem kind.
    pub problem: String,
    /// Method name.
    pub method: String,
    /// Number of parameters P.
    pub dim: usize,
    /// The meta-loss curve, one record per meta-iteration.
    pub trace: Vec<MetaStepRecord>,
    /// Post-adaptation loss on the test tasks during training.
    pub curve: Vec<CurvePoint>,
    /// Post-adaptation evaluation after training.
    pub evaluation: Vec<EvalRecord>,
    /// The `[[compare]]` methods, trained the same way.
    pub comparison: Vec<ComparedRun>,
    /// The first meta-loss.
    pub initial_meta_loss: f64,
    /// The last meta-loss.
    pub final_meta_loss: f64,
    /// Milliseconds per meta-gradient, averaged over the run.
    pub metagradient_ms: f64,
    /// Bytes the last meta-gradient stored ([`crate::meta::MetaGradient::stored_bytes`]).
    pub stored_bytes: u64,
    /// The final θ.
    pub final_theta: Vec<f64>,
    /// Where ∂M/∂θ was written.
    pub metagradient_out: Option<String>,
    /// Where ∂M/∂α was written.
    pub metagradient_alpha_out: Option<String>,
}

impl MetaResults {
    /// One table of every method trained (the main one, then `[[compare]]`): its inner
    /// step size and steps, final meta-loss, milliseconds per meta-gradient step, bytes stored by a meta-gradient,
    /// and one column per post-adaptation evaluation (K-shot, S steps): the mean query
    /// loss ± its 95 % half-width, or for classification the accuracy ± its half-width
    /// in percent; `diverged` where the adaptation did.
    pub fn table(&self) -> String {
        let classify = self.problem == "digits-fewshot";
        let mut rows = vec![(
            self.method.as_str(),
            (self.config.inner.lr, self.config.inner.steps),
            self.final_meta_loss,
            self.metagradient_ms,
            self.stored_bytes,
            &self.evaluation,
        )];
        rows.extend(self.comparison.iter().map(|c| {
            (
                c.method.as_str(),
                (c.inner_lr, c.inner_steps),
                c.final_meta_loss,
                c.metagradient_ms,
                c.stored_bytes,
                &c.evaluation,
            )
        }));
        let mut header = vec![
            "method".to_string(),
            "α × S".into(),
            "meta-loss".into(),
            "ms/step".into(),
            "stored bytes".into(),
        ];
        header.extend(self.evaluation.iter().map(|e| {
            let what = if classify { "accuracy %" } else { "MSE" };
            format!("{what} K={} S={}", e.support, e.steps)
        }));
        let mut cells = vec![header];
        for (method, (lr, steps), loss, ms, bytes, evals) in rows {
            let mut row = vec![
                method.to_string(),
                format!("{lr} × {steps}"),
                format!("{loss:.4}"),
                format!("{ms:.2}"),
                bytes.to_string(),
            ];
            row.extend(evals.iter().map(|e| {
                match (e.loss, e.loss_ci95, e.accuracy, e.accuracy_ci95) {
                    (_, _, Some(a), Some(ci)) if classify => {
                        format!("{:.2} ± {:.2}", 100.0 * a, 100.0 * ci)
                    }
                    (Some(l), Some(ci), _, _) => format!("{l:.4} ± {ci:.4}"),
                    _ => "diverged".into(),
                }
            }));
            cells.push(row);
        }
        let cols = cells.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|j| {
                cells
                    .iter()
                    .filter_map(|r| r.get(j))
                    .map(|c| c.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for (i, r) in cells.iter().enumerate() {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, &w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect();
            out.push_str(line.join(" | ").trim_end());
            out.push('\n');
            if i == 0 {
                let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
                out.push_str(&rule.join("-|-"));
                out.push('\n');
            }
        }
        out
    }
}

/// A `[[compare]]` table: a method with the keys of `[method]`, and optionally an
/// inner loop of its own (methods differ in what suits them: iMAML needs many small
/// steps that nearly solve its proximal problem, MAML learns from one).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CompareConfig {
    /// The method and its keys.
    #[serde(flatten)]
    pub method: MetaMethodConfig,
    /// This method's inner step size α (default `inner.lr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_lr: Option<f64>,
    /// This method's inner steps S (default `inner.steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_steps: Option<usize>,
}

impl CompareConfig {
    /// α and S of this method, given `[inner]`.
    pub fn inner(&self, inner: &MetaInnerConfig) -> (f64, usize) {
        (
            self.inner_lr.unwrap_or(inner.lr),
            self.inner_steps.unwrap_or(inner.steps),
        )
    }
}

/// A method of `[[compare]]`, trained from the same θ on the same task batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparedRun {
    /// Its name.
    pub method: String,
    /// The inner step size α it was trained and evaluated with.
    pub inner_lr: f64,
    /// The inner steps S it was trained with.
    pub inner_steps: usize,
    /// Its first meta-loss.
    pub initial_meta_loss: f64,
    /// Its last meta-loss.
    pub final_meta_loss: f64,
    /// Its milliseconds per meta-gradient, averaged over the run.
    pub metagradient_ms: f64,
    /// Bytes its last meta-gradient stored.
    pub stored_bytes: u64,
    /// Its post-adaptation curve.
    pub curve: Vec<CurvePoint>,
    /// Its post-adaptation evaluation after training.
    pub evaluation: Vec<EvalRecord>,
}

/// What [`MetaExperiment::train`] gives.
struct Trained {
    steps: Vec<MetaStep>,
    curve: Vec<CurvePoint>,
    evaluation: Vec<EvalRecord>,
    theta: crate::tensor::Tensor,
    last: crate::meta::MetaGradient,
    elapsed_ms: f64,
}

/// A meta-iteration's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetaStepRecord {
    /// Iteration.
    pub iteration: usize,
    /// Meta-loss before the update.
    pub meta_loss: f64,
    /// Meta-gradient norm.
    pub grad_norm: f64,
    /// Seconds since the start.
    pub elapsed_s: f64,
}

/// What a run produced, for the results and the output files.
#[derive(Debug, Clone)]
pub struct MetaOutcome {
    /// The results JSON.
    pub results: MetaResults,
    /// ∂M/∂θ at the initial θ (f64), when `outer.steps = 0`.
    pub metagradient: Vec<f64>,
    /// ∂M/∂α (Meta-SGD).
    pub metagradient_alpha: Option<Vec<f64>>,
}

/// A checked meta-learning experiment.
#[derive(Debug, Clone)]
pub struct MetaExperiment {
    file: PathBuf,
    config: MetaConfig,
    model: Mlp,
    theta0: Vec<f64>,
    alpha0: Option<Vec<f64>>,
    data: Option<(HostTasks, TaskLoss)>,
    inputs: Vec<PathBuf>,
}

pub(super) fn err(file: &Path, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        key: key.to_string(),
        message: message.into(),
        position: None,
    }
}

pub(super) fn parse<T: DeserializeOwned>(
    text: &str,
    file: &Path,
) -> std::result::Result<T, ConfigError> {
    let de = toml::Deserializer::parse(text)
        .map_err(|e| err(file, "", format!("not valid TOML: {}", e.message().trim())))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().message().trim().to_string();
        let key = if path == "." { String::new() } else { path };
        match message
            .strip_prefix("missing field `")
            .and_then(|r| r.strip_suffix('`'))
        {
            Some(name) => err(
                file,
                &if key.is_empty() {
                    name.to_string()
                } else {
                    format!("{key}.{name}")
                },
                "missing: this key is required",
            ),
            None => err(file, &key, message),
        }
    })
}

impl MetaExperiment {
    /// Reads and checks a meta-learning experiment file; relative paths in it are
    /// relative to its directory.
    pub fn from_file(path: &Path) -> std::result::Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(path, "", format!("cannot read the config: {e}")))?;
        let config: MetaConfig = parse(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_config(config, path, base)
    }

    /// Checks a parsed config: every value, the model against the tasks, θ's and α's
    /// lengths, the task arrays' shapes. Nothing runs.
    pub fn from_config(
        config: MetaConfig,
        file: &Path,
        base: &Path,
    ) -> std::result::Result<Self, ConfigError> {
        let bad = |key: &str, msg: String| err(file, key, msg);
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let mut inputs = Vec::new();
        let mut npy =
            |key: &str, p: &Path| -> std::result::Result<(Vec<f64>, Vec<usize>), ConfigError> {
                let full = resolve(p);
                inputs.push(full.clone());
                let a = read_npy(&full).map_err(|e| {
                    bad(
                        key,
                        format!("expected a readable .npy file of float32/float64: {e}"),
                    )
                })?;
                if let Some(i) = a.data.iter().position(|v| !v.is_finite()) {
                    return Err(bad(
                        key,
                        format!("element {i} is {}; every value must be finite", a.data[i]),
                    ));
                }
                Ok((a.data, a.shape))
            };
        if config.dtype == DTypeName::F64 && config.device != DeviceSpec::Cpu {
            return Err(bad(
                "dtype",
                "\"f64\" runs on the CPU backend only; set device = \"cpu\" or dtype = \"f32\""
                    .into(),
            ));
        }
        let p = &config.problem;
        let method = config.method.method();
        if p.tasks == 0 || p.support == 0 || p.query == Some(0) {
            return Err(bad(
                "problem",
                "tasks, support and query must be ≥ 1".into(),
            ));
        }
        let activation = match config.model.activation {
            ActivationName::Relu => Activation::Relu,
            ActivationName::Tanh => Activation::Tanh,
        };
        let model = Mlp::new(&config.model.widths, activation)
            .map_err(|e| bad("model.widths", e.to_string()))?;
        let loss = match p.kind {
            MetaProblemKind::Sinusoid => {
                if p.ways.is_some() {
                    return Err(bad("problem.ways", "applies to digits-fewshot only".into()));
                }
                TaskLoss::Mse
            }
            MetaProblemKind::DigitsFewshot => TaskLoss::CrossEntropy,
        };
        // Task data: from .npy, or the generator's shapes.
        let data = match &config.data {
            None => None,
            Some(d) => {
                let sx = npy("data.support_x", &d.support_x)?;
                let sy = npy("data.support_y", &d.support_y)?;
                let qx = npy("data.query_x", &d.query_x)?;
                let qy = npy("data.query_y", &d.query_y)?;
                let x3 = |key: &str, s: &[usize]| match *s {
                    [t, n] => Ok([t, n, 1]),
                    [t, n, f] => Ok([t, n, f]),
                    _ => Err(bad(
                        key,
                        format!("expected [tasks, points] or [tasks, points, features], got {s:?}"),
                    )),
                };
                let (sxs, qxs) = (x3("data.support_x", &sx.1)?, x3("data.query_x", &qx.1)?);
                let fits = |y: &[usize], x: &[usize; 3]| y == [x[0], x[1]] || y == [x[0], x[1], 1];
                if sxs[0] != qxs[0] || sxs[2] != qxs[2] || !fits(&sy.1, &sxs) || !fits(&qy.1, &qxs)
                {
                    return Err(bad(
                        "data",
                        format!(
                            "the task arrays do not fit together: support x {:?}, support y {:?}, query x {:?}, query y {:?}; x must be [tasks, points(, features)] with the same tasks and features, and y [tasks, points] like its x",
                            sx.1, sy.1, qx.1, qy.1
                        ),
                    ));
                }
                if sxs[0] == 0 || sxs[1] == 0 || qxs[1] == 0 {
                    return Err(bad(
                        "data",
                        "every task needs at least one support and one query point".into(),
                    ));
                }
                if loss == TaskLoss::CrossEntropy {
                    let classes = model.outputs();
                    if let Some(v) =
                        sy.0.iter()
                            .chain(&qy.0)
                            .find(|&&v| v < 0.0 || v.fract() != 0.0 || v >= classes as f64)
                    {
                        return Err(bad(
                            "data",
                            format!(
                                "label {v} is not a class index below the model's {classes} outputs"
                            ),
                        ));
                    }
                }
                Some((
                    HostTasks {
                        support_x: sx.0,
                        support_y: sy.0,
                        query_x: qx.0,
                        query_y: qy.0,
                        tasks: sxs[0],
                        support: sxs[1],
                        query: qxs[1],
                        features: sxs[2],
                    },
                    loss,
                ))
            }
        };
        let (features, outputs) = match (&data, p.kind) {
            (Some((h, _)), MetaProblemKind::Sinusoid) => (h.features, 1),
            (Some((h, _)), MetaProblemKind::DigitsFewshot) => (h.features, model.outputs()),
            (None, MetaProblemKind::Sinusoid) => (1, 1),
            (None, MetaProblemKind::DigitsFewshot) => {
                let ways = p.ways.ok_or_else(|| {
                    bad(
                        "problem.ways",
                        "missing: digits-fewshot needs N, the classes per episode".into(),
                    )
                })?;
                let q = p.query.unwrap_or(p.support);
                DigitsFewShot::new(
                    ways,
                    p.support,
                    q,
                    1,
                    ClassSplit::Test,
                    0,
                    &Device::cpu(),
                    DType::F32,
                )
                .map_err(|e| bad("problem", e.to_string()))?;
                (64, ways)
            }
        };
        if model.inputs() != features || model.outputs() != outputs {
            return Err(bad(
                "model.widths",
                format!(
                    "the model maps {} inputs to {} outputs, but the tasks have {features} input feature(s) and need {outputs} output(s)",
                    model.inputs(),
                    model.outputs()
                ),
            ));
        }
        let theta0 = match &config.model.init {
            Some(path) => {
                let (v, _) = npy("model.init", path)?;
                if v.len() != model.dim() {
                    return Err(bad(
                        "model.init",
                        format!(
                            "θ has {} values but the layer widths {:?} have {} parameters; the widths do not match θ's length",
                            v.len(),
                            model.widths(),
                            model.dim()
                        ),
                    ));
                }
                v
            }
            None => model
                .init(p.seed, &Device::cpu(), DType::F64)
                .and_then(|t| t.to_vec::<f64>())
                .map_err(|e| bad("model", e.to_string()))?,
        };
        let inner = &config.inner;
        if !(inner.lr.is_finite() && inner.lr > 0.0) {
            return Err(bad(
                "inner.lr",
                format!("must be finite and > 0, got {}", inner.lr),
            ));
        }
        if inner.steps == 0 && method.needs_inner_steps() {
            return Err(bad(
                "inner.steps",
                format!("{} needs at least one inner step (S ≥ 1)", method.name()),
            ));
        }
        let alpha0 = match (&inner.alpha_init, method) {
            (None, MetaMethod::MetaSgd) => Some(vec![inner.lr; model.dim()]),
            (Some(LambdaInit::Value(v)), MetaMethod::MetaSgd) => Some(vec![*v; model.dim()]),
            (Some(LambdaInit::Npy(path)), MetaMethod::MetaSgd) => {
                let (v, _) = npy("inner.alpha_init", path)?;
                if v.len() != model.dim() {
                    return Err(bad(
                        "inner.alpha_init",
                        format!(
                            "α has {} values but the model has {} parameters (widths {:?}); α needs one per parameter",
                            v.len(),
                            model.dim(),
                            model.widths()
                        ),
                    ));
                }
                Some(v)
            }
            (Some(_), _) => {
                return Err(bad(
                    "inner.alpha_init",
                    "applies to kind = \"meta-sgd\" only".into(),
                ));
            }
            (None, _) => None,
        };
        let methods = std::iter::once(("method".to_string(), method)).chain(
            config
                .compare
                .iter()
                .enumerate()
                .map(|(i, m)| (format!("compare[{i}]"), m.method.method())),
        );
        for (key, m) in methods {
            if let MetaMethod::MtNet { temperature, .. } = m
                && !(temperature.is_finite() && temperature > 0.0)
            {
                return Err(bad(
                    &key,
                    format!("mt-net's mask temperature must be finite and > 0, got {temperature}"),
                ));
            }
            // The method's own meta-parameters must fit the model (the γ-network's width,
            // the warp layers' placement).
            m.init_extra(&model, 0, &Device::cpu(), DType::F64)
                .map_err(|e| bad(&key, e.to_string()))?;
        }
        if let MetaMethod::Imaml { lambda, cg_iters } = method
            && (!(lambda.is_finite() && lambda > 0.0) || cg_iters == 0)
        {
            return Err(bad(
                "method",
                "imaml needs lambda > 0 and cg_iters ≥ 1".into(),
            ));
        }
        for (i, cm) in config.compare.iter().enumerate() {
            let (lr, steps) = cm.inner(inner);
            if !(lr.is_finite() && lr > 0.0) {
                return Err(bad(
                    &format!("compare[{i}].inner_lr"),
                    format!("must be finite and > 0, got {lr}"),
                ));
            }
            match cm.method.method() {
                m if steps == 0 && m.needs_inner_steps() => {
                    return Err(bad(
                        &format!("compare[{i}]"),
                        format!("{} needs at least one inner step (S ≥ 1)", m.name()),
                    ));
                }
                MetaMethod::Imaml { lambda, cg_iters }
                    if !(lambda.is_finite() && lambda > 0.0) || cg_iters == 0 =>
                {
                    return Err(bad(
                        &format!("compare[{i}]"),
                        "imaml needs lambda > 0 and cg_iters ≥ 1".into(),
                    ));
                }
                _ => {}
            }
        }
        let o = &config.outer;
        if o.steps > 0 {
            if o.kind.is_none() {
                return Err(bad(
                    "outer.kind",
                    "missing: \"sgd\" or \"adam\" is required when steps > 0".into(),
                ));
            }
            match o.lr {
                Some(lr) if lr.is_finite() && lr > 0.0 => {}
                _ => {
                    return Err(bad(
                        "outer.lr",
                        "missing or not > 0: required when steps > 0".into(),
                    ));
                }
            }
        }
        if o.steps > 0 && config.metagradient_out.is_some() {
            return Err(bad(
                "metagradient_out",
                "is written only with outer.steps = 0 (the meta-gradient at the initial θ)".into(),
            ));
        }
        if config.metagradient_alpha_out.is_some() && (o.steps > 0 || method != MetaMethod::MetaSgd)
        {
            return Err(bad(
                "metagradient_alpha_out",
                "needs method.kind = \"meta-sgd\" and outer.steps = 0".into(),
            ));
        }
        if let Some(e) = &config.eval {
            if e.tasks == 0 || e.support.contains(&0) || e.every == Some(0) {
                return Err(bad(
                    "eval",
                    "tasks, support sizes and every must be ≥ 1".into(),
                ));
            }
            if data.is_some() && !e.support.is_empty() {
                return Err(bad(
                    "eval.support",
                    "with [data] the test tasks are the given ones; drop eval.support".into(),
                ));
            }
        }
        Ok(Self {
            file: file.to_path_buf(),
            config,
            model,
            theta0,
            alpha0,
            data,
            inputs,
        })
    }

    /// The config.
    pub fn config(&self) -> &MetaConfig {
        &self.config
    }

    /// The problem's name as configs spell it.
    pub fn problem_name(&self) -> &'static str {
        match self.config.problem.kind {
            MetaProblemKind::Sinusoid => "sinusoid",
            MetaProblemKind::DigitsFewshot => "digits-fewshot",
        }
    }

    /// The model.
    pub fn model(&self) -> &Mlp {
        &self.model
    }

    /// Files the experiment reads (outputs must not overwrite them).
    pub fn input_files(&self) -> Vec<PathBuf> {
        let mut v = self.inputs.clone();
        v.push(self.file.clone());
        v
    }

    /// An output path of the config, relative to the results file's directory.
    pub fn output_path(&self, p: &Option<PathBuf>, results: &Path) -> Option<PathBuf> {
        p.as_ref().map(|p| {
            if p.is_absolute() {
                p.clone()
            } else {
                results.parent().unwrap_or(Path::new(".")).join(p)
            }
        })
    }

    /// Opens the config's device.
    pub fn open_device(&self) -> Result<(Device, String)> {
        super::open_device(&self.config.device)
    }

    fn sampler(
        &self,
        device: &Device,
        dtype: DType,
        support: usize,
        tasks: usize,
        test: bool,
    ) -> Result<Box<dyn TaskSampler>> {
        let p = &self.config.problem;
        if let Some((h, loss)) = &self.data {
            return Ok(Box::new(h.to_batch(*loss, device, dtype)?));
        }
        let seed = p.seed + u64::from(test);
        let query = p.query.unwrap_or(p.support);
        Ok(match p.kind {
            MetaProblemKind::Sinusoid => {
                Box::new(Sinusoid::new(tasks, support, query, seed, device, dtype)?)
            }
            MetaProblemKind::DigitsFewshot => Box::new(DigitsFewShot::new(
                p.ways.unwrap_or(2),
                support,
                query,
                tasks,
                if test {
                    ClassSplit::Test
                } else {
                    ClassSplit::Train
                },
                seed,
                device,
                dtype,
            )?),
        })
    }

    /// Meta-trains `method` from the config's θ (and α), evaluating along the way and
    /// at the end.
    fn train(
        &self,
        method: MetaMethod,
        (inner_lr, inner_steps): (f64, usize),
        device: &Device,
        observe: &mut dyn FnMut(&MetaStep),
    ) -> Result<Trained> {
        let c = &self.config;
        let dtype: DType = c.dtype.into();
        let host = |v: &[f64]| crate::tensor::Tensor::from_f64(v, &[v.len()], device, dtype);
        let theta0 = host(&self.theta0)?;
        let extra = method.init_extra(&self.model, c.problem.seed, device, dtype)?;
        let alpha0 = match (&self.alpha0, method) {
            // `inner.alpha_init` belongs to `[inner]`: a compared Meta-SGD with an
            // `inner_lr` of its own starts every α_i there instead.
            (Some(a), MetaMethod::MetaSgd) if inner_lr == c.inner.lr => {
                StepSize::PerParameter(host(a)?)
            }
            (_, MetaMethod::MetaSgd) => {
                StepSize::PerParameter(host(&vec![inner_lr; self.model.dim()])?)
            }
            _ => StepSize::Scalar(inner_lr),
        };
        let optimizer = match (c.outer.kind, c.outer.lr) {
            (Some(OuterKind::Adam), Some(lr)) => OuterOptimizer::adam(lr),
            (_, lr) => OuterOptimizer::Sgd {
                lr: lr.unwrap_or(1.0),
            },
        };
        let p = &c.problem;
        let mut sampler = self.sampler(device, dtype, p.support, p.tasks, false)?;
        let eval = c.eval.clone();
        let test_batch: Option<TaskBatch> = match &eval {
            Some(e) => Some(
                self.sampler(device, dtype, p.support, e.tasks, true)?
                    .sample(0)?,
            ),
            None => None,
        };
        let every = eval
            .as_ref()
            .and_then(|e| e.every)
            .unwrap_or((c.outer.steps / 10).max(1));
        let mut curve = Vec::new();
        let config = MetaTrainConfig {
            method,
            inner_steps,
            iterations: c.outer.steps,
            optimizer,
        };
        let t0 = std::time::Instant::now();
        let init = MetaParams {
            theta: theta0,
            alpha: alpha0,
            extra,
        };
        let trace = meta_train_with(
            &self.model,
            sampler.as_mut(),
            &init,
            &config,
            &mut |s, params| {
                observe(s);
                if let Some(tb) = &test_batch
                    && (s.iteration % every == 0 || s.iteration == c.outer.steps)
                {
                    let loss = evaluate_with(&method, &self.model, tb, params, inner_steps)?.loss;
                    curve.push(CurvePoint {
                        iteration: s.iteration,
                        loss,
                    });
                }
                Ok(())
            },
        )?;
        let elapsed_ms = t0.elapsed().as_secs_f64() * 1e3;
        let last = trace.last;
        let params = MetaParams {
            theta: trace.theta,
            alpha: trace.alpha,
            extra: trace.extra,
        };
        let mut evaluation = Vec::new();
        if let Some(e) = &eval {
            let supports = if e.support.is_empty() {
                vec![p.support]
            } else {
                e.support.clone()
            };
            let steps = if e.steps.is_empty() {
                vec![inner_steps]
            } else {
                e.steps.clone()
            };
            for &k in &supports {
                let batch = self.sampler(device, dtype, k, e.tasks, true)?.sample(0)?;
                for &st in &steps {
                    // An adaptation that diverges (Meta-SGD's α, learned for S steps,
                    // can be too large for more) is a result of its own, not a failure
                    // of the run.
                    let record = match evaluate_with(&method, &self.model, &batch, &params, st) {
                        Ok(e) => EvalRecord {
                            support: k,
                            steps: st,
                            loss: Some(e.loss),
                            loss_ci95: Some(e.loss_ci95),
                            accuracy: e.accuracy,
                            accuracy_ci95: e.accuracy_ci95,
                            error: None,
                        },
                        Err(crate::Error::InvalidArgument {
                            op: "inner loop",
                            msg,
                        }) => EvalRecord {
                            support: k,
                            steps: st,
                            loss: None,
                            loss_ci95: None,
                            accuracy: None,
                            accuracy_ci95: None,
                            error: Some(msg),
                        },
                        Err(e) => return Err(e),
                    };
                    evaluation.push(record);
                }
            }
        }
        Ok(Trained {
            steps: trace.steps,
            curve,
            evaluation,
            theta: params.theta,
            last,
            elapsed_ms,
        })
    }

    /// Runs the experiment on `device`, calling `observe` after each meta-iteration of
    /// the main method; then trains each `[[compare]]` method the same way.
    pub fn run(
        &self,
        device: &Device,
        reason: &str,
        observe: &mut dyn FnMut(&MetaStep),
    ) -> Result<MetaOutcome> {
        let c = &self.config;
        let method = c.method.method();
        let Trained {
            steps: trace_steps,
            curve,
            evaluation,
            theta,
            last,
            elapsed_ms,
        } = self.train(method, (c.inner.lr, c.inner.steps), device, observe)?;
        let mut comparison = Vec::new();
        for cm in &c.compare {
            let m = cm.method.method();
            let (inner_lr, inner_steps) = cm.inner(&c.inner);
            let t = self.train(m, (inner_lr, inner_steps), device, &mut |_| {})?;
            comparison.push(ComparedRun {
                method: m.name().into(),
                inner_lr,
                inner_steps,
                initial_meta_loss: t.steps.first().map_or(f64::NAN, |s| s.meta_loss),
                final_meta_loss: t.steps.last().map_or(f64::NAN, |s| s.meta_loss),
                metagradient_ms: per_step_ms(c.outer.steps, t.elapsed_ms, &t.last),
                stored_bytes: t.last.stored_bytes,
                curve: t.curve,
                evaluation: t.evaluation,
            });
        }
        let dev_record = super::DeviceRecord::new(device, reason);
        let (metagradient, metagradient_alpha) = if c.outer.steps == 0 {
            (
                last.theta.to_vec::<f64>()?,
                last.alpha.as_ref().map(|a| a.to_vec::<f64>()).transpose()?,
            )
        } else {
            (Vec::new(), None)
        };
        let initial = trace_steps.first().map_or(f64::NAN, |s| s.meta_loss);
        let fin = trace_steps.last().map_or(f64::NAN, |s| s.meta_loss);
        // Evaluation during training is included; without it, this is the mean time of
        // a meta-gradient step (with the meta-optimizer's update).
        let ms = per_step_ms(c.outer.steps, elapsed_ms, &last);
        let name = self.problem_name();
        Ok(MetaOutcome {
            results: MetaResults {
                blo_version: env!("CARGO_PKG_VERSION").to_string(),
                config_file: self.file.display().to_string(),
                config: c.clone(),
                device: dev_record,
                problem: name.into(),
                method: method.name().into(),
                dim: self.model.dim(),
                trace: trace_steps
                    .iter()
                    .map(|s| MetaStepRecord {
                        iteration: s.iteration,
                        meta_loss: s.meta_loss,
                        grad_norm: s.grad_norm,
                        elapsed_s: s.elapsed_s,
                    })
                    .collect(),
                curve,
                evaluation,
                comparison,
                initial_meta_loss: initial,
                final_meta_loss: fin,
                metagradient_ms: ms,
                stored_bytes: last.stored_bytes,
                final_theta: theta.to_vec::<f64>()?,
                metagradient_out: None,
                metagradient_alpha_out: None,
            },
            metagradient,
            metagradient_alpha,
        })
    }
}

/// Milliseconds per meta-gradient step: the run's time over its meta-gradients
/// (evaluation during training included), or the one meta-gradient's wall time.
fn per_step_ms(steps: usize, elapsed_ms: f64, last: &crate::meta::MetaGradient) -> f64 {
    if steps > 0 {
        elapsed_ms / (steps + 1) as f64
    } else {
        last.wall_time.as_secs_f64() * 1e3
    }
}
