//! Running external scripts: VRRP `notify*` and `track_script`, real-server `notify_up` /
//! `notify_down`, and `MISC_CHECK`.
//!
//! One way to run them everywhere:
//! - argv is executed directly (no shell), stdin is `/dev/null`, stdout and stderr are
//!   captured up to a bound (the rest is read and thrown away so the child never blocks on
//!   a full pipe);
//! - the child gets its own process group, so a timeout ends the script *and* anything it
//!   started: `SIGTERM` to the group, then `SIGKILL` after a grace period (keepalived does
//!   the same two steps for MISC_CHECK);
//! - an optional `user[:group]` is resolved with `getpwnam_r`/`getgrnam_r` and applied in
//!   the child with `setgid`/`setuid` (supplementary groups are dropped);
//! - everything is async: the caller's task waits, no thread is blocked.
//!
//! Callers decide what an outcome means: MISC_CHECK maps exit codes to health, notify hooks
//! only log failures.

use std::ffi::{CStr, CString, OsStr};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// Default bound on captured stdout and on captured stderr, each.
pub const DEFAULT_OUTPUT_LIMIT: usize = 4096;
/// Default pause between `SIGTERM` and `SIGKILL` on timeout.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);
/// After the child exits, how long to keep reading output a background grandchild may
/// still hold open.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(100);

/// Numeric credentials a script runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
}

/// How to run one script.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Wall-clock limit; on expiry the process group is terminated.
    pub timeout: Duration,
    /// `None`: run as the daemon's own user.
    pub credentials: Option<Credentials>,
    /// Bound on captured stdout and on captured stderr, each.
    pub output_limit: usize,
    /// Pause between `SIGTERM` and `SIGKILL` after a timeout.
    pub kill_grace: Duration,
    /// Why the script must not be started (its configured user does not exist: it is not
    /// run as someone else); [`run`] then returns `SpawnFailed` with this.
    pub refuse: Option<String>,
}

impl RunOptions {
    pub fn with_timeout(timeout: Duration) -> RunOptions {
        RunOptions {
            timeout,
            credentials: None,
            output_limit: DEFAULT_OUTPUT_LIMIT,
            kill_grace: DEFAULT_KILL_GRACE,
            refuse: None,
        }
    }
}

/// How a script ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptOutcome {
    /// The process exited by itself (`code`) or was killed by a signal it did not get
    /// from us (`signal`).
    Exited { code: Option<i32>, signal: Option<i32>, output: Output },
    /// It ran past the timeout; its process group was terminated.
    TimedOut { output: Output },
    /// It could not be started (missing program, bad user, exec failure).
    SpawnFailed(String),
}

impl ScriptOutcome {
    /// Exit code, when it exited normally.
    pub fn code(&self) -> Option<i32> {
        match self {
            ScriptOutcome::Exited { code, .. } => *code,
            _ => None,
        }
    }

    pub fn success(&self) -> bool {
        self.code() == Some(0)
    }

    /// Short human-readable description for logs and status.
    pub fn describe(&self) -> String {
        match self {
            ScriptOutcome::Exited { code: Some(c), output, .. } => {
                let err = output.stderr_line();
                if err.is_empty() {
                    format!("exit status {c}")
                } else {
                    format!("exit status {c}: {err}")
                }
            }
            ScriptOutcome::Exited { signal: Some(s), .. } => format!("killed by signal {s}"),
            ScriptOutcome::Exited { .. } => "ended without status".to_string(),
            ScriptOutcome::TimedOut { .. } => "timed out".to_string(),
            ScriptOutcome::SpawnFailed(e) => format!("could not start: {e}"),
        }
    }
}

/// Captured, bounded output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// More was written than `output_limit` on either stream.
    pub truncated: bool,
}

impl Output {
    /// First line of stderr, lossily decoded and trimmed, at most 200 characters.
    pub fn stderr_line(&self) -> String {
        let s = String::from_utf8_lossy(&self.stderr);
        s.lines().next().unwrap_or("").trim().chars().take(200).collect()
    }
}

