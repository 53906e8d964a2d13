//! `vugpu serve --config FILE.toml`: every `serve` option in a TOML file, for the whole process
//! and per GPU, merged with the command line.
//!
//! Keys are the long option names of `vugpu serve` (`vram = "1G"`, `max-dma-fds = 64`,
//! `inject = ["msix-dead=3"]`, `err-irq = true`). Top-level keys apply to every GPU; each
//! `[[gpu]]` table is one GPU with its own settings (`socket`, `vram`, `engines`, `device-id`,
//! `inject`, ...). Precedence, highest first: **command line > `[[gpu]]` table > top level of the
//! file > built-in default**. A more specific source replaces a value, lists included (a table's
//! `inject` replaces the top-level list; a command-line `--inject` replaces both). Options that
//! belong to the whole process (logging, the vfio-user session limits, the control socket, the
//! DMA payload layout, `socket-dir`, `gpus`, `socket-mode`) are top-level keys only.
//!
//! Every value goes through the option's own command-line parser (clap's value parser of the
//! `serve` argument), so the file accepts exactly what the flag does; [`KEYS`] adds each key's
//! TOML type and scope, and a test checks it against the options `serve` has. Relative paths in
//! the file are relative to the file's directory. Every error names the file, the line and
//! column, and the key (`vugpu.toml:7:8: `vram`: ...`); `vugpu serve` exits 2 on them.
//!
//! Sockets: `--socket` (repeatable) or `--socket-dir DIR` on the command line, else a table's
//! `socket`, else the top-level `socket` list or `socket-dir`, else [`default_socket_dir`]
//! (`$XDG_RUNTIME_DIR/vugpu`, else `/run/vugpu`) with `gpu0.sock`, `gpu1.sock`, ... The number of
//! GPUs: the `[[gpu]]` tables, else the sockets given, else `gpus`, else 1; the command line must
//! agree with the file's tables.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::config::{parse_u64, ServeArgs, MAX_GPUS};
use crate::gpu::GpuConfig;

/// TOML type a key takes (what the file may write; the value then goes through the flag's parser).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// An integer.
    Int,
    /// A size: `"256M"` or an integer number of bytes.
    Size,
    /// A 16-bit ID: `"0x10de"` or an integer (`0x10de` in TOML).
    Hex,
    /// A 64-bit number: an integer or a string (`"0x..."`).
    IntOrString,
    /// A file mode: `"0660"` or an octal integer (`0o660`).
    Octal,
    /// A name from a fixed list (a string).
    Name,
    /// A path (a string; relative to the file's directory).
    Path,
    /// A boolean (`true` sets the flag).
    Flag,
    /// An array of strings (a repeatable flag).
    List,
    /// Top level: an array of paths; in a `[[gpu]]` table: one path.
    Sockets,
}

/// Where a key may appear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// Top level only: it belongs to the whole process.
    Process,
    /// Top level (every GPU) or a `[[gpu]]` table (that GPU).
    Gpu,
}

/// The keys of the file: every option of `vugpu serve` except `--config` (a test checks it).
const KEYS: &[(&str, Kind, Scope)] = &[
    ("socket", Kind::Sockets, Scope::Gpu),
    ("socket-dir", Kind::Path, Scope::Process),
    ("gpus", Kind::Int, Scope::Process),
    ("socket-mode", Kind::Octal, Scope::Process),
    ("vram", Kind::Size, Scope::Gpu),
    ("vram-file", Kind::Path, Scope::Gpu),
    ("msix-vectors", Kind::Int, Scope::Gpu),
    ("vendor-id", Kind::Hex, Scope::Gpu),
    ("device-id", Kind::Hex, Scope::Gpu),
    ("subsystem-vendor-id", Kind::Hex, Scope::Gpu),
    ("subsystem-id", Kind::Hex, Scope::Gpu),
    ("serial", Kind::IntOrString, Scope::Gpu),
    ("engines", Kind::Int, Scope::Gpu),
    ("engine-spin-us", Kind::Int, Scope::Gpu),
    ("engine-poll-us", Kind::Int, Scope::Gpu),
    ("trace", Kind::Path, Scope::Gpu),
    ("err-irq", Kind::Flag, Scope::Gpu),
    ("dma-layout", Kind::Name, Scope::Process),
    ("inject", Kind::List, Scope::Gpu),
    ("log-level", Kind::Name, Scope::Process),
    ("max-dma-maps", Kind::Int, Scope::Process),
    ("max-dma-fds", Kind::Int, Scope::Gpu),
    ("max-dma-bytes", Kind::Size, Scope::Gpu),
    ("max-data-xfer-size", Kind::Size, Scope::Process),
    ("max-msg-fds", Kind::Int, Scope::Process),
    ("trace-max-bytes", Kind::Size, Scope::Gpu),
    ("log-rate-limit", Kind::Int, Scope::Process),
    ("log-burst", Kind::Int, Scope::Process),
    ("ctl-timeout-ms", Kind::Int, Scope::Process),
    ("ctl-max-clients", Kind::Int, Scope::Process),
];

/// Keys that are not passed through to each GPU's options as they are.
const SPECIAL: &[&str] = &["socket", "socket-dir", "gpus", "serial", "config"];

/// The `serve` options as a clap command (what `vugpu serve` parses).
pub fn serve_command() -> clap::Command {
    ServeArgs::augment_args(clap::Command::new("vugpu serve").no_binary_name(false))
}

/// Where sockets go when neither the command line nor the file names them:
/// `$XDG_RUNTIME_DIR/vugpu` when `XDG_RUNTIME_DIR` is an absolute path, else `/run/vugpu`.
pub fn default_socket_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(d) if d.is_absolute() => d.join("vugpu"),
        _ => PathBuf::from("/run/vugpu"),
    }
}

/// A place in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// An error in the configuration (file or command line): a usage error, exit code 2.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Where, when the error is in a file.
    pub location: Option<Location>,
    /// The key (option name), when one is at fault.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.location {
            write!(f, "{l}: ")?;
        }
        if let Some(k) = &self.key {
            write!(f, "`{k}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl ConfigError {
    fn plain(message: impl Into<String>) -> ConfigError {
        ConfigError {
            location: None,
            key: None,
            message: message.into(),
        }
    }
}

/// A value from the file or the command line, as command-line words.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Val {
    /// The flag's values (one for a single-valued option, any number for a repeatable one).
    Words(Vec<String>),
    /// A boolean flag.
    Flag(bool),
}

