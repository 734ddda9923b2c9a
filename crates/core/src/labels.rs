//! Label matching: which agents may run which jobs.

use std::collections::BTreeMap;

/// A set of `key=value` labels.
pub type Labels = BTreeMap<String, String>;

/// True when the agent has every label the job requires, with the same value.
pub fn satisfies(agent: &Labels, required: &Labels) -> bool {
    required.iter().all(|(k, v)| agent.get(k) == Some(v))
}

/// Whether `labels` pass a `key=value` filter (`key` alone: the value is empty).
pub fn matches_filter(labels: &Labels, filter: &str) -> bool {
    let (k, v) = filter.split_once('=').unwrap_or((filter, ""));
    labels.get(k).map(String::as_str) == Some(v)
}

/// `k=v` items joined by `sep`, as lists show labels.
pub fn display(labels: &Labels, sep: &str) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(sep)
}

/// Parses `k=v,k2=v2` (or repeated `k=v` words) into labels; an item without `=` is an error.
pub fn parse(items: &[String]) -> Result<Labels, String> {
    let mut out = Labels::new();
    for item in items.iter().flat_map(|s| s.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("label {item:?} must look like key=value"))?;
        if k.trim().is_empty() {
            return Err(format!("label {item:?} has an empty key"));
        }
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn agent_needs_every_required_label() {
        let agent = l(&[("os", "linux"), ("gpu", "a100")]);
        assert!(satisfies(&agent, &l(&[])));
        assert!(satisfies(&agent, &l(&[("os", "linux")])));
        assert!(satisfies(&agent, &l(&[("os", "linux"), ("gpu", "a100")])));
        assert!(!satisfies(&agent, &l(&[("os", "macos")])));
        assert!(!satisfies(&agent, &l(&[("docker", "true")])));
    }

    #[test]
    fn parses_comma_lists_and_rejects_bare_words() {
        let got = parse(&["a=1,b=2".into(), "c=3".into()]).unwrap();
        assert_eq!(got, l(&[("a", "1"), ("b", "2"), ("c", "3")]));
        assert!(parse(&["gpu".into()]).is_err());
        assert!(parse(&["=x".into()]).is_err());
    }
}
