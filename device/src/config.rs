//! Command-line configuration of `vugpu serve`: parsing and validation into a [`GpuConfig`].

use std::path::{Path, PathBuf};

use clap::Args;

use std::time::Duration;

use vugpu_backend::{DmaLimits, DEFAULT_MAX_FD_WINDOWS};
use vugpu_protocol::{DmaLayout, ServerConfig};

use crate::config_file::default_socket_dir;
use crate::ctl::CtlLimits;
use crate::engine::env::PollTiming;
use crate::engine::regs::MAX_ENGINES;
use crate::gpu::{GpuConfig, Injections, DEFAULT_ENGINES, DEFAULT_MSIX_VECTORS};
use crate::log::Level;
use crate::pci::dsn::serial_from;

/// Options of `vugpu serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Read options from this TOML file: top-level keys are the long option names below
    /// (`vram = "1G"`, `inject = ["msix-dead=3"]`) for every GPU, each `[[gpu]]` table one GPU
    /// with its own `socket` and settings. Precedence: command line > [[gpu]] table > top level
    /// of the file > default. Errors name the file, line and key (exit 2). Reference:
    /// docs/configuration.md; example: examples/vugpu.toml.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// UNIX socket to listen on (created; must not exist; its directory must exist). Repeat it
    /// to serve several GPUs in this process, peers of each other (gpu0 on the first socket,
    /// gpu1 on the second, ...); every other option applies to each GPU. Without --socket,
    /// --socket-dir or a socket in --config: $XDG_RUNTIME_DIR/vugpu/gpu0.sock, gpu1.sock, ...
    /// (else /run/vugpu/...), the directory created with mode 0700.
    #[arg(long, value_name = "PATH", conflicts_with = "socket_dir")]
    pub socket: Vec<PathBuf>,
    /// Serve the GPUs on DIR/gpu0.sock, DIR/gpu1.sock, ... (instead of --socket).
    #[arg(long, value_name = "DIR")]
    pub socket_dir: Option<PathBuf>,
    /// Number of GPUs (1-16) on --socket-dir or the default socket directory (default: 1, or
    /// the number of [[gpu]] tables in --config).
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=MAX_GPUS as i64))]
    pub gpus: Option<u16>,
    /// Permissions of the vfio-user and control sockets (octal; e.g. 0660 to let a group such
    /// as libvirt's QEMU user connect).
    #[arg(long, value_name = "MODE", default_value = "0600", value_parser = parse_mode)]
    pub socket_mode: u32,
    /// VRAM size and VRAM BAR (BAR2) size: a power of two >= 1M, with suffix K, M, G or T
    /// (e.g. 256M, 16G). Untouched VRAM uses no memory.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_vram_size)]
    pub vram: u64,
    /// Back VRAM with this file (created if missing; e.g. on hugetlbfs) instead of an anonymous
    /// memfd. Its contents persist across server restarts.
    #[arg(long, value_name = "PATH")]
    pub vram_file: Option<PathBuf>,
    /// Number of MSI-X vectors (1-2048).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MSIX_VECTORS,
          value_parser = clap::value_parser!(u16).range(1..=2048))]
    pub msix_vectors: u16,
    /// PCI Vendor ID, hex (e.g. 0x1234).
    #[arg(long, value_name = "HEX", default_value = "0x1234", value_parser = parse_hex_u16)]
    pub vendor_id: u16,
    /// PCI Device ID, hex.
    #[arg(long, value_name = "HEX", default_value = "0x5647", value_parser = parse_hex_u16)]
    pub device_id: u16,
    /// PCI Subsystem Vendor ID, hex.
    #[arg(long, value_name = "HEX", default_value = "0x1234",
          value_parser = parse_hex_u16)]
    pub subsystem_vendor_id: u16,
    /// PCI Subsystem ID, hex.
    #[arg(long, value_name = "HEX", default_value = "0x0001", value_parser = parse_hex_u16)]
    pub subsystem_id: u16,
    /// Device Serial Number (decimal or 0x-hex). Default: derived from the socket path, so it
    /// is stable across restarts.
    #[arg(long, value_name = "N", value_parser = parse_u64)]
    pub serial: Option<u64>,
    /// Number of DMA copy engines (0-16). Each needs its own MSI-X vector: --msix-vectors must
    /// be at least engines + 1.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_ENGINES,
          value_parser = parse_engines)]
    pub engines: usize,
    /// After work, engines spin on their doorbell this many microseconds before sleeping
    /// between polls (0-1000000).
    #[arg(long, value_name = "US", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub engine_spin_us: u64,
    /// Longest sleep between two doorbell polls of an idle engine, in microseconds (10-1000000):
    /// the worst-case pickup latency of a doorbell written through the mmapped page.
    #[arg(long, value_name = "US", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    pub engine_poll_us: u64,
    /// Append one line per DMA engine memory transaction to FILE.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Signal the vfio-user ERR irq on unmasked AER errors. QEMU stops the VM when it fires.
    #[arg(long)]
    pub err_irq: bool,
    /// Payload layout of DMA_READ/DMA_WRITE messages (fd-less DMA windows): `spec` (vfio-user
    /// specification, u64 count, data at payload offset 16; what QEMU 11.1.3 speaks, verified)
    /// or `qemu-10.2` (QEMU 10.2's `VFIOUserDMARW` as written in its source: u32 count, data at
    /// offset 12).
    #[arg(long, value_enum, default_value = "spec")]
    pub dma_layout: DmaLayoutArg,
    /// Fault injection, repeatable. `msix-dead=N`: MSI-X vector N is never signalled.
    /// `cfg-stuck=OFFSET`: client writes never change the config-space dword at OFFSET (dword
    /// aligned, decimal or 0x hex), e.g. `cfg-stuck=0x114` (AER Correctable Mask).
    /// Device MMU (hw-spec §9), for proving that guest tests fail: `mmu-stale-tlb`:
    /// TLB_INVALIDATE completes but drops nothing (stale translations stay in use);
    /// `mmu-no-fault-irq`: fault records are written but the fault vector is never signalled;
    /// `mmu-ignore-atomic-perm`: ATOMIC on a SYS target works without the PTE's ATOMIC bit.
    /// `vram-write-drop`: the engines' writes into this GPU's VRAM (COPY, FILL, FENCE,
    /// TIMESTAMP and ATOMIC destinations via the VRAM, SYS or VIRT aperture) complete but leave
    /// VRAM unchanged; the CPU's accesses (BAR2 mmap, VRAM_DATA) are not affected.
    #[arg(long, value_name = "FAULT", value_parser = parse_inject)]
    pub inject: Vec<Fault>,
    /// Log verbosity. RUST_LOG, when set, replaces it (`tracing-subscriber` EnvFilter syntax,
    /// e.g. `info,vugpu_protocol=debug` or `info,[gpu{name=gpu1}]=debug`).
    #[arg(long, value_enum, default_value = "info")]
    pub log_level: Level,
    /// Resource limit: most DMA mappings one client may hold (1-65535; advertised as
    /// `max_dma_maps` in the VERSION reply). One more DMA_MAP gets ENOSPC.
    #[arg(long, value_name = "N", default_value_t = 65535,
          value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub max_dma_maps: u32,
    /// Resource limit: most DMA mappings with an fd one client may hold (each keeps a file
    /// open in this process); one more gets ENOSPC.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_FD_WINDOWS,
          value_parser = parse_max_dma_fds)]
    pub max_dma_fds: usize,
    /// Resource limit: most bytes of all DMA mappings with an fd of one client together (the
    /// server maps them); a DMA_MAP past it gets ENOSPC. Suffix K, M, G or T.
    #[arg(long, value_name = "SIZE", default_value = "4T", value_parser = parse_nonzero_size)]
    pub max_dma_bytes: u64,
    /// Resource limit: largest data transfer of one message (4K-64M; advertised as
    /// `max_data_xfer_size`). A larger REGION_READ/WRITE gets E2BIG; a larger message ends
    /// the session.
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_xfer_size)]
    pub max_data_xfer_size: u32,
    /// Resource limit: most fds on one message (1-16; advertised as `max_msg_fds`). A message
    /// with more ends the session.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub max_msg_fds: u32,
    /// Resource limit: most bytes written to the --trace file; later lines are counted
    /// (`vugpu stats`: trace_lines_dropped). Suffix K, M, G or T.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size)]
    pub trace_max_bytes: u64,
    /// Resource limit: log lines per second on average (0: no limit); lines above it are
    /// dropped and counted (`vugpu stats`: log_lines_dropped, and a line in the log). With
    /// --log-level debug (a line per message) use 0 to see every line.
    #[arg(long, value_name = "N", default_value_t = crate::log::DEFAULT_RATE)]
    pub log_rate_limit: u32,
    /// Resource limit: log lines allowed at once above --log-rate-limit.
    #[arg(long, value_name = "N", default_value_t = crate::log::DEFAULT_BURST,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub log_burst: u32,
    /// Resource limit: time a control-socket client has for its whole exchange (request line
    /// and reply), in milliseconds (10-60000); then the connection is closed.
    #[arg(long, value_name = "MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub ctl_timeout_ms: u64,
    /// Resource limit: control-socket clients served at once (1-1024); one more is answered
    /// {"error":"busy: ..."} and closed.
    #[arg(long, value_name = "N", default_value_t = crate::ctl::DEFAULT_MAX_CLIENTS,
          value_parser = parse_ctl_clients)]
    pub ctl_max_clients: usize,
}

