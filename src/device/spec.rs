//! The one spelling of a device choice, shared by the `blo` command's `--device`
//! options and an experiment config's `device` key.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::{Device, DeviceChoice};
use crate::error::{Error, Result};

/// Which device to open, parsed from text by [`str::parse`]:
///
/// | text | device |
/// | --- | --- |
/// | `best` | [`Device::best_available`]: a hardware GPU, else the CPU |
/// | `cpu` | [`Device::cpu`], the reference backend |
/// | `gpu` | [`Device::gpu`], the most capable adapter, software ones included |
/// | `N` (a decimal integer) | [`Device::gpu_index`]: adapter `N` as `blo devices` lists them |
/// | anything else | [`Device::gpu_named`]: the first adapter whose name contains it |
///
/// Surrounding white space is ignored, the keywords in any case (`CPU` is `cpu`); only
/// empty text is an error. In TOML a bare integer (`device = 1`) is an index too.
///
/// ```
/// use blo::DeviceSpec;
/// assert_eq!("gpu".parse::<DeviceSpec>()?, DeviceSpec::Gpu);
/// assert_eq!(" 1 ".parse::<DeviceSpec>()?, DeviceSpec::Index(1));
/// assert_eq!("llvmpipe".parse::<DeviceSpec>()?, DeviceSpec::Name("llvmpipe".into()));
/// let choice = "cpu".parse::<DeviceSpec>()?.open()?;
/// assert!(choice.device.is_cpu());
/// # Ok::<(), blo::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// `best`: [`Device::best_available`].
    #[default]
    Best,
    /// `cpu`: the CPU reference backend.
    Cpu,
    /// `gpu`: [`Device::gpu`], the most capable adapter, software ones included.
    Gpu,
    /// An integer: [`Device::gpu_index`].
    Index(usize),
    /// Any other text: [`Device::gpu_named`] (case-insensitive substring).
    Name(String),
}

/// The grammar in one sentence, for error messages.
const GRAMMAR: &str = "A device is best, cpu, gpu or an adapter index from `blo devices`, \
    or any other text to pick the first adapter whose name contains it.";

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Best => write!(f, "best"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Gpu => write!(f, "gpu"),
            DeviceSpec::Index(i) => write!(f, "{i}"),
            DeviceSpec::Name(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        Ok(match t.to_ascii_lowercase().as_str() {
            "" => {
                return Err(Error::InvalidArgument {
                    op: "device",
                    msg: format!("empty device name. {GRAMMAR}"),
                });
            }
            "best" => DeviceSpec::Best,
            "cpu" => DeviceSpec::Cpu,
            "gpu" => DeviceSpec::Gpu,
            _ => match t.parse::<usize>() {
                Ok(i) => DeviceSpec::Index(i),
                Err(_) => DeviceSpec::Name(t.to_string()),
            },
        })
    }
}

