//! Pure builders for the schedulers' lookup tables ("rings"). Each returns indices into the
//! caller's real-server list; the XDP data plane stores the matching real-server ids.
//!
//! - `rr`: every real server with a weight once, in order;
//! - `wrr`: a smooth weighted round-robin sequence (each server appears weight/gcd times,
//!   spread out rather than in runs);
//! - `sh`: a weighted bucket table indexed by a hash of the client address;
//! - `mh`: a Maglev table (see [`super::maglev`]).
//!
//! `lc`/`wlc` need no table: the data path scans the set for the fewest active connections.

use super::{maglev, LbAlgo};

/// Longest table the data path accepts (`ha_lb_common::lb::LB_RING_MAX`).
pub const RING_MAX: usize = ha_lb_common::lb::LB_RING_MAX as usize;
/// The source-hash table has at least this many buckets, so hashing spreads evenly.
pub const SH_MIN_BUCKETS: usize = 1024;

pub fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `weights` divided by their greatest common divisor and, if they still sum to more than
/// `max_total`, scaled down proportionally (a non-zero weight never becomes zero).
pub fn reduce_weights(weights: &[u32], max_total: usize) -> Vec<u64> {
    let g = weights.iter().fold(0u64, |g, &w| gcd(g, w as u64)).max(1);
    let mut w: Vec<u64> = weights.iter().map(|&x| x as u64 / g).collect();
    let total: u64 = w.iter().sum();
    if total > max_total as u64 {
        for x in &mut w {
            if *x > 0 {
                *x = ((*x as u128 * max_total as u128 / total as u128) as u64).max(1);
            }
        }
        // Rounding up of tiny weights can overshoot slightly: trim the largest.
        while w.iter().sum::<u64>() > max_total as u64 {
            let i = (0..w.len()).max_by_key(|&i| w[i]).unwrap();
            w[i] -= 1;
        }
    }
    w
}

/// Round robin: each real server with a non-zero weight once.
pub fn rr_sequence(weights: &[u32]) -> Vec<usize> {
    (0..weights.len()).filter(|&i| weights[i] > 0).collect()
}

/// Smooth weighted round robin (as nginx): at each step every server gains its weight, the
/// one with the most credit is chosen and pays the total. Over one cycle (sum of reduced
/// weights) server `i` appears exactly `w_i` times, interleaved.
pub fn wrr_sequence(weights: &[u32]) -> Vec<usize> {
    let w = reduce_weights(weights, RING_MAX);
    let total: i64 = w.iter().map(|&x| x as i64).sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = usize::MAX;
        for i in 0..w.len() {
            if w[i] == 0 {
                continue;
            }
            current[i] += w[i] as i64;
            if best == usize::MAX || current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best);
    }
    out
}

/// Source hashing: a bucket table where server `i` owns a share of buckets proportional to
/// its weight (exactly, over whole cycles), at least [`SH_MIN_BUCKETS`] long.
pub fn sh_table(weights: &[u32]) -> Vec<usize> {
    let w = reduce_weights(weights, RING_MAX);
    let cycle: usize = w.iter().map(|&x| x as usize).sum();
    if cycle == 0 {
        return Vec::new();
    }
    let reps = SH_MIN_BUCKETS.div_ceil(cycle).min(RING_MAX / cycle).max(1);
    let mut out = Vec::with_capacity(cycle * reps);
    for _ in 0..reps {
        for (i, &n) in w.iter().enumerate() {
            out.extend(std::iter::repeat_n(i, n as usize));
        }
    }
    out
}

/// A real server as the table builders see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Stable identity for consistent hashing (address octets + port).
    pub key: Vec<u8>,
    pub weight: u32,
}

