//! Output: a human table per scenario, then one JSON line with the same figures.

use serde_json::Value;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(mut micros: Vec<u32>) -> Percentiles {
        if micros.is_empty() {
            return Percentiles::default();
        }
        micros.sort_unstable();
        let at =
            |q: f64| micros[((micros.len() as f64 * q).ceil() as usize).clamp(1, micros.len()) - 1] as f64 / 1000.0;
        Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::json!({"p50_ms": round(self.p50), "p90_ms": round(self.p90), "p99_ms": round(self.p99), "max_ms": round(self.max)})
    }

    pub fn text(&self) -> String {
        format!(
            "p50 {:.2} ms · p90 {:.2} ms · p99 {:.2} ms · max {:.2} ms",
            self.p50, self.p90, self.p99, self.max
        )
    }
}

/// The middle value (the upper one of an even count); 0 when there is none.
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Prints `rows` as a two-column table under a title, then `json` as one line.
pub fn print(title: &str, rows: &[(String, String)], json: &Value) {
    let width = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    println!("\n== {title}");
    for (k, v) in rows {
        println!("  {k:<width$}  {v}");
    }
    println!("{json}");
}

/// A verdict cell: the figure against its target.
pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "✓ meets target"
    } else {
        "✗ misses target"
    }
}

/// Counts of ids lost and doubled in one subscriber's `got` against `expected` (sorted, unique).
pub fn lost_and_doubled(expected: &[i64], got: &[i64]) -> (usize, usize) {
    let mut got = got.to_vec();
    got.sort_unstable();
    let before = got.len();
    got.dedup();
    let doubled = before - got.len();
    let mut lost = 0;
    let mut j = 0;
    for id in expected {
        while j < got.len() && got[j] < *id {
            j += 1;
        }
        if j < got.len() && got[j] == *id {
            j += 1;
        } else {
            lost += 1;
        }
    }
    (lost, doubled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_and_doubled_are_counted_against_the_expected_ids() {
        assert_eq!(lost_and_doubled(&[1, 2, 3, 4], &[4, 2, 2, 1]), (1, 1));
        assert_eq!(lost_and_doubled(&[1, 2], &[1, 2]), (0, 0));
    }

    #[test]
    fn median_is_the_middle_value_and_0_of_nothing() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 4.0);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let p = Percentiles::of((1..=100).map(|x| x * 1000).collect());
        assert_eq!((p.p50, p.p99, p.max), (50.0, 99.0, 100.0));
    }
}
