//! PCIe topology: where the GPUs (and an optional P2P peer) sit in the guest's PCI hierarchy.
//!
//! Two shapes, both on QEMU's q35 root complex (`pcie.0`):
//!
//! ```text
//! rootports (default)                    switch
//! pcie.0                                 pcie.0
//!  ├─ pcie-root-port rp0 ── gpu0          └─ pcie-root-port rp0
//!  ├─ pcie-root-port rp1 ── gpu1              └─ x3130-upstream up0
//!  └─ pcie-root-port rpp ── peer0 (nvme)           ├─ xio3130-downstream dn0 ── gpu0
//!                                                  ├─ xio3130-downstream dn1 ── gpu1
//!                                                  └─ xio3130-downstream dnp ── peer0 (nvme)
//! ```
//!
//! Behind a switch, peer-to-peer traffic between the GPUs (and the peer) does not cross the root
//! complex, which is what `pci_p2pdma`'s distance calculation rewards. Every slot-bearing port
//! gets a unique (chassis, slot) pair, which QEMU requires for hot-plug capable ports.

use std::fmt;

use serde_json::json;

/// Largest number of GPUs the runner attaches (root ports and downstream ports are plentiful, but
/// each GPU is a server process and a socket; more than this is almost certainly a mistake).
pub const MAX_GPUS: usize = 16;

/// Shape of the PCIe hierarchy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Topology {
    /// Each GPU on its own pcie-root-port.
    #[default]
    Rootports,
    /// All GPUs behind one switch (x3130-upstream + xio3130-downstream ports) under a root port.
    Switch,
}

/// An extra, QEMU-emulated peer device for P2P tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    /// No peer.
    #[default]
    None,
    /// QEMU's NVMe controller with a Controller Memory Buffer (a real P2P-capable BAR).
    NvmeCmb,
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Topology::Rootports => "rootports",
            Topology::Switch => "switch",
        })
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Peer::None => "none",
            Peer::NvmeCmb => "nvme-cmb",
        })
    }
}

/// Errors building a topology.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopologyError {
    /// More GPUs than [`MAX_GPUS`].
    #[error("{0} GPUs requested; at most {MAX_GPUS} are supported")]
    TooManyGpus(usize),
    /// A socket path QEMU cannot use.
    #[error(
        "socket path {0:?} is not usable by QEMU (must be absolute, valid UTF-8, < 108 bytes)"
    )]
    BadSocketPath(String),
}

/// What to place in the hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologySpec {
    /// Shape.
    pub topology: Topology,
    /// One UNIX socket path per GPU, as QEMU sees it.
    pub gpu_sockets: Vec<String>,
    /// Optional peer.
    pub peer: Peer,
    /// CMB size of the NVMe peer in MiB.
    pub cmb_mb: u32,
    /// Backing files (as QEMU sees them) of the NVMe peer's namespaces, nsid 1, 2, ...
    pub peer_namespaces: Vec<String>,
}

/// The QEMU id of GPU `k` (also the name of its socket and log files).
pub fn gpu_id(k: usize) -> String {
    format!("gpu{k}")
}