/// Why a user or group could not be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialsError {
    #[error("no such user {0:?}")]
    NoUser(String),
    #[error("no such group {0:?}")]
    NoGroup(String),
    #[error("bad name {0:?}")]
    BadName(String),
    #[error("looking up {0:?} failed: {1}")]
    Lookup(String, String),
}

/// Resolve `user` and optional `group` (default: the user's primary group) through NSS.
/// Blocking (NSS may read files or ask a directory): call it from `spawn_blocking` or at
/// configuration time.
pub fn resolve_credentials(
    user: &str,
    group: Option<&str>,
) -> Result<Credentials, CredentialsError> {
    let (uid, primary_gid) = lookup_user(user)?;
    let gid = match group {
        Some(g) => lookup_group(g)?,
        None => primary_gid,
    };
    Ok(Credentials { uid, gid })
}

fn lookup_user(name: &str) -> Result<(u32, u32), CredentialsError> {
    // SAFETY: getpwnam_r has the shape nss_lookup calls.
    match nss_lookup(name, |n, e, b, l, r| unsafe { libc::getpwnam_r(n, e, b, l, r) })? {
        Some(pwd) => Ok((pwd.pw_uid, pwd.pw_gid)),
        None => Err(CredentialsError::NoUser(name.into())),
    }
}

fn lookup_group(name: &str) -> Result<u32, CredentialsError> {
    // SAFETY: getgrnam_r has the shape nss_lookup calls.
    match nss_lookup(name, |n, e, b, l, r| unsafe { libc::getgrnam_r(n, e, b, l, r) })? {
        Some(grp) => Ok(grp.gr_gid),
        None => Err(CredentialsError::NoGroup(name.into())),
    }
}

/// A reentrant NSS lookup by name (`getpwnam_r`, `getgrnam_r`: `call(name, entry, buf,
/// buflen, result)`), its buffer grown on ERANGE up to 1 MiB: the entry, or `None` if there
/// is none. `T` is the C struct the call fills (valid all zero); only its numeric fields may
/// be used: its strings point into the buffer, which is gone on return.
fn nss_lookup<T>(
    name: &str,
    call: impl Fn(*const libc::c_char, *mut T, *mut libc::c_char, usize, *mut *mut T) -> libc::c_int,
) -> Result<Option<T>, CredentialsError> {
    let cname = CString::new(name).map_err(|_| CredentialsError::BadName(name.into()))?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: passwd and group are plain data; the call writes into `entry` and `buf`
        // only, and `result` points at `entry` or is null.
        let mut entry: T = unsafe { std::mem::zeroed() };
        let mut result: *mut T = std::ptr::null_mut();
        let rc = call(cname.as_ptr(), &mut entry, buf.as_mut_ptr().cast(), buf.len(), &mut result);
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(CredentialsError::Lookup(
                name.into(),
                std::io::Error::from_raw_os_error(rc).to_string(),
            ));
        }
        return Ok((!result.is_null()).then_some(entry));
    }
}

/// keepalived's default script user when none is configured.
pub const KEEPALIVED_SCRIPT_USER: &str = "keepalived_script";

/// Credentials for a script configured with `user` (`user[:group]` names): those names
/// resolved, or with none, keepalived's rule — the `keepalived_script` user if it exists,
/// else the daemon's own user (`Ok(None)`). Blocking, like [`resolve_credentials`].
pub fn script_credentials(
    user: Option<(&str, Option<&str>)>,
) -> Result<Option<Credentials>, CredentialsError> {
    match user {
        Some((u, g)) => resolve_credentials(u, g).map(Some),
        // Any failure to find it (some NSS modules answer "not found" with ENOENT or EIO, a
        // directory may be down at boot) is "no such user": it is optional.
        None => Ok(resolve_credentials(KEEPALIVED_SCRIPT_USER, None).ok()),
    }
}

