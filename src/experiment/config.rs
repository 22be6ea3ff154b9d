//! The experiment file (TOML) as Rust types, and its parser.
//!
//! Every table denies unknown keys. `[method]` deserialises straight into the settings
//! of the chosen kind, so a key that does not apply to it (say `method.k` with
//! `kind = "cg"`) is unknown there; in the other tables, keys that exist but do not apply
//! to the chosen kind or source are rejected by
//! [`Experiment::from_config`](super::Experiment::from_config), which also checks every
//! value. The README's "The experiment config format" section is the user-facing copy
//! of these docs.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::ConfigError;
use crate::bilevel::methods::{
    Bda, Cg, FixedPoint, Forward, Implicit, Neumann, OneStep, Rad, Trad,
};
use crate::bilevel::{BadSetting, HOAG, HoagSettings, HypergradientMethod, Inner};
/// `device`: defined with the devices, since the command line's `--device` shares it.
pub use crate::device::DeviceSpec;

/// A whole experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where to run: `"best"` (default), `"cpu"`, `"gpu"`, an adapter index (an integer,
    /// in `blo devices` order) or a substring of an adapter name.
    #[serde(default)]
    pub device: DeviceSpec,
    /// Element type: `"f32"` (default, the GPU's type) or `"f64"` (CPU only).
    #[serde(default)]
    pub dtype: DTypeName,
    /// Optional `.npy` file for the hypergradient (f64, C order, shaped like λ): the one
    /// at the initial λ when `outer.steps = 0`, otherwise the last one computed (at the
    /// final λ). Relative to the results file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypergradient_out: Option<PathBuf>,
    /// The bilevel problem.
    pub problem: ProblemConfig,
    /// Its data.
    pub data: DataConfig,
    /// λ's initial value.
    #[serde(default)]
    pub lambda: LambdaConfig,
    /// The inner optimizer.
    pub inner: InnerConfig,
    /// The hypergradient method.
    pub method: MethodConfig,
    /// The outer loop.
    #[serde(default)]
    pub outer: OuterConfigToml,
}

/// `dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DTypeName {
    /// 32-bit floats (every device).
    #[default]
    F32,
    /// 64-bit floats (the CPU backend only).
    F64,
}

impl From<DTypeName> for crate::DType {
    fn from(d: DTypeName) -> Self {
        match d {
            DTypeName::F32 => crate::DType::F32,
            DTypeName::F64 => crate::DType::F64,
        }
    }
}

/// `[problem]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProblemConfig {
    /// `"ridge"`, `"logistic"` or `"hyper-cleaning"`.
    pub kind: ProblemKind,
    /// hyper-cleaning: the L2 strength μ ≥ 0 on W (default 1e-3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mu: Option<f64>,
    /// logistic: one λ per feature (true) or one λ for all (false, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_feature: Option<bool>,
}

/// The built-in problems ([`crate::problems`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// [`crate::problems::Ridge`]: λ ∈ R^d, one log-regularisation weight per feature.
    Ridge,
    /// [`crate::problems::Logistic`]: λ ∈ R¹ or R^d, log L2 strength.
    Logistic,
    /// [`crate::problems::HyperCleaning`]: λ ∈ R^n_train, one weight per training example.
    #[serde(alias = "hyper_cleaning")]
    HyperCleaning,
}

impl ProblemKind {
    /// The name used in config files.
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::Ridge => "ridge",
            ProblemKind::Logistic => "logistic",
            ProblemKind::HyperCleaning => "hyper-cleaning",
        }
    }
}

/// `[data]`: which keys apply depends on `source` and the problem; see the README.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `"digits"`, `"synthetic"` or `"npy"`.
    pub source: DataSourceKind,
    /// Seed of the synthetic generator and of the digits shuffle / corruption (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Training rows (digits, synthetic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_train: Option<usize>,
    /// Validation rows (digits, synthetic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_val: Option<usize>,
    /// Test rows (synthetic hyper-cleaning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_test: Option<usize>,
    /// Features (synthetic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<usize>,
    /// Classes (synthetic classification; npy: default max label + 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<usize>,
    /// Label noise standard deviation (synthetic ridge, default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<f64>,
    /// Class separation (synthetic classification, default 1.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sep: Option<f64>,
    /// Fraction of corrupted training labels (hyper-cleaning on digits/synthetic, default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corruption: Option<f64>,
    /// `.npy` training features `[n, d]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_train: Option<PathBuf>,
    /// `.npy` training targets `[n]` (ridge) or labels 0..classes−1 stored as floats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y_train: Option<PathBuf>,
    /// `.npy` validation features `[m, d]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_val: Option<PathBuf>,
    /// `.npy` validation targets or labels `[m]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y_val: Option<PathBuf>,
    /// `.npy` test features `[k, d]` (hyper-cleaning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_test: Option<PathBuf>,
    /// `.npy` test labels `[k]` (hyper-cleaning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y_test: Option<PathBuf>,
    /// `.npy` 0/1 flags `[n]` of which training labels are corrupted (hyper-cleaning,
    /// optional: without it no F1 is reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupted: Option<PathBuf>,
}

