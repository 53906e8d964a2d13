//! What a suite declares it needs, read from its script's header, and how the command line is
//! resolved against it.
//!
//! A suite script states its needs in comment lines of the form `# vugpu-vm: KEY VALUE`, anywhere
//! before its first non-comment line:
//!
//! ```text
//! # vugpu-vm: gpus 1+                 GPUs attached: N (exactly), N+ (at least), N-M; boots the least
//! # vugpu-vm: topology any            rootports | switch | root-complex | any (boots rootports)
//! # vugpu-vm: peer none               none | nvme-cmb | any (boots none)
//! # vugpu-vm: memory 2G               least guest RAM (boots this much)
//! # vugpu-vm: kernel-config HMM_MIRROR DEVICE_PRIVATE
//! #                                   options that must be y or m in the guest kernel
//! # vugpu-vm: modules nvme            distro modules the guest needs (packed with their deps)
//! # vugpu-vm: expect-skip NAME [unless CONFIG_X]: REASON
//! #                                   a skip that is expected (NAME: a test path or leaf name,
//! #                                   `*` matches any run of characters); with `unless CONFIG_X`
//! #                                   only on kernels without that option
//! # vugpu-vm: timeout 900            default --timeout (seconds) for this suite
//! # vugpu-vm: server-args --vram 1G   extra `vugpu serve` arguments (an option also given in
//! #                                   --server-args is taken from there)
//! # vugpu-vm: kernel-selftest mm/hmm-tests
//! #                                   tools/testing/selftests/DIR/NAME of the guest kernel's own
//! #                                   source, built static for the guest's /bin
//! # vugpu-vm: hotplug gpus           the guest asks the runner (results-channel lines) to
//! #                                   unplug and re-plug GPUs through QMP (src/hotplug.rs)
//! # vugpu-vm: kernel-test-module lib/test_hmm
//! #                                   DIR/NAME.c of the guest kernel's source built out of tree
//! #                                   against it, for the guest's /lib/modules
//! ```
//!
//! `vugpu-vm --suite NAME` with no other option boots what the suite declares; an explicit
//! option overrides the default but must satisfy the declaration (else a usage error). Every
//! skip the KTAP reports that no `expect-skip` line covers fails the run (exit 5).

use std::fmt;
use std::path::Path;

use crate::kernel::KernelConfig;
use crate::topology::{Peer, Topology, MAX_GPUS};

/// Comment prefix of a declaration line.
pub const PREFIX: &str = "# vugpu-vm:";

/// How many GPUs a suite needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuRange {
    /// Fewest (and the default).
    pub min: u16,
    /// Most.
    pub max: u16,
}

impl fmt::Display for GpuRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else if usize::from(self.max) == MAX_GPUS {
            write!(f, "{}+", self.min)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

/// A skip the suite expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedSkip {
    /// Test path or leaf name pattern (`*` wildcard).
    pub pattern: String,
    /// `CONFIG_X`: the skip is expected only on kernels without it.
    pub unless: Option<String>,
    /// Why the test skips.
    pub reason: String,
}

impl ExpectedSkip {
    /// Whether this expectation applies on a kernel with `config`.
    pub fn applies(&self, config: &KernelConfig) -> bool {
        match &self.unless {
            None => true,
            Some(opt) => !config_enabled(config, opt),
        }
    }

    /// Whether it covers the test at `path` (`parent/child`).
    pub fn matches(&self, path: &str) -> bool {
        let leaf = path.rsplit('/').next().unwrap_or(path);
        glob(&self.pattern, path) || glob(&self.pattern, leaf)
    }
}

/// Whether `CONFIG_X` (or `X`) is y or m.
pub fn config_enabled(config: &KernelConfig, opt: &str) -> bool {
    let name = opt.strip_prefix("CONFIG_").unwrap_or(opt);
    matches!(config.get(name), Some("y") | Some("m"))
}