/// Most GPUs one process serves.
pub const MAX_GPUS: usize = 16;

/// `--dma-layout` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DmaLayoutArg {
    /// The vfio-user specification (u64 address, u64 count, data); QEMU 11.1.3.
    Spec,
    /// QEMU 10.2's `VFIOUserDMARW` source (u64 address, u32 count, data).
    #[value(name = "qemu-10.2")]
    Qemu102,
}

impl From<DmaLayoutArg> for DmaLayout {
    fn from(a: DmaLayoutArg) -> DmaLayout {
        match a {
            DmaLayoutArg::Qemu102 => DmaLayout::Qemu,
            DmaLayoutArg::Spec => DmaLayout::Spec,
        }
    }
}

/// Parses a file mode in octal (`0660`, `660`, `0o660`): permission bits only, and the owner
/// must be able to read and write (else no one could use the socket but root).
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 && m & 0o600 == 0o600 => Ok(m),
        Ok(_) => Err(format!(
            "'{text}' must be permission bits (at most 0777) with read and write for the owner"
        )),
        Err(_) => Err(format!(
            "'{text}' is not an octal file mode (e.g. 0600, 0660)"
        )),
    }
}

/// Parses `--ctl-max-clients` (1-1024).
pub fn parse_ctl_clients(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!("'{text}' is not a number of clients in 1..=1024")),
    }
}