/// `data.source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataSourceKind {
    /// The built-in UCI digits ([`crate::problems::data::digits`]).
    #[default]
    Digits,
    /// A seeded generator ([`crate::problems::data::synthetic_regression_pair`],
    /// [`crate::problems::data::synthetic_classification`]).
    Synthetic,
    /// `.npy` files, one per array.
    Npy,
}

/// `[lambda]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LambdaConfig {
    /// Every λ_i = this number (default 0), or a `.npy` file holding λ (relative to
    /// the config file).
    #[serde(default)]
    pub init: LambdaInit,
}

/// `lambda.init`: a number or a path.
#[derive(Debug, Clone, PartialEq)]
pub enum LambdaInit {
    /// Every element equals this value.
    Value(f64),
    /// A `.npy` file with one value per element of λ.
    Npy(PathBuf),
}

impl Default for LambdaInit {
    fn default() -> Self {
        LambdaInit::Value(0.0)
    }
}

impl Serialize for LambdaInit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LambdaInit::Value(v) => s.serialize_f64(*v),
            LambdaInit::Npy(p) => p.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for LambdaInit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = LambdaInit;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or the path of a .npy file")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<LambdaInit, E> {
                Ok(LambdaInit::Value(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LambdaInit, E> {
                Ok(LambdaInit::Value(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LambdaInit, E> {
                Ok(LambdaInit::Value(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LambdaInit, E> {
                Ok(LambdaInit::Npy(PathBuf::from(v)))
            }
        }
        d.deserialize_any(V)
    }
}

/// `[inner]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InnerConfig {
    /// `"gd"` or `"momentum"`.
    pub kind: InnerKind,
    /// Step size η > 0.
    pub lr: f64,
    /// Inner steps T per hypergradient (HOAG: the cap per outer step). 0 evaluates the
    /// method at the starting point (`init`); rad, trad, forward and hoag need T ≥ 1.
    /// Required unless `tol` is set (then it does not apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Solve the inner problem to ‖∇_w L_in‖ ≤ tol (finite, > 0) before each
    /// hypergradient instead of taking `steps` steps; needs `max_steps`. For cg, neumann,
    /// fixed_point, one_step and implicit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tol: Option<f64>,
    /// With `tol`: the most inner steps per solve (≥ 1); reaching it is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<usize>,
    /// With `tol`: steps between gradient-norm checks (default 10, ≥ 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_every: Option<usize>,
    /// With `tol`: what solves, `"optimizer"` (the inner optimizer, the default) or
    /// `"newton"` (Newton–CG with a line search, for small problems and tight
    /// tolerances; `max_steps` then counts Newton steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solver: Option<InnerSolverKind>,
    /// Optional `.npy` file holding the starting point w₀ as one flat vector in the
    /// problem's layout (ridge: w `[d]`; logistic and hyper-cleaning: W `[d, classes]`
    /// row-major, then b `[classes]`). Relative to the config file. Default: w₀ = 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// momentum: μ in [0, 1) (required for `kind = "momentum"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
}

/// `inner.solver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InnerSolverKind {
    /// The inner optimizer (`kind`, `lr`).
    Optimizer,
    /// Newton–CG ([`crate::bilevel::InnerSolver::Newton`]).
    Newton,
}

/// `inner.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InnerKind {
    /// Gradient descent.
    Gd,
    /// Heavy-ball momentum.
    Momentum,
}

/// `[method]`: `kind` picks the variant, and the table's other keys are the fields of
/// that variant's settings type (the very types that implement the methods); any other
/// key is an error that names it. Settings are range-checked by
/// [`Experiment::from_config`](super::Experiment::from_config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MethodConfig {
    /// `rad`: [`Method::Rad`](crate::bilevel::Method::Rad), no keys.
    Rad(Rad),
    /// `trad`: [`Method::Trad`](crate::bilevel::Method::Trad); `k`.
    Trad(Trad),
    /// `forward`: [`Method::Forward`](crate::bilevel::Method::Forward), no keys.
    Forward(Forward),
    /// `cg`: [`Method::Cg`](crate::bilevel::Method::Cg); `iters`, `tol`, `damping`.
    Cg(Cg),
    /// `neumann`: [`Method::Neumann`](crate::bilevel::Method::Neumann); `k`, `eta`.
    Neumann(Neumann),
    /// `fixed_point`: [`Method::FixedPoint`](crate::bilevel::Method::FixedPoint); `k`, `eta`.
    #[serde(alias = "fixed-point")]
    FixedPoint(FixedPoint),
    /// `one_step`: [`Method::OneStep`](crate::bilevel::Method::OneStep); `xi`, `exact`.
    #[serde(alias = "one-step")]
    OneStep(OneStep),
    /// `implicit` (or its former name `exact`):
    /// [`Method::Implicit`](crate::bilevel::Method::Implicit), no keys.
    #[serde(alias = "exact")]
    Implicit(Implicit),
    /// `hoag`: [`crate::bilevel::hoag`], which replaces the outer loop; `iters`, `eps0`,
    /// `decay`, `check_every`.
    Hoag(HoagSettings),
    /// `bda`: [`Method::Bda`](crate::bilevel::Method::Bda); `mu`, or `alpha0` and
    /// `decay`, and `upper_ratio`.
    Bda(Bda),
}

impl MethodConfig {
    /// The hypergradient method, or `None` for HOAG (an outer loop of its own).
    pub fn hypergradient_method(&self) -> Option<&dyn HypergradientMethod> {
        Some(match self {
            MethodConfig::Rad(m) => m,
            MethodConfig::Trad(m) => m,
            MethodConfig::Forward(m) => m,
            MethodConfig::Cg(m) => m,
            MethodConfig::Neumann(m) => m,
            MethodConfig::FixedPoint(m) => m,
            MethodConfig::OneStep(m) => m,
            MethodConfig::Implicit(m) => m,
            MethodConfig::Bda(m) => m,
            MethodConfig::Hoag(_) => return None,
        })
    }

    /// The method's name, as `kind` spells it (and as reports name the method).
    pub fn name(&self) -> &'static str {
        match self {
            MethodConfig::Rad(_) => Rad::NAME,
            MethodConfig::Trad(_) => Trad::NAME,
            MethodConfig::Forward(_) => Forward::NAME,
            MethodConfig::Cg(_) => Cg::NAME,
            MethodConfig::Neumann(_) => Neumann::NAME,
            MethodConfig::FixedPoint(_) => FixedPoint::NAME,
            MethodConfig::OneStep(_) => OneStep::NAME,
            MethodConfig::Implicit(_) => Implicit::NAME,
            MethodConfig::Bda(_) => Bda::NAME,
            MethodConfig::Hoag(_) => HOAG,
        }
    }

    /// Checks every setting's range; a failure names the key.
    pub(crate) fn check(&self, inner: &Inner) -> Result<(), BadSetting> {
        match self {
            MethodConfig::Rad(_) | MethodConfig::Forward(_) | MethodConfig::Implicit(_) => Ok(()),
            MethodConfig::Trad(m) => m.check(inner),
            MethodConfig::Cg(m) => m.check(),
            MethodConfig::Neumann(m) => m.check(),
            MethodConfig::FixedPoint(m) => m.check(),
            MethodConfig::OneStep(m) => m.check(),
            MethodConfig::Hoag(m) => m.check(),
            MethodConfig::Bda(m) => m.check(),
        }
    }
}

