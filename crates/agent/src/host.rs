//! Host facts for registration (name, OS, CPUs, memory) and cheap load stats for polls.

use drover_core::api::{AgentStats, HostInfo};
use drover_core::labels::Labels;

/// This machine's host name, or `localhost` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".to_string())
}

/// Logical CPUs available to this process.
pub fn cpu_count() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// What the agent tells the server about its machine.
pub fn host_info() -> HostInfo {
    let mem = std::fs::read_to_string("/proc/meminfo")
        .map(|s| parse_meminfo(&s))
        .unwrap_or_default();
    HostInfo {
        hostname: hostname(),
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        cpus: cpu_count(),
        memory_bytes: mem.total,
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Labels every agent has: `os` and `arch`. Configured labels win over these.
pub fn auto_labels(configured: &Labels) -> Labels {
    let mut labels = Labels::new();
    labels.insert("os".into(), std::env::consts::OS.into());
    labels.insert("arch".into(), std::env::consts::ARCH.into());
    labels.extend(configured.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct MemInfo {
    total: u64,
    available: u64,
}

fn parse_meminfo(text: &str) -> MemInfo {
    let kib = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |k| k * 1024)
    };
    MemInfo {
        total: kib("MemTotal:"),
        available: kib("MemAvailable:"),
    }
}

/// `(idle, total)` jiffies from the `cpu` line of `/proc/stat`.
fn parse_cpu_line(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let nums: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    let idle = nums.get(3).copied()? + nums.get(4).copied().unwrap_or(0);
    Some((idle, nums.iter().sum()))
}

/// Samples CPU and memory use; CPU percent is measured between two samples.
#[derive(Debug, Default)]
pub struct StatsSampler {
    last_cpu: Option<(u64, u64)>,
}

impl StatsSampler {
    /// Current stats (CPU 0 on the first call). Reads two small /proc files.
    pub fn sample(&mut self) -> AgentStats {
        let mem = std::fs::read_to_string("/proc/meminfo")
            .map(|s| parse_meminfo(&s))
            .unwrap_or_default();
        let cpu = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_cpu_line(&s));
        let cpu_percent = match (self.last_cpu, cpu) {
            (Some((idle0, total0)), Some((idle1, total1))) if total1 > total0 => {
                let busy = (total1 - total0).saturating_sub(idle1.saturating_sub(idle0));
                100.0 * busy as f64 / (total1 - total0) as f64
            }
            _ => 0.0,
        };
        if cpu.is_some() {
            self.last_cpu = cpu;
        }
        AgentStats {
            cpu_percent,
            memory_used_bytes: mem.total.saturating_sub(mem.available),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_stat_are_parsed() {
        let m =
            parse_meminfo("MemTotal:       16000 kB\nMemFree: 1 kB\nMemAvailable:    4000 kB\n");
        assert_eq!(
            m,
            MemInfo {
                total: 16000 * 1024,
                available: 4000 * 1024
            }
        );
        let c = parse_cpu_line("cpu  10 0 10 70 10 0 0 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!(c, (80, 100));
    }

    #[test]
    fn configured_labels_override_auto_ones() {
        let mut l = Labels::new();
        l.insert("os".into(), "custom".into());
        l.insert("gpu".into(), "a100".into());
        let all = auto_labels(&l);
        assert_eq!(all["os"], "custom");
        assert_eq!(all["gpu"], "a100");
        assert_eq!(all["arch"], std::env::consts::ARCH);
    }

    #[test]
    fn sampler_reports_memory() {
        let mut s = StatsSampler::default();
        let first = s.sample();
        assert!(first.memory_used_bytes > 0);
        let second = s.sample();
        assert!((0.0..=100.0).contains(&second.cpu_percent));
    }
}
