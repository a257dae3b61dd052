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

/// Reads a file [`write_private_file`] wrote, if it is still one: a regular file (not
/// through a symlink) owned by this process's user and writable by no one else. A ledger
/// tells a restart what to remove (VIPs, IPVS services): in a directory others can write
/// to, a planted one must not. `Ok(None)`: there is none.
pub fn read_private_file(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read as _;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let m = f.metadata()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !m.is_file() || m.uid() != me || m.mode() & 0o022 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "not a regular file of uid {me} writable by its owner only (uid {}, mode {:o}): ignored",
                m.uid(),
                m.mode() & 0o7777
            ),
        ));
    }
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_dump_file_is_private_and_replaces_a_symlink_instead_of_following_it() {
        let dir = std::env::temp_dir().join(format!("hlb-dump-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("victim");
        std::fs::write(&target, "keep").unwrap();
        let path = dir.join("ha-lb.data");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        write_private_file(&path, "status\n").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "status\n");
        // Replaced whole on the next dump; no temporary file left.
        write_private_file(&path, "again\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "again\n");
        let mut names: Vec<_> =
            std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        names.sort();
        assert_eq!(names, ["ha-lb.data", "victim"]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn only_a_private_file_is_read_back() {
        let dir = std::env::temp_dir().join(format!("hlb-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ledger");
        assert_eq!(read_private_file(&path).unwrap(), None);
        write_private_file(&path, "a\n").unwrap();
        assert_eq!(read_private_file(&path).unwrap().as_deref(), Some("a\n"));
        // Writable by others: planted, or tampered with.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(read_private_file(&path).is_err());
        // A symlink to a file of ours is not followed.
        let other = dir.join("other");
        write_private_file(&other, "b\n").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&other, &path).unwrap();
        assert!(read_private_file(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
