//! Files the daemon writes as root: ledgers and status dumps, beside the control socket,
//! whose directory is configurable.

use std::io::Write as _;
use std::path::Path;

/// Writes `contents` to `path` (the ledgers, the SIGUSR1/SIGUSR2 status dumps): mode 0600,
/// through a temporary file created anew beside it (never following a symlink or opening
/// an existing file) and renamed over `path`, so a reader sees the old file or the new one
/// whole, and a symlink planted at `path` is replaced, not written through.
pub fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or(std::io::ErrorKind::InvalidInput)?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    std::fs::create_dir_all(dir)?;
    // Left by a crashed dump of a process with this pid: ours to remove.
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        // No fsync: what these files record (VIPs, IPVS services) does not outlive a reboot,
        // and the rename is atomic against a crash of the process; a VIP ledger on a disk
        // would pay one per address while becoming MASTER.
        f.write_all(contents.as_bytes())?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