/// `*` matches any run of characters; everything else matches itself. (Not a glob crate: those
/// also give `?`, `[` and `/` meaning, and KTAP test names are free text.)
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// A suite's declaration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuiteSpec {
    /// Suite name.
    pub name: String,
    /// GPUs.
    pub gpus: GpuRange,
    /// Required topology (None: any).
    pub topology: Option<Topology>,
    /// Required peer (None: any).
    pub peer: Option<Peer>,
    /// Least guest RAM, MiB.
    pub memory_mib: Option<u64>,
    /// Kernel options that must be y or m (without `CONFIG_`).
    pub kernel_config: Vec<String>,
    /// Distro modules the guest needs.
    pub modules: Vec<String>,
    /// Skips that are expected.
    pub expected_skips: Vec<ExpectedSkip>,
    /// Extra `vugpu serve` arguments.
    pub server_args: Vec<String>,
    /// Default boot bound, seconds.
    pub timeout_s: Option<u64>,
    /// The guest kernel's own tests to build.
    pub kernel_tests: crate::kselftest::Wanted,
    /// `hotplug gpus`: the guest asks the runner to unplug and re-plug GPUs through QMP
    /// (src/hotplug.rs).
    pub hotplug: bool,
}

/// A declaration that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {msg}")]
pub struct SpecError {
    /// Suite file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

fn parse_gpus(v: &str) -> Result<GpuRange, String> {
    let max_all = u16::try_from(MAX_GPUS).unwrap_or(u16::MAX);
    let num = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| *n <= max_all)
            .ok_or_else(|| format!("bad GPU count {s:?} (0-{MAX_GPUS})"))
    };
    let r = if let Some(n) = v.strip_suffix('+') {
        GpuRange {
            min: num(n)?,
            max: max_all,
        }
    } else if let Some((a, b)) = v.split_once('-') {
        GpuRange {
            min: num(a)?,
            max: num(b)?,
        }
    } else {
        let n = num(v)?;
        GpuRange { min: n, max: n }
    };
    if r.min > r.max {
        return Err(format!("empty GPU range {v:?}"));
    }
    Ok(r)
}

fn parse_enum<T: clap::ValueEnum>(v: &str, what: &str) -> Result<Option<T>, String> {
    if v == "any" {
        return Ok(None);
    }
    T::from_str(v, false)
        .map(Some)
        .map_err(|_| format!("unknown {what} {v:?}"))
}

fn parse_skip(v: &str) -> Result<ExpectedSkip, String> {
    let (head, reason) = v.split_once(':').ok_or_else(|| {
        format!("expect-skip needs \"NAME [unless CONFIG_X]: REASON\", got {v:?}")
    })?;
    let reason = reason.trim();
    if reason.is_empty() {
        return Err("expect-skip needs a reason after ':'".into());
    }
    let words: Vec<&str> = head.split_whitespace().collect();
    let (pattern, unless) = match words.as_slice() {
        [p] => (p.to_string(), None),
        [p, "unless", c] if c.starts_with("CONFIG_") => (p.to_string(), Some(c.to_string())),
        _ => {
            return Err(format!(
            "expect-skip: expected \"NAME\" or \"NAME unless CONFIG_X\" before ':', got {head:?}"
        ))
        }
    };
    Ok(ExpectedSkip {
        pattern,
        unless,
        reason: reason.to_string(),
    })
}