/// One key of the file.
#[derive(Clone, Debug)]
struct Entry {
    key: String,
    loc: Location,
    val: Val,
}

/// One `[[gpu]]` table.
#[derive(Clone, Debug)]
struct GpuTable {
    loc: Location,
    entries: Vec<Entry>,
}

/// A parsed and validated configuration file.
#[derive(Clone, Debug)]
pub struct FileConfig {
    path: PathBuf,
    global: Vec<Entry>,
    gpus: Vec<GpuTable>,
}

fn locate(file: &Path, text: &str, offset: usize) -> Location {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    Location {
        file: file.to_path_buf(),
        line,
        col,
    }
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn expected(kind: Kind, in_table: bool) -> &'static str {
    match kind {
        Kind::Int => "an integer",
        Kind::Size => "a size (a string such as \"256M\", or an integer number of bytes)",
        Kind::Hex => "a 16-bit ID (a string such as \"0x10de\", or an integer such as 0x10de)",
        Kind::IntOrString => "a number (an integer, or a string such as \"0x10\")",
        Kind::Octal => "a file mode (a string such as \"0660\", or an octal integer such as 0o660)",
        Kind::Name => "a string",
        Kind::Path => "a path (a string)",
        Kind::Flag => "a boolean",
        Kind::List => "an array of strings",
        Kind::Sockets if in_table => "a path (a string)",
        Kind::Sockets => "an array of paths (strings); or set `socket` in each [[gpu]] table",
    }
}

fn integer(v: &DeValue<'_>) -> Option<(i128, u32)> {
    match v {
        DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
            .ok()
            .map(|n| (n, i.radix())),
        _ => None,
    }
}

fn path_word(dir: &Path, s: &str) -> String {
    let p = Path::new(s);
    if p.is_absolute() || s.is_empty() {
        s.to_string()
    } else {
        dir.join(p).to_string_lossy().into_owned()
    }
}

/// The command-line words of a TOML value, or None when its type does not fit `kind`.
fn words(kind: Kind, v: &DeValue<'_>, dir: &Path, in_table: bool) -> Option<Val> {
    let s = match v {
        DeValue::String(s) => Some(s.as_ref()),
        _ => None,
    };
    let one = |w: String| Some(Val::Words(vec![w]));
    match kind {
        Kind::Int => integer(v).and_then(|(n, _)| one(n.to_string())),
        Kind::Size | Kind::IntOrString => match integer(v) {
            Some((n, _)) => one(n.to_string()),
            None => s.and_then(|s| one(s.to_string())),
        },
        Kind::Hex => match integer(v) {
            Some((n, _)) if n < 0 => one(n.to_string()),
            Some((n, _)) => one(format!("{n:#x}")),
            None => s.and_then(|s| one(s.to_string())),
        },
        Kind::Octal => match integer(v) {
            Some((n, 8)) if n >= 0 => one(format!("0o{n:o}")),
            Some(_) => None,
            None => s.and_then(|s| one(s.to_string())),
        },
        Kind::Name => s.and_then(|s| one(s.to_string())),
        Kind::Path => s.and_then(|s| one(path_word(dir, s))),
        Kind::Flag => match v {
            DeValue::Boolean(b) => Some(Val::Flag(*b)),
            _ => None,
        },
        Kind::Sockets if in_table => s.and_then(|s| one(path_word(dir, s))),
        Kind::List | Kind::Sockets => match v {
            DeValue::Array(a) => a
                .iter()
                .map(|e| match e.get_ref() {
                    DeValue::String(s) if kind == Kind::Sockets => Some(path_word(dir, s)),
                    DeValue::String(s) => Some(s.to_string()),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .map(Val::Words),
            _ => None,
        },
    }
}

/// Checks every word with the option's command-line parser; the error is the parser's message.
fn check_with_flag(key: &str, val: &Val) -> Result<(), String> {
    let Val::Words(ws) = val else {
        return Ok(());
    };
    for w in ws {
        // `--key=value`: a value starting with '-' (`msix-vectors = -1`) stays a value.
        let argv = ["vugpu serve".to_string(), format!("--{key}={w}")];
        if let Err(e) = serve_command().try_get_matches_from(argv) {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            return Err(first.strip_prefix("error: ").unwrap_or(first).to_string());
        }
    }
    Ok(())
}

fn known_keys(scope: Option<Scope>) -> String {
    let mut keys: Vec<&str> = KEYS
        .iter()
        .filter(|(_, _, s)| scope.is_none_or(|want| *s == want))
        .map(|(k, _, _)| *k)
        .collect();
    if scope.is_none() {
        keys.push("gpu");
    }
    keys.join(", ")
}

impl FileConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::plain(format!("cannot read config file {}: {e}", path.display()))
        })?;
        FileConfig::parse(path, &text)
    }

    /// Parses `text`, the contents of `path` (named in errors; relative paths in it are relative
    /// to its directory).
    pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let at = |offset: usize| locate(path, text, offset);
        let root = DeTable::parse(text).map_err(|e| ConfigError {
            location: Some(at(e.span().map_or(0, |s| s.start))),
            key: None,
            message: format!("TOML syntax: {}", e.message().trim_end()),
        })?;
        let mut cfg = FileConfig {
            path: path.to_path_buf(),
            global: Vec::new(),
            gpus: Vec::new(),
        };
        for (k, v) in root.get_ref().iter() {
            let key = k.get_ref().as_ref();
            if key == "gpu" {
                let DeValue::Array(tables) = v.get_ref() else {
                    return Err(ConfigError {
                        location: Some(at(v.span().start)),
                        key: Some("gpu".into()),
                        message: format!(
                            "expected [[gpu]] tables (an array of tables), found {}",
                            type_name(v.get_ref())
                        ),
                    });
                };
                for t in tables.iter() {
                    let DeValue::Table(table) = t.get_ref() else {
                        return Err(ConfigError {
                            location: Some(at(t.span().start)),
                            key: Some("gpu".into()),
                            message: format!(
                                "expected a table ([[gpu]]), found {}",
                                type_name(t.get_ref())
                            ),
                        });
                    };
                    let mut entries = Vec::new();
                    for (k, v) in table.iter() {
                        entries.push(entry(k, v, &dir, true, &at)?);
                    }
                    cfg.gpus.push(GpuTable {
                        loc: at(t.span().start),
                        entries,
                    });
                }
                continue;
            }
            cfg.global.push(entry(k, v, &dir, false, &at)?);
        }
        if cfg.gpus.len() > MAX_GPUS {
            return Err(ConfigError {
                location: Some(cfg.gpus[MAX_GPUS].loc.clone()),
                key: Some("gpu".into()),
                message: format!("{} [[gpu]] tables; at most {MAX_GPUS}", cfg.gpus.len()),
            });
        }
        let has = |k: &str| cfg.global.iter().find(|e| e.key == k);
        if let (Some(s), false) = (has("socket"), cfg.gpus.is_empty()) {
            return Err(ConfigError {
                location: Some(s.loc.clone()),
                key: Some("socket".into()),
                message: "a top-level socket list and [[gpu]] tables do not go together: set \
                          `socket` in each [[gpu]] table"
                    .into(),
            });
        }
        if let (Some(_), Some(d)) = (has("socket"), has("socket-dir")) {
            return Err(ConfigError {
                location: Some(d.loc.clone()),
                key: Some("socket-dir".into()),
                message: "`socket` and `socket-dir` do not go together".into(),
            });
        }
        if let (Some(g), false) = (has("gpus"), cfg.gpus.is_empty()) {
            return Err(ConfigError {
                location: Some(g.loc.clone()),
                key: Some("gpus".into()),
                message: "`gpus` and [[gpu]] tables do not go together: the tables are the GPUs"
                    .into(),
            });
        }
        if let (Some(g), Some(s)) = (has("gpus"), has("socket")) {
            if g.val != Val::Words(vec![sockets_len(s).to_string()]) {
                return Err(ConfigError {
                    location: Some(g.loc.clone()),
                    key: Some("gpus".into()),
                    message: format!("`gpus` disagrees with the {} sockets", sockets_len(s)),
                });
            }
        }
        Ok(cfg)
    }

    fn global(&self, key: &str) -> Option<&Entry> {
        self.global.iter().find(|e| e.key == key)
    }
}

