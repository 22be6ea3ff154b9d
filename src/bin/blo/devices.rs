//! `blo devices`.

use std::process::ExitCode;

use blo::Device;

/// Prints every adapter with its limits and features, and the choice of "best".
pub fn run() -> ExitCode {
    let adapters = Device::adapters();
    let choice = Device::best_available();
    println!("Adapters found by wgpu ({}):", adapters.len());
    if adapters.is_empty() {
        println!("  none");
    }
    for (i, (info, limits, features)) in adapters.iter().enumerate() {
        println!("  [{i}] {}", info.name);
        println!(
            "      vendor 0x{:04x}, backend {}, type {}, driver {} {}",
            info.vendor, info.backend, info.device_type, info.driver, info.driver_info
        );
        println!(
            "      max storage binding {} MiB, max buffer {} MiB, workgroup {} invocations / {} KiB shared, {} groups per dim",
            limits.max_storage_buffer_binding_size >> 20,
            limits.max_buffer_size >> 20,
            limits.max_compute_invocations_per_workgroup,
            limits.max_compute_workgroup_storage_size >> 10,
            limits.max_compute_workgroups_per_dimension
        );
        let wanted = [
            (wgpu::Features::SHADER_F16, "f16"),
            (wgpu::Features::SHADER_F64, "f64"),
            (wgpu::Features::SUBGROUP, "subgroups"),
            (wgpu::Features::TIMESTAMP_QUERY, "timestamps"),
            (wgpu::Features::SHADER_FLOAT32_ATOMIC, "f32 atomics"),
        ];
        let have: Vec<&str> = wanted
            .iter()
            .filter(|(f, _)| features.contains(*f))
            .map(|(_, n)| *n)
            .collect();
        println!(
            "      features: {}",
            if have.is_empty() {
                "-".to_string()
            } else {
                have.join(", ")
            }
        );
        let hardware = if info.is_hardware() {
            "hardware"
        } else {
            "software/other: used only when asked for"
        };
        println!("      {hardware}");
    }
    println!("  [cpu] blo's CPU reference backend (f32 and f64)");
    println!("best available: {} — {}", choice.device, choice.reason);
    ExitCode::SUCCESS
}