impl SuiteSpec {
    /// Parses the declaration lines of a suite script.
    pub fn parse(name: &str, file: &str, text: &str) -> Result<Self, SpecError> {
        let mut spec = SuiteSpec {
            name: name.to_string(),
            gpus: GpuRange { min: 0, max: 0 },
            topology: None,
            peer: None,
            memory_mib: None,
            kernel_config: Vec::new(),
            modules: Vec::new(),
            expected_skips: Vec::new(),
            server_args: Vec::new(),
            timeout_s: None,
            kernel_tests: crate::kselftest::Wanted::default(),
            hotplug: false,
        };
        let mut gpus_seen = false;
        for (i, line) in text.lines().enumerate() {
            let err = |msg: String| SpecError {
                file: file.to_string(),
                line: i + 1,
                msg,
            };
            let t = line.trim();
            if t.is_empty() || t.starts_with("#!") {
                continue;
            }
            if !t.starts_with('#') {
                break;
            }
            let Some(decl) = t.strip_prefix(PREFIX) else {
                continue;
            };
            let decl = decl.trim();
            let (key, value) = decl.split_once(char::is_whitespace).unwrap_or((decl, ""));
            let value = value.trim();
            if value.is_empty() {
                return Err(err(format!("{key}: missing value")));
            }
            match key {
                "gpus" => {
                    spec.gpus = parse_gpus(value).map_err(err)?;
                    gpus_seen = true;
                }
                "topology" => spec.topology = parse_enum(value, "topology").map_err(err)?,
                "peer" => spec.peer = parse_enum(value, "peer").map_err(err)?,
                "memory" => {
                    spec.memory_mib = Some(crate::qemu::parse_memory_mib(value).map_err(err)?)
                }
                "kernel-config" => spec.kernel_config.extend(
                    value
                        .split_whitespace()
                        .map(|o| o.strip_prefix("CONFIG_").unwrap_or(o).to_string()),
                ),
                "modules" => spec
                    .modules
                    .extend(value.split([' ', ',']).filter(|m| !m.is_empty()).map(String::from)),
                "expect-skip" => spec.expected_skips.push(parse_skip(value).map_err(err)?),
                "timeout" => {
                    spec.timeout_s = Some(
                        value
                            .parse::<u64>()
                            .ok()
                            .filter(|t| (1..=86400).contains(t))
                            .ok_or_else(|| err(format!("timeout: {value:?} is not 1-86400 seconds")))?,
                    )
                }
                "hotplug" => {
                    if value != "gpus" {
                        return Err(err(format!("hotplug: {value:?} (only `hotplug gpus`)")));
                    }
                    spec.hotplug = true;
                }
                "server-args" => spec.server_args.extend(
                    crate::cli::split_words(value)
                        .map_err(|e| err(format!("server-args: {e}")))?,
                ),
                "kernel-selftest" | "kernel-test-module" => {
                    for w in value.split_whitespace() {
                        let ok = w.contains('/')
                            && !w.starts_with('/')
                            && !w.split('/').any(|c| c.is_empty() || c == "..")
                            && w.chars().all(|c| {
                                c.is_ascii_alphanumeric() || "/_-.".contains(c)
                            });
                        if !ok {
                            return Err(err(format!(
                                "{key}: {w:?} is not a DIR/NAME path inside the kernel source"
                            )));
                        }
                        if key == "kernel-selftest" {
                            spec.kernel_tests.selftests.push(w.to_string());
                        } else {
                            spec.kernel_tests.modules.push(w.to_string());
                        }
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown key {other:?} (gpus, topology, peer, memory, kernel-config, modules, expect-skip, timeout, server-args, kernel-selftest, kernel-test-module, hotplug)"
                    )))
                }
            }
        }
        if !gpus_seen {
            return Err(SpecError {
                file: file.to_string(),
                line: 1,
                msg: format!("suite {name} declares no `{PREFIX} gpus N` line"),
            });
        }
        Ok(spec)
    }

    /// Reads `DIR/suites/NAME.sh`.
    pub fn load(tests: &Path, name: &str) -> Result<Self, SpecError> {
        let path = tests.join("suites").join(format!("{name}.sh"));
        let file = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| SpecError {
            file: file.clone(),
            line: 0,
            msg: e.to_string(),
        })?;
        Self::parse(name, &file, &text)
    }

    /// The boot settings: the command line's where given (checked), the declaration's otherwise.
    pub fn resolve(&self, cli: &Requested) -> Result<Resolved, String> {
        let gpus = cli.gpus.unwrap_or(self.gpus.min);
        if gpus < self.gpus.min || gpus > self.gpus.max {
            return Err(format!(
                "suite {} needs {} GPU(s) (its `{PREFIX} gpus` line); --gpus {gpus} does not fit",
                self.name, self.gpus
            ));
        }
        let topology = match (cli.topology, self.topology) {
            (Some(t), Some(need)) if t != need => {
                return Err(format!(
                    "suite {} needs topology {need}; --topology {t} does not fit",
                    self.name
                ))
            }
            (Some(t), _) => t,
            (None, need) => need.unwrap_or_default(),
        };
        let peer = match (cli.peer, self.peer) {
            (Some(p), Some(need)) if p != need => {
                return Err(format!(
                    "suite {} needs peer {need}; --peer {p} does not fit",
                    self.name
                ))
            }
            (Some(p), _) => p,
            (None, need) => need.unwrap_or_default(),
        };
        let memory_mib = match (cli.memory_mib, self.memory_mib) {
            (Some(m), Some(need)) if m < need => {
                return Err(format!(
                    "suite {} needs at least {need} MiB of guest RAM; --memory gives {m} MiB",
                    self.name
                ))
            }
            (Some(m), _) => m,
            (None, need) => need.unwrap_or(DEFAULT_MEMORY_MIB),
        };
        Ok(Resolved {
            gpus,
            topology,
            peer,
            memory_mib,
        })
    }

    /// Declared kernel options the kernel lacks.
    pub fn missing_config(&self, config: &KernelConfig) -> Vec<String> {
        self.kernel_config
            .iter()
            .filter(|o| !config_enabled(config, o))
            .map(|o| format!("CONFIG_{o}"))
            .collect()
    }

    /// The expected skips that apply on a kernel with `config`.
    pub fn expected_on(&self, config: &KernelConfig) -> Vec<ExpectedSkip> {
        self.expected_skips
            .iter()
            .filter(|s| s.applies(config))
            .cloned()
            .collect()
    }
}

