//! What a report records about where it ran: the build, the adapter (or the host CPU)
//! with its vendor's name, the host, and the date.

use blo::{AdapterInfo, Device};

use super::report::AdapterRecord;

/// blo's version and the git commit the binary was built from (captured by
/// `build.rs`; `unknown` outside a git checkout).
pub fn build_info() -> (&'static str, &'static str) {
    (
        env!("CARGO_PKG_VERSION"),
        option_env!("BLO_GIT_COMMIT").unwrap_or("unknown"),
    )
}

/// Human name of a PCI vendor id, for the ids of common GPU vendors.
pub fn vendor_name(id: u32) -> &'static str {
    match id {
        0x1002 | 0x1022 => "AMD",
        0x10de => "NVIDIA",
        0x8086 => "Intel",
        0x106b => "Apple",
        0x13b5 => "ARM",
        0x5143 => "Qualcomm",
        0x1010 => "Imagination",
        0x14e4 => "Broadcom",
        0x1414 => "Microsoft",
        0x10005 => "Mesa",
        _ => "unknown",
    }
}

/// Describes the device's adapter; for the CPU backend, the host CPU.
pub fn adapter_record(device: &Device) -> AdapterRecord {
    let info = match device {
        Device::Gpu(ctx) => ctx.info().clone(),
        Device::Cpu => AdapterInfo {
            name: cpu_model(),
            vendor: 0,
            backend: "cpu".to_string(),
            device_type: "Cpu".to_string(),
            driver: "blo CPU backend".to_string(),
            driver_info: format!("{} threads", Device::cpu_threads()),
        },
    };
    AdapterRecord {
        vendor_name: vendor_name(info.vendor).to_string(),
        info,
    }
}

/// Hardware threads of the host (the ceilings run one chain or copy per thread).
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The CPU's model name from /proc/cpuinfo (Linux), else the architecture.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| format!("{} CPU", std::env::consts::ARCH))
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

/// Formats seconds since the Unix epoch as ISO 8601 UTC (H. Hinnant's civil-from-days).
fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_utc(4_107_542_399), "2100-02-28T23:59:59Z");
    }
}
