//! The kernel registry: for each family of GPU kernels, the variants blo has, what each
//! needs from the adapter, and which one runs.
//!
//! A *family* is a group of ops whose kernels are chosen together: `matmul`, `matvec`
//! (the narrow products `matmul` hands over), `reduce`, `elementwise` (unary, binary and
//! fill), `loss`, `index` and `update`. A *variant* is one complete way to run a family
//! ([`Variant`]): a stable name (`matmul/portable`), its kernels and plan (the type `P` is the family's: the entry points it dispatches plus
//! whatever the family's dispatch code lets a variant decide, such as matmul's tile
//! shape), a requirement on the adapter and a rule for when it suits one. The variants:
//!
//! | family | variant | kernels | chosen by default |
//! |---|---|---|---|
//! | matmul | `tiled` | `matmul_tiled.wgsl` (64×64 blocks, A and B tiles in workgroup memory) | on adapters that are not CPUs (with 256-invocation workgroups and 8 KiB of workgroup memory) |
//! | matmul | `tiled_large` | `matmul_tiled_large.wgsl` (128×128 blocks, K-step 8, 8×8 outputs per invocation) | not by default: the autotuner picks it per shape class where it measures faster than `tiled` (needs 256-invocation workgroups and 8448 bytes of workgroup memory) |
//! | matmul | `subgroup` | `matmul.wgsl` (A shared by subgroup broadcasts) | otherwise, with subgroups of ≥ 8 lanes |
//! | matmul | `portable` | `matmul_portable.wgsl` | otherwise |
//! | matvec | `subgroup` | `matvec_subgroup.wgsl` (narrow products: n or m ≤ 16; a row's partials added by subgroup shuffles) | on adapters that are not CPUs, with subgroups |
//! | matvec | `workgroup` | `matvec.wgsl` (partials in workgroup memory; four rows per invocation for X·w on CPU adapters) | otherwise |
//! | reduce | `subgroup` | `reduce_subgroup.wgsl` (256-lane workgroups, coalesced vec4 loads, subgroup shuffles then a short tree; a full reduction in one dispatch) | on adapters that are not CPUs, with power-of-two subgroups of ≤ 256 lanes |
//! | reduce | `tree` | `reduce_tree.wgsl` (the same kernels, a tree in workgroup memory throughout) | on adapters that are not CPUs, otherwise |
//! | reduce | `one_barrier` | `reduce.wgsl` (per-invocation sums, one barrier: barriers are what costs on a CPU) | otherwise |
//! | elementwise | `vec4` | `unary.wgsl`, `binary.wgsl`, `fill.wgsl` | always |
//! | loss | `row_per_workgroup` | `loss_workgroup.wgsl` (a row per segment of up to 256 lanes, sized per call; cross-entropy in one dispatch) | on adapters that are not CPUs |
//! | loss | `row_per_invocation` | `loss.wgsl` (a row per invocation, no barrier) | otherwise |
//! | index | `direct` | `index.wgsl` | always |
//! | update | `vec4` | `update.wgsl` | always |
//!
//! ## Selection
//! Rules read [`AdapterFacts`], what the adapter reports (enabled features, subgroup
//! sizes, limits, device type, vendor id), never its name. A family's default is the
//! first variant in its list that the adapter can run (`requires`) and that suits it
//! (`suits`); failing that, the first it can run. So a list is in order of preference.
//! Decisions that depend on each call's shapes (matmul's rows per invocation and
//! workgroup size) belong to the variant's plan: the default variant is fixed per
//! context, its plan adapts to the call. The default is computed once, when the
//! [`GpuContext`] opens.
//!
//! ## Forcing a variant
//! Tests and `blo check` run every variant an adapter can run, whatever the default
//! (`blo check` forces each in turn through [`GpuContext::force_kernel`]):
//! - `BLO_KERNELS=matmul=portable,reduce=one_barrier` (comma-separated `family=variant`,
//!   or the profiles `gpu`, `cpu` and `auto`: every family as an adapter of that kind
//!   would choose, so `BLO_KERNELS=gpu` runs the GPU variants on lavapipe),
//!   read when a context opens: `BLO_KERNELS=matmul=portable cargo test` runs the whole
//!   suite on the portable matmul;
//! - [`GpuContext::force_kernel`] and [`GpuContext::kernel_variants`] at run time.
//!
//! An unknown family or variant, or one the adapter cannot run, is an
//! [`Error::KernelChoice`] naming the valid choices.
//!
//! ## Adding a variant
//! 1. Write its shader as `shaders/<family>_<variant>.wgsl` (listed in `shaders.rs` like
//!    every shader; shared WGSL comes in through `//#include`, see `shaders.rs`; two
//!    variants that differ in one part, like `reduce/subgroup` and `reduce/tree`, are two
//!    short files including a shared body from `shaders/common/`).
//! 2. In `kernels/<family>.rs`, declare it: `pub(crate) static NAME: Variant<Plan> =
//!    Variant { name, summary, requires, suits, plan }`, with the family's `Plan` filled
//!    with its entry points (and, for matmul, its tile rule).
//! 3. Register it: one line in its family's list below, in order of preference.
//!
//! `registry/tests.rs` then runs it against the CPU backend on every adapter that can run
//! it, and `blo check` runs its family's checks under it (`<check>@<variant>`).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::context::GpuContext;
use super::kernels::{elementwise, index, loss, matmul, matvec, reduce, update};
use crate::error::{Error, Result};

