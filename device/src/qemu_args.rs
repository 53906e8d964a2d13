//! `vugpu qemu-args`: the QEMU arguments that attach a server's GPUs, in a PCIe topology.
//!
//! The ports and devices come from [`crate::topology::device_args`], the very function the
//! runner (`vugpu-vm`) builds its command line with, and the guest RAM arguments from
//! [`crate::topology::memory_args`] and [`crate::topology::machine_arg`]: what this prints is
//! what the guest tests boot.

use std::path::PathBuf;

use clap::Args;

use crate::config::parse_size;
use crate::config_file::{resolve, serve_command, ConfigError};
use crate::topology::{device_args, machine_arg, memory_args, Peer, Topology, TopologySpec};

/// Options of `vugpu qemu-args`.
#[derive(Debug, Clone, Args)]
pub struct QemuArgs {
    /// A GPU's vfio-user socket (repeatable: gpu0 first). Relative paths are made absolute.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["config", "gpus"])]
    pub socket: Vec<PathBuf>,
    /// Take the GPUs' sockets from a `vugpu serve` config file (same rules as `serve --config`).
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// With neither --socket nor --config: this many GPUs on serve's default sockets
    /// ($XDG_RUNTIME_DIR/vugpu/gpuK.sock, else /run/vugpu/gpuK.sock).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=crate::config::MAX_GPUS as i64))]
    pub gpus: u16,
    /// rootports (alias root-ports): a pcie-root-port per GPU. switch: one root port, an
    /// x3130-upstream port and an xio3130-downstream port per GPU (peer-to-peer stays below the
    /// switch). root-complex: the GPUs on pcie.0 as integrated endpoints (slot 8 + K).
    #[arg(long, value_enum, default_value_t = Topology::Rootports)]
    pub topology: Topology,
    /// Guest RAM (suffix M or G; a multiple of 1M).
    #[arg(long, value_name = "SIZE", default_value = "2G")]
    pub memory: String,
    /// shell: quoted, one option per line joined with backslashes (paste into a script).
    /// lines: one unquoted argument per line (`mapfile -t A < <(vugpu qemu-args ...)`).
    /// libvirt: the domain XML elements (shared memfd guest RAM in `<memoryBacking>`, the ports
    /// and devices in `<qemu:commandline>`; guest RAM is the domain's `<memory>`, --memory is
    /// not used).
    #[arg(long, value_enum, default_value = "shell")]
    pub format: Format,
}

/// Output format of `vugpu qemu-args`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Shell-quoted, an option and its value per line.
    Shell,
    /// One argument per line.
    Lines,
    /// libvirt domain XML: `<memoryBacking>` and `<qemu:commandline>`.
    Libvirt,
}

/// The XML namespace of libvirt's `<qemu:commandline>`.
pub const LIBVIRT_QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

impl QemuArgs {
    /// The sockets of the GPUs, absolute.
    pub fn sockets(&self) -> Result<Vec<PathBuf>, ConfigError> {
        let sockets = if !self.socket.is_empty() {
            self.socket.clone()
        } else {
            let mut argv: Vec<String> = vec!["vugpu serve".into()];
            match &self.config {
                Some(c) => argv.extend(["--config".into(), c.to_string_lossy().into_owned()]),
                None => argv.extend(["--gpus".into(), self.gpus.to_string()]),
            }
            let m = serve_command()
                .try_get_matches_from(argv)
                .map_err(|e| ConfigError {
                    location: None,
                    key: None,
                    message: e.to_string(),
                })?;
            resolve(&m)?.gpus.into_iter().map(|(_, s)| s).collect()
        };
        sockets
            .into_iter()
            .map(|s| {
                std::path::absolute(&s).map_err(|e| ConfigError {
                    location: None,
                    key: None,
                    message: format!("{}: {e}", s.display()),
                })
            })
            .collect()
    }

    /// Guest RAM in MiB.
    fn memory_mib(&self) -> Result<u64, ConfigError> {
        let bad = |message: String| ConfigError {
            location: None,
            key: Some("memory".into()),
            message,
        };
        let bytes = parse_size(&self.memory).map_err(bad)?;
        if bytes < 64 << 20 || bytes % (1 << 20) != 0 {
            return Err(bad(format!(
                "'{}' must be a multiple of 1M and at least 64M",
                self.memory
            )));
        }
        Ok(bytes >> 20)
    }

    /// The arguments, one string each.
    pub fn args(&self) -> Result<Vec<String>, ConfigError> {
        let mib = self.memory_mib()?;
        let mut a = vec!["-machine".to_string(), machine_arg(None)];
        a.extend(memory_args(mib, true));
        a.extend(self.device_args()?);
        Ok(a)
    }

    /// The `-device` arguments of the ports and GPUs.
    pub fn device_args(&self) -> Result<Vec<String>, ConfigError> {
        let spec = TopologySpec {
            topology: self.topology,
            gpu_sockets: self
                .sockets()?
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect(),
            peer: Peer::None,
            cmb_mb: 0,
            peer_namespaces: Vec::new(),
        };
        device_args(&spec).map_err(|e| ConfigError {
            location: None,
            key: None,
            message: e.to_string(),
        })
    }

