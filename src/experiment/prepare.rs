//! From a parsed [`Config`] to a checked [`Experiment`]: every value validated, every
//! `.npy` file read and fitted to the problem, before any device is touched.

use std::path::{Path, PathBuf};

use super::config::{
    Config, DataConfig, DataSourceKind, InnerKind, InnerSolverKind, LambdaInit, MethodConfig,
    OuterKind, ProblemKind,
};
use super::{ConfigError, Experiment, HostData, Plan};
use crate::bilevel::methods::MAX_DENSE_DIM;
use crate::bilevel::{
    Inner, InnerOptimizer, InnerSolver, OuterConfig, OuterOptimizer, Tolerance, WarmStart,
};
use crate::problems::data::{
    CleaningData, Matrix, Split, cleaning_split, digits, read_npy, synthetic_classification,
    synthetic_regression_pair,
};

/// The most memory a config may make blo hold for its data, its parameters and the
/// iterates its method stores: 16 GiB. A larger config is a config error naming the key
/// that sizes it and the estimate, before anything is allocated.
pub const MEMORY_LIMIT_BYTES: u64 = 16 << 30;

/// Inferred class counts (the largest label + 1, when `data.classes` is not set) above
/// this and above twice the number of labels are taken for a mistake: a stray label of
/// 10⁸ would otherwise ask for a weight matrix of 10⁸ columns.
const MAX_INFERRED_CLASSES: usize = 1024;

/// Builds [`ConfigError`]s for one file.
pub(crate) struct Ctx<'a> {
    pub file: &'a Path,
    pub base: &'a Path,
}

