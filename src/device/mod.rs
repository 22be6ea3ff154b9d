//! Devices: where tensors live and ops run.
//!
//! [`Device::Cpu`] is the reference backend (plain Rust, f32 and f64); [`Device::Gpu`]
//! runs WGSL kernels through wgpu on any adapter. [`Device::best_available`] picks a
//! hardware GPU and otherwise the CPU, and says why.

mod spec;

use std::fmt;
use std::sync::Arc;

pub use crate::backend::gpu::{
    AdapterInfo, CustomKernel, GpuContext, GpuProfile, KernelTime, KernelVariant, MemoryStats,
    TuneMode, TuneResult,
};
pub use spec::DeviceSpec;

use crate::error::{Error, Result};

const NO_ADAPTER_HINT: &str = "On Debian/Ubuntu without a GPU, install Mesa's software Vulkan driver: \
`apt-get install mesa-vulkan-drivers libvulkan1`. With a GPU, install its Vulkan (or Metal/DX12) driver. \
`blo devices` lists what wgpu can see; WGPU_BACKEND and WGPU_ADAPTER_NAME select among adapters.";

/// Where a tensor's storage lives.
#[derive(Clone)]
pub enum Device {
    /// The CPU reference backend: readable Rust, f32 and f64.
    Cpu,
    /// A wgpu device (f32 only).
    Gpu(Arc<GpuContext>),
}

impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Gpu(a), Device::Gpu(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Gpu(ctx) => write!(f, "gpu:{} ({})", ctx.info().name, ctx.info().backend),
        }
    }
}

/// The outcome of [`Device::best_available`]: the device and why it was chosen.
#[derive(Debug, Clone)]
pub struct DeviceChoice {
    /// The chosen device.
    pub device: Device,
    /// One sentence saying what was chosen and why (for logs and the CLI).
    pub reason: String,
}

fn instance() -> wgpu::Instance {
    #[cfg(unix)]
    quiet_mesa_runtime_dir();
    // `_from_env` makes WGPU_BACKEND (and wgpu's other variables) select backends.
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Mesa's Vulkan drivers (llvmpipe, and the loaders of real GPUs on Linux) print
/// "error: XDG_RUNTIME_DIR is invalid or not set in the environment" every time an
/// adapter is probed on a machine without a login session (CI, containers, ssh). Before
/// the first instance, when the variable is unset or not a directory, blo points it at a
/// private 0700 directory under the temporary directory, as the `blo` command does, so
/// that a program embedding blo gets clean output too. A variable naming a directory is
/// never touched.
///
/// Setting the environment from a library is only safe while no other thread reads it
/// through C's `getenv` (Rust's own `std::env` calls take a lock): it is done once, before
/// any driver code (and so any driver thread) exists. A program that reads the
/// environment from C on other threads while it first opens a GPU should set
/// `XDG_RUNTIME_DIR` itself at startup (README, "Embedding blo").
#[cfg(unix)]
fn quiet_mesa_runtime_dir() {
    use std::os::unix::fs::PermissionsExt;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| std::path::Path::new(&d).is_dir()) {
            return;
        }
        let dir = std::env::temp_dir().join("blo-xdg-runtime");
        if std::fs::create_dir_all(&dir).is_ok()
            && std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).is_ok()
        {
            // SAFETY: see above: once, before any driver thread; Rust readers of the
            // environment are serialised with this write by std's lock.
            unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
        }
    });
}

/// Ranks adapters: discrete before integrated before virtual before software.
fn preference(info: &wgpu::AdapterInfo) -> u8 {
    match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

fn sorted_adapters() -> Vec<wgpu::Adapter> {
    let mut adapters = pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()));
    // Stable sort: among equals keep wgpu's order, which puts Vulkan first on Linux.
    adapters.sort_by_key(|a| preference(&a.get_info()));
    adapters
}