/// The server arguments of a run: the suite's declared ones, except options the command line
/// gives itself (an option is a word starting with `-` and the words after it up to the next
/// such word; `--x=v` counts as `--x`), then the command line's.
pub fn merge_server_args(declared: &[String], cli: &[String]) -> Vec<String> {
    let opt = |w: &str| w.split('=').next().unwrap_or(w).to_string();
    let given: Vec<String> = cli
        .iter()
        .filter(|w| w.starts_with('-'))
        .map(|w| opt(w))
        .collect();
    let mut out = Vec::new();
    let mut keep = true;
    for w in declared {
        if w.starts_with('-') {
            keep = !given.contains(&opt(w));
        }
        if keep {
            out.push(w.clone());
        }
    }
    out.extend(cli.iter().cloned());
    out
}

/// Guest RAM when neither the command line nor the suite says.
pub const DEFAULT_MEMORY_MIB: u64 = 2048;

/// What the command line asked for explicitly.
#[derive(Clone, Copy, Debug, Default)]
pub struct Requested {
    /// `--gpus`.
    pub gpus: Option<u16>,
    /// `--topology`.
    pub topology: Option<Topology>,
    /// `--peer`.
    pub peer: Option<Peer>,
    /// `--memory`, MiB.
    pub memory_mib: Option<u64>,
}