/// Parses `--max-dma-fds` (1-65535).
pub fn parse_max_dma_fds(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n),
        _ => Err(format!("'{text}' is not a number of DMA fds in 1..=65535")),
    }
}

/// Parses a size that must not be 0.
pub fn parse_nonzero_size(text: &str) -> Result<u64, String> {
    match parse_size(text)? {
        0 => Err(format!("'{text}' must be larger than 0")),
        n => Ok(n),
    }
}

/// Parses `--max-data-xfer-size`: 4 KiB to 64 MiB (QEMU refuses more).
pub fn parse_xfer_size(text: &str) -> Result<u32, String> {
    let n = parse_size(text)?;
    if !(4096..=64 << 20).contains(&n) {
        return Err(format!("'{text}' must be between 4K and 64M"));
    }
    Ok(n as u32)
}

/// Parses `--engines`.
pub fn parse_engines(text: &str) -> Result<usize, String> {
    let n: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of engines"))?;
    if n > MAX_ENGINES {
        return Err(format!("at most {MAX_ENGINES} DMA engines"));
    }
    Ok(n)
}

/// One `--inject` fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `msix-dead=N`.
    MsixDead(u16),
    /// `cfg-stuck=OFFSET`.
    CfgStuck(u16),
    /// `mmu-stale-tlb`.
    MmuStaleTlb,
    /// `mmu-no-fault-irq`.
    MmuNoFaultIrq,
    /// `mmu-ignore-atomic-perm`.
    MmuIgnoreAtomicPerm,
    /// `vram-write-drop`.
    VramWriteDrop,
}

const UNITS: &[(char, u32)] = &[('K', 10), ('M', 20), ('G', 30), ('T', 40)];

/// Parses `256M`, `16G`, `1048576`, `1GiB` into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let u = c.to_ascii_uppercase();
            let shift = UNITS
                .iter()
                .find(|(k, _)| *k == u)
                .map(|(_, s)| *s)
                .ok_or_else(|| format!("unknown size unit '{c}' in '{text}' (use K, M, G or T)"))?;
            (&t[..t.len() - 1], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 256M, 16G)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size '{text}' is too large"))
}