fn sockets_len(e: &Entry) -> usize {
    match &e.val {
        Val::Words(w) => w.len(),
        Val::Flag(_) => 0,
    }
}

fn entry(
    k: &Spanned<toml::de::DeString<'_>>,
    v: &Spanned<DeValue<'_>>,
    dir: &Path,
    in_table: bool,
    at: &dyn Fn(usize) -> Location,
) -> Result<Entry, ConfigError> {
    let key = k.get_ref().as_ref();
    let err = |offset: usize, message: String| ConfigError {
        location: Some(at(offset)),
        key: Some(key.to_string()),
        message,
    };
    let Some(&(_, kind, scope)) = KEYS.iter().find(|(name, _, _)| *name == key) else {
        let known = if in_table {
            format!("a [[gpu]] table takes: {}", known_keys(Some(Scope::Gpu)))
        } else {
            format!("known keys: {}", known_keys(None))
        };
        return Err(err(k.span().start, format!("unknown key ({known})")));
    };
    if in_table && scope == Scope::Process {
        return Err(err(
            k.span().start,
            "applies to the whole process: set it at the top level, not in a [[gpu]] table".into(),
        ));
    }
    let val = words(kind, v.get_ref(), dir, in_table).ok_or_else(|| {
        err(
            v.span().start,
            format!(
                "expected {}, found {}",
                expected(kind, in_table),
                type_name(v.get_ref())
            ),
        )
    })?;
    if kind == Kind::Sockets {
        if let Val::Words(ws) = &val {
            if ws.is_empty() || ws.len() > MAX_GPUS || ws.iter().any(|w| w.is_empty()) {
                return Err(err(
                    v.span().start,
                    format!("expected 1 to {MAX_GPUS} socket paths"),
                ));
            }
        }
    } else if key == "gpus" || key == "socket-dir" {
        check_with_flag(key, &val).map_err(|m| err(v.span().start, m))?;
        if key == "gpus" && val == Val::Words(vec!["0".into()]) {
            return Err(err(v.span().start, "at least 1 GPU".into()));
        }
    } else {
        check_with_flag(key, &val).map_err(|m| err(v.span().start, m))?;
    }
    Ok(Entry {
        key: key.to_string(),
        loc: at(k.span().start),
        val,
    })
}

/// Everything `vugpu serve` needs, from the command line and the file.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// (configuration, socket) per GPU, gpu0 first.
    pub gpus: Vec<(GpuConfig, PathBuf)>,
    /// The process-wide options (logging, session and control-socket limits, DMA layout, socket
    /// mode): GPU 0's merged options; they are the same for every GPU.
    pub process: ServeArgs,
    /// The default socket directory, when a socket is in it (create it: [`ensure_private_dir`]).
    pub default_dir: Option<PathBuf>,
}

/// The command-line values of the options set on the command line (not defaults).
fn cli_values(m: &ArgMatches) -> BTreeMap<&'static str, Val> {
    let cmd = serve_command();
    let mut out = BTreeMap::new();
    for &(key, kind, _) in KEYS {
        let Some(arg) = cmd.get_arguments().find(|a| a.get_long() == Some(key)) else {
            continue;
        };
        let id = arg.get_id().as_str();
        if m.value_source(id) != Some(ValueSource::CommandLine) {
            continue;
        }
        let val = if kind == Kind::Flag {
            Val::Flag(true)
        } else {
            Val::Words(
                m.get_raw(id)
                    .map(|r| r.map(|w| w.to_string_lossy().into_owned()).collect())
                    .unwrap_or_default(),
            )
        };
        out.insert(key, val);
    }
    out
}

/// Merges the command line (`matches` of `vugpu serve`, see [`serve_command`]) with the file it
/// names (`--config`), if any, into every GPU's configuration.
pub fn resolve(matches: &ArgMatches) -> Result<Resolved, ConfigError> {
    let cli_args = ServeArgs::from_arg_matches(matches).map_err(|e| {
        ConfigError::plain(
            e.render()
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        )
    })?;
    let file = match &cli_args.config {
        Some(p) => Some(FileConfig::load(p)?),
        None => None,
    };
    resolve_with(matches, file.as_ref())
}