impl Ctx<'_> {
    pub fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
            position: None,
        }
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn positive(&self, key: &str, v: f64) -> Result<f64, ConfigError> {
        if !v.is_finite() || v <= 0.0 {
            return Err(self.err(key, format!("expected a finite number > 0, got {v}")));
        }
        Ok(v)
    }

    fn non_negative(&self, key: &str, v: f64) -> Result<f64, ConfigError> {
        if !v.is_finite() || v < 0.0 {
            return Err(self.err(key, format!("expected a finite number ≥ 0, got {v}")));
        }
        Ok(v)
    }

    fn unit(&self, key: &str, v: f64) -> Result<f64, ConfigError> {
        if !(0.0..1.0).contains(&v) {
            return Err(self.err(key, format!("expected a number in [0, 1), got {v}")));
        }
        Ok(v)
    }

    fn at_least_one(&self, key: &str, v: usize) -> Result<usize, ConfigError> {
        if v == 0 {
            return Err(self.err(key, "expected an integer ≥ 1, got 0"));
        }
        Ok(v)
    }

    /// Checks that `what`, `elems` values (their product) of `bytes_each` bytes, fits
    /// within [`MEMORY_LIMIT_BYTES`]; otherwise an error naming `key` and the estimate.
    fn fits(
        &self,
        key: &str,
        what: &str,
        elems: &[usize],
        bytes_each: u64,
    ) -> Result<(), ConfigError> {
        let bytes = elems
            .iter()
            .try_fold(bytes_each, |b, &e| b.checked_mul(e as u64));
        match bytes {
            Some(b) if b <= MEMORY_LIMIT_BYTES => Ok(()),
            _ => Err(self.err(
                key,
                format!(
                    "{what} would need {}, more than blo runs from a config ({} GiB); lower it",
                    bytes.map_or("more than 2⁶⁴ bytes".into(), |b| format!(
                        "about {:.1} GiB",
                        b as f64 / f64::from(1u32 << 30)
                    )),
                    MEMORY_LIMIT_BYTES >> 30
                ),
            )),
        }
    }

    /// `a + b` for two counts from the config, or an error naming `key` if it overflows.
    fn sum(&self, key: &str, parts: &[usize]) -> Result<usize, ConfigError> {
        parts
            .iter()
            .try_fold(0usize, |s, &p| s.checked_add(p))
            .ok_or_else(|| self.err(key, format!("the counts {parts:?} add up past 2⁶⁴")))
    }

    fn required<T: Copy>(&self, key: &str, v: Option<T>, when: &str) -> Result<T, ConfigError> {
        v.ok_or_else(|| self.err(key, format!("missing: this key is required {when}")))
    }

    /// Rejects keys that are set but do not apply; `present` lists (key, is set).
    fn only(
        &self,
        table: &str,
        present: &[(&str, bool)],
        allowed: &[&str],
        when: &str,
    ) -> Result<(), ConfigError> {
        if let Some((k, _)) = present.iter().find(|(k, set)| *set && !allowed.contains(k)) {
            let list = if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed.join(", ")
            };
            return Err(self.err(
                &format!("{table}.{k}"),
                format!("does not apply {when}; the keys that apply are: {list}"),
            ));
        }
        Ok(())
    }

    fn npy(&self, key: &str, p: &Path) -> Result<(Vec<f64>, Vec<usize>), ConfigError> {
        let path = self.resolve(p);
        let a = read_npy(&path).map_err(|e| {
            let msg = match e {
                crate::Error::InvalidArgument { msg, .. } => msg,
                other => other.to_string(),
            };
            self.err(
                key,
                format!("expected a readable .npy file of float32/float64: {msg}"),
            )
        })?;
        if let Some(i) = a.data.iter().position(|v| !v.is_finite()) {
            return Err(self.err(
                key,
                format!(
                    "{}: element {i} is {}; every value must be finite",
                    path.display(),
                    a.data[i]
                ),
            ));
        }
        Ok((a.data, a.shape))
    }

    fn npy_matrix(&self, key: &str, p: &Path) -> Result<Matrix, ConfigError> {
        let (data, shape) = self.npy(key, p)?;
        if shape.len() != 2 || shape[0] == 0 || shape[1] == 0 {
            return Err(self.err(
                key,
                format!(
                    "expected a non-empty 2-D array [rows, features], got shape {shape:?} ({})",
                    p.display()
                ),
            ));
        }
        Ok(Matrix {
            data,
            rows: shape[0],
            cols: shape[1],
        })
    }

    /// A 1-D array of `rows` values; `of` names what the length must match.
    fn npy_vector(
        &self,
        key: &str,
        p: &Path,
        rows: usize,
        of: &str,
    ) -> Result<Vec<f64>, ConfigError> {
        let (data, shape) = self.npy(key, p)?;
        if shape != [rows] {
            return Err(self.err(
                key,
                format!(
                    "expected shape [{rows}] (one value per row of {of}), got {shape:?} ({})",
                    p.display()
                ),
            ));
        }
        Ok(data)
    }

    fn npy_labels(
        &self,
        key: &str,
        p: &Path,
        rows: usize,
        of: &str,
    ) -> Result<Vec<usize>, ConfigError> {
        let v = self.npy_vector(key, p, rows, of)?;
        v.iter()
            .enumerate()
            .map(|(i, &x)| {
                if x >= 0.0 && x.fract() == 0.0 && x < 1e9 {
                    Ok(x as usize)
                } else {
                    Err(self.err(
                        key,
                        format!(
                            "expected class labels (integers from 0 to 10⁹), element {i} is {x}"
                        ),
                    ))
                }
            })
            .collect()
    }
}

