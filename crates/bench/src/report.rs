//! Figures and their Markdown table.

use serde::Serialize;

/// One measured figure: samples over the runs, an optional baseline from the same run,
/// and the target it is held to.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub unit: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub baseline: Option<f64>,
    /// `median / baseline`.
    pub ratio: Option<f64>,
    pub target: String,
    pub met: Option<bool>,
}

/// A target a figure must meet.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    None,
    AtMost(f64),
    AtLeast(f64),
    RatioAtLeast(f64),
    RatioAtMost(f64),
}

impl Row {
    pub fn new(
        scenario: &str,
        metric: &str,
        unit: &str,
        samples: &[f64],
        baseline: Option<&[f64]>,
        target: Target,
    ) -> Row {
        let (median, min, max) = stats(samples);
        let baseline = baseline.map(|b| stats(b).0);
        let ratio = baseline.filter(|b| *b != 0.0).map(|b| median / b);
        let (target_text, met) = match target {
            Target::None => (String::new(), None),
            Target::AtMost(v) => (format!("≤ {}", fmt(v)), Some(median <= v)),
            Target::AtLeast(v) => (format!("≥ {}", fmt(v)), Some(median >= v)),
            Target::RatioAtLeast(r) => (format!("ratio ≥ {r}"), ratio.map(|x| x >= r)),
            Target::RatioAtMost(r) => (format!("ratio ≤ {r}"), ratio.map(|x| x <= r)),
        };
        Row {
            scenario: scenario.into(),
            metric: metric.into(),
            unit: unit.into(),
            median,
            min,
            max,
            baseline,
            ratio,
            target: target_text,
            met,
        }
    }
}

fn stats(samples: &[f64]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    if s.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let median = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (median, s[0], s[s.len() - 1])
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The table BENCHMARKS.md shows.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from("| scenario | metric | unit | median | min | max | baseline | ratio | target | met |\n|---|---|---|---:|---:|---:|---:|---:|---|---|\n");
    for r in rows {
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.metric,
            r.unit,
            fmt(r.median),
            fmt(r.min),
            fmt(r.max),
            r.baseline.map(fmt).unwrap_or_default(),
            r.ratio.map(|x| format!("{x:.2}")).unwrap_or_default(),
            r.target,
            match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max_and_ratio() {
        let r = Row::new(
            "s",
            "m",
            "x",
            &[3.0, 1.0, 2.0],
            Some(&[4.0, 4.0]),
            Target::RatioAtLeast(0.6),
        );
        assert_eq!((r.median, r.min, r.max), (2.0, 1.0, 3.0));
        assert_eq!(r.ratio, Some(0.5));
        assert_eq!(r.met, Some(false));
        assert!(markdown(&[r])
            .contains("| s | m | x | 2.00 | 1.00 | 3.00 | 4.00 | 0.50 | ratio ≥ 0.6 | **no** |"));
    }
}