/// Builds the `-device` arguments (flag and value pairs, flattened) for the spec.
pub fn device_args(spec: &TopologySpec) -> Result<Vec<String>, TopologyError> {
    if spec.gpu_sockets.len() > MAX_GPUS {
        return Err(TopologyError::TooManyGpus(spec.gpu_sockets.len()));
    }
    for s in &spec.gpu_sockets {
        if !s.starts_with('/') || s.len() >= 108 || s.contains('\0') {
            return Err(TopologyError::BadSocketPath(s.clone()));
        }
    }
    let mut devs: Vec<String> = Vec::new();
    let mut slot = 0u32;
    let mut next_slot = || {
        slot += 1;
        slot
    };
    let has_peer = spec.peer != Peer::None;
    if spec.gpu_sockets.is_empty() && !has_peer {
        return Ok(Vec::new());
    }
    // Parent bus for each endpoint: GPUs in order, then the peer.
    let mut buses: Vec<String> = Vec::new();
    match spec.topology {
        Topology::Rootports => {
            for k in 0..spec.gpu_sockets.len() {
                let id = format!("rp{k}");
                devs.push(format!(
                    "pcie-root-port,id={id},bus=pcie.0,chassis=1,slot={}",
                    next_slot()
                ));
                buses.push(id);
            }
            if has_peer {
                devs.push(format!(
                    "pcie-root-port,id=rpp,bus=pcie.0,chassis=1,slot={}",
                    next_slot()
                ));
                buses.push("rpp".to_string());
            }
        }
        Topology::Switch => {
            devs.push(format!(
                "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot={}",
                next_slot()
            ));
            devs.push("x3130-upstream,id=up0,bus=rp0".to_string());
            for k in 0..spec.gpu_sockets.len() {
                let id = format!("dn{k}");
                devs.push(format!(
                    "xio3130-downstream,id={id},bus=up0,chassis=1,slot={}",
                    next_slot()
                ));
                buses.push(id);
            }
            if has_peer {
                devs.push(format!(
                    "xio3130-downstream,id=dnp,bus=up0,chassis=1,slot={}",
                    next_slot()
                ));
                buses.push("dnp".to_string());
            }
        }
    }
    for (k, (socket, bus)) in spec.gpu_sockets.iter().zip(&buses).enumerate() {
        let dev = json!({
            "driver": "vfio-user-pci",
            "id": gpu_id(k),
            "bus": bus,
            "socket": { "type": "unix", "path": socket },
        });
        devs.push(dev.to_string());
    }
    let mut drives = Vec::new();
    if has_peer {
        if let Some(bus) = buses.last() {
            devs.push(format!(
                "nvme,id=peer0,serial=vugpu-peer0,cmb_size_mb={},bus={bus}",
                spec.cmb_mb
            ));
            for (i, file) in spec.peer_namespaces.iter().enumerate() {
                if file.contains(',') || !file.starts_with('/') {
                    return Err(TopologyError::BadSocketPath(file.clone()));
                }
                let nsid = i + 1;
                drives.push(format!(
                    "file={file},if=none,id=peer0ns{nsid},format=raw,cache=none,aio=threads"
                ));
                devs.push(format!("nvme-ns,drive=peer0ns{nsid},bus=peer0,nsid={nsid}"));
            }
        }
    }
    Ok(drives
        .into_iter()
        .flat_map(|d| ["-drive".to_string(), d])
        .chain(devs.into_iter().flat_map(|d| ["-device".to_string(), d]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(topology: Topology, n: usize, peer: Peer) -> TopologySpec {
        TopologySpec {
            topology,
            gpu_sockets: (0..n)
                .map(|k| format!("/run/vugpu-1/gpu{k}.sock"))
                .collect(),
            peer,
            cmb_mb: 64,
            peer_namespaces: Vec::new(),
        }
    }

    fn values(args: &[String]) -> Vec<&str> {
        assert!(args.chunks(2).all(|c| c[0] == "-device"));
        args.chunks(2).map(|c| c[1].as_str()).collect()
    }

    #[test]
    fn no_gpus_no_devices() {
        assert!(device_args(&spec(Topology::Rootports, 0, Peer::None))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn rootports_one_port_per_gpu() {
        let a = device_args(&spec(Topology::Rootports, 2, Peer::None)).unwrap();
        let v = values(&a);
        assert_eq!(
            v,
            vec![
                "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1",
                "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=2",
                r#"{"bus":"rp0","driver":"vfio-user-pci","id":"gpu0","socket":{"path":"/run/vugpu-1/gpu0.sock","type":"unix"}}"#,
                r#"{"bus":"rp1","driver":"vfio-user-pci","id":"gpu1","socket":{"path":"/run/vugpu-1/gpu1.sock","type":"unix"}}"#,
            ]
        );
    }

    #[test]
    fn switch_puts_all_gpus_and_peer_behind_one_upstream_port() {
        let a = device_args(&spec(Topology::Switch, 2, Peer::NvmeCmb)).unwrap();
        let v = values(&a);
        assert_eq!(v[0], "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1");
        assert_eq!(v[1], "x3130-upstream,id=up0,bus=rp0");
        assert_eq!(v[2], "xio3130-downstream,id=dn0,bus=up0,chassis=1,slot=2");
        assert_eq!(v[3], "xio3130-downstream,id=dn1,bus=up0,chassis=1,slot=3");
        assert_eq!(v[4], "xio3130-downstream,id=dnp,bus=up0,chassis=1,slot=4");
        let g0: serde_json::Value = serde_json::from_str(v[5]).unwrap();
        assert_eq!(g0["bus"], "dn0");
        let g1: serde_json::Value = serde_json::from_str(v[6]).unwrap();
        assert_eq!(g1["bus"], "dn1");
        assert_eq!(g1["id"], "gpu1");
        assert_eq!(
            v[7],
            "nvme,id=peer0,serial=vugpu-peer0,cmb_size_mb=64,bus=dnp"
        );
    }

    #[test]
    fn slots_are_unique() {
        for t in [Topology::Rootports, Topology::Switch] {
            let a = device_args(&spec(t, MAX_GPUS, Peer::NvmeCmb)).unwrap();
            let mut slots: Vec<&str> = values(&a)
                .into_iter()
                .filter_map(|d| d.split(",slot=").nth(1))
                .collect();
            let n = slots.len();
            slots.sort_unstable();
            slots.dedup();
            assert_eq!(slots.len(), n);
        }
    }

    #[test]
    fn peer_alone_gets_a_port() {
        let a = device_args(&spec(Topology::Rootports, 0, Peer::NvmeCmb)).unwrap();
        assert_eq!(
            values(&a)[1],
            "nvme,id=peer0,serial=vugpu-peer0,cmb_size_mb=64,bus=rpp"
        );
    }

    #[test]
    fn too_many_gpus_rejected() {
        assert_eq!(
            device_args(&spec(Topology::Rootports, MAX_GPUS + 1, Peer::None)),
            Err(TopologyError::TooManyGpus(MAX_GPUS + 1))
        );
    }

    #[test]
    fn relative_or_long_socket_rejected() {
        let mut s = spec(Topology::Rootports, 1, Peer::None);
        s.gpu_sockets[0] = "gpu0.sock".into();
        assert!(device_args(&s).is_err());
        s.gpu_sockets[0] = format!("/{}", "x".repeat(120));
        assert!(device_args(&s).is_err());
    }

    #[test]
    fn json_escapes_quotes_in_paths() {
        let mut s = spec(Topology::Rootports, 1, Peer::None);
        s.gpu_sockets[0] = "/run/a\"b/gpu0.sock".into();
        let a = device_args(&s).unwrap();
        let g: serde_json::Value = serde_json::from_str(&a[3]).unwrap();
        assert_eq!(g["socket"]["path"], "/run/a\"b/gpu0.sock");
    }

    #[test]
    fn nvme_peer_namespaces() {
        let mut sp = spec(Topology::Switch, 2, Peer::NvmeCmb);
        sp.peer_namespaces = vec!["/run/vugpu-1/ns1.img".into(), "/run/vugpu-1/ns2.img".into()];
        let a = device_args(&sp).unwrap();
        assert_eq!(a[0], "-drive");
        assert!(a[1].starts_with("file=/run/vugpu-1/ns1.img,if=none,id=peer0ns1,format=raw"));
        assert_eq!(a[2], "-drive");
        let devs: Vec<&str> = a
            .chunks(2)
            .filter(|c| c[0] == "-device")
            .map(|c| c[1].as_str())
            .collect();
        let nvme = devs
            .iter()
            .position(|d| d.starts_with("nvme,id=peer0"))
            .unwrap();
        assert_eq!(devs[nvme + 1], "nvme-ns,drive=peer0ns1,bus=peer0,nsid=1");
        assert_eq!(devs[nvme + 2], "nvme-ns,drive=peer0ns2,bus=peer0,nsid=2");
        sp.peer_namespaces = vec!["/x,y".into()];
        assert!(device_args(&sp).is_err());
    }
}