fn word(v: &Val) -> Option<&str> {
    match v {
        Val::Words(w) => w.first().map(String::as_str),
        Val::Flag(_) => None,
    }
}

fn resolve_with(matches: &ArgMatches, file: Option<&FileConfig>) -> Result<Resolved, ConfigError> {
    let cli = cli_values(matches);
    let tables: &[GpuTable] = file.map_or(&[], |f| &f.gpus);
    let fglobal = |k: &str| file.and_then(|f| f.global(k));
    let file_name = file.map(|f| f.path.display().to_string());
    let in_file = |what: &str| match &file_name {
        Some(f) => format!("{what} in {f}"),
        None => what.to_string(),
    };
    let cli_sockets = cli.get("socket").map(|v| match v {
        Val::Words(w) => w.iter().map(PathBuf::from).collect::<Vec<_>>(),
        Val::Flag(_) => Vec::new(),
    });
    let cli_gpus = cli
        .get("gpus")
        .and_then(word)
        .and_then(|w| w.parse::<usize>().ok());
    let cli_dir = cli.get("socket-dir").and_then(word).map(PathBuf::from);
    // The number of GPUs.
    let n = if let Some(s) = &cli_sockets {
        if !tables.is_empty() && s.len() != tables.len() {
            return Err(ConfigError::plain(format!(
                "{} --socket given for {}",
                s.len(),
                in_file(&format!("{} [[gpu]] tables", tables.len()))
            )));
        }
        if cli_gpus.is_some_and(|g| g != s.len()) {
            return Err(ConfigError::plain(format!(
                "--gpus {} disagrees with the {} --socket",
                cli_gpus.unwrap_or_default(),
                s.len()
            )));
        }
        s.len()
    } else if let Some(g) = cli_gpus {
        if !tables.is_empty() && g != tables.len() {
            return Err(ConfigError::plain(format!(
                "--gpus {g} disagrees with {}",
                in_file(&format!("the {} [[gpu]] tables", tables.len()))
            )));
        }
        if let (Some(s), None) = (fglobal("socket"), &cli_dir) {
            if sockets_len(s) != g {
                return Err(ConfigError {
                    location: Some(s.loc.clone()),
                    key: Some("socket".into()),
                    message: format!("--gpus {g} disagrees with the {} sockets", sockets_len(s)),
                });
            }
        }
        g
    } else if !tables.is_empty() {
        tables.len()
    } else if let Some(s) = fglobal("socket") {
        sockets_len(s)
    } else if let Some(g) = fglobal("gpus").and_then(|e| word(&e.val)) {
        g.parse().unwrap_or(1)
    } else {
        1
    };
    if n == 0 || n > MAX_GPUS {
        return Err(ConfigError::plain(format!(
            "serve 1 to {MAX_GPUS} GPUs, not {n}"
        )));
    }
    let default_dir = default_socket_dir();
    let mut uses_default = false;
    let mut gpus = Vec::with_capacity(n);
    let mut process = None;
    for k in 0..n {
        let table = tables.get(k);
        let tval = |key: &str| table.and_then(|t| t.entries.iter().find(|e| e.key == key));
        let name = format!("gpu{k}.sock");
        let socket = if let Some(s) = &cli_sockets {
            s[k].clone()
        } else if let Some(d) = &cli_dir {
            d.join(&name)
        } else if let Some(e) = tval("socket") {
            PathBuf::from(word(&e.val).unwrap_or_default())
        } else if let Some(w) = fglobal("socket").and_then(|e| match &e.val {
            Val::Words(w) => w.get(k),
            Val::Flag(_) => None,
        }) {
            PathBuf::from(w)
        } else if let Some(d) = fglobal("socket-dir").and_then(|e| word(&e.val)) {
            Path::new(d).join(&name)
        } else {
            uses_default = true;
            default_dir.join(&name)
        };
        // Merge: the file's top level, then the table, then the command line.
        // Each value with where it came from (None: the command line).
        let mut merged: BTreeMap<&str, (Val, Option<Location>)> = BTreeMap::new();
        let mut table_loc = None;
        for e in file.map_or(&[][..], |f| &f.global[..]) {
            merged.insert(&e.key, (e.val.clone(), Some(e.loc.clone())));
        }
        if let Some(t) = table {
            table_loc = Some(t.loc.clone());
            for e in &t.entries {
                merged.insert(&e.key, (e.val.clone(), Some(e.loc.clone())));
            }
        }
        for (key, v) in &cli {
            merged.insert(key, (v.clone(), None));
        }
        let mut socket_arg = OsString::from("--socket=");
        socket_arg.push(&socket);
        let mut argv: Vec<OsString> = vec!["vugpu serve".into(), socket_arg];
        for (key, (v, _)) in &merged {
            if SPECIAL.contains(key) {
                continue;
            }
            match v {
                Val::Flag(true) => argv.push(format!("--{key}").into()),
                Val::Flag(false) => {}
                Val::Words(ws) => {
                    for w in ws {
                        argv.push(format!("--{key}={w}").into());
                    }
                }
            }
        }
        // An error that names options (`--engines 16 needs --msix-vectors >= 17`) points at the
        // first of them that the file set; else at the GPU's table, if any.
        let gpu_err = |message: String| {
            let named = message
                .match_indices("--")
                .filter_map(|(i, _)| {
                    let rest = &message[i + 2..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_lowercase() || c == '-'))
                        .unwrap_or(rest.len());
                    merged.get_key_value(&rest[..end])
                })
                .find_map(|(key, (_, loc))| loc.clone().map(|l| (key.to_string(), l)));
            match named {
                Some((key, loc)) => ConfigError {
                    location: Some(loc),
                    key: Some(key),
                    message: format!("gpu{k}: {message}"),
                },
                None => ConfigError {
                    location: table_loc.clone(),
                    key: None,
                    message: format!("gpu{k}: {message}"),
                },
            }
        };
        // An error about `key` points at where the file set it, if it did.
        let key_err = |key: &str, message: String| {
            let loc = match key {
                "socket" => tval("socket")
                    .or_else(|| fglobal("socket"))
                    .or_else(|| fglobal("socket-dir"))
                    .filter(|_| cli_sockets.is_none() && cli_dir.is_none())
                    .map(|e| (e.key.clone(), e.loc.clone())),
                _ => merged
                    .get(key)
                    .and_then(|(_, l)| l.clone())
                    .map(|l| (key.to_string(), l)),
            };
            match loc {
                Some((key, l)) => ConfigError {
                    location: Some(l),
                    key: Some(key),
                    message: format!("gpu{k}: {message}"),
                },
                None => gpu_err(message),
            }
        };
        let m = serve_command().try_get_matches_from(&argv).map_err(|e| {
            gpu_err(
                e.render()
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            )
        })?;
        let args = ServeArgs::from_arg_matches(&m).map_err(|e| gpu_err(e.to_string()))?;
        let mut cfg = args.gpu_config().map_err(gpu_err)?;
        cfg.name = format!("gpu{k}");
        // --serial / top-level `serial` is the base (gpuK gets base + K); a table's is exact.
        let serial = if let Some(v) = cli.get("serial") {
            word(v).map(|w| (w.to_string(), true))
        } else if let Some(e) = tval("serial") {
            word(&e.val).map(|w| (w.to_string(), false))
        } else {
            fglobal("serial")
                .and_then(|e| word(&e.val))
                .map(|w| (w.to_string(), true))
        };
        if let Some((w, base)) = serial {
            let s = parse_u64(&w).map_err(gpu_err)?;
            cfg.serial = if base { s.wrapping_add(k as u64) } else { s };
        }
        for (other, (ocfg, osock)) in gpus.iter().enumerate() {
            let ocfg: &GpuConfig = ocfg;
            if *osock == socket {
                return Err(key_err(
                    "socket",
                    format!("socket {} is gpu{other}'s too", socket.display()),
                ));
            }
            if cfg.vram.file.is_some() && ocfg.vram.file == cfg.vram.file {
                return Err(key_err(
                    "vram-file",
                    format!(
                        "vram-file {} backs gpu{other}'s VRAM too; a VRAM file backs one GPU",
                        cfg.vram.file.as_deref().unwrap_or(Path::new("")).display()
                    ),
                ));
            }
            if cfg.trace.is_some() && ocfg.trace == cfg.trace {
                return Err(key_err(
                    "trace",
                    format!(
                        "trace {} is gpu{other}'s trace file too",
                        cfg.trace.as_deref().unwrap_or(Path::new("")).display()
                    ),
                ));
            }
        }
        gpus.push((cfg, socket));
        if process.is_none() {
            process = Some(args);
        }
    }
    let process = process.ok_or_else(|| ConfigError::plain("no GPU"))?;
    Ok(Resolved {
        gpus,
        process,
        default_dir: uses_default.then_some(default_dir),
    })
}