/// The directories `execvp` searches for a program named without a `/` when the
/// environment has no PATH (glibc's default).
const DEFAULT_PATH: &str = "/bin:/usr/bin";
/// Searched too when the checking user is not root: a daemon started by systemd or sudo has
/// them in its PATH, an administrator's own shell often does not.
const SBIN_DIRS: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// Where `program` (a script's `argv[0]`) would be executed from, as [`run`] executes it:
/// an absolute path as it is, a bare name through PATH. `Err` says why it could not be
/// started — a relative path (resolved against the daemon's working directory, `/` under
/// systemd: not what was meant), missing, not a regular file, or not executable by
/// `credentials` (`None`: root, as the daemon runs) — in a sentence for a configuration
/// error. keepalived checks the
/// same at load and disables such a script; ha-lb refuses the configuration instead (a
/// tracker that never runs is not a tracker).
pub fn find_program(program: &str, credentials: Option<Credentials>) -> Result<PathBuf, String> {
    let shell_hint = if program.starts_with(['<', '>', '(', '!', '[', '$'])
        || program.contains(['|', ';', '&', '`'])
    {
        " (a shell construct? scripts run without a shell: write `/bin/sh -c '…'`)"
    } else {
        ""
    };
    let creds = credentials.unwrap_or(Credentials { uid: 0, gid: 0 });
    if program.contains('/') {
        if !program.starts_with('/') {
            return Err(format!(
                "{program}: a relative path (scripts start in the daemon's working directory, `/` under systemd): give the absolute path{shell_hint}"
            ));
        }
        let p = PathBuf::from(program);
        return executable_by(&p, creds)
            .map(|()| p)
            .map_err(|e| format!("{program}: {e}{shell_hint}"));
    }
    let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into());
    let mut dirs: Vec<&str> = path.split(':').filter(|d| !d.is_empty()).collect();
    // SAFETY: no arguments, cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        dirs.extend(SBIN_DIRS.iter().filter(|d| !path.split(':').any(|p| p == **d)));
    }
    let mut refused = None;
    for dir in dirs {
        let p = Path::new(dir).join(program);
        match executable_by(&p, creds) {
            Ok(()) => return Ok(p),
            Err(e) if p.exists() && refused.is_none() => {
                refused = Some(format!("{}: {e}", p.display()))
            }
            Err(_) => {}
        }
    }
    Err(refused.unwrap_or_else(|| format!("{program:?} is not in PATH ({path}){shell_hint}")))
}

/// Whether `path` is a regular file `creds` may execute (by its mode bits, as the kernel
/// decides for a process with that uid and gid and no supplementary groups; root needs any
/// execute bit).
fn executable_by(path: &Path, creds: Credentials) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let md = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !md.is_file() {
        return Err("not a regular file".into());
    }
    let mode = md.permissions().mode();
    let ok = if creds.uid == 0 {
        mode & 0o111 != 0
    } else if md.uid() == creds.uid {
        mode & 0o100 != 0
    } else if md.gid() == creds.gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    };
    if ok {
        Ok(())
    } else {
        let who = user_name(creds.uid).unwrap_or_else(|| format!("uid {}", creds.uid));
        Err(format!("not executable by {who} (mode {:o})", mode & 0o7777))
    }
}

/// The name of a uid, for logs (`None` if unknown).
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: as in nss_lookup.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc =
        unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: pw_name points into `buf`, NUL-terminated, valid while `buf` lives.
    Some(unsafe { CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned())
}