impl Experiment {
    /// Checks a parsed config and loads its data. Relative paths in the config are
    /// resolved against `base_dir` (the config file's directory); `file` names the
    /// config in error messages. Needs no device: every error found here is the
    /// config's fault.
    pub fn from_config(config: Config, file: &Path, base_dir: &Path) -> Result<Self, ConfigError> {
        let ctx = Ctx {
            file,
            base: base_dir,
        };
        let dtype: crate::DType = config.dtype.into();
        if dtype == crate::DType::F64 && config.device != super::config::DeviceSpec::Cpu {
            return Err(ctx.err(
                "dtype",
                format!(
                    "\"f64\" runs on the CPU backend only; set device = \"cpu\" (device is \"{}\") or dtype = \"f32\"",
                    config.device
                ),
            ));
        }
        if let Some(p) = &config.hypergradient_out
            && (p.as_os_str().is_empty()
                || p.file_name().is_none()
                || p.to_string_lossy().ends_with('/'))
        {
            return Err(ctx.err(
                "hypergradient_out",
                format!(
                    "expected a file name for the .npy, got {:?}; it does not name a file",
                    p.display().to_string()
                ),
            ));
        }
        let data = load_data(&ctx, &config)?;
        let lambda_len = match &data {
            HostData::Ridge { x, .. } => x.cols,
            HostData::Logistic {
                train, per_feature, ..
            } => {
                if *per_feature {
                    train.x.cols
                } else {
                    1
                }
            }
            HostData::HyperCleaning { data, .. } => data.train.x.rows,
        };
        let lambda0 = match &config.lambda.init {
            LambdaInit::Value(v) => {
                if !v.is_finite() {
                    return Err(ctx.err(
                        "lambda.init",
                        format!("expected a finite number or a .npy path, got {v}"),
                    ));
                }
                vec![*v; lambda_len]
            }
            LambdaInit::Npy(p) => {
                let (values, shape) = ctx.npy("lambda.init", p)?;
                if values.len() != lambda_len || shape.len() > 1 {
                    return Err(ctx.err(
                        "lambda.init",
                        format!(
                            "λ of problem {} has shape [{lambda_len}], the file {} holds shape {shape:?}",
                            config.problem.kind.name(),
                            p.display()
                        ),
                    ));
                }
                values
            }
        };
        let (inner, tolerance) = inner_of(&ctx, &config)?;
        let w0 = w0_of(&ctx, &config, &data)?;
        if matches!(config.method, MethodConfig::Implicit(_)) && w_len(&data) > MAX_DENSE_DIM {
            // Digits has |w| = 650: only generated or given features can exceed it.
            let key = match config.data.source {
                DataSourceKind::Npy => "data.x_train",
                _ => "data.features",
            };
            return Err(ctx.err(
                key,
                format!(
                    "method implicit solves with the dense |w| × |w| Hessian, up to |w| = {MAX_DENSE_DIM}; this problem has |w| = {} (features × classes + classes); use cg with a tolerance",
                    w_len(&data)
                ),
            ));
        }
        let plan = plan_of(&ctx, &config, &inner, tolerance)?;
        stored_iterates_fit(&ctx, &config, &data, &inner, lambda_len)?;
        Ok(Experiment {
            file: file.to_path_buf(),
            config,
            data,
            lambda0,
            w0,
            plan,
            dtype,
        })
    }

    /// Reads, parses and checks a config file; relative paths are resolved against
    /// the file's directory.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let config = Config::from_file(path)?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Self::from_config(config, path, base)
    }
}

/// The inner optimizer with its step count, and the tolerance of `inner.tol` (the step
/// count is then 0: the method is evaluated where the solve stops).
fn inner_of(ctx: &Ctx, c: &Config) -> Result<(Inner, Option<Tolerance>), ConfigError> {
    let i = &c.inner;
    let lr = ctx.positive("inner.lr", i.lr)?;
    let optimizer = match i.kind {
        InnerKind::Gd => {
            if i.momentum.is_some() {
                return Err(ctx.err(
                    "inner.momentum",
                    "does not apply to kind = \"gd\"; use kind = \"momentum\" or remove it",
                ));
            }
            InnerOptimizer::Gd { lr }
        }
        InnerKind::Momentum => {
            let m = ctx.required("inner.momentum", i.momentum, "for kind = \"momentum\"")?;
            InnerOptimizer::Momentum {
                lr,
                momentum: ctx.unit("inner.momentum", m)?,
            }
        }
    };
    // Methods that differentiate through the inner steps (and HOAG, whose steps are a
    // cap) have nothing to compute with none: rad, trad and forward through zero steps
    // give only the direct term ∇_λ L_out, which is zero for every built-in problem, so
    // a config asking for it is a mistake. The library allows T = 0 for every method.
    let unrolled = match &c.method {
        MethodConfig::Rad(_) => Some("rad"),
        MethodConfig::Trad(_) => Some("trad"),
        MethodConfig::Forward(_) => Some("forward"),
        MethodConfig::Bda(_) => Some("bda"),
        MethodConfig::Hoag(_) => Some("hoag"),
        _ => None,
    };
    if let Some(tol) = i.tol {
        if let Some(name) = unrolled {
            let why = if name == "hoag" {
                "hoag sets its own inner tolerance per outer step (method.eps0, method.decay)"
            } else {
                "it differentiates through a fixed number of inner steps (set inner.steps)"
            };
            return Err(ctx.err(
                "inner.tol",
                format!("does not apply to method {name}: {why}"),
            ));
        }
        if i.steps.is_some() {
            return Err(ctx.err(
                "inner.steps",
                "does not apply with inner.tol: the solve runs until the tolerance, capped by inner.max_steps",
            ));
        }
        let tolerance = Tolerance {
            tol: ctx.positive("inner.tol", tol)?,
            max_steps: ctx.at_least_one(
                "inner.max_steps",
                ctx.required("inner.max_steps", i.max_steps, "with inner.tol")?,
            )?,
            check_every: ctx.at_least_one("inner.check_every", i.check_every.unwrap_or(10))?,
            solver: match i.solver {
                None | Some(InnerSolverKind::Optimizer) => InnerSolver::Optimizer,
                Some(InnerSolverKind::Newton) => InnerSolver::Newton,
            },
        };
        return Ok((
            Inner {
                optimizer,
                steps: 0,
            },
            Some(tolerance),
        ));
    }
    for (key, set) in [
        ("inner.max_steps", i.max_steps.is_some()),
        ("inner.check_every", i.check_every.is_some()),
        ("inner.solver", i.solver.is_some()),
    ] {
        if set {
            return Err(ctx.err(key, "applies only with inner.tol (a solve to tolerance)"));
        }
    }
    let steps = ctx.required(
        "inner.steps",
        i.steps,
        "(or set inner.tol and inner.max_steps to solve to a tolerance)",
    )?;
    if steps == 0
        && let Some(name) = unrolled
    {
        return Err(ctx.err(
            "inner.steps",
            format!(
                "method {name} needs at least 1 inner step (through 0 steps its hypergradient is only the direct term ∇_λ L_out, zero here); \
                 to evaluate a method at the starting point inner.init, use cg, neumann, fixed_point, one_step or implicit with steps = 0"
            ),
        ));
    }
    Ok((Inner { optimizer, steps }, None))
}