/// The lookup table of `algo` over `backends`, and for `mh` the table size used: sized for
/// `configured` real servers, how many the service's configuration lists whatever their
/// health (`None`: as many as `backends`; never fewer), so that the size, and with it the
/// table, is the same on every director with the same configuration and stays as servers
/// come and go (see `maglev::table_size`). Empty for `lc`/`wlc`, and when no server has a
/// weight.
pub fn ring(
    algo: LbAlgo,
    backends: &[Backend],
    configured: Option<usize>,
) -> (Vec<usize>, Option<usize>) {
    let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
    match algo {
        LbAlgo::Rr => (rr_sequence(&weights), None),
        LbAlgo::Wrr => (wrr_sequence(&weights), None),
        LbAlgo::Sh => (sh_table(&weights), None),
        LbAlgo::Lc | LbAlgo::Wlc => (Vec::new(), None),
        LbAlgo::Mh => {
            let m = maglev::table_size(configured.unwrap_or(0).max(backends.len()));
            let keyed: Vec<(&[u8], u32)> =
                backends.iter().map(|b| (b.key.as_slice(), b.weight)).collect();
            (maglev::table(&keyed, m), Some(m))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(seq: &[usize], n: usize) -> Vec<f64> {
        let mut c = vec![0usize; n];
        for &i in seq {
            c[i] += 1;
        }
        c.iter().map(|&x| x as f64 / seq.len() as f64).collect()
    }

    fn assert_proportional(seq: &[usize], weights: &[u32], tol: f64) {
        let total: u32 = weights.iter().sum();
        for (i, s) in shares(seq, weights.len()).iter().enumerate() {
            let want = weights[i] as f64 / total as f64;
            assert!((s - want).abs() <= tol * want.max(1e-9), "server {i}: share {s}, want {want}");
        }
    }

    #[test]
    fn wrr_is_exact_per_cycle_and_interleaved() {
        let w = [5, 1, 1];
        let seq = wrr_sequence(&w);
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0], "nginx's smooth sequence for 5/1/1");
        let w = [100, 200, 300, 0];
        let seq = wrr_sequence(&w);
        assert_eq!(seq.len(), 6, "reduced by the gcd");
        assert_proportional(&seq, &w, 0.0);
        assert!(!seq.contains(&3), "weight 0 never scheduled");
        // No run longer than needed: the heaviest server never appears 3 times in a row here.
        assert!(!seq.windows(3).any(|x| x.iter().all(|&i| i == 2)));
    }

    #[test]
    fn wrr_with_huge_weights_is_scaled_within_two_percent() {
        let w = [65535, 40000, 1, 30000, 12345];
        let seq = wrr_sequence(&w);
        assert!(seq.len() <= RING_MAX);
        assert!(seq.contains(&2), "a tiny non-zero weight still gets a slot");
        let total: u32 = w.iter().sum();
        for (i, s) in shares(&seq, w.len()).iter().enumerate() {
            let want = w[i] as f64 / total as f64;
            if w[i] > 100 {
                assert!((s - want).abs() / want < 0.02, "server {i}: {s} vs {want}");
            }
        }
    }

    #[test]
    fn rr_skips_drained_servers() {
        assert_eq!(rr_sequence(&[3, 0, 1, 7]), vec![0, 2, 3]);
        assert!(rr_sequence(&[0, 0]).is_empty());
    }

    #[test]
    fn sh_table_is_weighted_and_long_enough() {
        let w = [1, 2, 3];
        let t = sh_table(&w);
        assert!(t.len() >= SH_MIN_BUCKETS && t.len().is_multiple_of(6));
        assert_proportional(&t, &w, 0.0);
        assert!(sh_table(&[0, 0]).is_empty());
        let big = sh_table(&[60000, 50000]);
        assert!(big.len() <= RING_MAX);
    }

    #[test]
    fn reduce_weights_keeps_ratios() {
        assert_eq!(reduce_weights(&[10, 20, 0], 100), vec![1, 2, 0]);
        let r = reduce_weights(&[3, 1_000_000], 1000);
        assert_eq!(r.iter().sum::<u64>(), 1000);
        assert_eq!(r[0], 1);
    }

    #[test]
    fn ring_dispatches_per_algorithm() {
        let b: Vec<Backend> = (0..3u8).map(|i| Backend { key: vec![i], weight: 1 }).collect();
        assert_eq!(ring(LbAlgo::Rr, &b, None).0, vec![0, 1, 2]);
        assert!(ring(LbAlgo::Lc, &b, None).0.is_empty());
        let (t, m) = ring(LbAlgo::Mh, &b, None);
        assert_eq!(Some(t.len()), m);
        assert!(t.len() >= 300);
    }
}
