//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, §3.4): a lookup table of prime size
//! `M` where each backend fills slots in the order of its own permutation
//! `(offset + j * skip) mod M`, taking turns. Removing one of `N` backends moves about `1/N`
//! of the table (the removed backend's share) and little else, so flows hashed by client stay
//! where they were — also across directors, which compute the same table from the same
//! configuration (the hash is specified here, not `std`'s).
//!
//! Weights change how often a backend takes a turn (proportional to its weight).

/// Table sizes: primes, each about double the previous.
pub const SIZES: [usize; 9] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521];

/// The table size for a service whose configuration lists `n` real servers: the smallest of
/// [`SIZES`] with at least 100 slots per server (the largest for huge `n`). A function of the
/// configuration alone, never of what was applied before: two directors with the same
/// configuration build the same table, whatever servers each has seen come and go; and a
/// server going down (or coming back) keeps the size, so it moves only its own share.
pub fn table_size(n: usize) -> usize {
    let need = 100 * n.max(1);
    SIZES.iter().copied().find(|&m| m >= need).unwrap_or(SIZES[SIZES.len() - 1])
}

/// FNV-1a over `bytes` starting from `seed`, then the splitmix64 finalizer (FNV alone mixes
/// its low bits poorly for keys that differ in one byte).
pub fn hash64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

const SEED_OFFSET: u64 = 0x6d61_676c_6576_3031; // "maglev01"
const SEED_SKIP: u64 = 0x6d61_676c_6576_3032; // "maglev02"

/// The Maglev table of size `m` (prime) over `backends` = (identity, weight): entry `k` is the
/// index of the backend serving slot `k`. Backends with weight 0 get no slots; empty if none
/// has a weight.
pub fn table(backends: &[(&[u8], u32)], m: usize) -> Vec<usize> {
    assert!(m >= 2, "table size must be a prime >= 2");
    let live: Vec<usize> = (0..backends.len()).filter(|&i| backends[i].1 > 0).collect();
    if live.is_empty() {
        return Vec::new();
    }
    let offset: Vec<usize> =
        live.iter().map(|&i| (hash64(SEED_OFFSET, backends[i].0) % m as u64) as usize).collect();
    let skip: Vec<usize> = live
        .iter()
        .map(|&i| (hash64(SEED_SKIP, backends[i].0) % (m as u64 - 1)) as usize + 1)
        .collect();
    let wmax = live.iter().map(|&i| backends[i].1 as u64).max().unwrap();
    let mut next = vec![0usize; live.len()];
    let mut credit = vec![0u64; live.len()];
    let mut entry = vec![usize::MAX; m];
    let mut filled = 0;
    while filled < m {
        for k in 0..live.len() {
            // A backend takes weight/max_weight turns per round on average.
            credit[k] += backends[live[k]].1 as u64;
            if credit[k] < wmax {
                continue;
            }
            credit[k] -= wmax;
            let mut c = (offset[k] + next[k] * skip[k]) % m;
            while entry[c] != usize::MAX {
                next[k] += 1;
                c = (offset[k] + next[k] * skip[k]) % m;
            }
            entry[c] = live[k];
            next[k] += 1;
            filled += 1;
            if filled == m {
                break;
            }
        }
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_prime(n: usize) -> bool {
        n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
    }

    fn keys(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("198.18.2.{}:80", i + 10).into_bytes()).collect()
    }

    fn build(keys: &[Vec<u8>], weights: &[u32], m: usize) -> Vec<usize> {
        let b: Vec<(&[u8], u32)> =
            keys.iter().zip(weights).map(|(k, &w)| (k.as_slice(), w)).collect();
        table(&b, m)
    }

    #[test]
    fn sizes_are_prime_and_hold_100_slots_per_backend() {
        assert!(SIZES.iter().all(|&m| is_prime(m)));
        for n in 1..=256 {
            let m = table_size(n);
            assert!(m >= 100 * n, "n={n} m={m}");
        }
        assert_eq!((table_size(3), table_size(10), table_size(11)), (509, 1021, 2039));
    }

    #[test]
    fn table_is_full_and_balanced() {
        let k = keys(7);
        let m = table_size(7);
        let t = build(&k, &[1; 7], m);
        assert_eq!(t.len(), m);
        let mut count = [0usize; 7];
        for &e in &t {
            count[e] += 1;
        }
        let ideal = m as f64 / 7.0;
        for c in count {
            assert!((c as f64 - ideal).abs() / ideal < 0.05, "{count:?}");
        }
    }

    #[test]
    fn weights_shape_the_shares() {
        let k = keys(3);
        let m = table_size(3).max(4093);
        let t = build(&k, &[1, 2, 0], m);
        let a = t.iter().filter(|&&e| e == 0).count() as f64;
        let b = t.iter().filter(|&&e| e == 1).count() as f64;
        assert!(!t.contains(&2), "weight 0 gets nothing");
        assert!((b / a - 2.0).abs() < 0.05, "ratio {}", b / a);
    }

    /// Removing one of N backends changes about 1/N of the table: the removed backend's slots
    /// and very few others.
    #[test]
    fn removal_disrupts_about_one_nth() {
        for n in [3usize, 5, 10, 20, 50] {
            let k = keys(n);
            let m = table_size(n);
            let before = build(&k, &vec![1; n], m);
            let removed = n / 2;
            let mut w = vec![1u32; n];
            w[removed] = 0;
            // Same size (the configuration still lists the removed server: it is down).
            let after = build(&k, &w, m);
            assert_eq!(after.len(), m);
            let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            let collateral =
                before.iter().zip(&after).filter(|(a, b)| a != b && **a != removed).count();
            let frac = changed as f64 / m as f64;
            let ideal = 1.0 / n as f64;
            assert!(frac < ideal * 1.5 + 0.01, "n={n}: changed {frac:.3}, ideal {ideal:.3}");
            assert!(
                (collateral as f64 / m as f64) < 0.5 * ideal + 0.01,
                "n={n}: {collateral} slots of surviving backends moved"
            );
        }
    }

    #[test]
    fn hash_is_stable() {
        // The table must be identical on every director: pin the hash.
        assert_eq!(hash64(0, b""), 0xf52a_15e9_a9b5_e89b);
        let k = keys(3);
        let t = build(&k, &[1, 1, 1], 251);
        assert_eq!(&t[..12], &[0, 2, 1, 1, 1, 2, 2, 0, 1, 1, 2, 0]);
        assert_ne!(hash64(SEED_OFFSET, b"a"), hash64(SEED_SKIP, b"a"));
    }
}