impl DeviceSpec {
    /// Opens the device, with a sentence saying what was chosen and why (the one an
    /// experiment's results record). `best` never fails: it falls back to the CPU.
    pub fn open(&self) -> Result<DeviceChoice> {
        let (device, reason) = match self {
            DeviceSpec::Best => {
                let c = Device::best_available();
                (c.device, c.reason)
            }
            DeviceSpec::Cpu => (Device::cpu(), "device = \"cpu\": the CPU backend".into()),
            DeviceSpec::Gpu => {
                let d = Device::gpu()?;
                let r = format!("device = \"gpu\": {d}");
                (d, r)
            }
            DeviceSpec::Index(i) => {
                let d = Device::gpu_index(*i)?;
                let r = format!("device = {i}: {d}");
                (d, r)
            }
            DeviceSpec::Name(n) => {
                // A name that matches nothing is often a misspelt keyword.
                let d = Device::gpu_named(n).map_err(|e| match e {
                    Error::NoAdapter { requested, hint } => Error::NoAdapter {
                        requested,
                        hint: format!("{hint} {GRAMMAR}"),
                    },
                    e => e,
                })?;
                let r = format!("device = \"{n}\": {d}");
                (d, r)
            }
        };
        Ok(DeviceChoice { device, reason })
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DeviceSpec::Index(i) => s.serialize_u64(*i as u64),
            other => s.serialize_str(&other.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DeviceSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "\"best\", \"cpu\", \"gpu\", an adapter index (integer ≥ 0) or a non-empty adapter name",
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DeviceSpec, E> {
                usize::try_from(v)
                    .map(DeviceSpec::Index)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DeviceSpec, E> {
                Ok(DeviceSpec::Index(v as usize))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DeviceSpec, E> {
                v.parse()
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_parses_to_one_spec() {
        let cases = [
            ("best", DeviceSpec::Best),
            ("cpu", DeviceSpec::Cpu),
            ("gpu", DeviceSpec::Gpu),
            // The bench and check flags always took the keywords in any case and with
            // white space; configs now do too.
            (" CPU ", DeviceSpec::Cpu),
            ("Gpu", DeviceSpec::Gpu),
            ("BEST", DeviceSpec::Best),
            ("0", DeviceSpec::Index(0)),
            (" 12\n", DeviceSpec::Index(12)),
            ("llvmpipe", DeviceSpec::Name("llvmpipe".into())),
            // Names keep their case (matching is case-insensitive anyway).
            (
                " NVIDIA GeForce ",
                DeviceSpec::Name("NVIDIA GeForce".into()),
            ),
            ("-1", DeviceSpec::Name("-1".into())),
            ("gpu0", DeviceSpec::Name("gpu0".into())),
        ];
        for (text, want) in cases {
            let got: DeviceSpec = text.parse().unwrap();
            assert_eq!(got, want, "{text:?}");
            // Display writes a spelling that parses back to the same spec.
            assert_eq!(got.to_string().parse::<DeviceSpec>().unwrap(), got);
        }
        for empty in ["", "  ", "\t"] {
            let e = empty.parse::<DeviceSpec>().unwrap_err();
            assert!(e.to_string().contains("best, cpu, gpu"), "{e}");
        }
        assert_eq!(DeviceSpec::default(), DeviceSpec::Best);
    }

    #[cfg(feature = "config")]
    #[test]
    fn configs_take_strings_and_integers() {
        #[derive(Deserialize, Serialize)]
        struct C {
            device: DeviceSpec,
        }
        let parse = |s: &str| toml::from_str::<C>(s).map(|c| c.device);
        assert_eq!(parse("device = \"cpu\"").unwrap(), DeviceSpec::Cpu);
        assert_eq!(parse("device = 2").unwrap(), DeviceSpec::Index(2));
        assert_eq!(parse("device = \"2\"").unwrap(), DeviceSpec::Index(2));
        assert_eq!(
            parse("device = \"llvm\"").unwrap(),
            DeviceSpec::Name("llvm".into())
        );
        for bad in [
            "device = -1",
            "device = \"\"",
            "device = 1.5",
            "device = true",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("adapter index"), "{bad}: {e}");
        }
        for spec in [
            DeviceSpec::Gpu,
            DeviceSpec::Index(3),
            DeviceSpec::Name("x".into()),
        ] {
            let text = toml::to_string(&C {
                device: spec.clone(),
            })
            .unwrap();
            assert_eq!(parse(&text).unwrap(), spec, "{text}");
        }
    }

    #[test]
    fn a_name_that_matches_nothing_explains_the_grammar() {
        let e = DeviceSpec::Name("tpu".into()).open().unwrap_err();
        assert!(matches!(e, Error::NoAdapter { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("\"tpu\"") && msg.contains("cpu, gpu or an adapter index"),
            "{msg}"
        );
        let c = DeviceSpec::Cpu.open().unwrap();
        assert!(c.device.is_cpu());
        assert_eq!(c.reason, "device = \"cpu\": the CPU backend");
    }
}
