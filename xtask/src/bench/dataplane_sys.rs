//! Accounting for the data-plane bench: CPU time of the director's tasks (schedstat), CPU
//! time nobody in the bench used ("foreign": other work on the machine), a quiet-machine
//! wait, and interface counters read inside a namespace.

use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use ha_lb_lab::{benchtopo::NapiThread, Node};

/// Time task `tid` has spent on a CPU (ns), from `/proc/<tid>/schedstat` (first field:
/// time spent on the cpu; second: waiting on a runqueue; third: timeslices run).
pub fn task_cpu_ns(tid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|f| f.parse().ok()))
        .unwrap_or(0)
}

/// On-CPU time of every thread of process `pid` (ns).
pub fn process_cpu_ns(pid: u32) -> u64 {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .map(task_cpu_ns)
        .sum()
}

/// Per-CPU busy time (ns) from `/proc/stat`: user+nice+system+irq+softirq+steal.
pub fn cpu_busy_ns() -> Vec<u64> {
    let hz = 100u64; // USER_HZ on Linux
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let f: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            let busy = [0usize, 1, 2, 5, 6, 7]
                .iter()
                .map(|&i| f.get(i).copied().unwrap_or(0))
                .sum::<u64>();
            busy * 1_000_000_000 / hz
        })
        .collect()
}

/// The processes of the bench: those in its lab namespaces and the bench itself.
pub struct Ours {
    netns_inodes: BTreeSet<u64>,
}

impl Ours {
    pub fn new(nodes: &[&Node]) -> Result<Ours> {
        let mut netns_inodes = BTreeSet::new();
        for n in nodes {
            let m = std::fs::metadata(format!("/run/netns/{}", n.ns))
                .with_context(|| format!("namespace {}", n.ns))?;
            netns_inodes.insert(m.ino());
        }
        Ok(Ours { netns_inodes })
    }

    /// Pids of processes inside the lab's namespaces.
    pub fn lab_pids(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
                if self.netns_inodes.contains(&m.ino()) {
                    out.push(pid);
                }
            }
        }
        out
    }
}

/// One sample of everything the bench accounts for.
#[derive(Clone, Debug, Default)]
pub struct CpuSample {
    pub at: Option<Instant>,
    /// The director's tasks (NAPI kthreads + userspace), ns.
    pub director_ns: u64,
    /// Every task of the bench (director, client, servers, kthreads, this process), ns.
    pub ours_ns: u64,
    /// `/proc/stat` busy per CPU, ns.
    pub busy: Vec<u64>,
}

/// Takes a sample. `director_tids` are thread ids; `director_pids` whole processes;
/// `kthreads` every NAPI kthread of the topology (director's included).
pub fn sample(
    ours: &Ours,
    director_tids: &[u32],
    director_pids: &[u32],
    kthreads: &[u32],
) -> CpuSample {
    let director_ns = director_tids.iter().map(|&t| task_cpu_ns(t)).sum::<u64>()
        + director_pids.iter().map(|&p| process_cpu_ns(p)).sum::<u64>();
    let mut pids: BTreeSet<u32> = ours.lab_pids().into_iter().collect();
    pids.insert(std::process::id());
    let ours_ns = pids.iter().map(|&p| process_cpu_ns(p)).sum::<u64>()
        + kthreads.iter().map(|&t| task_cpu_ns(t)).sum::<u64>();
    CpuSample { at: Some(Instant::now()), director_ns, ours_ns, busy: cpu_busy_ns() }
}

/// [`sample`] on the bench topology: the director's NAPI kthreads, and `director_pids`
/// (userspace on the director, such as HAProxy), are the director; every NAPI kthread of
/// the topology is the bench's.
pub fn sample_napi(ours: &Ours, kthreads: &[NapiThread], director_pids: &[u32]) -> CpuSample {
    let all: Vec<u32> = kthreads.iter().map(|t| t.pid).collect();
    let director: Vec<u32> = kthreads.iter().filter(|t| t.director).map(|t| t.pid).collect();
    sample(ours, &director, director_pids, &all)
}

/// What happened between two samples.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuDelta {
    pub wall: Duration,
    /// Director CPU time, ns.
    pub director_ns: u64,
    /// Director cores busy (director CPU time / wall).
    pub director_busy: f64,
    /// Cores used by work outside the bench (busy − ours) / wall; ≥ 0.
    pub foreign: f64,
    /// Busy cores on the director's CPU that were not the director's.
    pub foreign_on_director_cpu: f64,
}