/// Run `argv` (program first) with `opts`. Never panics on bad input; an empty argv is a
/// `SpawnFailed`.
pub async fn run<S: AsRef<OsStr>>(argv: &[S], opts: &RunOptions) -> ScriptOutcome {
    let Some((program, args)) = argv.split_first() else {
        return ScriptOutcome::SpawnFailed("empty command".into());
    };
    if let Some(why) = &opts.refuse {
        return ScriptOutcome::SpawnFailed(why.clone());
    }
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if let Some(c) = opts.credentials {
        // Order matters and std gets it right: setgroups, setgid, then setuid.
        cmd.gid(c.gid).uid(c.uid);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return ScriptOutcome::SpawnFailed(format!(
                "{}: {e}",
                program.as_ref().to_string_lossy()
            ))
        }
    };
    // The child leads its own group: pgid == pid.
    let pgid = child.id().map(|p| p as i32);
    let mut guard = KillGroupOnDrop(pgid);
    let limit = opts.output_limit;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_task = tokio::spawn(read_bounded(stdout, limit));
    let err_task = tokio::spawn(read_bounded(stderr, limit));

    let status = match tokio::time::timeout(opts.timeout, child.wait()).await {
        Ok(Ok(st)) => Some(st),
        Ok(Err(e)) => {
            // wait() itself failed: nothing sensible left but to make sure it is gone.
            if let Some(pg) = pgid {
                kill_group(pg, libc::SIGKILL);
            }
            let _ = child.wait().await;
            out_task.abort();
            err_task.abort();
            return ScriptOutcome::SpawnFailed(format!("waiting for it failed: {e}"));
        }
        Err(_) => None,
    };
    let timed_out = status.is_none();
    if timed_out {
        if let Some(pg) = pgid {
            kill_group(pg, libc::SIGTERM);
        }
        let grace_ok = tokio::time::timeout(opts.kill_grace, child.wait()).await;
        if !matches!(grace_ok, Ok(Ok(_))) {
            if let Some(pg) = pgid {
                kill_group(pg, libc::SIGKILL);
            }
            let _ = child.wait().await;
        } else if let Some(pg) = pgid {
            // The leader went on SIGTERM; anything it left behind in the group goes now.
            kill_group(pg, libc::SIGKILL);
        }
    }
    // Reaped: the group id may be reused from here on.
    guard.0 = None;
    let output = collect_output(out_task, err_task).await;
    match status {
        None => ScriptOutcome::TimedOut { output },
        Some(st) => ScriptOutcome::Exited { code: st.code(), signal: st.signal(), output },
    }
}

/// Fire-and-forget with a log line on failure: for notify hooks. Returns at once.
pub fn spawn_logged(
    what: String,
    argv: Vec<String>,
    opts: RunOptions,
) -> tokio::task::JoinHandle<ScriptOutcome> {
    tokio::spawn(async move {
        let outcome = run(&argv, &opts).await;
        if !outcome.success() {
            tracing::warn!(script = %argv.join(" "), "{what}: {}", outcome.describe());
        } else {
            tracing::debug!(script = %argv.join(" "), "{what}: ok");
        }
        outcome
    })
}

/// Kills a script's process group if [`run`] is dropped while the script runs (the daemon
/// stopping with checks or hooks in flight): they would outlive it otherwise (tokio's
/// `kill_on_drop` reaches the leader only).
struct KillGroupOnDrop(Option<i32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pg) = self.0 {
            kill_group(pg, libc::SIGKILL);
        }
    }
}

fn kill_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is
        // touched. ESRCH (already gone) is fine.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

async fn collect_output(
    out_task: tokio::task::JoinHandle<(Vec<u8>, bool)>,
    err_task: tokio::task::JoinHandle<(Vec<u8>, bool)>,
) -> Output {
    // A grandchild that went to the background may keep the pipes open for ever: give the
    // readers a moment, then take what they have.
    let grab = |t: tokio::task::JoinHandle<(Vec<u8>, bool)>| async move {
        let abort = t.abort_handle();
        match tokio::time::timeout(DRAIN_AFTER_EXIT, t).await {
            Ok(Ok(v)) => v,
            _ => {
                abort.abort();
                (Vec::new(), true)
            }
        }
    };
    let (o, e) = tokio::join!(grab(out_task), grab(err_task));
    Output { truncated: o.1 || e.1, stdout: o.0, stderr: e.0 }
}