/// Smallest VRAM (and VRAM BAR) size.
pub const MIN_VRAM_SIZE: u64 = 1 << 20;

/// Parses a VRAM size: a power of two between 1 MiB and 128 TiB.
pub fn parse_vram_size(text: &str) -> Result<u64, String> {
    let n = parse_size(text)?;
    if n < MIN_VRAM_SIZE || !n.is_power_of_two() || n > 1 << 47 {
        return Err(format!(
            "VRAM size '{text}' must be a power of two between 1M and 128T"
        ));
    }
    Ok(n)
}

/// Parses a 16-bit hex ID (`0x1234` or `1234`).
pub fn parse_hex_u16(text: &str) -> Result<u16, String> {
    let t = text.trim();
    let digits = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    u16::from_str_radix(digits, 16).map_err(|_| format!("'{text}' is not a 16-bit hex value"))
}

/// Parses a u64 in decimal or `0x` hex.
pub fn parse_u64(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse(),
    };
    r.map_err(|_| format!("'{text}' is not a 64-bit number"))
}

/// Parses one `--inject` value.
pub fn parse_inject(text: &str) -> Result<Fault, String> {
    match text.trim() {
        "mmu-stale-tlb" => return Ok(Fault::MmuStaleTlb),
        "mmu-no-fault-irq" => return Ok(Fault::MmuNoFaultIrq),
        "mmu-ignore-atomic-perm" => return Ok(Fault::MmuIgnoreAtomicPerm),
        "vram-write-drop" => return Ok(Fault::VramWriteDrop),
        _ => {}
    }
    match text.split_once('=') {
        Some(("msix-dead", n)) => n
            .trim()
            .parse::<u16>()
            .map(Fault::MsixDead)
            .map_err(|_| format!("msix-dead needs a vector number, got '{n}'")),
        Some(("cfg-stuck", off)) => match parse_u64(off) {
            Ok(o) if o < 4096 && o % 4 == 0 => Ok(Fault::CfgStuck(o as u16)),
            _ => Err(format!(
                "cfg-stuck needs a dword-aligned config-space offset below 0x1000, got '{off}'"
            )),
        },
        _ => Err(format!(
            "unknown fault '{text}' (known: msix-dead=N, cfg-stuck=OFFSET, mmu-stale-tlb, \
             mmu-no-fault-irq, mmu-ignore-atomic-perm, vram-write-drop)"
        )),
    }
}

/// Checks the socket path before binding: its directory must exist and the path must not.
pub fn check_socket_path(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "cannot create socket {}: directory {} does not exist",
            path.display(),
            dir.display()
        ));
    }
    if path.symlink_metadata().is_ok() {
        return Err(format!(
            "socket {} exists; is another vugpu serving it? remove it first",
            path.display()
        ));
    }
    Ok(())
}

impl ServeArgs {
    /// The sockets to serve, one per GPU (gpu0 first): --socket, else --gpus (default 1)
    /// sockets in --socket-dir or [`default_socket_dir`].
    pub fn sockets(&self) -> Vec<PathBuf> {
        if !self.socket.is_empty() {
            return self.socket.clone();
        }
        let dir = self.socket_dir.clone().unwrap_or_else(default_socket_dir);
        (0..self.gpus.unwrap_or(1))
            .map(|i| dir.join(format!("gpu{i}.sock")))
            .collect()
    }

    /// The configuration of every GPU these options describe (named `gpu0`, `gpu1`, ... in socket
    /// order). Each GPU's serial number is derived from its socket path, or `--serial` + index.
    pub fn gpu_configs(&self) -> Result<Vec<GpuConfig>, String> {
        if let (Some(n), false) = (self.gpus, self.socket.is_empty()) {
            if usize::from(n) != self.socket.len() {
                return Err(format!(
                    "--gpus {n} disagrees with the {} --socket",
                    self.socket.len()
                ));
            }
        }
        let sockets = self.sockets();
        if sockets.is_empty() || sockets.len() > MAX_GPUS {
            return Err(format!("serve 1 to {MAX_GPUS} GPUs, not {}", sockets.len()));
        }
        if sockets.len() > 1 && self.vram_file.is_some() {
            return Err(
                "--vram-file backs one GPU's VRAM; it cannot be used with several GPUs".into(),
            );
        }
        for (i, a) in sockets.iter().enumerate() {
            if sockets[..i].contains(a) {
                return Err(format!("socket {} given twice", a.display()));
            }
        }
        sockets
            .iter()
            .enumerate()
            .map(|(i, socket)| {
                let mut cfg = self.gpu_config_for(socket)?;
                cfg.name = format!("gpu{i}");
                if let Some(serial) = self.serial {
                    cfg.serial = serial.wrapping_add(i as u64);
                }
                Ok(cfg)
            })
            .collect()
    }

