//! Running XDP programs over crafted frames with `BPF_PROG_TEST_RUN`: the way data-plane
//! behaviour is unit-tested and per-packet cost is measured.

use std::time::Duration;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};

use super::BpfError;

/// XDP verdicts, as the kernel numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpAction {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
    Other(u32),
}

impl From<u32> for XdpAction {
    fn from(v: u32) -> Self {
        match v {
            0 => XdpAction::Aborted,
            1 => XdpAction::Drop,
            2 => XdpAction::Pass,
            3 => XdpAction::Tx,
            4 => XdpAction::Redirect,
            n => XdpAction::Other(n),
        }
    }
}

/// What one test run produced.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub action: XdpAction,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// Mean time per run as the kernel measured it (over `repeat` runs).
    pub duration: Duration,
}

/// The `xdp_md` context passed in: lets a test choose the ingress interface.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// The `xdp_md` context bytes for a test run of a `frame_len`-byte frame received on
/// `ingress_ifindex` (the kernel requires data = 0 and data_end = the input length).
pub(crate) fn xdp_md(frame_len: usize, ingress_ifindex: u32) -> [u8; std::mem::size_of::<XdpMd>()] {
    let ctx = XdpMd { data: 0, data_end: frame_len as u32, ingress_ifindex, ..Default::default() };
    // SAFETY: XdpMd is repr(C) plain data with no padding (six u32 fields).
    unsafe { std::mem::transmute(ctx) }
}

/// Runs `prog` over `frame` `repeat` times as if received on `ingress_ifindex` (an interface
/// that exists in the caller's network namespace; 1 is `lo`).
pub fn run_xdp(
    prog: &Xdp,
    frame: &[u8],
    ingress_ifindex: u32,
    repeat: u32,
) -> Result<RunResult, BpfError> {
    let ctx = xdp_md(frame.len(), ingress_ifindex);
    let (ret, frame, duration) = test_run(prog, frame, &ctx, repeat)?;
    Ok(RunResult { action: ret.into(), frame, duration })
}

/// One `BPF_PROG_TEST_RUN` of `prog` over `frame` with input context `ctx`: (return value,
/// the frame as the program left it, mean time per run).
fn test_run<P>(
    prog: &P,
    frame: &[u8],
    ctx: &[u8],
    repeat: u32,
) -> Result<(u32, Vec<u8>, Duration), BpfError>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    // Room for programs that grow the frame (encapsulation) by up to 256 bytes.
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(ctx),
        repeat: repeat.max(1),
        ..Default::default()
    };
    let res = prog.test_run(opts).map_err(|source| BpfError::Program {
        name: "test_run".into(),
        source: Box::new(source),
    })?;
    out.truncate(res.data_size_out as usize);
    Ok((res.return_value, out, res.duration))
}

/// TC verdicts the forwarding program returns, as the kernel numbers them (UNSPEC: no
/// verdict, the next program or filter on the hook decides; the forwarding program's "pass").
pub const TC_ACT_UNSPEC: i32 = -1;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;

/// `struct __sk_buff` as a test run's input context: all zero but the receiving interface
/// (`ingress_ifindex` at byte 36, `ifindex` at 40) and, for a GSO packet, its segment size
/// (`gso_segs` at 164, `gso_size` at 176); the kernel refuses most other fields.
fn sk_buff_ctx(ifindex: u32, gso_size: u32, gso_segs: u32) -> [u8; 192] {
    let mut c = [0u8; 192];
    c[36..40].copy_from_slice(&ifindex.to_ne_bytes());
    c[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    c[164..168].copy_from_slice(&gso_segs.to_ne_bytes());
    c[176..180].copy_from_slice(&gso_size.to_ne_bytes());
    c
}

/// What one TC test run produced.
#[derive(Debug, Clone)]
pub struct TcRunResult {
    /// `TC_ACT_*`.
    pub action: i32,
    pub frame: Vec<u8>,
    pub duration: Duration,
}

/// Runs TC program `prog` over `frame` as if received on `ifindex` (which must exist in the
/// caller's network namespace and not be `lo`): the kernel builds a socket buffer from the
/// frame (no checksum state: CHECKSUM_NONE) and runs the program at ingress.
pub fn run_tc(
    prog: &SchedClassifier,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
) -> Result<TcRunResult, BpfError> {
    let (ret, frame, duration) = test_run(prog, frame, &sk_buff_ctx(ifindex, 0, 0), repeat)?;
    Ok(TcRunResult { action: ret as i32, frame, duration })
}

/// [`run_tc`] with the socket buffer marked GSO: `frame` (up to about 3.5 KiB) holds several
/// segments' worth of payload, `gso_size` bytes each, as after GRO or from a sender with
/// segmentation offload. The kernel sets no GSO type here, so helpers that act on the type
/// (growing the buffer) refuse it; what depends on the segment size can be tested.
pub fn run_tc_gso(
    prog: &SchedClassifier,
    frame: &[u8],
    ifindex: u32,
    gso_size: u32,
) -> Result<TcRunResult, BpfError> {
    let segs = (frame.len() as u32).div_ceil(gso_size.max(1));
    let ctx = sk_buff_ctx(ifindex, gso_size, segs);
    let (ret, frame, duration) = test_run(prog, frame, &ctx, 1)?;
    Ok(TcRunResult { action: ret as i32, frame, duration })
}