/// `[outer]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OuterConfigToml {
    /// Outer steps; 0 (the default) computes the hypergradient at the initial λ once.
    #[serde(default)]
    pub steps: usize,
    /// `"sgd"` or `"adam"` (required when steps > 0; hoag takes sgd steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<OuterKind>,
    /// Step size > 0 (required when steps > 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// adam: β₁ in [0, 1) (default 0.9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta1: Option<f64>,
    /// adam: β₂ in [0, 1) (default 0.999).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta2: Option<f64>,
    /// adam: ε > 0 (default 1e-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
    /// Start each outer step's inner run from the previous one's last iterate (default
    /// true) or from w₀ (false).
    #[serde(default = "yes")]
    pub warm_start: bool,
}

fn yes() -> bool {
    true
}

impl Default for OuterConfigToml {
    fn default() -> Self {
        OuterConfigToml {
            steps: 0,
            kind: None,
            lr: None,
            beta1: None,
            beta2: None,
            eps: None,
            warm_start: true,
        }
    }
}

/// `outer.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OuterKind {
    /// λ ← λ − lr·h.
    Sgd,
    /// Adam on λ.
    Adam,
}

/// 1-based (line, column) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

const TOP_LEVEL: [&str; 3] = ["device", "dtype", "hypergradient_out"];