    /// The configuration of the first GPU (the only one with a single `--socket`).
    pub fn gpu_config(&self) -> Result<GpuConfig, String> {
        self.gpu_configs()?
            .into_iter()
            .next()
            .ok_or_else(|| "no socket".to_string())
    }

    fn gpu_config_for(&self, socket: &Path) -> Result<GpuConfig, String> {
        let mut cfg = GpuConfig::new(self.vram);
        cfg.vram.file = self.vram_file.clone();
        cfg.msix_vectors = self.msix_vectors;
        cfg.identity.vendor_id = self.vendor_id;
        cfg.identity.device_id = self.device_id;
        cfg.identity.subsystem_vendor_id = self.subsystem_vendor_id;
        cfg.identity.subsystem_id = self.subsystem_id;
        cfg.serial = self
            .serial
            .unwrap_or_else(|| serial_from(&socket.to_string_lossy()));
        let mut inject = Injections::default();
        for f in &self.inject {
            match *f {
                Fault::MsixDead(n) if n >= self.msix_vectors => {
                    return Err(format!(
                        "--inject msix-dead={n}: the device has only {} MSI-X vectors",
                        self.msix_vectors
                    ))
                }
                Fault::MsixDead(n) => inject.msix_dead.push(n),
                Fault::CfgStuck(off) => inject.cfg_stuck.push(off),
                Fault::MmuStaleTlb => inject.mmu.stale_tlb = true,
                Fault::MmuNoFaultIrq => inject.mmu.no_fault_irq = true,
                Fault::MmuIgnoreAtomicPerm => inject.mmu.ignore_atomic_perm = true,
                Fault::VramWriteDrop => inject.vram_write_drop = true,
            }
        }
        cfg.inject = inject;
        if usize::from(self.msix_vectors) < self.engines + 1 {
            return Err(format!(
                "--engines {} needs --msix-vectors >= {} (vector 0 + one per engine), got {}",
                self.engines,
                self.engines + 1,
                self.msix_vectors
            ));
        }
        cfg.engines = self.engines;
        cfg.engine_timing = PollTiming {
            spin: Duration::from_micros(self.engine_spin_us),
            max_sleep: Duration::from_micros(self.engine_poll_us),
        };
        cfg.trace = self.trace.clone();
        cfg.trace_max_bytes = self.trace_max_bytes;
        cfg.err_irq = self.err_irq;
        cfg.dma_limits = DmaLimits {
            max_windows: self.max_dma_maps as usize,
            max_fd_windows: self.max_dma_fds,
            max_fd_bytes: self.max_dma_bytes,
        };
        Ok(cfg)
    }

