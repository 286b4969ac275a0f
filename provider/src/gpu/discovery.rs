//! Which ORT hardware device is which CUDA GPU.
//!
//! ORT's device discovery (`/sys/class/drm`, else a PCI scan) reports NVIDIA GPUs as
//! `OrtHardwareDevice`s with vendor 0x10DE and, usually, the metadata key `pci_bus_id`; CUDA
//! numbers the same GPUs by ordinal and reports each one's PCI bus id. Matching the two by bus
//! id gives each ORT device its ordinal even when `CUDA_VISIBLE_DEVICES` reorders or hides GPUs.
//! Devices without a bus id take the remaining ordinals in order. Pure functions, no FFI.

use quilt_kernels::cuda::GpuInfo;

/// The metadata key ORT's device discovery stores the PCI address under.
pub const PCI_BUS_ID_KEY: &str = "pci_bus_id";

/// A PCI address `(domain, bus, device, function)` parsed from `dddd:bb:dd.f`. The driver and
/// sysfs write the domain with 4 digits, NVML with 8; both parse to the same value.
pub fn parse_pci_bus_id(s: &str) -> Option<(u32, u32, u32, u32)> {
    let s = s.trim();
    let (domain, rest) = s.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (device, function) = rest.split_once('.')?;
    let hex = |t: &str| if t.is_empty() { None } else { u32::from_str_radix(t, 16).ok() };
    Some((hex(domain)?, hex(bus)?, hex(device)?, hex(function)?))
}

/// The sysfs spelling of a PCI address (`0000:00:06.0`).
pub fn sysfs_pci_address(bus_id: &str) -> Option<String> {
    let (d, b, dev, f) = parse_pci_bus_id(bus_id)?;
    Some(format!("{d:04x}:{b:02x}:{dev:02x}.{f:x}"))
}

/// For each NVIDIA device ORT reported (given by its `pci_bus_id`, if any), the CUDA ordinal it
/// is, or `None` when CUDA does not see it. Each ordinal is used at most once.
pub fn match_ordinals(ort_bus_ids: &[Option<String>], cuda: &[GpuInfo]) -> Vec<Option<usize>> {
    let mut taken = vec![false; cuda.len()];
    let mut result: Vec<Option<usize>> = vec![None; ort_bus_ids.len()];
    let parsed: Vec<Option<_>> = ort_bus_ids.iter().map(|b| b.as_deref().and_then(parse_pci_bus_id)).collect();
    for (slot, id) in result.iter_mut().zip(&parsed) {
        let Some(id) = id else { continue };
        if let Some(k) = (0..cuda.len()).find(|&k| !taken[k] && parse_pci_bus_id(&cuda[k].pci_bus_id) == Some(*id)) {
            taken[k] = true;
            *slot = Some(cuda[k].ordinal);
        }
    }
    // Devices ORT reported without a (readable) bus id: the remaining GPUs in ordinal order.
    for (slot, id) in result.iter_mut().zip(&parsed) {
        if id.is_none() {
            if let Some(k) = (0..cuda.len()).find(|&k| !taken[k]) {
                taken[k] = true;
                *slot = Some(cuda[k].ordinal);
            }
        }
    }
    result
}

/// The PCI device (product) id of the GPU at `bus_id`, from sysfs; 0 when unreadable. Only used
/// to describe a hardware device quilt creates itself.
pub fn pci_device_id(bus_id: &str) -> u32 {
    let Some(addr) = sysfs_pci_address(bus_id) else { return 0 };
    std::fs::read_to_string(format!("/sys/bus/pci/devices/{addr}/device"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(ordinal: usize, bus: &str) -> GpuInfo {
        GpuInfo { ordinal, name: format!("GPU {ordinal}"), pci_bus_id: bus.to_string() }
    }

    #[test]
    fn parses_driver_sysfs_and_nvml_spellings_alike() {
        assert_eq!(parse_pci_bus_id("0000:00:06.0"), Some((0, 0, 6, 0)));
        assert_eq!(parse_pci_bus_id("00000000:00:06.0"), Some((0, 0, 6, 0)));
        assert_eq!(parse_pci_bus_id("0001:A3:1f.7"), Some((1, 0xa3, 0x1f, 7)));
        assert_eq!(parse_pci_bus_id("0000:00:06"), None);
        assert_eq!(parse_pci_bus_id("garbage"), None);
        assert_eq!(parse_pci_bus_id(":00:06.0"), None);
        assert_eq!(sysfs_pci_address("00000000:0A:00.0").as_deref(), Some("0000:0a:00.0"));
    }

    #[test]
    fn matches_by_bus_id_regardless_of_order_and_case() {
        let cuda = [gpu(0, "0000:81:00.0"), gpu(1, "0000:00:06.0")];
        let ort = [Some("0000:00:06.0".to_string()), Some("00000000:81:00.0".to_string())];
        assert_eq!(match_ordinals(&ort, &cuda), [Some(1), Some(0)]);
    }

    #[test]
    fn a_gpu_cuda_does_not_see_gets_no_ordinal() {
        // CUDA_VISIBLE_DEVICES=1 on a two-GPU machine: CUDA sees one GPU, as ordinal 0.
        let cuda = [gpu(0, "0000:81:00.0")];
        let ort = [Some("0000:00:06.0".to_string()), Some("0000:81:00.0".to_string())];
        assert_eq!(match_ordinals(&ort, &cuda), [None, Some(0)]);
    }

    #[test]
    fn devices_without_bus_id_take_remaining_ordinals_in_order() {
        let cuda = [gpu(0, "0000:01:00.0"), gpu(1, "0000:02:00.0"), gpu(2, "0000:03:00.0")];
        let ort = [None, Some("0000:02:00.0".to_string()), Some("not a bus id".to_string())];
        assert_eq!(match_ordinals(&ort, &cuda), [Some(0), Some(1), Some(2)]);
        // More ORT devices than GPUs: the extra one gets nothing.
        assert_eq!(match_ordinals(&[None, None], &cuda[..1]), [Some(0), None]);
        assert_eq!(match_ordinals(&[None], &[]), [None]);
    }
}