/// Creates `dir` (mode 0700) if it does not exist; an existing one must be a directory of this
/// user that no one else may write to.
pub fn ensure_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create socket directory {}: {e}", dir.display())),
        Err(e) => Err(format!("socket directory {}: {e}", dir.display())),
        Ok(md) => {
            let me = rustix::process::geteuid().as_raw();
            if !md.is_dir() {
                Err(format!(
                    "socket directory {} is not a directory",
                    dir.display()
                ))
            } else if md.uid() != me || md.mode() & 0o022 != 0 {
                Err(format!(
                    "socket directory {} is not private (owner uid {}, mode {:o}): it must be \
                     this user's (uid {me}) and not writable by group or others",
                    dir.display(),
                    md.uid(),
                    md.mode() & 0o7777
                ))
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gpu::DEFAULT_MSIX_VECTORS;
    use crate::pci::dsn::serial_from;

    const FILE: &str = "/etc/vugpu/t.toml";

    fn matches(cli: &[&str]) -> ArgMatches {
        let mut argv = vec!["vugpu serve"];
        argv.extend(cli);
        serve_command()
            .try_get_matches_from(argv)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn run(text: &str, cli: &[&str]) -> Result<Resolved, ConfigError> {
        let f = FileConfig::parse(Path::new(FILE), text)?;
        resolve_with(&matches(cli), Some(&f))
    }

    fn ok(text: &str, cli: &[&str]) -> Resolved {
        run(text, cli).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The error, checked to name `key` and `line`.
    fn err(text: &str, cli: &[&str], key: &str, line: usize) -> String {
        let e = match run(text, cli) {
            Ok(_) => panic!("{text:?} was accepted"),
            Err(e) => e,
        };
        assert_eq!(e.key.as_deref(), Some(key), "{e}");
        assert_eq!(e.location.as_ref().map(|l| l.line), Some(line), "{e}");
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!("{FILE}:{line}:")) && shown.contains(&format!("`{key}`")),
            "{shown}"
        );
        shown
    }

    #[test]
    fn keys_are_the_serve_options() {
        let cmd = serve_command();
        let longs: Vec<&str> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| *l != "config" && *l != "help")
            .collect();
        for l in &longs {
            assert!(
                KEYS.iter().any(|(k, _, _)| k == l),
                "--{l} has no key in config_file::KEYS"
            );
        }
        for (k, kind, _) in KEYS {
            assert!(longs.contains(k), "key {k} is no serve option");
            let arg = cmd.get_arguments().find(|a| a.get_long() == Some(k));
            let is_flag = arg.is_some_and(|a| matches!(a.get_action(), clap::ArgAction::SetTrue));
            assert_eq!(is_flag, *kind == Kind::Flag, "{k}");
            let repeatable = arg.is_some_and(|a| matches!(a.get_action(), clap::ArgAction::Append));
            assert_eq!(
                repeatable,
                matches!(kind, Kind::List | Kind::Sockets),
                "{k}"
            );
        }
    }

    #[test]
    fn every_key_is_applied() {
        let r = ok(
            r#"
socket-mode = "0660"
dma-layout = "qemu-10.2"
log-level = "debug"
max-dma-maps = 100
max-data-xfer-size = "64K"
max-msg-fds = 4
log-rate-limit = 5
log-burst = 6
ctl-timeout-ms = 300
ctl-max-clients = 3
[[gpu]]
socket = "/s/a.sock"
vram = "1G"
vram-file = "vram.img"
msix-vectors = 8
vendor-id = 0x10de
device-id = "0x5648"
subsystem-vendor-id = "1af4"
subsystem-id = 2
serial = "0x10"
engines = 2
engine-spin-us = 0
engine-poll-us = 500
trace = "t.jsonl"
trace-max-bytes = "4M"
err-irq = true
inject = ["msix-dead=7", "mmu-stale-tlb"]
max-dma-fds = 9
max-dma-bytes = "2G"
"#,
            &[],
        );
        let (cfg, sock) = &r.gpus[0];
        assert_eq!(sock, Path::new("/s/a.sock"));
        assert_eq!(cfg.vram.size, 1 << 30);
        assert_eq!(
            cfg.vram.file.as_deref(),
            Some(Path::new("/etc/vugpu/vram.img"))
        );
        assert_eq!(cfg.msix_vectors, 8);
        assert_eq!(cfg.identity.vendor_id, 0x10de);
        assert_eq!(cfg.identity.device_id, 0x5648);
        assert_eq!(cfg.identity.subsystem_vendor_id, 0x1af4);
        assert_eq!(cfg.identity.subsystem_id, 2);
        assert_eq!(cfg.serial, 0x10);
        assert_eq!(cfg.engines, 2);
        assert_eq!(cfg.engine_timing.spin, std::time::Duration::ZERO);
        assert_eq!(
            cfg.engine_timing.max_sleep,
            std::time::Duration::from_micros(500)
        );
        assert_eq!(cfg.trace.as_deref(), Some(Path::new("/etc/vugpu/t.jsonl")));
        assert_eq!(cfg.trace_max_bytes, 4 << 20);
        assert!(cfg.err_irq);
        assert_eq!(cfg.inject.msix_dead, [7]);
        assert!(cfg.inject.mmu.stale_tlb);
        assert_eq!(
            (
                cfg.dma_limits.max_windows,
                cfg.dma_limits.max_fd_windows,
                cfg.dma_limits.max_fd_bytes
            ),
            (100, 9, 2 << 30)
        );
        let p = &r.process;
        assert_eq!(p.socket_mode, 0o660);
        assert_eq!(p.dma_layout, crate::config::DmaLayoutArg::Qemu102);
        assert_eq!(p.log_level, crate::log::Level::Debug);
        let sc = p.server_config();
        assert_eq!(
            (sc.max_dma_maps, sc.max_data_xfer_size, sc.max_msg_fds),
            (100, 64 << 10, 4)
        );
        assert_eq!((p.log_rate_limit, p.log_burst), (5, 6));
        let ctl = p.ctl_limits();
        assert_eq!((ctl.timeout.as_millis(), ctl.max_clients), (300, 3));
        assert_eq!(r.default_dir, None);
    }

    #[test]
    fn precedence_command_line_then_table_then_top_level() {
        let text = r#"
vram = "64M"
engines = 2
inject = ["msix-dead=9"]
serial = 100
[[gpu]]
socket = "a.sock"
engines = 3
[[gpu]]
socket = "b.sock"
vram = "128M"
inject = []
serial = 7
"#;
        let r = ok(text, &[]);
        let (g0, g1) = (&r.gpus[0].0, &r.gpus[1].0);
        assert_eq!((g0.name.as_str(), g1.name.as_str()), ("gpu0", "gpu1"));
        assert_eq!(
            r.gpus[0].1,
            Path::new("/etc/vugpu/a.sock"),
            "relative to the file"
        );
        assert_eq!((g0.vram.size, g1.vram.size), (64 << 20, 128 << 20));
        assert_eq!((g0.engines, g1.engines), (3, 2));
        assert_eq!(g0.inject.msix_dead, [9]);
        assert!(g1.inject.msix_dead.is_empty(), "a table's list replaces");
        assert_eq!(
            (g0.serial, g1.serial),
            (100, 7),
            "top level is a base, a table's exact"
        );
        assert_eq!(g0.msix_vectors, DEFAULT_MSIX_VECTORS, "default");
        // The command line beats both, for every GPU.
        let r = ok(
            text,
            &[
                "--vram",
                "32M",
                "--engines",
                "1",
                "--inject",
                "msix-dead=3",
                "--serial",
                "50",
            ],
        );
        for (k, (g, _)) in r.gpus.iter().enumerate() {
            assert_eq!((g.vram.size, g.engines), (32 << 20, 1));
            assert_eq!(g.inject.msix_dead, [3]);
            assert_eq!(g.serial, 50 + k as u64);
        }
        // Sockets: --socket replaces the tables' (one per table), --socket-dir too.
        let r = ok(text, &["--socket", "/x/0", "--socket", "/x/1"]);
        assert_eq!(r.gpus[1].1, Path::new("/x/1"));
        assert_eq!(r.gpus[1].0.vram.size, 128 << 20, "the table still applies");
        let r = ok(text, &["--socket-dir", "/d"]);
        assert_eq!(r.gpus[1].1, Path::new("/d/gpu1.sock"));
        assert!(run(text, &["--socket", "/x/0"])
            .unwrap_err()
            .message
            .contains("1 --socket given for 2 [[gpu]] tables in /etc/vugpu/t.toml"));
        assert!(run(text, &["--gpus", "3"]).is_err());
        // Defaults: the serial from the socket path, sockets in the default directory.
        let r = ok("", &[]);
        let d = default_socket_dir();
        assert_eq!(r.gpus[0].1, d.join("gpu0.sock"));
        assert_eq!(
            r.gpus[0].0.serial,
            serial_from(&d.join("gpu0.sock").to_string_lossy())
        );
        assert_eq!(r.default_dir, Some(d.clone()));
        assert_eq!(ok("gpus = 3", &[]).gpus[2].1, d.join("gpu2.sock"));
        assert_eq!(ok("gpus = 3", &["--gpus", "2"]).gpus.len(), 2);
        let e = run("socket = [\"/a\", \"/b\"]", &["--gpus", "3"]).unwrap_err();
        assert_eq!(e.location.as_ref().map(|l| l.line), Some(1), "{e}");
        assert!(
            e.to_string()
                .contains("--gpus 3 disagrees with the 2 sockets"),
            "{e}"
        );
        let r = ok(
            "socket = [\"/a\", \"/b\"]",
            &["--gpus", "3", "--socket-dir", "/d"],
        );
        assert_eq!(r.gpus[2].1, Path::new("/d/gpu2.sock"));
        let r = ok("socket-dir = \"run\"\ngpus = 2", &[]);
        assert_eq!(r.gpus[1].1, Path::new("/etc/vugpu/run/gpu1.sock"));
        let r = ok("socket = [\"/a\", \"/b\"]", &[]);
        assert_eq!(r.gpus.len(), 2);
        assert_eq!(r.process.socket_mode, 0o600);
        let r = ok("err-irq = true\n[[gpu]]\nerr-irq = false\n[[gpu]]\n", &[]);
        assert!(!r.gpus[0].0.err_irq && r.gpus[1].0.err_irq);
    }

    #[test]
    fn without_a_file() {
        let r = resolve_with(
            &matches(&["--socket", "/a", "--socket", "/b", "--vram", "1G"]),
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.gpus.len(), 2);
        assert!(r.gpus.iter().all(|(g, _)| g.vram.size == 1 << 30));
        let e = resolve_with(&matches(&["--socket", "/a", "--socket", "/a"]), None).unwrap_err();
        assert!(e.message.contains("gpu0's too"), "{e}");
        let e = resolve_with(&matches(&["--gpus", "2", "--vram-file", "/v"]), None).unwrap_err();
        assert!(
            e.message.contains("vram-file /v backs gpu0's VRAM too"),
            "{e}"
        );
        let e = resolve_with(&matches(&["--socket", "/a", "--engines", "16"]), None).unwrap_err();
        assert_eq!(e.location, None, "{e}");
        assert!(
            e.to_string()
                .contains("--engines 16 needs --msix-vectors >= 17"),
            "{e}"
        );
    }

    #[test]
    fn every_error_names_the_key_and_line() {
        // Unknown keys.
        let e = err("vram = \"64M\"\nvrm = 1\n", &[], "vrm", 2);
        assert!(
            e.contains("unknown key") && e.contains("known keys: socket"),
            "{e}"
        );
        let e = err(
            "[[gpu]]\nsocket = \"/a\"\nlog-levle = \"x\"\n",
            &[],
            "log-levle",
            3,
        );
        assert!(e.contains("a [[gpu]] table takes: socket, vram"), "{e}");
        err("[limits]\nmax-dma-maps = 1\n", &[], "limits", 1);
        // Wrong types, one per kind.
        for (text, key, want) in [
            (
                "msix-vectors = \"16\"",
                "msix-vectors",
                "expected an integer, found a string",
            ),
            ("vram = 1.5", "vram", "expected a size"),
            ("device-id = true", "device-id", "expected a 16-bit ID"),
            ("serial = [1]", "serial", "expected a number"),
            (
                "socket-mode = 660",
                "socket-mode",
                "octal integer such as 0o660",
            ),
            (
                "log-level = 3",
                "log-level",
                "expected a string, found an integer",
            ),
            ("trace = 1", "trace", "expected a path"),
            (
                "err-irq = \"yes\"",
                "err-irq",
                "expected a boolean, found a string",
            ),
            (
                "inject = \"msix-dead=1\"",
                "inject",
                "expected an array of strings",
            ),
            ("inject = [1]", "inject", "expected an array of strings"),
            ("socket = \"/a\"", "socket", "expected an array of paths"),
            ("gpu = 1", "gpu", "expected [[gpu]] tables"),
            ("engines = 1979-05-27", "engines", "found a datetime"),
        ] {
            let e = err(&format!("\n{text}\n"), &[], key, 2);
            assert!(e.contains(want), "{text}: {e}");
        }
        let e = err("[[gpu]]\nsocket = [\"/a\"]\n", &[], "socket", 2);
        assert!(
            e.contains("expected a path (a string), found an array"),
            "{e}"
        );
        // Bad values: the flag's own parser speaks.
        for (text, key, want) in [
            ("vram = \"3M\"", "vram", "must be a power of two"),
            ("vram = 1000", "vram", "must be a power of two"),
            (
                "msix-vectors = 0",
                "msix-vectors",
                "invalid value '0' for '--msix-vectors <N>'",
            ),
            ("msix-vectors = -1", "msix-vectors", "invalid value '-1'"),
            ("engines = 17", "engines", "at most 16 DMA engines"),
            (
                "vendor-id = 0x12345",
                "vendor-id",
                "is not a 16-bit hex value",
            ),
            ("vendor-id = -1", "vendor-id", "is not a 16-bit hex value"),
            ("log-level = \"loud\"", "log-level", "invalid value 'loud'"),
            (
                "dma-layout = \"qemu\"",
                "dma-layout",
                "invalid value 'qemu'",
            ),
            (
                "inject = [\"msix-dead=1\", \"bogus\"]",
                "inject",
                "unknown fault 'bogus'",
            ),
            (
                "socket-mode = \"0400\"",
                "socket-mode",
                "read and write for the owner",
            ),
            (
                "max-data-xfer-size = \"1K\"",
                "max-data-xfer-size",
                "between 4K and 64M",
            ),
            (
                "ctl-max-clients = 0",
                "ctl-max-clients",
                "not a number of clients",
            ),
            ("gpus = 17", "gpus", "invalid value '17'"),
            ("gpus = 0", "gpus", "invalid value '0'"),
            ("socket = []", "socket", "expected 1 to 16 socket paths"),
        ] {
            let e = err(&format!("\n{text}\n"), &[], key, 2);
            assert!(e.contains(want), "{text}: {e}");
        }
        // Scope: a process-wide key in a table.
        let e = err(
            "[[gpu]]\nsocket = \"/a\"\nlog-level = \"debug\"\n",
            &[],
            "log-level",
            3,
        );
        assert!(e.contains("applies to the whole process"), "{e}");
        // Keys that exclude each other.
        err("socket = [\"/a\"]\n[[gpu]]\n", &[], "socket", 1);
        err(
            "socket = [\"/a\"]\nsocket-dir = \"/d\"\n",
            &[],
            "socket-dir",
            2,
        );
        err("gpus = 2\n[[gpu]]\n", &[], "gpus", 1);
        err("gpus = 2\nsocket = [\"/a\"]\n", &[], "gpus", 1);
        // Errors between options point at the option the file set.
        let e = err(
            "msix-vectors = 4\n\n[[gpu]]\nengines = 4\n",
            &[],
            "engines",
            4,
        );
        assert!(
            e.contains("gpu0: --engines 4 needs --msix-vectors >= 5"),
            "{e}"
        );
        let e = err(
            "inject = [\"msix-dead=20\"]\n[[gpu]]\n[[gpu]]\n",
            &[],
            "inject",
            1,
        );
        assert!(e.contains("gpu0:"), "{e}");
        let e = err(
            "[[gpu]]\nvram-file = \"/v\"\n[[gpu]]\nvram-file = \"/v\"\n",
            &[],
            "vram-file",
            4,
        );
        assert!(
            e.contains("gpu1: vram-file /v backs gpu0's VRAM too"),
            "{e}"
        );
        err(
            "[[gpu]]\nsocket = \"/a\"\n[[gpu]]\nsocket = \"/a\"\n",
            &[],
            "socket",
            4,
        );
        // TOML syntax: the line, no key.
        let e = run("vram = \"64M\"\nengines = \n", &[]).unwrap_err();
        assert_eq!(e.location.as_ref().map(|l| l.line), Some(2), "{e}");
        assert!(e.to_string().contains("TOML syntax"), "{e}");
        let e = run("vram = 1\nvram = 2\n", &[]).unwrap_err();
        assert_eq!(
            e.location.as_ref().map(|l| l.line),
            Some(2),
            "duplicate key: {e}"
        );
        // Too many tables.
        let many = "[[gpu]]\n".repeat(MAX_GPUS + 1);
        err(&many, &[], "gpu", MAX_GPUS + 1);
    }

    const DOC: &str = include_str!("../../docs/configuration.md");
    const EXAMPLE: &str = include_str!("../../examples/vugpu.toml");
    const TEST_ALL: &str = include_str!("../../scripts/test-all");

    /// The fenced code blocks of `doc` in language `lang`.
    pub(crate) fn fenced(doc: &str, lang: &str) -> Vec<String> {
        let mut blocks = Vec::new();
        let mut cur: Option<String> = None;
        for line in doc.lines() {
            match (&mut cur, line.trim_start().strip_prefix("```")) {
                (None, Some(l)) if l.trim() == lang => cur = Some(String::new()),
                (Some(_), Some(_)) => blocks.extend(cur.take()),
                (Some(b), None) => {
                    b.push_str(line);
                    b.push('\n');
                }
                _ => {}
            }
        }
        blocks
    }

    fn resolve_text(path: &str, text: &str) -> Resolved {
        FileConfig::parse(Path::new(path), text)
            .and_then(|f| resolve_with(&matches(&[]), Some(&f)))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn documented_example_and_keys() {
        let ex = resolve_text("examples/vugpu.toml", EXAMPLE);
        let per_gpu = |f: &dyn Fn(&GpuConfig) -> String| {
            ex.gpus
                .iter()
                .map(|(g, _)| f(g))
                .collect::<Vec<_>>()
                .join(",")
        };
        // What scripts/test-all tells the guest's smoke suite to expect is what the file says.
        let expect = format!(
            "vugpu_smoke.vram_mib={} vugpu_smoke.msix_vectors={} vugpu_smoke.serial={}",
            per_gpu(&|g| (g.vram.size >> 20).to_string()),
            per_gpu(&|g| g.msix_vectors.to_string()),
            per_gpu(&|g| format!("{:#018x}", g.serial)),
        );
        assert_eq!(
            expect,
            "vugpu_smoke.vram_mib=512,128 vugpu_smoke.msix_vectors=16,8 \
             vugpu_smoke.serial=0x5647000000000a00,0x5647000000000a01"
        );
        assert!(
            TEST_ALL.contains(&expect),
            "scripts/test-all lacks {expect}"
        );
        assert!(
            DOC.contains(&expect),
            "docs/configuration.md lacks {expect}"
        );
        assert!(TEST_ALL.contains("--config $REPO/examples/vugpu.toml"));
        assert_eq!(ex.process.socket_mode, 0o660);
        // Every TOML block of the page parses; the first is the example file without comments.
        let blocks = fenced(DOC, "toml");
        assert!(blocks.len() >= 2, "{blocks:?}");
        for (i, b) in blocks.iter().enumerate() {
            let r = resolve_text("docs/configuration.md", b);
            if i == 0 {
                assert_eq!(r.gpus, ex.gpus, "the first block is examples/vugpu.toml");
                assert_eq!(r.process.socket_mode, ex.process.socket_mode);
            }
        }
        // The key table lists every key.
        for (k, _, scope) in KEYS {
            let scope = match scope {
                Scope::Gpu => "GPU",
                Scope::Process => "process",
            };
            let row = DOC
                .lines()
                .find(|l| l.starts_with(&format!("| `{k}` |")))
                .unwrap_or_else(|| panic!("docs/configuration.md has no row for `{k}`"));
            assert!(row.contains(&format!("| {scope} |")), "{row}");
        }
    }

    #[test]
    fn columns_and_missing_file() {
        let e = run("vram =   \"3M\"", &[]).unwrap_err();
        assert_eq!(e.location.map(|l| (l.line, l.col)), Some((1, 10)));
        let e = FileConfig::load(Path::new("/nonexistent/vugpu.toml")).unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot read config file /nonexistent/vugpu.toml"),
            "{e}"
        );
    }

    #[test]
    fn private_dir() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("vugpu-privdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).unwrap_or_else(|e| panic!("{e}"));
        let d = base.join("vugpu");
        assert_eq!(ensure_private_dir(&d), Ok(()));
        let mode = std::fs::metadata(&d)
            .map(|m| m.permissions().mode() & 0o777)
            .ok();
        assert_eq!(mode, Some(0o700));
        assert_eq!(
            ensure_private_dir(&d),
            Ok(()),
            "an existing private one is fine"
        );
        let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777));
        assert!(ensure_private_dir(&d)
            .unwrap_err()
            .contains("is not private"));
        let f = base.join("file");
        let _ = std::fs::write(&f, b"");
        assert!(ensure_private_dir(&f)
            .unwrap_err()
            .contains("not a directory"));
        let _ = std::fs::remove_dir_all(&base);
    }
}
