//! Availability probing: ICMP echo to an address at a fixed interval from inside a lab node,
//! recording which probes were answered and when. The unavailability gap of a failover is
//! the longest stretch between two answered probes.

use std::{
    io,
    mem::MaybeUninit,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

use crate::{frame::inet_checksum, Node};

/// What a probe run saw.
#[derive(Debug, Clone, Default)]
pub struct ProbeLog {
    pub interval: Duration,
    /// Send time of every probe, by sequence number (relative to the start).
    pub sent: Vec<Duration>,
    /// Sequence numbers answered, with the time the answer arrived.
    pub answered: Vec<(u16, Duration)>,
}

impl ProbeLog {
    pub fn lost(&self) -> usize {
        self.sent.len() - self.answered.len()
    }

    /// The longest time between two consecutive answers (or from the start to the first /
    /// from the last to the end when those are longer), measured on send times of the
    /// answered probes, so reply latency does not count.
    pub fn longest_gap(&self) -> Duration {
        let mut seqs: Vec<u16> = self.answered.iter().map(|(s, _)| *s).collect();
        seqs.sort_unstable();
        seqs.dedup();
        let times: Vec<Duration> =
            seqs.iter().filter_map(|s| self.sent.get(*s as usize).copied()).collect();
        let mut gap = Duration::ZERO;
        for w in times.windows(2) {
            gap = gap.max(w[1] - w[0]);
        }
        gap
    }

    /// The outage caused by an event at `from` (e.g. the master was killed): the longest
    /// stretch between two consecutively answered probes that ends after `from`, minus one
    /// probe interval; zero if no probe was lost. (The event itself takes a few ms to land,
    /// so answers can still arrive just after `from`.)
    pub fn outage_after(&self, from: Duration) -> Option<Duration> {
        let mut seqs: Vec<u16> = self.answered.iter().map(|(s, _)| *s).collect();
        seqs.sort_unstable();
        seqs.dedup();
        let times: Vec<Duration> =
            seqs.iter().filter_map(|s| self.sent.get(*s as usize).copied()).collect();
        times.last().filter(|t| **t > from)?;
        let first = times.iter().rev().find(|t| **t <= from).copied().unwrap_or(Duration::ZERO);
        let mut prev = first;
        let mut gap = Duration::ZERO;
        for t in times.iter().filter(|t| **t > from) {
            gap = gap.max(*t - prev);
            prev = *t;
        }
        Some(gap.saturating_sub(self.interval))
    }
}

/// A running ICMP prober; `stop` returns its log.
pub struct Prober {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Result<ProbeLog>>,
    pub started: Instant,
}

impl Prober {
    /// Starts probing `target` from `node` every `interval`, for at most `max` (then it stops
    /// by itself).
    pub fn start(
        node: &Node,
        target: Ipv4Addr,
        interval: Duration,
        max: Duration,
    ) -> Result<Prober> {
        let sock = node.run(|| -> Result<Socket> {
            let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
                .context("raw ICMP socket")?;
            s.set_read_timeout(Some(Duration::from_millis(1)))?;
            Ok(s)
        })??;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let started = Instant::now();
        let id = (std::process::id() & 0xffff) as u16 ^ 0x4c42;
        let handle =
            std::thread::spawn(move || run(sock, target, id, interval, max, started, &stop2));
        Ok(Prober { stop, handle, started })
    }

    /// Time since the prober started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn stop(self) -> Result<ProbeLog> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().map_err(|_| anyhow::anyhow!("prober panicked"))?
    }
}

fn echo(id: u16, seq: u16) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[0] = 8; // echo request
    m[4..6].copy_from_slice(&id.to_be_bytes());
    m[6..8].copy_from_slice(&seq.to_be_bytes());
    m[8..16].copy_from_slice(b"hlbprobe");
    let ck = inet_checksum(&[&m]);
    m[2..4].copy_from_slice(&ck.to_be_bytes());
    m
}

fn run(
    sock: Socket,
    target: Ipv4Addr,
    id: u16,
    interval: Duration,
    max: Duration,
    t0: Instant,
    stop: &AtomicBool,
) -> Result<ProbeLog> {
    let dst: socket2::SockAddr = SocketAddr::V4(SocketAddrV4::new(target, 0)).into();
    let mut log = ProbeLog { interval, ..Default::default() };
    let mut next = t0;
    let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
    while !stop.load(Ordering::Relaxed) && t0.elapsed() < max && log.sent.len() < u16::MAX as usize
    {
        let now = Instant::now();
        if now >= next {
            let seq = log.sent.len() as u16;
            log.sent.push(now - t0);
            // A send error (e.g. no route while an address moves) is a lost probe.
            let _ = sock.send_to(&echo(id, seq), &dst);
            next += interval;
        }
        match sock.recv(&mut buf) {
            Ok(n) if n >= 28 => {
                // SAFETY: recv initialised n bytes.
                let b: Vec<u8> = buf[..n].iter().map(|x| unsafe { x.assume_init() }).collect();
                let ihl = (b[0] & 0x0f) as usize * 4;
                if b.len() >= ihl + 8
                    && b[ihl] == 0
                    && u16::from_be_bytes([b[ihl + 4], b[ihl + 5]]) == id
                {
                    let seq = u16::from_be_bytes([b[ihl + 6], b[ihl + 7]]);
                    log.answered.push((seq, t0.elapsed()));
                }
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e).context("receiving ICMP"),
        }
    }
    Ok(log)
}

/// min / median / max of a set of durations.
pub fn summary(v: &[Duration]) -> (Duration, Duration, Duration) {
    let mut s = v.to_vec();
    s.sort_unstable();
    if s.is_empty() {
        return (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    }
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_measured_on_send_times() {
        let ms = Duration::from_millis;
        let log = ProbeLog {
            interval: ms(10),
            sent: (0..10).map(|i| ms(10 * i)).collect(),
            answered: vec![
                (0, ms(1)),
                (1, ms(11)),
                (2, ms(21)),
                (7, ms(71)),
                (8, ms(81)),
                (9, ms(91)),
            ],
        };
        assert_eq!(log.lost(), 4);
        assert_eq!(log.longest_gap(), ms(50));
        assert_eq!(log.outage_after(ms(25)), Some(ms(40)), "4 probes lost = 40 ms");
        assert_eq!(
            log.outage_after(ms(15)),
            Some(ms(40)),
            "answers just after the event do not hide the gap"
        );
        assert_eq!(log.outage_after(ms(75)), Some(ms(0)));
        assert_eq!(summary(&[ms(3), ms(1), ms(2)]), (ms(1), ms(2), ms(3)));
    }
}
