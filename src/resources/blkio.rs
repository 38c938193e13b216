//! Block I/O: the v1 `blkio` controller and the v2 `io` controller, from OCI
//! `blockIO` (`weight`, `weightDevice`, the four throttle lists; `leafWeight` is
//! refused: a CFQ feature no kernel since 5.0 has).
//!
//! v1 writes `blkio.bfq.weight` (BFQ; CFQ's `blkio.weight` is gone) and
//! `blkio.throttle.*_device`; v2 writes `io.weight` (weights mapped as runc does) and
//! `io.max`. systemd: `BlockIOWeight`, `BlockIODeviceWeight`, `BlockIO{Read,Write}Bandwidth`
//! (v1; IOPS throttles have no v1 property and are written), `IOWeight`,
//! `IODeviceWeight`, `IO{Read,Write}{Bandwidth,IOPS}Max` (v2).

use oci_spec::runtime::LinuxResources;

use super::systemd::{PropValue, UnitProperty, INFINITY};
use super::{missing, range_err, unsupported, HostSupport, ResourceError, Rules, Write};
use crate::cgroup::{CgroupVersion, Controller, HierarchyKey};

/// Bounds of the OCI block-I/O weights (`blkio.bfq.weight`, systemd `BlockIOWeight=`).
pub const BLKIO_WEIGHT_RANGE: (u16, u16) = (10, 1_000);
/// Largest device major and minor numbers (Linux `dev_t`: 12 and 20 bits).
const MAX_MAJOR: i64 = (1 << 12) - 1;
const MAX_MINOR: i64 = (1 << 20) - 1;

/// OCI block-I/O weight (10..1000) → v2 `io.weight` / systemd `IOWeight=` (1..10000),
/// runc's linear mapping `1 + (w − 10) · 9999 / 990`.
pub fn blkio_weight_to_io(weight: u16) -> u64 {
    let w = u64::from(weight.clamp(BLKIO_WEIGHT_RANGE.0, BLKIO_WEIGHT_RANGE.1));
    1 + (w - 10) * 9_999 / 990
}

fn check_device(field: &'static str, major: i64, minor: i64) -> Result<(), ResourceError> {
    if !(0..=MAX_MAJOR).contains(&major) || !(0..=MAX_MINOR).contains(&minor) {
        return Err(range_err(
            field,
            format!("{major}:{minor}"),
            "major must be 0 to 4095 and minor 0 to 1048575",
        ));
    }
    Ok(())
}

/// The throttle lists of a `LinuxBlockIo`, each with its OCI field name.
pub type Throttles<'a> = [(&'static str, &'a [oci_spec::runtime::LinuxThrottleDevice]); 4];

/// The four OCI throttle lists of `b`, each with its field name, in v1 file order.
pub fn throttle_lists(b: &oci_spec::runtime::LinuxBlockIo) -> Throttles<'_> {
    fn l(
        v: &Option<Vec<oci_spec::runtime::LinuxThrottleDevice>>,
    ) -> &[oci_spec::runtime::LinuxThrottleDevice] {
        v.as_deref().unwrap_or(&[])
    }
    [
        (
            "blockIO.throttleReadBpsDevice",
            l(b.throttle_read_bps_device()),
        ),
        (
            "blockIO.throttleWriteBpsDevice",
            l(b.throttle_write_bps_device()),
        ),
        (
            "blockIO.throttleReadIOPSDevice",
            l(b.throttle_read_iops_device()),
        ),
        (
            "blockIO.throttleWriteIOPSDevice",
            l(b.throttle_write_iops_device()),
        ),
    ]
}

/// A device as systemd's device properties name it (`/dev/block/8:0`, as runc sends it).
fn block_dev(major: i64, minor: i64) -> String {
    format!("/dev/block/{major}:{minor}")
}

/// The block I/O rules (`blkio` on v1, `io` on v2).
pub(super) struct BlockIo;

