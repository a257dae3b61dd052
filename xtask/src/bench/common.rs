//! What `bench dataplane` and `bench ipvs` share: the cells of their reports and the
//! bookkeeping of their rounds. One copy, so that the two benches' tables read alike and a
//! fix to one reaches the other.

use std::{collections::BTreeMap, fmt::Write as _};

use anyhow::{Context, Result};

/// `s` as one of `all`, matched by `name` (the name the command line and the report use);
/// the error lists every name, so a typo on the command line shows what would have worked.
pub(crate) fn parse_name<T: Copy>(
    what: &str,
    all: &[T],
    name: fn(T) -> &'static str,
    s: &str,
) -> Result<T> {
    all.iter().copied().find(|x| name(*x) == s).with_context(|| {
        let names: Vec<&str> = all.iter().map(|x| name(*x)).collect();
        format!("unknown {what} {s} ({})", names.join(", "))
    })
}

/// (min, median, max) of `v`; the median of an even count is the upper middle value.
/// None for no values, which the tables print as `-`.
pub(crate) fn min_med_max(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some((v[0], v[v.len() / 2], v[v.len() - 1]))
}

/// A `min/median/max` cell, each divided by `scale` and shown with `prec` decimals; `-`
/// when nothing was measured.
pub(crate) fn fmt3(x: Option<(f64, f64, f64)>, scale: f64, prec: usize) -> String {
    match x {
        Some((a, b, c)) => {
            format!("{:.p$}/{:.p$}/{:.p$}", a / scale, b / scale, c / scale, p = prec)
        }
        None => "-".into(),
    }
}

/// A ratio cell: the row's median director cost over a base variant's (<1: the row is
/// cheaper); `-` when either is missing or the base is zero (no director, nothing to divide
/// by).
pub(crate) fn ratio(row: Option<f64>, base: Option<f64>) -> String {
    match (row, base) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

/// The rows of metric `m`'s table: the variants, in the order given, that have results for
/// it (a variant that failed or was never run for `m` gets no row).
pub(crate) fn measured<M: Ord + Copy, V: Ord + Copy, P>(
    results: &BTreeMap<(M, V), P>,
    m: M,
    variants: &[V],
) -> Vec<V> {
    variants.iter().copied().filter(|v| results.contains_key(&(m, *v))).collect()
}

/// The report's closing lines for the variants that failed: why, and that their rows are
/// missing from the tables.
pub(crate) fn write_failed<V: Copy>(
    r: &mut String,
    failed: &BTreeMap<V, String>,
    name: fn(V) -> &'static str,
) {
    for (v, e) in failed {
        let _ = writeln!(r, "\n{} FAILED (left out of the tables): {e}", name(*v));
    }
}

/// Books one variant's round, after it was measured and torn down: a teardown error is
/// printed only, a failed round is printed and drops the variant (`failed`) from the rounds
/// to come and from the report's tables.
pub(crate) fn settle<V: Ord + Copy>(
    failed: &mut BTreeMap<V, String>,
    v: V,
    name: fn(V) -> &'static str,
    round: usize,
    measured: Result<()>,
    teardown: Result<()>,
) {
    let name = name(v);
    if let Err(e) = teardown {
        println!("  {name}: teardown: {e:#}");
    }
    if let Err(e) = measured {
        println!("  {name} round {}: FAILED: {e:#}", round + 1);
        failed.insert(v, format!("{e:#}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_med_max_takes_the_upper_middle() {
        assert_eq!(min_med_max(vec![]), None);
        assert_eq!(min_med_max(vec![3.0, 1.0, 2.0]), Some((1.0, 2.0, 3.0)));
        assert_eq!(min_med_max(vec![4.0, 1.0, 3.0, 2.0]), Some((1.0, 3.0, 4.0)));
    }

    #[test]
    fn cells_show_dashes_for_what_is_missing() {
        assert_eq!(fmt3(Some((1000.0, 1500.0, 2250.0)), 1e3, 1), "1.0/1.5/2.2");
        assert_eq!(fmt3(None, 1.0, 0), "-");
        assert_eq!(ratio(Some(1.0), Some(4.0)), "0.25");
        assert_eq!(ratio(Some(1.0), Some(0.0)), "-");
        assert_eq!(ratio(None, Some(1.0)), "-");
    }

    #[test]
    fn names_parse_and_list_the_choices() {
        let name = |x: u8| ["a", "b"][x as usize];
        assert_eq!(parse_name("thing", &[0, 1], name, "b").unwrap(), 1);
        let e = parse_name("thing", &[0, 1], name, "c").unwrap_err();
        assert_eq!(e.to_string(), "unknown thing c (a, b)");
    }

    #[test]
    fn rows_keep_the_given_order() {
        let results: BTreeMap<(u8, u8), ()> = [((0, 2), ()), ((0, 1), ()), ((1, 3), ())].into();
        assert_eq!(measured(&results, 0, &[3, 2, 1]), vec![2, 1]);
    }
}