/// The length of w in the problem's flat layout (ridge: w [d]; classifiers: W [d, c]
/// row-major, then b [c]).
fn w_len(data: &HostData) -> usize {
    match data {
        HostData::Ridge { x, .. } => x.cols,
        HostData::Logistic { train, classes, .. } => train
            .x
            .cols
            .saturating_mul(*classes)
            .saturating_add(*classes),
        HostData::HyperCleaning { data, .. } => data
            .train
            .x
            .cols
            .saturating_mul(data.classes)
            .saturating_add(data.classes),
    }
}

/// `inner.init`: the starting point w₀, flat, checked against the problem's layout.
fn w0_of(ctx: &Ctx, c: &Config, data: &HostData) -> Result<Option<Vec<f64>>, ConfigError> {
    let Some(p) = &c.inner.init else {
        return Ok(None);
    };
    let (values, shape) = ctx.npy("inner.init", p)?;
    let want = w_len(data);
    if values.len() != want || shape.len() > 1 {
        let layout = match data {
            HostData::Ridge { x, .. } => format!("w [{}]", x.cols),
            HostData::Logistic { train, classes, .. } => format!(
                "W [{}, {classes}] row-major, then b [{classes}]",
                train.x.cols
            ),
            HostData::HyperCleaning { data, .. } => format!(
                "W [{}, {}] row-major, then b [{}]",
                data.train.x.cols, data.classes, data.classes
            ),
        };
        return Err(ctx.err(
            "inner.init",
            format!(
                "w of problem {} is a flat vector of {want} values ({layout}); the file {} holds shape {shape:?}",
                c.problem.kind.name(),
                p.display()
            ),
        ));
    }
    Ok(Some(values))
}