impl Rules for BlockIo {
    fn controller(&self) -> HierarchyKey {
        HierarchyKey::Controller(Controller::Blkio)
    }

    fn oci_keys(&self) -> &'static [(&'static str, &'static [&'static str])] {
        &[(
            "blockIO",
            &[
                "weight",
                "leafWeight",
                "weightDevice",
                "throttleReadBpsDevice",
                "throttleWriteBpsDevice",
                "throttleReadIOPSDevice",
                "throttleWriteIOPSDevice",
            ],
        )]
    }

    fn validate(&self, res: &LinuxResources) -> Result<(), ResourceError> {
        if let Some(b) = res.block_io() {
            let weight = |field: &'static str, w: u16| {
                if (BLKIO_WEIGHT_RANGE.0..=BLKIO_WEIGHT_RANGE.1).contains(&w) {
                    Ok(())
                } else {
                    Err(range_err(field, w, "must be 10 to 1000"))
                }
            };
            if let Some(w) = b.weight() {
                weight("blockIO.weight", w)?;
            }
            if b.leaf_weight().is_some() {
                return Err(unsupported(
                    "blockIO.leafWeight",
                    "leaf weights were a CFQ feature; no kernel since 5.0 has them",
                ));
            }
            for d in b.weight_device().iter().flatten() {
                check_device("blockIO.weightDevice", d.major(), d.minor())?;
                if let Some(w) = d.weight() {
                    weight("blockIO.weightDevice.weight", w)?;
                }
                if d.leaf_weight().is_some() {
                    return Err(unsupported(
                        "blockIO.weightDevice.leafWeight",
                        "leaf weights were a CFQ feature; no kernel since 5.0 has them",
                    ));
                }
            }
            for (field, list) in throttle_lists(b) {
                for d in list {
                    check_device(field, d.major(), d.minor())?;
                }
            }
        }
        Ok(())
    }

    fn writes(
        &self,
        res: &LinuxResources,
        version: CgroupVersion,
        host: &HostSupport,
        w: &mut Vec<Write>,
    ) -> Result<(), ResourceError> {
        let v1 = version == CgroupVersion::V1;
        if let Some(b) = res.block_io() {
            let dev = |major: i64, minor: i64| format!("{major}:{minor}");
            let mut weights: Vec<(Option<String>, u16)> = Vec::new();
            if let Some(wt) = b.weight() {
                weights.push((None, wt));
            }
            for d in b.weight_device().iter().flatten() {
                if let Some(wt) = d.weight() {
                    weights.push((Some(dev(d.major(), d.minor())), wt));
                }
            }
            if !weights.is_empty() {
                let field = "blockIO.weight";
                if v1 && !host.bfq {
                    return Err(missing(
                        field,
                        "proportional block I/O weights (blkio.bfq.weight; the BFQ scheduler)",
                    ));
                }
                if !v1 && !host.io_weight {
                    return Err(missing(field, "io.weight (blk-iocost)"));
                }
                for (d, wt) in weights {
                    let target = d.unwrap_or_else(|| "default".to_string());
                    w.push(if v1 {
                        let v = if target == "default" {
                            wt.to_string()
                        } else {
                            format!("{target} {wt}")
                        };
                        Write::new(Controller::Blkio, "blkio.bfq.weight", v)
                    } else {
                        Write::new(
                            Controller::Io,
                            "io.weight",
                            format!("{target} {}", blkio_weight_to_io(wt)),
                        )
                    });
                }
            }
            for ((field, list), (v1file, v2key)) in throttle_lists(b).into_iter().zip([
                ("blkio.throttle.read_bps_device", "rbps"),
                ("blkio.throttle.write_bps_device", "wbps"),
                ("blkio.throttle.read_iops_device", "riops"),
                ("blkio.throttle.write_iops_device", "wiops"),
            ]) {
                if !list.is_empty() && !host.throttle {
                    return Err(missing(
                        field,
                        "block I/O throttling (blkio.throttle.* / io.max)",
                    ));
                }
                for d in list {
                    let target = dev(d.major(), d.minor());
                    w.push(if v1 {
                        Write::new(Controller::Blkio, v1file, format!("{target} {}", d.rate()))
                    } else {
                        // 0 is "no limit" in v1's throttle files; v2 spells it max.
                        let rate = if d.rate() == 0 {
                            "max".to_string()
                        } else {
                            d.rate().to_string()
                        };
                        Write::new(Controller::Io, "io.max", format!("{target} {v2key}={rate}"))
                    });
                }
            }
        }
        Ok(())
    }

    fn properties(
        &self,
        res: &LinuxResources,
        version: CgroupVersion,
        p: &mut Vec<UnitProperty>,
    ) -> Result<(), ResourceError> {
        if let Some(b) = res.block_io() {
            let v1 = version == CgroupVersion::V1;
            let conv = |w: u16| {
                if v1 {
                    u64::from(w)
                } else {
                    blkio_weight_to_io(w)
                }
            };
            if let Some(w) = b.weight() {
                p.push(UnitProperty::new(
                    if v1 { "BlockIOWeight" } else { "IOWeight" },
                    PropValue::U64(conv(w)),
                ));
            }
            let devs: Vec<(String, u64)> = b
                .weight_device()
                .iter()
                .flatten()
                .filter_map(|d| Some((block_dev(d.major(), d.minor()), conv(d.weight()?))))
                .collect();
            if !devs.is_empty() {
                p.push(UnitProperty::new(
                    if v1 {
                        "BlockIODeviceWeight"
                    } else {
                        "IODeviceWeight"
                    },
                    PropValue::DevU64s(devs),
                ));
            }
            let names: [Option<&'static str>; 4] = if v1 {
                // v1 has no IOPS properties: those go to blkio.throttle.*_iops_device.
                [
                    Some("BlockIOReadBandwidth"),
                    Some("BlockIOWriteBandwidth"),
                    None,
                    None,
                ]
            } else {
                [
                    Some("IOReadBandwidthMax"),
                    Some("IOWriteBandwidthMax"),
                    Some("IOReadIOPSMax"),
                    Some("IOWriteIOPSMax"),
                ]
            };
            for ((_, list), name) in throttle_lists(b).into_iter().zip(names) {
                let Some(name) = name else { continue };
                if list.is_empty() {
                    continue;
                }
                let v = list
                    .iter()
                    .map(|d| {
                        // 0 is "no limit" in the OCI/v1 sense; systemd spells it infinity.
                        let rate = if d.rate() == 0 { INFINITY } else { d.rate() };
                        (block_dev(d.major(), d.minor()), rate)
                    })
                    .collect();
                p.push(UnitProperty::new(name, PropValue::DevU64s(v)));
            }
        }
        Ok(())
    }

    fn covered(&self, version: CgroupVersion) -> &'static [&'static str] {
        match version {
            CgroupVersion::V1 => &[
                "blkio.bfq.weight",
                "blkio.throttle.read_bps_device",
                "blkio.throttle.write_bps_device",
            ],
            CgroupVersion::V2 => &["io.weight", "io.max"],
        }
    }

    /// Multi-entry files: each write changes one entry (a device, or the default), so
    /// the first line read is the best restore.
    fn restore(&self, file: &str, old: &str) -> Option<String> {
        (file.starts_with("blkio.") || file == "io.max" || file == "io.weight")
            .then(|| old.lines().next().unwrap_or("").to_string())
    }

    /// Named by its section (`blockIO`): the runtime's readers take it as one field.
    fn given(&self, res: &serde_json::Value, out: &mut Vec<String>) {
        if res.get("blockIO").is_some_and(|v| !v.is_null()) {
            out.push("blockIO".into());
        }
    }
}