/// serde's type names in plain words.
fn friendlier(message: &str) -> String {
    let mut m = message
        .replace("expected usize", "expected an integer ≥ 0")
        .replace("expected u64", "expected an integer ≥ 0")
        .replace("expected f64", "expected a number")
        .replace("expected a boolean", "expected true or false");
    for table in ["expected struct ", "expected internally tagged enum "] {
        if let Some(i) = m.find(table) {
            m.replace_range(i.., "expected a table");
        }
    }
    m
}

/// The key of `[method]` that makes it fail to deserialise with a wrong type or value.
/// serde reads an internally tagged table whole before it knows the kind, so such an
/// error arrives with the table's path; trying the kind with one key at a time finds it.
fn method_key_at_fault(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    let method = table.get("method")?.as_table()?;
    let kind = method.get("kind")?;
    method
        .iter()
        .filter(|(key, _)| *key != "kind")
        .find(|(key, value)| {
            let mut one = toml::Table::new();
            one.insert("kind".into(), kind.clone());
            one.insert((*key).clone(), (*value).clone());
            toml::Value::Table(one)
                .try_into::<MethodConfig>()
                .is_err_and(|e| {
                    let m = e.to_string();
                    m.contains("invalid type") || m.contains("invalid value")
                })
        })
        .map(|(key, _)| key.clone())
}

/// `method.kind` as written, for messages.
fn method_kind(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    Some(table.get("method")?.get("kind")?.as_str()?.to_string())
}

