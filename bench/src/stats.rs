//! Order statistics of a sample: median, p99 and max (nearest-rank percentiles).

use serde::Serialize;

/// Median, p99 and max of a sample, in the sample's unit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Summary {
    /// Number of values.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile (nearest rank; equals the max below 100 values).
    pub p99: f64,
    /// Largest value.
    pub max: f64,
    /// Smallest value.
    pub min: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// The nearest-rank `q` quantile (0 < q ≤ 1) of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Summary {
    /// Summarises `values` (any order; NaNs are dropped).
    pub fn of(values: &[f64]) -> Summary {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return Summary::default();
        }
        v.sort_by(f64::total_cmp);
        Summary {
            n: v.len(),
            p50: quantile(&v, 0.5),
            p99: quantile(&v, 0.99),
            max: v[v.len() - 1],
            min: v[0],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }

    /// The same summary with every value multiplied by `k` (unit change).
    pub fn scaled(self, k: f64) -> Summary {
        Summary {
            n: self.n,
            p50: self.p50 * k,
            p99: self.p99 * k,
            max: self.max * k,
            min: self.min * k,
            mean: self.mean * k,
        }
    }
}

/// `a / b`, or 0 when `b` is 0 (a ratio that cannot be formed).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Rounds to 3 significant decimals for printing and JSON.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&v);
        assert_eq!(s.p50, 50.0);
        assert_eq!(s.p99, 99.0);
        assert_eq!(s.max, 100.0);
        assert_eq!(s.min, 1.0);
        let s = Summary::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.p50, s.p99, s.max), (2.0, 3.0, 3.0));
        assert_eq!(Summary::of(&[]).n, 0);
        assert_eq!(ratio(1.0, 0.0), 0.0);
        assert_eq!(ratio(10.0, 4.0), 2.5);
    }
}