pub fn delta(a: &CpuSample, b: &CpuSample, director_cpu: usize) -> CpuDelta {
    let wall = match (a.at, b.at) {
        (Some(x), Some(y)) => y.duration_since(x),
        _ => Duration::ZERO,
    };
    let w = wall.as_secs_f64().max(1e-9);
    let busy_all: u64 = b.busy.iter().zip(&a.busy).map(|(y, x)| y.saturating_sub(*x)).sum();
    let busy_d = b
        .busy
        .get(director_cpu)
        .unwrap_or(&0)
        .saturating_sub(*a.busy.get(director_cpu).unwrap_or(&0));
    let director_ns = b.director_ns.saturating_sub(a.director_ns);
    let ours = b.ours_ns.saturating_sub(a.ours_ns);
    CpuDelta {
        wall,
        director_ns,
        director_busy: director_ns as f64 / 1e9 / w,
        foreign: (busy_all as f64 - ours as f64).max(0.0) / 1e9 / w,
        foreign_on_director_cpu: (busy_d as f64 - director_ns as f64).max(0.0) / 1e9 / w,
    }
}

/// Waits (at most `max`) until the machine is quiet: less than `threshold` cores busy over
/// a 500 ms window, counting everything (the bench is idle between runs). Returns the busy
/// cores of the last window and whether it was quiet.
pub fn wait_quiet(max: Duration, threshold: f64) -> (f64, bool) {
    let deadline = Instant::now() + max;
    loop {
        let a = cpu_busy_ns();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_millis(500));
        let b = cpu_busy_ns();
        let busy: u64 = b.iter().zip(&a).map(|(y, x)| y.saturating_sub(*x)).sum();
        let cores = busy as f64 / 1e9 / t0.elapsed().as_secs_f64();
        if cores < threshold {
            return (cores, true);
        }
        if Instant::now() >= deadline {
            return (cores, false);
        }
    }
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0.0)
}

/// Interface counters as `/proc/net/dev` shows them inside `node`'s namespace.
#[derive(Clone, Copy, Debug, Default)]
pub struct IfCounters {
    pub rx_packets: u64,
}

pub fn if_counters(node: &Node, dev: &str) -> Result<IfCounters> {
    let dev = dev.to_string();
    let text = node.run(|| std::fs::read_to_string("/proc/thread-self/net/dev"))??;
    for l in text.lines() {
        let Some((name, rest)) = l.split_once(':') else { continue };
        if name.trim() != dev {
            continue;
        }
        let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        if f.len() < 12 {
            break;
        }
        return Ok(IfCounters { rx_packets: f[1] });
    }
    anyhow::bail!("no interface {dev} in {}", node.ns)
}

/// The director's CPU idling by polling instead of halting, for the bench's lifetime: every
/// cpuidle state of `cpu` but `POLL` is disabled (what a latency-tuned director host does
/// with `idle=poll`, `intel_idle.max_cstate=0` or `cpupower idle-set -D 0`), and put back as
/// found on drop. In a VM the halting idle state is a paravirtual HLT whose wake-up (an IPI
/// through the hypervisor) dominates the latency of a lightly loaded director; polling
/// removes it for every variant alike. Idle polling runs in the idle task: it counts neither
/// in the director's schedstat nor in `/proc/stat`'s busy time.
pub struct IdlePoll {
    restore: Vec<(std::path::PathBuf, String)>,
}

impl IdlePoll {
    pub fn on(cpu: usize) -> Result<Self> {
        let dir = std::path::PathBuf::from(format!("/sys/devices/system/cpu/cpu{cpu}/cpuidle"));
        let states: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| {
                format!(
                    "{}: CPU {cpu} has no cpuidle states to disable (no cpuidle driver); boot \
                     with idle=poll instead",
                    dir.display()
                )
            })?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("state"))
            })
            .collect();
        let mut g = IdlePoll { restore: Vec::new() };
        let mut polls = false;
        for s in states {
            let name = std::fs::read_to_string(s.join("name")).unwrap_or_default();
            if name.trim() == "POLL" {
                polls = true;
                continue;
            }
            let path = s.join("disable");
            let old = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            std::fs::write(&path, "1")
                .with_context(|| format!("writing 1 to {}", path.display()))?;
            g.restore.push((path, old.trim().to_string()));
        }
        if !polls {
            anyhow::bail!(
                "{}: CPU {cpu} has no POLL idle state; boot with idle=poll instead",
                dir.display()
            );
        }
        Ok(g)
    }

    /// The shell command that undoes [`Self::on`] (said at start: an interrupted bench
    /// does not run its destructors).
    pub fn undo_command(&self) -> String {
        self.restore
            .iter()
            .map(|(p, v)| format!("echo {v} > {}", p.display()))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Drop for IdlePoll {
    fn drop(&mut self) {
        for (p, v) in &self.restore {
            if let Err(e) = std::fs::write(p, v) {
                eprintln!("could not put {} back to {v}: {e}", p.display());
            }
        }
    }
}