impl Config {
    /// Parses a config from TOML text. `file` names the source in error messages.
    pub fn from_toml_str(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let at = |e: &toml::de::Error| e.span().map(|s| line_col(text, s.start));
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            key: String::new(),
            message: format!("not valid TOML: {}", e.message().trim()),
            position: at(&e),
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let mut key = if path == "." { String::new() } else { path };
            let mut message = friendlier(inner.message().trim());
            // serde reports a missing key at its table; name the key itself.
            if let Some(name) = message
                .strip_prefix("missing field `")
                .and_then(|r| r.strip_suffix('`'))
            {
                key = if key.is_empty() {
                    name.to_string()
                } else {
                    format!("{key}.{name}")
                };
                message = "missing: this key is required".to_string();
            }
            // Errors inside `[method]` carry the table's path (see method_key_at_fault).
            if let Some(name) = message
                .strip_prefix("unknown field `")
                .and_then(|r| r.split('`').next())
                && key != name
                && !key.ends_with(&format!(".{name}"))
            {
                key = if key.is_empty() {
                    name.to_string()
                } else {
                    format!("{key}.{name}")
                };
                if let Some(kind) = method_kind(text).filter(|_| key.starts_with("method.")) {
                    message = message
                        .replace(
                            ", there are no fields",
                            &format!(": kind = \"{kind}\" takes no other key"),
                        )
                        .replace(", expected", &format!(" for kind = \"{kind}\", expected"));
                }
            } else if key == "method"
                && (message.starts_with("invalid type") || message.starts_with("invalid value"))
                && let Some(name) = method_key_at_fault(text)
            {
                key = format!("method.{name}");
            }
            if message.starts_with("unknown field")
                && TOP_LEVEL.iter().any(|k| key.ends_with(&format!(".{k}")))
            {
                message.push_str(
                    "; top-level keys (device, dtype, hypergradient_out) must come before the first [table]",
                );
            }
            ConfigError {
                file: file.to_path_buf(),
                position: at(&inner),
                key,
                message,
            }
        })
    }

    /// Reads and parses a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: String::new(),
            message: format!("cannot read the config file: {e}"),
            position: None,
        })?;
        Self::from_toml_str(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[problem]
kind = "ridge"
[data]
source = "synthetic"
[inner]
kind = "gd"
lr = 0.5
steps = 5
"#;

    fn parse(method: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(&format!("{BASE}[method]\n{method}\n"), Path::new("t.toml"))
    }

    fn method(table: &str) -> MethodConfig {
        parse(table).unwrap().method
    }

    fn error(table: &str) -> ConfigError {
        parse(table).unwrap_err()
    }

    #[test]
    fn each_kind_deserialises_into_its_settings_with_defaults() {
        let cg = Cg {
            iters: 3,
            tol: None,
            damping: 0.0,
        };
        let cases = [
            ("kind = \"rad\"", MethodConfig::Rad(Rad)),
            ("kind = \"trad\"\nk = 2", MethodConfig::Trad(Trad { k: 2 })),
            ("kind = \"forward\"", MethodConfig::Forward(Forward)),
            ("kind = \"cg\"\niters = 3", MethodConfig::Cg(cg)),
            (
                "kind = \"cg\"\niters = 3\ntol = 1\ndamping = 0.5",
                MethodConfig::Cg(Cg {
                    tol: Some(1.0),
                    damping: 0.5,
                    ..cg
                }),
            ),
            (
                "kind = \"neumann\"\nk = 4\neta = 0.5",
                MethodConfig::Neumann(Neumann { k: 4, eta: 0.5 }),
            ),
            (
                "kind = \"fixed-point\"\nk = 4\neta = 0.5",
                MethodConfig::FixedPoint(FixedPoint { k: 4, eta: 0.5 }),
            ),
            (
                "kind = \"one-step\"\nxi = 0.1",
                MethodConfig::OneStep(OneStep {
                    xi: 0.1,
                    exact: true,
                }),
            ),
            ("kind = \"implicit\"", MethodConfig::Implicit(Implicit)),
            // The former name.
            ("kind = \"exact\"", MethodConfig::Implicit(Implicit)),
            (
                "kind = \"hoag\"\neps0 = 0.5",
                MethodConfig::Hoag(HoagSettings {
                    eps0: 0.5,
                    ..HoagSettings::default()
                }),
            ),
        ];
        for (table, want) in cases {
            assert_eq!(method(table), want, "{table}");
        }
    }

    /// `kind` as serde spells it, the name reports use and the implementing type's name
    /// are one string, and a config survives a round trip through its own TOML.
    #[test]
    fn kind_names_agree_and_round_trip() {
        for table in [
            "kind = \"rad\"",
            "kind = \"trad\"\nk = 2",
            "kind = \"forward\"",
            "kind = \"cg\"\niters = 3\ntol = 0.5",
            "kind = \"neumann\"\nk = 4\neta = 0.5",
            "kind = \"fixed_point\"\nk = 4\neta = 0.5",
            "kind = \"one_step\"\nxi = 0.1\nexact = false",
            "kind = \"implicit\"",
            "kind = \"hoag\"",
        ] {
            let config = parse(table).unwrap();
            let m = &config.method;
            let written = toml::to_string(&config).unwrap();
            assert!(
                written.contains(&format!("kind = \"{}\"", m.name())),
                "{written}"
            );
            if let Some(h) = m.hypergradient_method() {
                assert_eq!(h.name(), m.name());
            }
            let back = Config::from_toml_str(&written, Path::new("w.toml")).unwrap();
            assert_eq!(&back, &config, "{written}");
        }
    }

    #[test]
    fn errors_inside_method_name_the_key() {
        let cases = [
            // Keys that exist for another kind, or for none.
            ("kind = \"cg\"\niters = 3\neta = 0.5", "method.eta", "`tol`"),
            ("kind = \"rad\"\nk = 3", "method.k", "takes no other key"),
            ("kind = \"hoag\"\nk = 3", "method.k", "`check_every`"),
            ("kind = \"trad\"\nkk = 3", "method.kk", "kind = \"trad\""),
            // Wrong types and values, found inside the table.
            (
                "kind = \"cg\"\niters = \"three\"",
                "method.iters",
                "integer",
            ),
            (
                "kind = \"cg\"\niters = 3\ntol = \"x\"",
                "method.tol",
                "number",
            ),
            ("kind = \"trad\"\nk = -1", "method.k", "integer"),
            (
                "kind = \"one_step\"\nxi = 0.1\nexact = 1",
                "method.exact",
                "true or false",
            ),
            // Missing keys and kinds.
            ("kind = \"one_step\"", "method.xi", "required"),
            ("k = 3", "method.kind", "required"),
            ("kind = \"newton\"", "method.kind", "`rad`"),
        ];
        for (table, key, says) in cases {
            let e = error(table);
            assert_eq!(e.key, key, "{table}: {e}");
            assert!(e.message.contains(says), "{table}: {e}");
            assert!(e.to_string().starts_with("t.toml:"), "{e}");
        }
        let e =
            Config::from_toml_str(&format!("method = 3\n{BASE}"), Path::new("t.toml")).unwrap_err();
        assert_eq!(e.key, "method");
        assert!(e.message.contains("expected a table"), "{e}");
    }
}
