//! 2,000 checks against one listener on 127.0.0.1: all run, the in-flight bound holds and
//! the process stays at a handful of threads (tasks, not threads). Alone in its own test
//! binary so the thread count is this test's.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ha_lb::config::{
    CheckKind, Connect, HealthCheck, Protocol, RealServer, Timing, VirtualServerKey,
};
use ha_lb::health::{CheckTarget, HealthChecker, HealthOptions};
use tokio::net::TcpListener;

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const CHECKS: usize = 2000;
const MAX_PROBES: usize = 64;

fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn two_thousand_checks_on_a_few_threads() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let l = TcpListener::bind((LO, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let acc = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                acc.fetch_add(1, Ordering::Relaxed);
                drop(s);
            }
        });
        // 2,000 real servers (distinct virtual-server ports) whose checks all connect to
        // the one listener; alpha, so each emits exactly one UP event once checked.
        let targets: Vec<CheckTarget> = (0..CHECKS)
            .map(|i| {
                let vs = VirtualServerKey {
                    address: "198.18.0.100".parse().unwrap(),
                    port: 1000 + i as u16,
                    protocol: Protocol::Tcp,
                };
                CheckTarget::new(
                    vs,
                    true,
                    RealServer {
                        address: LO,
                        port: addr.port(),
                        weight: 1,
                        inhibit_on_failure: false,
                        notify_up: None,
                        notify_down: None,
                        check: Some(HealthCheck {
                            kind: CheckKind::Tcp(Connect {
                                target: SocketAddr::new(LO, addr.port()),
                                bindto: None,
                                connect_timeout: Duration::from_secs(5),
                            }),
                            timing: Timing {
                                delay_loop: Duration::from_secs(30),
                                retry: 1,
                                delay_before_retry: Duration::from_millis(200),
                                warmup: Duration::from_millis(500),
                                rise: 1,
                                fall: 1,
                            },
                        }),
                    },
                )
            })
            .collect();
        let opts = HealthOptions { max_probes: MAX_PROBES, ..HealthOptions::default() };
        let (checker, mut rx) = HealthChecker::start(targets, opts);
        assert_eq!(checker.stats().checks, CHECKS);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut ups = 0;
        let mut max_threads = threads();
        while ups < CHECKS {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = tokio::time::timeout(left, rx.recv())
                .await
                .unwrap_or_else(|_| panic!("only {ups} of {CHECKS} checks came up in time"))
                .unwrap();
            assert!(ev.up, "{ev:?}");
            ups += 1;
            if ups % 100 == 0 {
                max_threads = max_threads.max(threads());
            }
        }
        let stats = checker.stats();
        assert!(stats.probes_peak <= MAX_PROBES, "{stats:?}");
        assert!(stats.probes_peak > 1, "probes ran concurrently: {stats:?}");
        // The kernel completes handshakes before the listener task accepts them.
        let until = Instant::now() + Duration::from_secs(10);
        while accepted.load(Ordering::Relaxed) < CHECKS && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(accepted.load(Ordering::Relaxed) >= CHECKS);
        assert!(checker.states().iter().all(|s| s.up));
        // Main + test harness + 2 workers + a few blocking-pool threads at most.
        assert!(max_threads <= 16, "{max_threads} threads for {CHECKS} checks");
        checker.shutdown().await;
    });
}