fn plan_of(
    ctx: &Ctx,
    c: &Config,
    inner: &Inner,
    tolerance: Option<Tolerance>,
) -> Result<Plan, ConfigError> {
    let o = &c.outer;
    let outer_keys = [
        ("kind", o.kind.is_some()),
        ("lr", o.lr.is_some()),
        ("beta1", o.beta1.is_some()),
        ("beta2", o.beta2.is_some()),
        ("eps", o.eps.is_some()),
    ];
    let (kind, lr) = if o.steps > 0 {
        let kind = ctx.required("outer.kind", o.kind, "when outer.steps > 0")?;
        let lr = ctx.required("outer.lr", o.lr, "when outer.steps > 0")?;
        (kind, ctx.positive("outer.lr", lr)?)
    } else {
        // One hypergradient at the initial λ: the update's settings are unused but
        // still checked when given, so a typo does not go unnoticed.
        if let Some(lr) = o.lr {
            ctx.positive("outer.lr", lr)?;
        }
        (o.kind.unwrap_or(OuterKind::Sgd), o.lr.unwrap_or(1.0))
    };
    let optimizer = match kind {
        OuterKind::Sgd => {
            ctx.only(
                "outer",
                &outer_keys,
                &["kind", "lr"],
                "to outer kind = \"sgd\"",
            )?;
            OuterOptimizer::Sgd { lr }
        }
        OuterKind::Adam => OuterOptimizer::Adam {
            lr,
            beta1: ctx.unit("outer.beta1", o.beta1.unwrap_or(0.9))?,
            beta2: ctx.unit("outer.beta2", o.beta2.unwrap_or(0.999))?,
            eps: ctx.positive("outer.eps", o.eps.unwrap_or(1e-8))?,
        },
    };
    let outer = OuterConfig {
        steps: o.steps,
        optimizer,
        warm_start: if o.warm_start {
            WarmStart::Warm
        } else {
            WarmStart::Reinit
        },
    };
    if matches!(c.method, MethodConfig::Hoag(_)) && o.steps > 0 && kind != OuterKind::Sgd {
        return Err(ctx.err(
            "outer.kind",
            "hoag takes plain gradient steps λ ← λ − lr·h; set kind = \"sgd\"",
        ));
    }
    // The method's own range checks, the ones `hypergradient` makes, naming the key.
    c.method.check(inner).map_err(|bad| {
        let message = match bad.error {
            crate::Error::InvalidArgument { msg, .. } => msg,
            other => other.to_string(),
        };
        ctx.err(&format!("method.{}", bad.key), message)
    })?;
    Ok(match &c.method {
        MethodConfig::Hoag(settings) => Plan::Hoag(settings.config(inner, o.steps, lr)),
        _ => Plan::Optimize {
            inner: *inner,
            outer,
            tolerance,
        },
    })
}