/// What the selection rules and requirements may know about an adapter: what it reports,
/// never its name.
#[derive(Debug, Clone)]
pub(crate) struct AdapterFacts {
    /// Features enabled on the device.
    pub features: wgpu::Features,
    /// Smallest and largest subgroup size, `None` without [`wgpu::Features::SUBGROUP`].
    pub subgroup_sizes: Option<(u32, u32)>,
    /// The limits the device was opened with.
    pub limits: wgpu::Limits,
    /// Discrete, integrated, virtual, CPU (software) or other.
    pub device_type: wgpu::DeviceType,
    /// PCI vendor id (0 when the backend reports none).
    #[allow(
        dead_code,
        reason = "no rule needs it yet; variants for discrete GPUs will"
    )]
    pub vendor: u32,
}

/// One way to run a whole family of kernels. `P` is the family's plan type.
pub(crate) struct Variant<P: 'static> {
    /// Stable name within the family (snake case), as `BLO_KERNELS` spells it.
    pub name: &'static str,
    /// One line for listings.
    pub summary: &'static str,
    /// `Err(why not)` when the adapter cannot run it.
    pub requires: fn(&AdapterFacts) -> std::result::Result<(), String>,
    /// Whether it is a good default on this adapter (given that it can run there).
    pub suits: fn(&AdapterFacts) -> bool,
    /// What the family's dispatch code runs.
    pub plan: P,
}

/// A family: its id and its variants in order of preference.
pub(crate) struct Family<P: 'static> {
    pub id: FamilyId,
    pub variants: &'static [&'static Variant<P>],
}

// ---- the registrations: one line per variant ----------------------------------------

pub(crate) static MATMUL: Family<matmul::Plan> = Family {
    id: FamilyId::Matmul,
    variants: &[
        &matmul::TILED,
        &matmul::TILED_LARGE,
        &matmul::SUBGROUP,
        &matmul::PORTABLE,
    ],
};

pub(crate) static MATVEC: Family<matvec::Plan> = Family {
    id: FamilyId::Matvec,
    variants: &[&matvec::SUBGROUP, &matvec::WORKGROUP],
};

pub(crate) static REDUCE: Family<reduce::Plan> = Family {
    id: FamilyId::Reduce,
    variants: &[
        &reduce::workgroup::SUBGROUP,
        &reduce::workgroup::TREE,
        &reduce::ONE_BARRIER,
    ],
};

pub(crate) static ELEMENTWISE: Family<elementwise::Plan> = Family {
    id: FamilyId::Elementwise,
    variants: &[&elementwise::VEC4],
};

