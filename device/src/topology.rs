//! PCIe topology: where the GPUs (and an optional P2P peer) sit in the guest's PCI hierarchy.
//!
//! Three shapes, all on QEMU's q35 root complex (`pcie.0`):
//!
//! ```text
//! rootports (default)                    switch                                   root-complex
//! pcie.0                                 pcie.0                                   pcie.0
//!  ├─ pcie-root-port rp0 ── gpu0          └─ pcie-root-port rp0                     ├─ gpu0 (addr 8.0)
//!  ├─ pcie-root-port rp1 ── gpu1              └─ x3130-upstream up0                 ├─ gpu1 (addr 9.0)
//!  └─ pcie-root-port rpp ── peer0 (nvme)           ├─ xio3130-downstream dn0 ── gpu0 └─ peer0 (addr 18.0)
//!                                                  ├─ xio3130-downstream dn1 ── gpu1
//!                                                  └─ xio3130-downstream dnp ── peer0 (nvme)
//! ```
//!
//! root-complex: the GPUs are root-complex integrated endpoints at fixed addresses
//! (`0x08 + k`, function 0; the NVMe peer at `0x18`), with no port above them (no hot-plug).
//!
//! This module is shared by the runner (`vugpu-vm`, guest-tests) and `vugpu qemu-args`: both
//! print exactly what [`device_args`] builds. Guest RAM must be a shared memfd
//! ([`memory_args`]) so that vfio-user DMA_MAP messages carry file descriptors the server maps.
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
    #[value(alias = "root-ports")]
    Rootports,
    /// All GPUs behind one switch (x3130-upstream + xio3130-downstream ports) under a root port.
    Switch,
    /// Each GPU directly on the root complex (`pcie.0`) as an integrated endpoint.
    RootComplex,
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
            Topology::RootComplex => "root-complex",
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

/// With [`Topology::RootComplex`]: the slot of gpu0 on `pcie.0` (gpuK is at `0x08 + K`; 16 GPUs end at
/// `0x17`, below q35's ICH9 functions at `0x1f`).
pub const RC_FIRST_GPU_SLOT: usize = 0x08;
/// With [`Topology::RootComplex`]: the slot of the NVMe peer on `pcie.0`.
pub const RC_PEER_SLOT: usize = 0x18;

/// The id of the guest-RAM memory backend in [`memory_args`].
pub const MEMORY_BACKEND_ID: &str = "mem";

/// The memory arguments vfio-user needs, for `mem_mib` MiB of guest RAM: `-m`, and a shared
/// memfd backend (`memory-backend-memfd,share=on`) so that DMA_MAP messages carry file
/// descriptors the server can map; `sealed: false` adds `seal=off` (the server then reaches guest
/// RAM with pread/pwrite). The machine must name the backend: `-machine q35,memory-backend=mem`
/// (see [`machine_arg`]).
pub fn memory_args(mem_mib: u64, sealed: bool) -> [String; 4] {
    let mem = format!("{mem_mib}M");
    [
        "-m".to_string(),
        mem.clone(),
        "-object".to_string(),
        format!(
            "memory-backend-memfd,id={MEMORY_BACKEND_ID},size={mem},share=on{}",
            if sealed { "" } else { ",seal=off" }
        ),
    ]
}

/// The `-machine` value: q35 with the guest RAM backend of [`memory_args`], and an accelerator
/// (`kvm`, `tcg`) when given.
pub fn machine_arg(accel: Option<&str>) -> String {
    match accel {
        Some(a) => format!("q35,accel={a},memory-backend={MEMORY_BACKEND_ID}"),
        None => format!("q35,memory-backend={MEMORY_BACKEND_ID}"),
    }
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
        Topology::RootComplex => {
            buses.extend(spec.gpu_sockets.iter().map(|_| "pcie.0".to_string()));
            if has_peer {
                buses.push("pcie.0".to_string());
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
        let mut dev = json!({
            "driver": "vfio-user-pci",
            "id": gpu_id(k),
            "bus": bus,
            "socket": { "type": "unix", "path": socket },
        });
        if spec.topology == Topology::RootComplex {
            dev["addr"] = json!(format!("{:x}.0", RC_FIRST_GPU_SLOT + k));
        }
        devs.push(dev.to_string());
    }
    let mut drives = Vec::new();
    if has_peer {
        if let Some(bus) = buses.last() {
            let addr = if spec.topology == Topology::RootComplex {
                format!(",addr={RC_PEER_SLOT:x}.0")
            } else {
                String::new()
            };
            devs.push(format!(
                "nvme,id=peer0,serial=vugpu-peer0,cmb_size_mb={},bus={bus}{addr}",
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
    fn root_complex_puts_gpus_on_pcie0_at_fixed_addresses() {
        let a = device_args(&spec(Topology::RootComplex, 2, Peer::NvmeCmb)).unwrap();
        let v = values(&a);
        assert_eq!(v.len(), 3, "no ports: {v:?}");
        let g0: serde_json::Value = serde_json::from_str(v[0]).unwrap();
        assert_eq!(
            (&g0["bus"], &g0["addr"], &g0["id"]),
            (&json!("pcie.0"), &json!("8.0"), &json!("gpu0"))
        );
        let g1: serde_json::Value = serde_json::from_str(v[1]).unwrap();
        assert_eq!((&g1["bus"], &g1["addr"]), (&json!("pcie.0"), &json!("9.0")));
        assert_eq!(
            v[2],
            "nvme,id=peer0,serial=vugpu-peer0,cmb_size_mb=64,bus=pcie.0,addr=18.0"
        );
        // The last GPU's slot stays below q35's ICH9 functions at 0x1f.
        let a = device_args(&spec(Topology::RootComplex, MAX_GPUS, Peer::None)).unwrap();
        let last: serde_json::Value = serde_json::from_str(values(&a)[MAX_GPUS - 1]).unwrap();
        assert_eq!(last["addr"], "17.0");
    }

    #[test]
    fn names_and_memory() {
        use clap::ValueEnum;
        assert_eq!(
            Topology::from_str("root-ports", false),
            Ok(Topology::Rootports)
        );
        assert_eq!(
            Topology::from_str("rootports", false),
            Ok(Topology::Rootports)
        );
        assert_eq!(
            Topology::from_str("root-complex", false),
            Ok(Topology::RootComplex)
        );
        assert_eq!(Topology::RootComplex.to_string(), "root-complex");
        assert_eq!(
            memory_args(2048, true),
            [
                "-m",
                "2048M",
                "-object",
                "memory-backend-memfd,id=mem,size=2048M,share=on"
            ]
        );
        assert!(memory_args(512, false)[3].ends_with(",share=on,seal=off"));
        assert_eq!(machine_arg(None), "q35,memory-backend=mem");
        assert_eq!(machine_arg(Some("tcg")), "q35,accel=tcg,memory-backend=mem");
    }

    #[test]
    fn slots_are_unique() {
        for t in [Topology::Rootports, Topology::Switch, Topology::RootComplex] {
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
