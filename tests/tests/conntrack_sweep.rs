//! The connection-tracking sweep at scale: `LB_CONNS` filled from user space with many
//! entries, read back whole by `flows()` (batched) and by the per-entry iterator it replaced,
//! removed in batches, and expired by `XdpDataplane::expire_connections`. Timings are printed
//! (run with `--nocapture`), never asserted. Inside a lab node like the other XDP tests.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use ha_lb::{
    bpf::{lb as maps, Bpf},
    dataplane::xdp::XdpDataplane,
};
use ha_lb_common::lb::{LbFlow, LbFlowKey, FAMILY_V4, IPPROTO_TCP};
use ha_lb_lab::Lab;

const N: u32 = 100_000;

/// Flow number `i`: a distinct client (address and port) to a VIP, and a value that names it.
fn flow(i: u32, last_seen_ns: u64) -> (LbFlowKey, LbFlow) {
    let src = u32::from_be_bytes([10, 0, 0, 0]) + i / 1000;
    let key = LbFlowKey {
        src: [u32::from_ne_bytes(src.to_be_bytes()), 0, 0, 0],
        dst: [u32::from_ne_bytes([198, 18, 100, 1]), 0, 0, 0],
        sport: (10000 + (i % 1000) as u16).to_be(),
        dport: 80u16.to_be(),
        proto: IPPROTO_TCP,
        family: FAMILY_V4,
        _pad: 0,
    };
    let value = LbFlow {
        real_id: i % 4096,
        real_gen: i,
        service_id: i % 256,
        last_seen_ns,
        addr: [u32::from_ne_bytes([198, 18, 2, 10]), 0, 0, 0],
        port: 8080u16.to_be(),
        ..LbFlow::default()
    };
    (key, value)
}

fn fill(bpf: &mut Bpf, range: std::ops::Range<u32>, last_seen_ns: impl Fn(u32) -> u64) {
    for i in range {
        let (k, v) = flow(i, last_seen_ns(i));
        maps::put_flow(bpf, &k, &v).unwrap();
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

fn as_map(v: Vec<(LbFlowKey, LbFlow)>) -> BTreeMap<LbFlowKey, LbFlow> {
    let n = v.len();
    let m: BTreeMap<_, _> = v.into_iter().collect();
    assert_eq!(m.len(), n, "no entry read twice");
    m
}

/// Runs `f` on a thread inside a fresh lab node, pinned to CPU 0 (the LRU map's free lists
/// are per CPU: one CPU fills it the same way every run).
fn in_node<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let mut lab = Lab::new().unwrap();
    let d = lab.node("d").unwrap();
    d.run(move || {
        // SAFETY: plain sched_setaffinity on the calling thread with a valid cpu_set_t.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0);
        }
        f()
    })
    .unwrap()
}

#[test]
fn flows_reads_the_whole_table_batched_and_per_entry_alike() {
    in_node(|| {
        let mut bpf = Bpf::load(tracing::Level::WARN).expect("load eBPF object");
        assert!(maps::flows(&bpf).unwrap().is_empty(), "empty map: ENOENT at once");

        // Fewer entries than one batch, then exactly one batch, then many batches with a
        // partial last one (N is not a multiple of BATCH).
        let batch = maps::BATCH as u32;
        for n in [1, 7, batch, N] {
            maps::flush_flows(&mut bpf).unwrap();
            let (_, fill_time) = timed(|| fill(&mut bpf, 0..n, |i| 1_000 + i as u64));
            let want: BTreeMap<_, _> = (0..n).map(|i| flow(i, 1_000 + i as u64)).collect();

            let (batched, t_batch) = timed(|| maps::flows(&bpf).unwrap());
            let (per_entry, t_iter) = timed(|| maps::flows_per_entry(&bpf).unwrap());
            let batched = as_map(batched);
            assert_eq!(batched.len(), want.len(), "flows() at {n}");
            assert!(batched == want, "flows() returns exactly the entries written, at {n}");
            assert!(as_map(per_entry) == want, "the per-entry iterator agrees, at {n}");
            println!(
                "conntrack_sweep: {n} entries: flows() batched {t_batch:?}, per-entry \
                 iterator {t_iter:?} (filling took {fill_time:?})"
            );
        }
    });
}

#[test]
fn remove_flows_deletes_in_batches_and_skips_missing_keys() {
    in_node(|| {
        let mut bpf = Bpf::load(tracing::Level::WARN).expect("load eBPF object");
        let n = 3 * maps::BATCH as u32 + 100;
        fill(&mut bpf, 0..n, |_| 1);
        // Every other entry, plus keys never written and one twice: the kernel stops a batch
        // at a missing key, and remove_flows carries on after it.
        let mut remove: Vec<LbFlowKey> = (0..n).step_by(2).map(|i| flow(i, 0).0).collect();
        remove.insert(5, flow(n + 1, 0).0);
        remove.push(flow(0, 0).0);
        remove.extend((n + 10..n + 20).map(|i| flow(i, 0).0));
        let (_, t) = timed(|| maps::remove_flows(&mut bpf, &remove).unwrap());
        println!("conntrack_sweep: remove_flows of {} keys took {t:?}", remove.len());
        let left = as_map(maps::flows(&bpf).unwrap());
        let want: BTreeMap<_, _> = (1..n).step_by(2).map(|i| flow(i, 1)).collect();
        assert!(
            left == want,
            "exactly the odd entries are left ({} of {})",
            left.len(),
            want.len()
        );
        maps::remove_flows(&mut bpf, &[]).unwrap();
        // One at a time (the fallback), a key that is not there is no error either.
        maps::remove_flow(&mut bpf, &flow(n + 1, 0).0).unwrap();
    });
}

#[test]
fn expire_connections_sweeps_a_full_table() {
    in_node(|| {
        let bpf = Bpf::load(tracing::Level::WARN).expect("load eBPF object");
        let mut dp = XdpDataplane::new(bpf).expect("verifier accepts ha_lb_xdp");
        // An arbitrary "now" (the sweep takes it as an argument): every third flow was seen
        // just now, the others long before any timeout.
        let now = 1_000_000 * 1_000_000_000u64;
        let seen = |i: u32| if i.is_multiple_of(3) { now } else { 1 };
        fill(dp.bpf_mut(), 0..N, seen);
        let (expired, t) = timed(|| dp.expire_connections(now).unwrap());
        let stale = (0..N).filter(|i| !i.is_multiple_of(3)).count();
        println!("conntrack_sweep: expire_connections over {N} entries ({stale} idle) took {t:?}");
        assert_eq!(expired, stale);
        let left = as_map(maps::flows(dp.bpf()).unwrap());
        let want: BTreeMap<_, _> = (0..N).step_by(3).map(|i| flow(i, now)).collect();
        assert!(
            left == want,
            "exactly the fresh flows are left ({} of {})",
            left.len(),
            want.len()
        );
    });
}