    /// The libvirt domain XML elements: guest RAM a shared memfd (what `-object
    /// memory-backend-memfd,share=on` is on the command line), and the ports and GPUs as
    /// `<qemu:commandline>` arguments (libvirt has no vfio-user device element).
    pub fn libvirt_xml(&self) -> Result<String, ConfigError> {
        let mut x = format!(
            "<!-- vugpu: in <domain type='kvm' xmlns:qemu='{LIBVIRT_QEMU_NS}'> -->\n\
             <memoryBacking>\n  <source type='memfd'/>\n  <access mode='shared'/>\n\
             </memoryBacking>\n<qemu:commandline>\n"
        );
        for w in self.device_args()? {
            x.push_str(&format!("  <qemu:arg value='{}'/>\n", xml_attr(&w)));
        }
        x.push_str("</qemu:commandline>\n");
        Ok(x)
    }

    /// The text to print.
    pub fn render(&self) -> Result<String, ConfigError> {
        Ok(match self.format {
            Format::Libvirt => self.libvirt_xml()?,
            Format::Lines => self.args()?.iter().map(|w| format!("{w}\n")).collect(),
            Format::Shell => {
                let a = self.args()?;
                let lines: Vec<String> = a
                    .chunks(2)
                    .map(|c| c.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" "))
                    .collect();
                format!("{}\n", lines.join(" \\\n"))
            }
        })
    }
}

/// Escapes text for an XML attribute value in single quotes (`"` may stay: the JSON of a
/// `-device` argument remains readable).
fn xml_attr(w: &str) -> String {
    let mut out = String::with_capacity(w.len());
    for c in w.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Quotes a word for a POSIX shell (single quotes unless it only has safe characters).
fn quote(w: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_.,=:/+@%".contains(c);
    if !w.is_empty() && w.chars().all(safe) {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        q: QemuArgs,
    }

    fn parse(args: &[&str]) -> QemuArgs {
        let mut v = vec!["t"];
        v.extend(args);
        T::try_parse_from(v)
            .map(|t| t.q)
            .map_err(|e| e.to_string())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn switch_with_two_gpus() {
        let q = parse(&[
            "--socket",
            "/r/a.sock",
            "--socket",
            "/r/b.sock",
            "--topology",
            "switch",
        ]);
        let a = q.args().unwrap_or_default();
        assert_eq!(
            &a[..6],
            [
                "-machine",
                "q35,memory-backend=mem",
                "-m",
                "2048M",
                "-object",
                "memory-backend-memfd,id=mem,size=2048M,share=on"
            ]
        );
        let spec = TopologySpec {
            topology: Topology::Switch,
            gpu_sockets: vec!["/r/a.sock".into(), "/r/b.sock".into()],
            peer: Peer::None,
            cmb_mb: 0,
            peer_namespaces: Vec::new(),
        };
        assert_eq!(a[6..], device_args(&spec).unwrap_or_default()[..]);
        let text = q.render().unwrap_or_default();
        assert!(
            text.starts_with("-machine q35,memory-backend=mem \\\n-m 2048M \\\n"),
            "{text}"
        );
        assert!(
            text.contains("-device '{\"bus\":\"dn1\",\"driver\":\"vfio-user-pci\",\"id\":\"gpu1\""),
            "{text}"
        );
        assert!(text.ends_with("}'\n"), "{text}");
    }

    #[test]
    fn documented_outputs() {
        let doc = include_str!("../../docs/configuration.md");
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/vugpu.toml");
        let q = parse(&["--config", example, "--topology", "switch"]);
        // The shell form.
        let shown = crate::config_file::tests::fenced(doc, "text")
            .into_iter()
            .find_map(|b| {
                b.strip_prefix("$ vugpu qemu-args --config examples/vugpu.toml --topology switch\n")
                    .map(str::to_string)
            })
            .unwrap_or_default();
        assert_eq!(shown, q.render().unwrap_or_default());
        // The libvirt form: the documented domain has exactly these elements.
        let xml = crate::config_file::tests::fenced(doc, "xml")
            .into_iter()
            .next()
            .unwrap_or_default();
        let doc_lines: Vec<&str> = xml
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("<qemu:") || l.starts_with("</qemu:"))
            .collect();
        let out = q.libvirt_xml().unwrap_or_default();
        let out_lines: Vec<&str> = out
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("<qemu:") || l.starts_with("</qemu:"))
            .collect();
        assert_eq!(doc_lines, out_lines);
        assert_eq!(out_lines.len(), 14, "{out}");
        for l in ["<source type='memfd'/>", "<access mode='shared'/>"] {
            assert!(out.contains(l) && xml.contains(l), "{l}");
        }
        assert!(xml.contains(&format!("xmlns:qemu='{LIBVIRT_QEMU_NS}'")));
        assert!(out.contains(&format!("xmlns:qemu='{LIBVIRT_QEMU_NS}'")));
        assert_eq!(xml_attr("a'b&c<d\"e"), "a&apos;b&amp;c&lt;d\"e");
        let q = parse(&["--socket", "/r/it's.sock", "--format", "libvirt"]);
        assert!(q
            .render()
            .unwrap_or_default()
            .contains(r#""path":"/r/it&apos;s.sock""#));
    }

    #[test]
    fn bad_memory_and_names() {
        assert!(parse(&["--socket", "/a", "--memory", "1000K"])
            .args()
            .is_err());
        assert!(parse(&["--socket", "/a", "--memory", "32M"])
            .args()
            .is_err());
        assert_eq!(
            parse(&["--socket", "/a", "--memory", "1G"])
                .args()
                .unwrap_or_default()[3],
            "1024M"
        );
        let t = T::try_parse_from(["t", "--socket", "/a", "--topology", "ring"]);
        assert!(t.is_err());
        let t = T::try_parse_from(["t", "--socket", "/a", "--config", "/c.toml"]);
        assert!(t.is_err(), "--socket and --config exclude each other");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote(""), "''");
    }
}