    /// The vfio-user limits every GPU's sessions advertise and enforce.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            max_data_xfer_size: self.max_data_xfer_size,
            max_msg_fds: self.max_msg_fds,
            max_dma_maps: self.max_dma_maps,
            ..ServerConfig::default()
        }
    }

    /// The control socket's client limits.
    pub fn ctl_limits(&self) -> CtlLimits {
        CtlLimits {
            timeout: Duration::from_millis(self.ctl_timeout_ms),
            max_clients: self.ctl_max_clients,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("16G").unwrap(), 16 << 30);
        assert_eq!(parse_size("16g").unwrap(), 16 << 30);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("2T").unwrap(), 2 << 40);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
        assert!(parse_size("100000000000T").is_err());
        assert!(parse_vram_size("1M").is_ok());
        assert!(parse_vram_size("512K").is_err());
        assert!(parse_vram_size("3M").is_err());
        assert!(parse_vram_size("256T").is_err());
    }

    #[test]
    fn ids_and_faults() {
        assert_eq!(parse_hex_u16("0x10de").unwrap(), 0x10de);
        assert_eq!(parse_hex_u16("1af4").unwrap(), 0x1af4);
        assert!(parse_hex_u16("0x12345").is_err());
        assert!(parse_hex_u16("zz").is_err());
        assert_eq!(parse_u64("0x10").unwrap(), 16);
        assert_eq!(parse_u64("10").unwrap(), 10);
        assert!(parse_u64("x").is_err());
        assert_eq!(parse_inject("msix-dead=3").unwrap(), Fault::MsixDead(3));
        assert!(parse_inject("msix-dead=x").is_err());
        assert!(parse_inject("bogus=1").is_err());
        assert!(parse_inject("msix-dead").is_err());
        assert_eq!(
            parse_inject("cfg-stuck=0x114").unwrap(),
            Fault::CfgStuck(0x114)
        );
        assert_eq!(
            parse_inject("cfg-stuck=276").unwrap(),
            Fault::CfgStuck(0x114)
        );
        assert!(
            parse_inject("cfg-stuck=0x115").is_err(),
            "not dword aligned"
        );
        assert!(
            parse_inject("cfg-stuck=0x1000").is_err(),
            "past config space"
        );
        assert!(parse_inject("cfg-stuck=x").is_err());
        assert_eq!(parse_inject("mmu-stale-tlb").unwrap(), Fault::MmuStaleTlb);
        assert_eq!(
            parse_inject("mmu-no-fault-irq").unwrap(),
            Fault::MmuNoFaultIrq
        );
        assert_eq!(
            parse_inject("mmu-ignore-atomic-perm").unwrap(),
            Fault::MmuIgnoreAtomicPerm
        );
        assert!(parse_inject("mmu-stale-tlb=1").is_err());
        assert!(parse_inject("mmu-bogus")
            .unwrap_err()
            .contains("mmu-stale-tlb"));
        assert_eq!(
            parse_inject("vram-write-drop").unwrap(),
            Fault::VramWriteDrop
        );
        assert_eq!(
            parse_inject(" vram-write-drop ").unwrap(),
            Fault::VramWriteDrop
        );
        assert!(parse_inject("vram-write-drop=1").is_err());
        assert!(parse_inject("vram-write").is_err());
        assert!(parse_inject("bogus")
            .unwrap_err()
            .contains("vram-write-drop"));
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0o666"), Ok(0o666));
        assert!(parse_mode("0400").is_err(), "owner cannot write");
        assert!(parse_mode("4755").is_err(), "not only permission bits");
        assert!(parse_mode("0800").is_err());
        assert!(parse_mode("rw").is_err());
    }

    #[test]
    fn socket_path_checks() {
        let err = check_socket_path(Path::new("/nonexistent-dir-vugpu/s.sock")).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        let existing = std::env::temp_dir().join(format!("vugpu-cfg-{}", std::process::id()));
        std::fs::write(&existing, b"").unwrap();
        let err = check_socket_path(&existing).unwrap_err();
        assert!(
            err.contains("exists; is another vugpu serving it? remove it first"),
            "{err}"
        );
        std::fs::remove_file(&existing).unwrap();
        assert!(check_socket_path(&existing).is_ok());
    }

    #[test]
    fn defaults_match_hw_spec() {
        use crate::gpu::{
            DEFAULT_DEVICE_ID, DEFAULT_SUBSYSTEM_ID, DEFAULT_SUBSYSTEM_VENDOR_ID, DEFAULT_VENDOR_ID,
        };
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: ServeArgs,
        }
        let t = T::try_parse_from(["t", "--socket", "/tmp/x.sock"]).unwrap();
        assert_eq!(t.a.vendor_id, DEFAULT_VENDOR_ID);
        assert_eq!(t.a.device_id, DEFAULT_DEVICE_ID);
        assert_eq!(t.a.subsystem_vendor_id, DEFAULT_SUBSYSTEM_VENDOR_ID);
        assert_eq!(t.a.subsystem_id, DEFAULT_SUBSYSTEM_ID);
        assert_eq!(t.a.vram, 256 << 20);
        assert_eq!(t.a.msix_vectors, 16);
        assert_eq!(t.a.engines, 4);
        assert_eq!(t.a.dma_layout, DmaLayoutArg::Spec);
        let cfg = t.a.gpu_config().unwrap();
        assert_eq!(cfg.serial, serial_from("/tmp/x.sock"));
        assert_eq!(cfg.engines, 4);
        assert_eq!(cfg.engine_timing, PollTiming::default());
        assert!(!cfg.err_irq && cfg.trace.is_none());
        let t = T::try_parse_from([
            "t",
            "--socket",
            "s",
            "--msix-vectors",
            "4",
            "--inject",
            "msix-dead=4",
        ])
        .unwrap();
        assert!(t.a.gpu_config().is_err());
        // --inject is repeatable: every named vector is dead.
        let t = T::try_parse_from([
            "t",
            "--socket",
            "s",
            "--inject",
            "msix-dead=3",
            "--inject",
            "msix-dead=5",
        ])
        .unwrap();
        assert_eq!(t.a.gpu_config().unwrap().inject.msix_dead, vec![3, 5]);
        let t = T::try_parse_from([
            "t",
            "--socket",
            "s",
            "--inject",
            "mmu-stale-tlb",
            "--inject",
            "mmu-ignore-atomic-perm",
        ])
        .unwrap();
        let inject = t.a.gpu_config().unwrap().inject;
        let mmu = inject.mmu;
        assert!(mmu.stale_tlb && mmu.ignore_atomic_perm && !mmu.no_fault_irq);
        assert!(!inject.vram_write_drop);
        let t = T::try_parse_from(["t", "--socket", "s", "--inject", "vram-write-drop"]).unwrap();
        let inject = t.a.gpu_config().unwrap().inject;
        assert!(inject.vram_write_drop && inject.mmu == crate::mmu::MmuInject::default());
        assert!(T::try_parse_from(["t", "--socket", "s", "--msix-vectors", "0"]).is_err());
        // Engines need vectors; counts are bounded.
        let t = T::try_parse_from(["t", "--socket", "s", "--msix-vectors", "4"]).unwrap();
        let err = t.a.gpu_config().unwrap_err();
        assert!(err.contains("--msix-vectors >= 5"), "{err}");
        let t = T::try_parse_from([
            "t",
            "--socket",
            "s",
            "--msix-vectors",
            "4",
            "--engines",
            "3",
        ])
        .unwrap();
        assert_eq!(t.a.gpu_config().unwrap().engines, 3);
        assert!(T::try_parse_from(["t", "--socket", "s", "--engines", "17"]).is_err());
        assert!(T::try_parse_from(["t", "--socket", "s", "--engine-poll-us", "5"]).is_err());
        let t = T::try_parse_from([
            "t",
            "--socket",
            "s",
            "--engines",
            "0",
            "--msix-vectors",
            "1",
            "--dma-layout",
            "qemu-10.2",
            "--engine-spin-us",
            "0",
        ])
        .unwrap();
        assert_eq!(t.a.dma_layout, DmaLayoutArg::Qemu102);
        assert_eq!(DmaLayout::from(t.a.dma_layout), DmaLayout::Qemu);
        assert_eq!(t.a.gpu_config().unwrap().engine_timing.spin, Duration::ZERO);
        assert!(T::try_parse_from(["t", "--socket", "s", "--vram", "3M"]).is_err());
    }

    #[test]
    fn several_gpus() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: ServeArgs,
        }
        let t = T::try_parse_from(["t", "--socket", "/r/a.sock", "--socket", "/r/b.sock"]).unwrap();
        let cfgs = t.a.gpu_configs().unwrap();
        assert_eq!(
            t.a.sockets(),
            [Path::new("/r/a.sock"), Path::new("/r/b.sock")]
        );
        assert_eq!(
            (cfgs[0].name.as_str(), cfgs[1].name.as_str()),
            ("gpu0", "gpu1")
        );
        assert_eq!(cfgs[1].serial, serial_from("/r/b.sock"));
        assert_ne!(cfgs[0].serial, cfgs[1].serial);
        let t = T::try_parse_from([
            "t",
            "--socket-dir",
            "/r",
            "--gpus",
            "3",
            "--serial",
            "100",
            "--vram",
            "1G",
        ])
        .unwrap();
        assert_eq!(t.a.sockets()[2], Path::new("/r/gpu2.sock"));
        let cfgs = t.a.gpu_configs().unwrap();
        assert_eq!(cfgs.len(), 3);
        assert_eq!(cfgs[2].serial, 102, "--serial + index");
        assert!(
            cfgs.iter().all(|c| c.vram.size == 1 << 30),
            "options apply to every GPU"
        );
        // At most one way to name sockets; without one, the default directory.
        let t = T::try_parse_from(["t"]).unwrap();
        assert_eq!(t.a.sockets(), [default_socket_dir().join("gpu0.sock")]);
        let t = T::try_parse_from(["t", "--gpus", "2"]).unwrap();
        assert_eq!(t.a.sockets()[1], default_socket_dir().join("gpu1.sock"));
        assert!(
            T::try_parse_from(["t", "--socket", "a", "--socket-dir", "/r", "--gpus", "2"]).is_err()
        );
        let t = T::try_parse_from(["t", "--socket-dir", "/r"]).unwrap();
        assert_eq!(t.a.sockets(), [Path::new("/r/gpu0.sock")]);
        let t = T::try_parse_from(["t", "--socket", "a", "--socket", "b", "--gpus", "2"]).unwrap();
        assert_eq!(t.a.gpu_configs().unwrap().len(), 2);
        assert!(T::try_parse_from(["t", "--socket", "a", "--gpus", "2"])
            .map_err(|e| e.to_string())
            .and_then(|t| t.a.gpu_configs())
            .is_err());
        assert!(T::try_parse_from(["t", "--socket-dir", "/r", "--gpus", "0"]).is_err());
        assert!(T::try_parse_from(["t", "--socket-dir", "/r", "--gpus", "17"]).is_err());
        // One VRAM file cannot back two GPUs; a socket cannot serve two.
        let t = T::try_parse_from(["t", "--socket", "a", "--socket", "b", "--vram-file", "/f"])
            .unwrap();
        assert!(t.a.gpu_configs().unwrap_err().contains("--vram-file"));
        let t = T::try_parse_from(["t", "--socket", "a", "--socket", "a"]).unwrap();
        assert!(t.a.gpu_configs().unwrap_err().contains("twice"));
    }

    #[test]
    fn resource_limit_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: ServeArgs,
        }
        // Defaults: docs/reliability.md, "Resource limits".
        let t = T::try_parse_from(["t", "--socket", "s"]).unwrap();
        assert_eq!(t.a.server_config(), ServerConfig::default());
        let cfg = t.a.gpu_config().unwrap();
        assert_eq!(cfg.dma_limits, DmaLimits::default());
        assert_eq!(cfg.trace_max_bytes, 1 << 30);
        assert_eq!(t.a.ctl_limits(), CtlLimits::default());
        assert_eq!((t.a.log_rate_limit, t.a.log_burst), (20, 200));
        let t = T::try_parse_from([
            "t",
            "--socket",
            "s",
            "--max-dma-maps",
            "7",
            "--max-dma-fds",
            "3",
            "--max-dma-bytes",
            "1G",
            "--max-data-xfer-size",
            "64K",
            "--max-msg-fds",
            "2",
            "--trace-max-bytes",
            "4K",
            "--ctl-timeout-ms",
            "100",
            "--ctl-max-clients",
            "2",
        ])
        .unwrap();
        let sc = t.a.server_config();
        assert_eq!(
            (sc.max_dma_maps, sc.max_data_xfer_size, sc.max_msg_fds),
            (7, 64 << 10, 2)
        );
        assert!(sc.validate().is_ok());
        let cfg = t.a.gpu_config().unwrap();
        assert_eq!(
            cfg.dma_limits,
            DmaLimits {
                max_windows: 7,
                max_fd_windows: 3,
                max_fd_bytes: 1 << 30
            }
        );
        assert_eq!(cfg.trace_max_bytes, 4096);
        assert_eq!(
            t.a.ctl_limits(),
            CtlLimits {
                timeout: Duration::from_millis(100),
                max_clients: 2
            }
        );
        for bad in [
            ["--max-dma-maps", "0"],
            ["--max-dma-maps", "65536"],
            ["--max-dma-fds", "0"],
            ["--max-dma-bytes", "0"],
            ["--max-data-xfer-size", "4095"],
            ["--max-data-xfer-size", "65M"],
            ["--max-msg-fds", "17"],
            ["--max-msg-fds", "0"],
            ["--log-burst", "0"],
            ["--ctl-timeout-ms", "5"],
            ["--ctl-max-clients", "0"],
        ] {
            let mut args = vec!["t", "--socket", "s"];
            args.extend(bad);
            assert!(T::try_parse_from(args).is_err(), "{bad:?}");
        }
    }
}