async fn read_bounded<R: AsyncRead + Unpin>(r: Option<R>, limit: usize) -> (Vec<u8>, bool) {
    let Some(mut r) = r else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 2048];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (kept, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_program_searches_path_and_checks_the_mode() {
        let sh = find_program("sh", None).unwrap();
        assert!(sh.ends_with("sh") && sh.is_absolute(), "{sh:?}");
        assert_eq!(find_program("/bin/sh", None).unwrap(), PathBuf::from("/bin/sh"));
        let e = find_program("hlb-no-such-program", None).unwrap_err();
        assert!(e.contains("\"hlb-no-such-program\" is not in PATH ("), "{e}");
        let e = find_program("</dev/tcp/127.0.0.1/80", None).unwrap_err();
        assert!(e.contains("a shell construct"), "{e}");
        let e = find_program("/etc", None).unwrap_err();
        assert_eq!(e, "/etc: not a regular file");
        let e = find_program("scripts/check.sh", None).unwrap_err();
        assert!(e.starts_with("scripts/check.sh: a relative path"), "{e}");
        let e = find_program("/nonexistent/check.sh", None).unwrap_err();
        assert!(e.starts_with("/nonexistent/check.sh: No such file"), "{e}");
        // Mode bits, for root and for another user.
        let dir = std::env::temp_dir().join(format!("hlb-find-program-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("check.sh");
        std::fs::write(&f, "#!/bin/sh\nexit 0\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let set = |m| std::fs::set_permissions(&f, std::fs::Permissions::from_mode(m)).unwrap();
        let root = Some(Credentials { uid: 0, gid: 0 });
        let nobody = Some(Credentials { uid: 65534, gid: 65534 });
        set(0o644);
        let e = find_program(f.to_str().unwrap(), root).unwrap_err();
        assert!(e.ends_with("not executable by root (mode 644)"), "{e}");
        set(0o744);
        find_program(f.to_str().unwrap(), root).unwrap();
        // Owned by the test's user, not nobody's: "other" bits count for nobody.
        if unsafe { libc::geteuid() } != 65534 {
            assert!(find_program(f.to_str().unwrap(), nobody).is_err());
            set(0o745);
            find_program(f.to_str().unwrap(), nobody).unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    use std::time::Instant;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn exit_codes_and_output() {
        let o = run(
            &sh("echo hi; echo oops >&2; exit 3"),
            &RunOptions::with_timeout(Duration::from_secs(5)),
        )
        .await;
        match &o {
            ScriptOutcome::Exited { code, output, .. } => {
                assert_eq!(*code, Some(3));
                assert_eq!(output.stdout, b"hi\n");
                assert_eq!(output.stderr_line(), "oops");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(o.describe(), "exit status 3: oops");
        assert!(run(&sh("exit 0"), &RunOptions::with_timeout(Duration::from_secs(5)))
            .await
            .success());
    }

    #[tokio::test]
    async fn stdin_is_null() {
        let o = run(&sh("cat; exit 0"), &RunOptions::with_timeout(Duration::from_secs(5))).await;
        assert!(o.success(), "{o:?}");
    }

    #[tokio::test]
    async fn output_is_bounded() {
        let mut opts = RunOptions::with_timeout(Duration::from_secs(10));
        opts.output_limit = 100;
        let o = run(&sh("head -c 1000000 /dev/zero"), &opts).await;
        match o {
            ScriptOutcome::Exited { code: Some(0), output, .. } => {
                assert_eq!(output.stdout.len(), 100);
                assert!(output.truncated);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn spawn_failures() {
        let o =
            run(&["/nonexistent/ha-lb-test"], &RunOptions::with_timeout(Duration::from_secs(1)))
                .await;
        assert!(matches!(o, ScriptOutcome::SpawnFailed(_)), "{o:?}");
        let empty: [&str; 0] = [];
        assert!(matches!(
            run(&empty, &RunOptions::with_timeout(Duration::from_secs(1))).await,
            ScriptOutcome::SpawnFailed(_)
        ));
    }

    /// A script that starts a grandchild (`sleep 30`) in its group and waits for it, the
    /// file the grandchild's pid goes to, and the directory to remove afterwards.
    fn grandchild_script(tag: &str) -> (Vec<String>, std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("ha-lb-script-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("grandchild.pid");
        // The grandchild ignores nothing but would outlive its parent without the group kill.
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        (sh(&script), pidfile, dir)
    }

    /// The grandchild whose pid is in `pidfile` is gone within a second (reaped by init, or a
    /// zombie at worst; never still sleeping).
    fn assert_grandchild_gone(pidfile: &std::path::Path, what: &str) {
        let pid: i32 = std::fs::read_to_string(pidfile).unwrap().trim().parse().unwrap();
        let gone = (0..50).any(|_| {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false);
            if alive {
                std::thread::sleep(Duration::from_millis(20));
            }
            !alive
        });
        assert!(gone, "grandchild {pid} survived {what}");
    }

    /// Found by review: a script still running when its caller was dropped (the daemon
    /// stopping) outlived the daemon.
    #[tokio::test]
    async fn a_dropped_run_kills_the_whole_group() {
        let (argv, pidfile, dir) = grandchild_script("drop");
        let opts = RunOptions::with_timeout(Duration::from_secs(60));
        let dropped = tokio::time::timeout(Duration::from_millis(300), run(&argv, &opts));
        assert!(dropped.await.is_err(), "still running when dropped");
        assert_grandchild_gone(&pidfile, "the drop");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let (argv, pidfile, dir) = grandchild_script("timeout");
        let mut opts = RunOptions::with_timeout(Duration::from_millis(300));
        opts.kill_grace = Duration::from_millis(200);
        let t0 = Instant::now();
        let o = run(&argv, &opts).await;
        assert!(matches!(o, ScriptOutcome::TimedOut { .. }), "{o:?}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_grandchild_gone(&pidfile, "the timeout");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn term_ignored_then_killed() {
        let mut opts = RunOptions::with_timeout(Duration::from_millis(200));
        opts.kill_grace = Duration::from_millis(200);
        let t0 = Instant::now();
        let o = run(&sh("trap '' TERM; sleep 30"), &opts).await;
        assert!(matches!(o, ScriptOutcome::TimedOut { .. }), "{o:?}");
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn credentials_lookup() {
        let root = resolve_credentials("root", None).unwrap();
        assert_eq!(root, Credentials { uid: 0, gid: 0 });
        assert_eq!(resolve_credentials("root", Some("root")).unwrap().gid, 0);
        assert!(matches!(
            resolve_credentials("ha-lb-no-such-user", None),
            Err(CredentialsError::NoUser(_))
        ));
        assert!(matches!(
            resolve_credentials("root", Some("ha-lb-no-such-group")),
            Err(CredentialsError::NoGroup(_))
        ));
        assert_eq!(user_name(0).as_deref(), Some("root"));
    }

    #[tokio::test]
    async fn runs_as_another_user() {
        // Only root can switch users; `nobody` exists on Debian.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let Ok(c) = resolve_credentials("nobody", None) else {
            return;
        };
        let mut opts = RunOptions::with_timeout(Duration::from_secs(5));
        opts.credentials = Some(c);
        let o = run(&sh("id -u; id -g"), &opts).await;
        match o {
            ScriptOutcome::Exited { code: Some(0), output, .. } => {
                let s = String::from_utf8_lossy(&output.stdout).to_string();
                assert_eq!(s, format!("{}\n{}\n", c.uid, c.gid));
            }
            other => panic!("{other:?}"),
        }
    }
}