pub(crate) static LOSS: Family<loss::Plan> = Family {
    id: FamilyId::Loss,
    variants: &[
        &loss::workgroup::ROW_PER_WORKGROUP,
        &loss::ROW_PER_INVOCATION,
    ],
};

pub(crate) static INDEX: Family<index::Plan> = Family {
    id: FamilyId::Index,
    variants: &[&index::DIRECT],
};

pub(crate) static UPDATE: Family<update::Plan> = Family {
    id: FamilyId::Update,
    variants: &[&update::VEC4],
};

/// The families, as an index into a context's choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FamilyId {
    Matmul,
    Matvec,
    Reduce,
    Elementwise,
    Loss,
    Index,
    Update,
}

const FAMILIES: usize = 7;

impl FamilyId {
    pub(crate) const ALL: [FamilyId; FAMILIES] = [
        FamilyId::Matmul,
        FamilyId::Matvec,
        FamilyId::Reduce,
        FamilyId::Elementwise,
        FamilyId::Loss,
        FamilyId::Index,
        FamilyId::Update,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            FamilyId::Matmul => "matmul",
            FamilyId::Matvec => "matvec",
            FamilyId::Reduce => "reduce",
            FamilyId::Elementwise => "elementwise",
            FamilyId::Loss => "loss",
            FamilyId::Index => "index",
            FamilyId::Update => "update",
        }
    }

    fn from_name(name: &str) -> Option<FamilyId> {
        FamilyId::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The family's variants without their plans.
    fn entries(self) -> Vec<Entry> {
        match self {
            FamilyId::Matmul => MATMUL.entries(),
            FamilyId::Matvec => MATVEC.entries(),
            FamilyId::Reduce => REDUCE.entries(),
            FamilyId::Elementwise => ELEMENTWISE.entries(),
            FamilyId::Loss => LOSS.entries(),
            FamilyId::Index => INDEX.entries(),
            FamilyId::Update => UPDATE.entries(),
        }
    }
}

/// A variant seen without its plan (whose type differs between families).
#[derive(Clone, Copy)]
struct Entry {
    name: &'static str,
    summary: &'static str,
    requires: fn(&AdapterFacts) -> std::result::Result<(), String>,
    suits: fn(&AdapterFacts) -> bool,
}

impl<P> Family<P> {
    fn entries(&self) -> Vec<Entry> {
        self.variants
            .iter()
            .map(|v| Entry {
                name: v.name,
                summary: v.summary,
                requires: v.requires,
                suits: v.suits,
            })
            .collect()
    }
}

/// The default variant of `family` on an adapter: the first it can run that suits it,
/// else the first it can run, else the last (the most portable: its pipeline creation
/// then reports what the adapter lacks, as it would without a registry).
fn default_of(family: FamilyId, facts: &AdapterFacts) -> usize {
    let entries = family.entries();
    let runs = |e: &Entry| (e.requires)(facts).is_ok();
    entries
        .iter()
        .position(|e| runs(e) && (e.suits)(facts))
        .or_else(|| entries.iter().position(runs))
        .unwrap_or(entries.len() - 1)
}

/// The variant `family=variant` names, if the adapter can run it.
fn lookup(
    choice: &str,
    family: &str,
    variant: &str,
    facts: &AdapterFacts,
) -> Result<(FamilyId, usize)> {
    let err = |reason: String| Error::KernelChoice {
        choice: choice.to_string(),
        reason,
        valid: valid_choices(facts),
    };
    let Some(id) = FamilyId::from_name(family) else {
        return Err(err(format!("no kernel family `{family}`")));
    };
    let entries = id.entries();
    let Some(index) = entries.iter().position(|e| e.name == variant) else {
        return Err(err(format!("`{family}` has no variant `{variant}`")));
    };
    (entries[index].requires)(facts)
        .map_err(|why| err(format!("this adapter cannot run {family}/{variant}: {why}")))?;
    Ok((id, index))
}

