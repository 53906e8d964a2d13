//! The trixie root: a debootstrapped Debian tree that holds QEMU (when the host's is too old), the
//! guest kernel with its headers and compiler, busybox-static and the build tools.
//!
//! Commands run inside it through `unshare --mount --propagation private`, which gives each
//! command a private mount namespace: `/proc`, `/sys` and an rbind of `/dev` are mounted there and
//! vanish with the namespace, so nothing is ever left mounted on the host. Run directories live in
//! the tree (`ROOT/run/vugpu-*`), so sockets created by host processes are reachable from inside
//! without bind mounts.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Mounts the pseudo file systems in the fresh namespace, bind-mounts the `N` (host file,
/// target under the root) pairs that follow the root (`--attach` sockets outside the root), then
/// chroots with a clean environment.
const ENTER: &str = r#"set -e
r=$1; n=$2; shift 2
mount -t proc proc "$r/proc"
mount -t sysfs sysfs "$r/sys"
mount --rbind /dev "$r/dev"
while [ "$n" -gt 0 ]; do mount --bind "$1" "$r$2"; shift 2; n=$((n - 1)); done
exec chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
"#;

/// PATH for the host side of these commands (`unshare`, `mount`, `chroot`, `debootstrap` live in
/// sbin directories that a non-login root shell may not have on its PATH).
pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A root tree on the host.
#[derive(Clone, Debug)]
pub struct Root {
    path: PathBuf,
}

impl Root {
    /// A root at `path` (not checked).
    pub fn new(path: PathBuf) -> Self {
        Root { path }
    }

    /// The tree's location on the host.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command that runs `argv` inside the root, in a private mount namespace.
    pub fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Command {
        self.command_with_binds(argv, &[])
    }

    /// As [`Root::command`], with each (host file, absolute path inside the root) of `binds`
    /// bind-mounted in the command's namespace first (the target file must exist). Used for a
    /// UNIX socket outside the root: connect() reaches the socket through the bind mount.
    pub fn command_with_binds<S: AsRef<OsStr>>(
        &self,
        argv: &[S],
        binds: &[(PathBuf, String)],
    ) -> Command {
        let mut c = Command::new("unshare");
        c.env("PATH", SYSTEM_PATH)
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                ENTER,
                "sh",
            ])
            .arg(&self.path)
            .arg(binds.len().to_string());
        for (host, inner) in binds {
            c.arg(host).arg(inner);
        }
        c.args(argv);
        c
    }

    /// Host path of an absolute path inside the root.
    pub fn host_path(&self, inner: &str) -> PathBuf {
        self.path.join(inner.trim_start_matches('/'))
    }

    /// The path inside the root of a host path under it.
    pub fn inner_path(&self, host: &Path) -> Option<String> {
        let rel = host.strip_prefix(&self.path).ok()?;
        let s = rel.to_str()?;
        Some(format!("/{s}"))
    }
}

/// Runs `argv` on the host in a private mount namespace (used for debootstrap, which mounts
/// /proc and /sys inside its target while it works).
pub fn private_namespace_command<S: AsRef<OsStr>>(argv: &[S]) -> Command {
    let mut c = Command::new("unshare");
    c.env("PATH", SYSTEM_PATH)
        .args(["--mount", "--propagation", "private", "--"])
        .args(argv);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_both_ways() {
        let r = Root::new(PathBuf::from("/var/cache/vugpu/root"));
        let h = r.host_path("/run/vugpu-1/gpu0.sock");
        assert_eq!(
            h,
            PathBuf::from("/var/cache/vugpu/root/run/vugpu-1/gpu0.sock")
        );
        assert_eq!(r.inner_path(&h).as_deref(), Some("/run/vugpu-1/gpu0.sock"));
        assert_eq!(r.inner_path(Path::new("/tmp/x")), None);
    }

    #[test]
    fn command_wraps_in_namespace_and_chroot() {
        let r = Root::new(PathBuf::from("/r"));
        let c = r.command(&["apt-get", "update"]);
        assert_eq!(c.get_program(), "unshare");
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(&args[..4], ["--mount", "--propagation", "private", "--"]);
        assert_eq!(&args[args.len() - 4..], ["/r", "0", "apt-get", "update"]);
        let c = r.command_with_binds(
            &["qemu-system-x86_64"],
            &[(
                PathBuf::from("/tmp/s/gpu0.sock"),
                "/run/v-1/attach0.sock".into(),
            )],
        );
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            &args[args.len() - 5..],
            [
                "/r",
                "1",
                "/tmp/s/gpu0.sock",
                "/run/v-1/attach0.sock",
                "qemu-system-x86_64"
            ]
        );
    }

    #[test]
    fn bind_mounts_happen_in_the_namespace() {
        // The script itself, with `mount` and `chroot` replaced by echo: the pairs are consumed
        // before the command.
        let script = ENTER
            .replace("mount ", "echo mount ")
            .replace("exec chroot", "echo chroot");
        let out = Command::new("sh")
            .args([
                "-c", &script, "sh", "/r", "2", "/a", "/x", "/b", "/y", "cmd", "arg",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("mount --bind /a /r/x\n"), "{text}");
        assert!(text.contains("mount --bind /b /r/y\n"), "{text}");
        assert!(text.trim_end().ends_with("cmd arg"), "{text}");
    }
}
