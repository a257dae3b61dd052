//! User side of the benchmark programs (`ha-lb-ebpf/src/bench.rs`): the live-frames
//! generator runner, the generator's configuration, the sink's counters and the redirect
//! ceiling's target. Used by `cargo xtask bench dataplane` and its correctness test; nothing
//! in the daemon uses it.

use std::time::{Duration, Instant};

pub use super::{attach_tc_ingress, detach_tc};
use aya::{
    maps::{Array, MapError, PerCpuArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
};
pub use ha_lb_common::bench::{
    BenchGenConfig, BenchSinkCounter, BENCH_GEN_CONFIG, BENCH_GEN_SEQ, BENCH_REDIRECT,
    BENCH_SINK_STATS, PROG_BENCH_DROP, PROG_BENCH_GEN, PROG_BENCH_PASS, PROG_BENCH_REDIRECT,
    PROG_BENCH_REWRITE, PROG_BENCH_SINK, PROG_BENCH_TC_REDIRECT,
};

use super::{Bpf, BpfError};

/// Most frames the kernel handles per batch in live-frames mode (`batch_size` ≤ 256).
pub const LIVE_FRAMES_BATCH_MAX: u32 = 256;

/// What one live-frames run did.
#[derive(Debug, Clone, Copy)]
pub struct LiveRun {
    /// Frames the program ran on (`repeat`).
    pub frames: u64,
    /// Wall time of the syscall.
    pub wall: Duration,
    /// Time per frame as the kernel measured it.
    pub kernel_per_frame: Duration,
}

/// Runs `prog` (the generator) over `repeat` copies of `frame` in live-frames mode
/// (`BPF_F_TEST_XDP_LIVE_FRAMES`): XDP_TX sends each frame out of `ingress_ifindex` (an
/// interface in the calling thread's network namespace), XDP_REDIRECT redirects it, XDP_PASS
/// hands it to the stack. The kernel keeps the pages in a pool and recycles them without
/// resetting their contents, so the program must rewrite every header it relies on.
///
/// The call runs on the calling thread's CPU until `repeat` frames are done (or a signal).
/// Attaching `prog` somewhere (an idle interface) beforehand saves the XDP dispatcher update
/// that every call otherwise costs.
pub fn run_live_frames(
    prog: &Xdp,
    frame: &[u8],
    ingress_ifindex: u32,
    repeat: u32,
    batch: u32,
) -> Result<LiveRun, BpfError> {
    let ctx = super::testrun::xdp_md(frame.len(), ingress_ifindex);
    let opts = TestRunOptions {
        data_in: Some(frame),
        ctx_in: Some(&ctx),
        repeat: repeat.max(1),
        attrs: TestRunAttrs::new().xdp_live_frames(batch.clamp(1, LIVE_FRAMES_BATCH_MAX)),
        ..Default::default()
    };
    let t0 = Instant::now();
    let res = prog.test_run(opts).map_err(|source| BpfError::Program {
        name: "live frames test_run".into(),
        source: Box::new(source),
    })?;
    Ok(LiveRun { frames: repeat.max(1) as u64, wall: t0.elapsed(), kernel_per_frame: res.duration })
}

/// Sets what the generator writes into every frame.
pub fn set_gen_config(bpf: &mut Bpf, cfg: &BenchGenConfig) -> Result<(), BpfError> {
    let err = |source| BpfError::Map { name: BENCH_GEN_CONFIG, source };
    let mut map: Array<_, BenchGenConfig> =
        Array::try_from(bpf.map_mut(BENCH_GEN_CONFIG)?).map_err(err)?;
    map.set(0, cfg, 0).map_err(err)
}

/// Frames the generator produced so far, summed over CPUs.
pub fn gen_frames(bpf: &Bpf) -> Result<u64, BpfError> {
    per_cpu_sum(bpf, BENCH_GEN_SEQ, 0)
}

/// The sink's counters, summed over CPUs and over every interface it is attached to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkCounters {
    pub frames: u64,
    pub bytes: u64,
}

pub fn sink_counters(bpf: &Bpf) -> Result<SinkCounters, BpfError> {
    Ok(SinkCounters {
        frames: per_cpu_sum(bpf, BENCH_SINK_STATS, BenchSinkCounter::Frames as u32)?,
        bytes: per_cpu_sum(bpf, BENCH_SINK_STATS, BenchSinkCounter::Bytes as u32)?,
    })
}

/// Where `hlb_bench_redirect` sends every frame (an ifindex in the namespace of the
/// interface the program is attached to).
pub fn set_redirect(bpf: &mut Bpf, ifindex: u32) -> Result<(), BpfError> {
    let err = |source| BpfError::Map { name: BENCH_REDIRECT, source };
    let mut map: Array<_, u32> = Array::try_from(bpf.map_mut(BENCH_REDIRECT)?).map_err(err)?;
    map.set(0, ifindex, 0).map_err(err)
}

fn per_cpu_sum(bpf: &Bpf, name: &'static str, index: u32) -> Result<u64, BpfError> {
    let err = |source: MapError| BpfError::Map { name, source };
    let map: PerCpuArray<_, u64> = PerCpuArray::try_from(bpf.map(name)?).map_err(err)?;
    Ok(map.get(&index, 0).map_err(err)?.iter().sum())
}