/// The choices this adapter can run, as `family=a|b, ...`.
fn valid_choices(facts: &AdapterFacts) -> String {
    FamilyId::ALL
        .iter()
        .map(|&f| {
            let names: Vec<&str> = f
                .entries()
                .into_iter()
                .filter(|e| (e.requires)(facts).is_ok())
                .map(|e| e.name)
                .collect();
            format!("{}={}", f.name(), names.join("|"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a `BLO_KERNELS` value: comma-separated `family=variant` (blanks around them
/// ignored, an empty value forces nothing), or a profile: `gpu` (every family's default
/// on an adapter that is not a CPU, e.g. `matmul/tiled`), `cpu` (the defaults of a
/// CPU-type adapter such as lavapipe) or `auto` (this adapter's defaults). Later entries
/// override earlier ones, so `gpu,matmul=portable` is the GPU profile but for matmul.
/// A profile forces only variants this adapter can run; a family with none keeps its
/// default.
pub(crate) fn parse_forced(spec: &str, facts: &AdapterFacts) -> Result<Vec<(FamilyId, usize)>> {
    let mut forced = Vec::new();
    for choice in spec.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let as_if = |device_type| AdapterFacts {
            device_type,
            ..facts.clone()
        };
        let profile = match choice {
            "gpu" => Some(as_if(wgpu::DeviceType::DiscreteGpu)),
            "cpu" => Some(as_if(wgpu::DeviceType::Cpu)),
            "auto" => Some(facts.clone()),
            _ => None,
        };
        if let Some(profile) = profile {
            for id in FamilyId::ALL {
                let index = default_of(id, &profile);
                if (id.entries()[index].requires)(facts).is_ok() {
                    forced.push((id, index));
                }
            }
            continue;
        }
        let Some((family, variant)) = choice.split_once('=') else {
            return Err(Error::KernelChoice {
                choice: choice.to_string(),
                reason: "expected `family=variant`, or `gpu`, `cpu` or `auto`".into(),
                valid: valid_choices(facts),
            });
        };
        forced.push(lookup(choice, family.trim(), variant.trim(), facts)?);
    }
    Ok(forced)
}

/// The environment variable that forces variants when a context opens.
pub(crate) const ENV: &str = "BLO_KERNELS";

/// Which variant of each family a context runs: the default, or a forced one.
#[derive(Debug)]
pub(crate) struct Choices {
    defaults: [usize; FAMILIES],
    /// A forced variant's index, or `NONE`.
    forced: [AtomicUsize; FAMILIES],
}

const NONE: usize = usize::MAX;

impl Choices {
    /// The defaults on `facts`, with the variants `BLO_KERNELS` forces.
    pub(crate) fn new(facts: &AdapterFacts) -> Result<Choices> {
        let choices = Choices {
            defaults: FamilyId::ALL.map(|f| default_of(f, facts)),
            forced: std::array::from_fn(|_| AtomicUsize::new(NONE)),
        };
        let spec = match std::env::var(ENV) {
            Ok(s) => s,
            Err(std::env::VarError::NotPresent) => String::new(),
            Err(std::env::VarError::NotUnicode(s)) => {
                return Err(Error::KernelChoice {
                    choice: s.to_string_lossy().into_owned(),
                    reason: format!("{ENV} is not valid UTF-8"),
                    valid: valid_choices(facts),
                });
            }
        };
        for (id, index) in parse_forced(&spec, facts)? {
            choices.forced[id as usize].store(index, Ordering::Relaxed);
        }
        Ok(choices)
    }

    /// Whether `BLO_KERNELS` or [`GpuContext::force_kernel`] forces the family (the
    /// autotuner leaves such a family alone).
    pub(crate) fn is_forced(&self, id: FamilyId) -> bool {
        self.forced[id as usize].load(Ordering::Relaxed) != NONE
    }

    fn chosen(&self, id: FamilyId) -> usize {
        match self.forced[id as usize].load(Ordering::Relaxed) {
            NONE => self.defaults[id as usize],
            i => i,
        }
    }
}

/// A kernel variant as [`GpuContext::kernel_variants`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KernelVariant {
    /// The family: `matmul`, `matvec`, `reduce`, `elementwise`, `loss`, `index` or `update`.
    pub family: &'static str,
    /// The variant's name within its family, e.g. `portable`.
    pub name: &'static str,
    /// One line about it.
    pub summary: &'static str,
    /// Why this adapter cannot run it (`None`: it can).
    pub unsupported: Option<String>,
    /// Whether it is the family's automatic choice on this adapter.
    pub default: bool,
    /// Whether the family runs it now (forced, or the default when nothing is forced).
    pub active: bool,
}

impl KernelVariant {
    /// Whether this adapter can run it (and [`GpuContext::force_kernel`] accepts it).
    pub fn runnable(&self) -> bool {
        self.unsupported.is_none()
    }
}

impl GpuContext {
    /// The variant of `family` this context runs now.
    pub(crate) fn variant<P>(&self, family: &'static Family<P>) -> &'static Variant<P> {
        family.variants[self.kernels.chosen(family.id)]
    }

    /// What the adapter reports, as the registry's rules see it.
    pub(crate) fn facts(&self) -> &AdapterFacts {
        &self.facts
    }

    /// Every kernel variant blo has, family by family in order of preference, with
    /// whether this adapter can run it, whether it is the automatic choice and whether it
    /// runs now. A caller can force each runnable one with [`Self::force_kernel`] (as
    /// the tests do) to check or time it.
    pub fn kernel_variants(&self) -> Vec<KernelVariant> {
        let mut out = Vec::new();
        for family in FamilyId::ALL {
            let chosen = self.kernels.chosen(family);
            let default = self.kernels.defaults[family as usize];
            for (i, e) in family.entries().into_iter().enumerate() {
                out.push(KernelVariant {
                    family: family.name(),
                    name: e.name,
                    summary: e.summary,
                    unsupported: (e.requires)(&self.facts).err(),
                    default: i == default,
                    active: i == chosen,
                });
            }
        }
        out
    }

    /// Makes every later op of `family` on this context run `variant` (a name from
    /// [`Self::kernel_variants`]), or with `None` the automatic choice again. It applies
    /// to every thread using the context, from the next dispatch on; results do not
    /// depend on it beyond rounding. The environment variable `BLO_KERNELS`
    /// (`matmul=portable,reduce=one_barrier`) does the same when a context opens.
    ///
    /// An unknown family or variant, or a variant this adapter cannot run, is an
    /// [`Error::KernelChoice`] that lists the valid choices.
    pub fn force_kernel(&self, family: &str, variant: Option<&str>) -> Result<()> {
        let choice = format!("{family}={}", variant.unwrap_or("<automatic>"));
        match variant {
            Some(v) => {
                let (id, index) = lookup(&choice, family, v, &self.facts)?;
                self.kernels.forced[id as usize].store(index, Ordering::Relaxed);
            }
            None => {
                let id = FamilyId::from_name(family).ok_or_else(|| Error::KernelChoice {
                    choice: choice.clone(),
                    reason: format!("no kernel family `{family}`"),
                    valid: valid_choices(&self.facts),
                })?;
                self.kernels.forced[id as usize].store(NONE, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

// ---- requirements shared by variants -------------------------------------------------

/// Workgroups of `size` invocations along x using `shared_bytes` of workgroup memory.
pub(crate) fn workgroup(
    facts: &AdapterFacts,
    size: u32,
    shared_bytes: u32,
) -> std::result::Result<(), String> {
    let l = &facts.limits;
    if l.max_compute_invocations_per_workgroup < size || l.max_compute_workgroup_size_x < size {
        return Err(format!(
            "needs workgroups of {size} invocations (max_compute_invocations_per_workgroup = {}, \
             max_compute_workgroup_size_x = {})",
            l.max_compute_invocations_per_workgroup, l.max_compute_workgroup_size_x
        ));
    }
    if l.max_compute_workgroup_storage_size < shared_bytes {
        return Err(format!(
            "needs {shared_bytes} bytes of workgroup memory (max_compute_workgroup_storage_size = {})",
            l.max_compute_workgroup_storage_size
        ));
    }
    Ok(())
}

/// A default on every adapter that can run it.
pub(crate) fn everywhere(_: &AdapterFacts) -> bool {
    true
}

#[cfg(test)]
mod tests;