fn data_keys(d: &DataConfig) -> [(&'static str, bool); 16] {
    [
        ("seed", d.seed.is_some()),
        ("n_train", d.n_train.is_some()),
        ("n_val", d.n_val.is_some()),
        ("n_test", d.n_test.is_some()),
        ("features", d.features.is_some()),
        ("classes", d.classes.is_some()),
        ("noise", d.noise.is_some()),
        ("sep", d.sep.is_some()),
        ("corruption", d.corruption.is_some()),
        ("x_train", d.x_train.is_some()),
        ("y_train", d.y_train.is_some()),
        ("x_val", d.x_val.is_some()),
        ("y_val", d.y_val.is_some()),
        ("x_test", d.x_test.is_some()),
        ("y_test", d.y_test.is_some()),
        ("corrupted", d.corrupted.is_some()),
    ]
}

fn load_data(ctx: &Ctx, c: &Config) -> Result<HostData, ConfigError> {
    use DataSourceKind as S;
    use ProblemKind as P;
    let d = &c.data;
    let p = &c.problem;
    let problem = p.kind;
    let when = format!(
        "to data source = \"{}\" with problem kind = \"{}\"",
        match d.source {
            S::Digits => "digits",
            S::Synthetic => "synthetic",
            S::Npy => "npy",
        },
        problem.name()
    );
    let need = format!("for {}", &when[3..]);
    if problem != P::HyperCleaning && p.mu.is_some() {
        return Err(ctx.err("problem.mu", "applies to kind = \"hyper-cleaning\" only"));
    }
    if problem != P::Logistic && p.per_feature.is_some() {
        return Err(ctx.err("problem.per_feature", "applies to kind = \"logistic\" only"));
    }
    let allowed: &[&str] = match (d.source, problem) {
        (S::Digits, P::Ridge) => {
            return Err(ctx.err(
                "data.source",
                "the digits data is a classification set; ridge takes source = \"synthetic\" or \"npy\"",
            ));
        }
        (S::Digits, P::Logistic) => &["seed", "n_train", "n_val"],
        (S::Digits, P::HyperCleaning) => &["seed", "n_train", "n_val", "corruption"],
        (S::Synthetic, P::Ridge) => &["seed", "n_train", "n_val", "features", "noise"],
        (S::Synthetic, P::Logistic) => &["seed", "n_train", "n_val", "features", "classes", "sep"],
        (S::Synthetic, P::HyperCleaning) => &[
            "seed",
            "n_train",
            "n_val",
            "n_test",
            "features",
            "classes",
            "sep",
            "corruption",
        ],
        (S::Npy, P::Ridge) => &["x_train", "y_train", "x_val", "y_val"],
        (S::Npy, P::Logistic) => &["x_train", "y_train", "x_val", "y_val", "classes"],
        (S::Npy, P::HyperCleaning) => &[
            "x_train",
            "y_train",
            "x_val",
            "y_val",
            "x_test",
            "y_test",
            "corrupted",
            "classes",
        ],
    };
    ctx.only("data", &data_keys(d), allowed, &when)?;
    let seed = d.seed.unwrap_or(0);
    let count =
        |key: &str, v: Option<usize>, default: Option<usize>| -> Result<usize, ConfigError> {
            let v = match (v, default) {
                (Some(v), _) => v,
                (None, Some(d)) => d,
                (None, None) => ctx.required(&format!("data.{key}"), None::<usize>, &need)?,
            };
            ctx.at_least_one(&format!("data.{key}"), v)
        };
    let classes = |default: Option<usize>| -> Result<usize, ConfigError> {
        let c = count("classes", d.classes, default)?;
        if c < 2 {
            return Err(ctx.err(
                "data.classes",
                format!("expected at least 2 classes, got {c}"),
            ));
        }
        Ok(c)
    };
    let corruption = || -> Result<f64, ConfigError> {
        let v = d.corruption.unwrap_or(0.5);
        if !(0.0..=1.0).contains(&v) {
            return Err(ctx.err(
                "data.corruption",
                format!("expected a fraction in [0, 1], got {v}"),
            ));
        }
        Ok(v)
    };
    let mu = match p.mu {
        Some(m) => ctx.non_negative("problem.mu", m)?,
        None => 1e-3,
    };
    let per_feature = p.per_feature.unwrap_or(false);
    let path = |key: &str, v: &Option<PathBuf>| -> Result<PathBuf, ConfigError> {
        v.clone().ok_or_else(|| {
            ctx.err(
                &format!("data.{key}"),
                format!("missing: this key is required {need}"),
            )
        })
    };
    Ok(match (d.source, problem) {
        (S::Digits, P::Ridge) => unreachable!("rejected above"),
        (S::Digits, _) => {
            let (x, y) = digits();
            let (n_train, n_val) = (
                count("n_train", d.n_train, Some(500))?,
                count("n_val", d.n_val, Some(500))?,
            );
            if ctx.sum("data.n_train", &[n_train, n_val])? >= x.rows {
                return Err(ctx.err(
                    "data.n_train",
                    format!(
                        "data.n_train + data.n_val must be below the {} digits (the rest is the test set), got {n_train} + {n_val}",
                        x.rows
                    ),
                ));
            }
            let corr = if problem == P::HyperCleaning {
                corruption()?
            } else {
                0.0
            };
            let split = cleaning_split(&x, &y, 10, n_train, n_val, corr, seed)
                .map_err(|e| ctx.err("data", e.to_string()))?;
            classification(problem, split, mu, per_feature, true)
        }
        (S::Synthetic, P::Ridge) => {
            let (n, m, f) = (
                count("n_train", d.n_train, None)?,
                count("n_val", d.n_val, None)?,
                count("features", d.features, None)?,
            );
            let noise = ctx.non_negative("data.noise", d.noise.unwrap_or(0.5))?;
            let rows = ctx.sum("data.n_train", &[n, m])?;
            ctx.fits(
                larger(rows, f),
                "the generated data (n_train + n_val rows of features + 1 values)",
                &[rows, f.saturating_add(1)],
                8,
            )?;
            let ((x, y), (x_val, y_val)) = synthetic_regression_pair(n, m, f, noise, seed);
            HostData::Ridge { x, y, x_val, y_val }
        }
        (S::Synthetic, P::Logistic) => {
            let n_train = count("n_train", d.n_train, None)?;
            let n_val = count("n_val", d.n_val, None)?;
            let f = count("features", d.features, None)?;
            let classes = classes(Some(2))?;
            let sep = ctx.non_negative("data.sep", d.sep.unwrap_or(1.5))?;
            let rows = ctx.sum("data.n_train", &[n_train, n_val])?;
            // Generated, then copied into the two splits.
            ctx.fits(
                larger(rows, f),
                "the generated data (n_train + n_val rows of features, twice)",
                &[rows, f, 2],
                8,
            )?;
            ctx.fits(
                "data.classes",
                "the class means (classes × features)",
                &[classes, f],
                8,
            )?;
            // The rows are i.i.d. with labels cycling through the classes, so the
            // first n_train rows train and the next n_val validate.
            let (x, y) = synthetic_classification(rows, f, classes, sep, seed);
            let (tr, va): (Vec<usize>, Vec<usize>) =
                ((0..n_train).collect(), (n_train..n_train + n_val).collect());
            HostData::Logistic {
                train: Split {
                    x: x.select_rows(&tr),
                    labels: y[..n_train].to_vec(),
                },
                val: Split {
                    x: x.select_rows(&va),
                    labels: y[n_train..].to_vec(),
                },
                classes,
                per_feature,
            }
        }
        (S::Synthetic, P::HyperCleaning) => {
            let n_train = count("n_train", d.n_train, None)?;
            let n_val = count("n_val", d.n_val, None)?;
            let n_test = count("n_test", d.n_test, None)?;
            let f = count("features", d.features, None)?;
            let classes = classes(Some(2))?;
            let sep = ctx.non_negative("data.sep", d.sep.unwrap_or(1.5))?;
            let corr = corruption()?;
            let rows = ctx.sum("data.n_train", &[n_train, n_val, n_test])?;
            ctx.fits(
                larger(rows, f),
                "the generated data (n_train + n_val + n_test rows of features, twice)",
                &[rows, f, 2],
                8,
            )?;
            ctx.fits(
                "data.classes",
                "the class means (classes × features)",
                &[classes, f],
                8,
            )?;
            let (x, y) = synthetic_classification(rows, f, classes, sep, seed);
            let split = cleaning_split(&x, &y, classes, n_train, n_val, corr, seed)
                .map_err(|e| ctx.err("data", e.to_string()))?;
            classification(problem, split, mu, per_feature, true)
        }
        (S::Npy, P::Ridge) => {
            let x = ctx.npy_matrix("data.x_train", &path("x_train", &d.x_train)?)?;
            let y = ctx.npy_vector(
                "data.y_train",
                &path("y_train", &d.y_train)?,
                x.rows,
                "data.x_train",
            )?;
            let x_val = ctx.npy_matrix("data.x_val", &path("x_val", &d.x_val)?)?;
            check_cols(ctx, "data.x_val", &x_val, &x)?;
            let y_val = ctx.npy_vector(
                "data.y_val",
                &path("y_val", &d.y_val)?,
                x_val.rows,
                "data.x_val",
            )?;
            HostData::Ridge { x, y, x_val, y_val }
        }
        (S::Npy, _) => {
            let x = ctx.npy_matrix("data.x_train", &path("x_train", &d.x_train)?)?;
            let y = ctx.npy_labels(
                "data.y_train",
                &path("y_train", &d.y_train)?,
                x.rows,
                "data.x_train",
            )?;
            let x_val = ctx.npy_matrix("data.x_val", &path("x_val", &d.x_val)?)?;
            check_cols(ctx, "data.x_val", &x_val, &x)?;
            let y_val = ctx.npy_labels(
                "data.y_val",
                &path("y_val", &d.y_val)?,
                x_val.rows,
                "data.x_val",
            )?;
            let (test, corrupted) = if problem == P::HyperCleaning {
                let x_test = ctx.npy_matrix("data.x_test", &path("x_test", &d.x_test)?)?;
                check_cols(ctx, "data.x_test", &x_test, &x)?;
                let y_test = ctx.npy_labels(
                    "data.y_test",
                    &path("y_test", &d.y_test)?,
                    x_test.rows,
                    "data.x_test",
                )?;
                let corrupted = match &d.corrupted {
                    Some(p) => {
                        let v = ctx.npy_vector("data.corrupted", p, x.rows, "data.x_train")?;
                        if let Some(i) = v.iter().position(|&f| f != 0.0 && f != 1.0) {
                            return Err(ctx.err(
                                "data.corrupted",
                                format!("expected 0/1 flags, element {i} is {}", v[i]),
                            ));
                        }
                        Some(v.iter().map(|&f| f == 1.0).collect())
                    }
                    None => None,
                };
                (
                    Some(Split {
                        x: x_test,
                        labels: y_test,
                    }),
                    corrupted,
                )
            } else {
                (None, None)
            };
            let seen = y
                .iter()
                .chain(&y_val)
                .chain(test.iter().flat_map(|t| &t.labels))
                .max()
                .copied()
                .unwrap_or(0);
            let labels = y.len() + y_val.len() + test.as_ref().map_or(0, |t| t.labels.len());
            let classes = match d.classes {
                Some(_) => classes(None)?,
                None if seen >= MAX_INFERRED_CLASSES && seen >= 2 * labels => {
                    let key = [("data.y_train", &y), ("data.y_val", &y_val)]
                        .into_iter()
                        .chain(test.iter().map(|t| ("data.y_test", &t.labels)))
                        .find(|(_, l)| l.contains(&seen))
                        .map_or("data.y_train", |(k, _)| k);
                    return Err(ctx.err(
                        key,
                        format!(
                            "holds the label {seen}, so the class count would be inferred as {} for {labels} labels in all; \
                             set data.classes if that many classes is intended",
                            seen + 1
                        ),
                    ));
                }
                None => (seen + 1).max(2),
            };
            for (key, labels) in [("data.y_train", &y), ("data.y_val", &y_val)]
                .into_iter()
                .chain(test.iter().map(|t| ("data.y_test", &t.labels)))
            {
                if let Some(bad) = labels.iter().find(|&&l| l >= classes) {
                    return Err(ctx.err(
                        key,
                        format!("label {bad} is out of range for data.classes = {classes}"),
                    ));
                }
            }
            let have_flags = corrupted.is_some();
            let split = CleaningData {
                corrupted: corrupted.unwrap_or_else(|| vec![false; x.rows]),
                train: Split { x, labels: y },
                val: Split {
                    x: x_val,
                    labels: y_val,
                },
                test: test.unwrap_or(Split {
                    x: Matrix {
                        data: vec![],
                        rows: 0,
                        cols: 0,
                    },
                    labels: vec![],
                }),
                classes,
            };
            classification(problem, split, mu, per_feature, have_flags)
        }
    })
}

/// The parameters' size times what the method keeps of them (RAD: every iterate; T-RAD:
/// its last k + 1; forward mode: one tangent per element of λ; the exact ridge solve:
/// a d × d system), checked against [`MEMORY_LIMIT_BYTES`] before the run.
fn stored_iterates_fit(
    ctx: &Ctx,
    c: &Config,
    data: &HostData,
    inner: &Inner,
    lambda_len: usize,
) -> Result<(), ConfigError> {
    let params = match data {
        HostData::Ridge { x, .. } => x.cols,
        HostData::Logistic { train, classes, .. } => train.x.cols.saturating_mul(*classes),
        HostData::HyperCleaning { data, .. } => data.train.x.cols.saturating_mul(data.classes),
    };
    // The inner optimizer's state: w, plus the velocity with momentum.
    let state = match inner.optimizer {
        InnerOptimizer::Momentum { .. } => params.saturating_mul(2),
        _ => params,
    };
    let bytes = match c.dtype {
        super::config::DTypeName::F64 => 8,
        _ => 4,
    };
    let (key, what, copies) = match &c.method {
        MethodConfig::Rad(_) | MethodConfig::Bda(_) => (
            "inner.steps",
            "the stored iterates (inner.steps + 1 inner states)",
            inner.steps.saturating_add(1),
        ),
        MethodConfig::Trad(t) => (
            "method.k",
            "trad's stored iterates (k + 1 inner states)",
            t.k.saturating_add(1),
        ),
        MethodConfig::Forward(_) => (
            "problem",
            "forward mode's tangents (one inner state per element of λ)",
            lambda_len.saturating_add(1),
        ),
        MethodConfig::Implicit(_) => ("data.features", "implicit's |w| × |w| system", params),
        _ => ("data", "the parameters", 4),
    };
    ctx.fits(key, what, &[state, copies], bytes)
}

/// The key to name for generated data of `rows` × `features`: the larger factor's.
fn larger(rows: usize, features: usize) -> &'static str {
    if rows >= features {
        "data.n_train"
    } else {
        "data.features"
    }
}

fn check_cols(ctx: &Ctx, key: &str, m: &Matrix, train: &Matrix) -> Result<(), ConfigError> {
    if m.cols != train.cols {
        return Err(ctx.err(
            key,
            format!(
                "expected {} columns like data.x_train [{}, {}], got shape [{}, {}]",
                train.cols, train.rows, train.cols, m.rows, m.cols
            ),
        ));
    }
    Ok(())
}

fn classification(
    problem: ProblemKind,
    data: CleaningData,
    mu: f64,
    per_feature: bool,
    has_flags: bool,
) -> HostData {
    match problem {
        ProblemKind::HyperCleaning => HostData::HyperCleaning {
            data,
            mu,
            has_flags,
        },
        _ => HostData::Logistic {
            train: data.train,
            val: data.val,
            classes: data.classes,
            per_feature,
        },
    }
}