/// Settings of the boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// GPUs.
    pub gpus: u16,
    /// Topology.
    pub topology: Topology,
    /// Peer.
    pub peer: Peer,
    /// Guest RAM, MiB.
    pub memory_mib: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const DMA: &str = "#!/bin/sh\n# SPDX\n#\n# vugpu-vm: gpus 1+\n# vugpu-vm: topology any\n\
        # vugpu-vm: memory 1G\n# vugpu-vm: kernel-config CONFIG_PCI_MSI HMM_MIRROR\n\
        # vugpu-vm: expect-skip hmm_gup_test unless CONFIG_GUP_TEST: needs GUP_TEST\n\
        # vugpu-vm: expect-skip bench_*: measurement only\n\
        . lib.sh\n# vugpu-vm: gpus 9\n";

    fn cfg(text: &str) -> KernelConfig {
        KernelConfig::parse(text)
    }

    #[test]
    fn parses_every_key_and_stops_at_code() {
        let s = SuiteSpec::parse("dma", "dma.sh", DMA).unwrap();
        assert_eq!(s.gpus, GpuRange { min: 1, max: 16 });
        assert_eq!(s.gpus.to_string(), "1+");
        assert_eq!(s.topology, None);
        assert_eq!(s.memory_mib, Some(1024));
        assert_eq!(s.kernel_config, vec!["PCI_MSI", "HMM_MIRROR"]);
        assert_eq!(s.expected_skips.len(), 2);
        assert_eq!(
            s.expected_skips[0].unless.as_deref(),
            Some("CONFIG_GUP_TEST")
        );
        let p = SuiteSpec::parse(
            "p",
            "p.sh",
            "# vugpu-vm: gpus 2-4\n# vugpu-vm: topology switch\n# vugpu-vm: peer nvme-cmb\n# vugpu-vm: modules nvme, nvme_core\n",
        )
        .unwrap();
        assert_eq!(p.gpus, GpuRange { min: 2, max: 4 });
        assert_eq!(p.topology, Some(Topology::Switch));
        assert_eq!(p.peer, Some(Peer::NvmeCmb));
        assert_eq!(p.modules, vec!["nvme", "nvme_core"]);
    }

    #[test]
    fn hotplug_declaration() {
        let s = SuiteSpec::parse(
            "h",
            "h.sh",
            "# vugpu-vm: gpus 1\n# vugpu-vm: hotplug gpus\n",
        )
        .unwrap();
        assert!(s.hotplug);
        let s = SuiteSpec::parse("d", "d.sh", DMA).unwrap();
        assert!(!s.hotplug);
        let e = SuiteSpec::parse("h", "h.sh", "# vugpu-vm: gpus 1\n# vugpu-vm: hotplug all\n")
            .unwrap_err();
        assert!(e.to_string().contains("only `hotplug gpus`"), "{e}");
    }

    #[test]
    fn server_args_and_kernel_tests() {
        let s = SuiteSpec::parse(
            "hmm",
            "hmm.sh",
            "# vugpu-vm: gpus 2\n# vugpu-vm: server-args --vram 1G --inject 'a b'\n\
             # vugpu-vm: kernel-selftest mm/hmm-tests\n# vugpu-vm: kernel-test-module lib/test_hmm\n",
        )
        .unwrap();
        assert_eq!(s.server_args, vec!["--vram", "1G", "--inject", "a b"]);
        assert_eq!(s.timeout_s, None);
        let t = SuiteSpec::parse("t", "t.sh", "# vugpu-vm: gpus 1\n# vugpu-vm: timeout 900\n");
        assert_eq!(t.unwrap().timeout_s, Some(900));
        assert!(
            SuiteSpec::parse("t", "t.sh", "# vugpu-vm: gpus 1\n# vugpu-vm: timeout 0\n").is_err()
        );
        assert_eq!(s.kernel_tests.selftests, vec!["mm/hmm-tests"]);
        assert_eq!(s.kernel_tests.modules, vec!["lib/test_hmm"]);
        for bad in ["/etc/x", "mm/../x", "hmm", "mm/$(x)"] {
            let text = format!("# vugpu-vm: gpus 1\n# vugpu-vm: kernel-selftest {bad}\n");
            assert!(SuiteSpec::parse("x", "x.sh", &text).is_err(), "{bad}");
        }
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            merge_server_args(&w(&["--vram", "1G", "--engines", "2"]), &w(&["--vram=2G"])),
            w(&["--engines", "2", "--vram=2G"])
        );
        assert_eq!(
            merge_server_args(&w(&["--vram", "1G"]), &w(&["--inject", "x"])),
            w(&["--vram", "1G", "--inject", "x"])
        );
    }

    #[test]
    fn bad_declarations_name_the_line() {
        for (text, line, needle) in [
            ("# vugpu-vm: gpus x\n", 1, "bad GPU count"),
            ("#\n# vugpu-vm: gpus 3-1\n", 2, "empty GPU range"),
            (
                "# vugpu-vm: gpus 1\n# vugpu-vm: topology ring\n",
                2,
                "unknown topology",
            ),
            (
                "# vugpu-vm: gpus 1\n# vugpu-vm: colour red\n",
                2,
                "unknown key",
            ),
            (
                "# vugpu-vm: gpus 1\n# vugpu-vm: expect-skip foo\n",
                2,
                "REASON",
            ),
            (
                "# vugpu-vm: gpus 1\n# vugpu-vm: expect-skip a b: r\n",
                2,
                "unless",
            ),
            (
                "# vugpu-vm: gpus 1\n# vugpu-vm: expect-skip a:  \n",
                2,
                "reason",
            ),
            ("# vugpu-vm: gpus\n", 1, "missing value"),
            ("# vugpu-vm: gpus 1\n# vugpu-vm: memory 1K\n", 2, "memory"),
            ("# nothing\n", 1, "declares no"),
        ] {
            let e = SuiteSpec::parse("s", "s.sh", text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.to_string().contains(needle), "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("s.sh:{line}: ")), "{e}");
        }
    }

    #[test]
    fn resolve_defaults_and_checks_overrides() {
        let s = SuiteSpec::parse("dma", "dma.sh", DMA).unwrap();
        let r = s.resolve(&Requested::default()).unwrap();
        assert_eq!(
            r,
            Resolved {
                gpus: 1,
                topology: Topology::Rootports,
                peer: Peer::None,
                memory_mib: 1024
            }
        );
        let e = s
            .resolve(&Requested {
                gpus: Some(0),
                ..Requested::default()
            })
            .unwrap_err();
        assert!(e.contains("needs 1+ GPU(s)"), "{e}");
        let e = s
            .resolve(&Requested {
                memory_mib: Some(512),
                ..Requested::default()
            })
            .unwrap_err();
        assert!(e.contains("at least 1024 MiB"), "{e}");
        let r = s
            .resolve(&Requested {
                gpus: Some(3),
                topology: Some(Topology::Switch),
                memory_mib: Some(4096),
                ..Requested::default()
            })
            .unwrap();
        assert_eq!(
            (r.gpus, r.topology, r.memory_mib),
            (3, Topology::Switch, 4096)
        );
        let sw = SuiteSpec::parse(
            "p",
            "p.sh",
            "# vugpu-vm: gpus 2\n# vugpu-vm: topology switch\n",
        )
        .unwrap();
        assert_eq!(
            sw.resolve(&Requested::default()).unwrap().topology,
            Topology::Switch
        );
        assert!(sw
            .resolve(&Requested {
                topology: Some(Topology::Rootports),
                ..Requested::default()
            })
            .unwrap_err()
            .contains("needs topology switch"));
        assert!(sw
            .resolve(&Requested {
                gpus: Some(1),
                ..Requested::default()
            })
            .is_err());
    }

    #[test]
    fn expected_skips_depend_on_the_kernel() {
        let s = SuiteSpec::parse("dma", "dma.sh", DMA).unwrap();
        let without = cfg("CONFIG_PCI_MSI=y\n");
        let with = cfg("CONFIG_PCI_MSI=y\nCONFIG_GUP_TEST=y\nCONFIG_HMM_MIRROR=y\n");
        assert_eq!(s.expected_on(&without).len(), 2);
        assert_eq!(s.expected_on(&with).len(), 1);
        assert_eq!(s.missing_config(&without), vec!["CONFIG_HMM_MIRROR"]);
        assert!(s.missing_config(&with).is_empty());
        assert!(config_enabled(
            &cfg("CONFIG_TEST_HMM=m\n"),
            "CONFIG_TEST_HMM"
        ));
        assert!(!config_enabled(
            &cfg("# CONFIG_TEST_HMM is not set\n"),
            "TEST_HMM"
        ));
    }

    #[test]
    fn skip_patterns() {
        let e = |p: &str| ExpectedSkip {
            pattern: p.into(),
            unless: None,
            reason: "r".into(),
        };
        assert!(e("hmm_gup_test").matches("hmm/hmm_gup_test"));
        assert!(e("hmm_gup_test").matches("hmm_gup_test"));
        assert!(!e("hmm_gup_test").matches("hmm_gup_test2"));
        assert!(e("hmm/*").matches("hmm/anything"));
        assert!(!e("hmm/*").matches("other/anything"));
        assert!(e("*coherent*").matches("hmm2/coherent_migrate"));
        assert!(e("a*b*c").matches("aXbYc"));
        assert!(!e("a*b*c").matches("acb"));
        assert!(!e("ab*ba").matches("aba"));
        assert!(e("*").matches("x"));
    }
}