fn requested_name() -> Option<String> {
    std::env::var("WGPU_ADAPTER_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
}

impl Device {
    /// The CPU reference backend.
    pub fn cpu() -> Device {
        Device::Cpu
    }

    /// A GPU device on the most capable adapter wgpu finds, software adapters included
    /// (this is how tests run the GPU path on Mesa's llvmpipe). Honours
    /// `WGPU_ADAPTER_NAME` (a case-insensitive substring of the adapter name) and
    /// `WGPU_BACKEND`. Errors with [`Error::NoAdapter`] when there is none.
    ///
    /// On Unix, the first probe sets `XDG_RUNTIME_DIR` to a private directory when it is
    /// unset or not a directory, which silences Mesa's "XDG_RUNTIME_DIR is invalid"
    /// message on headless machines (set it yourself to keep blo from touching it).
    pub fn gpu() -> Result<Device> {
        match requested_name() {
            Some(name) => Self::gpu_named(&name),
            None => {
                let adapter =
                    sorted_adapters()
                        .into_iter()
                        .next()
                        .ok_or_else(|| Error::NoAdapter {
                            requested: String::new(),
                            hint: NO_ADAPTER_HINT.to_string(),
                        })?;
                Ok(Device::Gpu(Arc::new(GpuContext::new(adapter)?)))
            }
        }
    }

    /// A GPU device on the first adapter whose name contains `name` (case-insensitive).
    pub fn gpu_named(name: &str) -> Result<Device> {
        let wanted = name.to_lowercase();
        let adapters = sorted_adapters();
        let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        let adapter = adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&wanted))
            .ok_or_else(|| Error::NoAdapter {
                requested: format!(" matching \"{name}\""),
                hint: if names.is_empty() {
                    NO_ADAPTER_HINT.to_string()
                } else {
                    format!("Adapters found: {}.", names.join(", "))
                },
            })?;
        Ok(Device::Gpu(Arc::new(GpuContext::new(adapter)?)))
    }

    /// A GPU device on the adapter at `index` in [`Device::adapters`] order.
    pub fn gpu_index(index: usize) -> Result<Device> {
        let adapters = sorted_adapters();
        let n = adapters.len();
        // Adapters were found but the index is past them: list them rather than
        // suggesting a driver install.
        let hint = if n == 0 {
            NO_ADAPTER_HINT.to_string()
        } else {
            let names: Vec<String> = adapters
                .iter()
                .enumerate()
                .map(|(i, a)| format!("{i}: {}", a.get_info().name))
                .collect();
            format!(
                "The adapters are {}; `blo devices` lists them.",
                names.join(", ")
            )
        };
        let adapter = adapters
            .into_iter()
            .nth(index)
            .ok_or_else(|| Error::NoAdapter {
                requested: format!(" at index {index} ({n} found)"),
                hint,
            })?;
        Ok(Device::Gpu(Arc::new(GpuContext::new(adapter)?)))
    }

    /// The best device for speed: a hardware GPU (discrete, integrated or virtual) if
    /// there is one, otherwise the CPU backend. A software adapter such as llvmpipe is
    /// chosen only when asked for by name through `WGPU_ADAPTER_NAME`: it runs the GPU
    /// code on the CPU and is slower than the CPU backend.
    pub fn best_available() -> DeviceChoice {
        if let Some(name) = requested_name() {
            return match Self::gpu_named(&name) {
                Ok(device) => DeviceChoice {
                    reason: format!("WGPU_ADAPTER_NAME=\"{name}\" selected {device}"),
                    device,
                },
                Err(e) => DeviceChoice {
                    device: Device::Cpu,
                    reason: format!("falling back to the CPU: {e}"),
                },
            };
        }
        let adapters = sorted_adapters();
        let mut software: Vec<String> = adapters
            .iter()
            .filter(|a| !AdapterInfo::from_wgpu(&a.get_info()).is_hardware())
            .map(|a| a.get_info().name)
            .collect();
        // The same driver often appears once per backend (Vulkan and GL).
        software.dedup();
        match adapters
            .into_iter()
            .find(|a| AdapterInfo::from_wgpu(&a.get_info()).is_hardware())
        {
            Some(adapter) => {
                let name = adapter.get_info().name;
                match GpuContext::new(adapter) {
                    Ok(ctx) => {
                        let device = Device::Gpu(Arc::new(ctx));
                        DeviceChoice {
                            reason: format!("chose hardware GPU {device}"),
                            device,
                        }
                    }
                    Err(e) => DeviceChoice {
                        device: Device::Cpu,
                        reason: format!("falling back to the CPU: could not open {name}: {e}"),
                    },
                }
            }
            None if software.is_empty() => DeviceChoice {
                device: Device::Cpu,
                reason: format!("no GPU adapter found, using the CPU backend. {NO_ADAPTER_HINT}"),
            },
            None => DeviceChoice {
                device: Device::Cpu,
                reason: format!(
                    "no hardware GPU found, using the CPU backend (it is faster than the software adapter {}; \
                     set WGPU_ADAPTER_NAME to use that anyway)",
                    software.join(", ")
                ),
            },
        }
    }

    /// Every adapter wgpu finds, in the order [`Device::gpu`] prefers them.
    pub fn adapters() -> Vec<(AdapterInfo, wgpu::Limits, wgpu::Features)> {
        sorted_adapters()
            .into_iter()
            .map(|a| {
                (
                    AdapterInfo::from_wgpu(&a.get_info()),
                    a.limits(),
                    a.features(),
                )
            })
            .collect()
    }

    /// Threads the CPU backend uses: `BLO_CPU_THREADS` when set, else the cores this
    /// process may use.
    pub fn cpu_threads() -> usize {
        crate::backend::cpu::threads::cores()
    }

    /// Marks both CPU cores as busy with the caller's own threads until the guard drops.
    /// Meanwhile the CPU backend runs each matrix–vector pass on the thread that calls
    /// it rather than handing half of it to its helper core, which would only contend
    /// with the caller's second thread (RAD's reverse sweep rebuilds one step on a
    /// second thread while it back-propagates through the next).
    pub(crate) fn both_cpu_cores_busy() -> crate::backend::cpu::threads::BothBusy {
        crate::backend::cpu::threads::both_cores_busy()
    }

    /// True for the CPU backend.
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }

    /// The GPU context, if this is a GPU device.
    pub fn gpu_context(&self) -> Option<&Arc<GpuContext>> {
        match self {
            Device::Gpu(ctx) => Some(ctx),
            Device::Cpu => None,
        }
    }

    /// Waits until all work recorded on this device has finished (no-op on the CPU).
    pub fn sync(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Gpu(ctx) => ctx.sync(),
        }
    }
}
