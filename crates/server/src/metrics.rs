//! Prometheus metrics: what an operator counts.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The server's metrics; gauges of stored state are refreshed on each scrape.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub jobs: IntGaugeVec,
    pub agents_online: IntGauge,
    /// Agent long-polls currently waiting for work.
    pub polls_waiting: IntGauge,
    pub submit_to_start: Histogram,
    pub job_duration: HistogramVec,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    /// Agents providers started, failed starts, and agents they run now.
    pub provider_starts: IntCounterVec,
    pub provider_failures: IntCounterVec,
    pub provider_agents: IntGaugeVec,
    /// 1 while this server does the singleton duties (of several on one database).
    pub leader: IntGauge,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let jobs = IntGaugeVec::new(
            Opts::new("drover_jobs", "Jobs by state and queue"),
            &["state", "queue"],
        )
        .expect("metric");
        let agents_online = IntGauge::new(
            "drover_agents_online",
            "Agents that polled within the lease TTL",
        )
        .expect("metric");
        let polls_waiting =
            IntGauge::new("drover_polls_waiting", "Agent long-polls waiting for work")
                .expect("metric");
        let submit_to_start = Histogram::with_opts(
            HistogramOpts::new(
                "drover_submit_to_start_seconds",
                "Time from a job being due to its process starting",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("metric");
        let job_duration = HistogramVec::new(
            HistogramOpts::new(
                "drover_job_duration_seconds",
                "Run time of finished attempts",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["outcome"],
        )
        .expect("metric");
        let http_requests = IntCounterVec::new(
            Opts::new("drover_http_requests_total", "HTTP requests"),
            &["method", "route", "status"],
        )
        .expect("metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "drover_http_request_duration_seconds",
                "HTTP request latency (long-polls included)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method", "route"],
        )
        .expect("metric");
        let provider_starts = IntCounterVec::new(
            Opts::new("drover_provider_starts_total", "Agents a provider started"),
            &["provider"],
        )
        .expect("metric");
        let provider_failures = IntCounterVec::new(
            Opts::new(
                "drover_provider_failures_total",
                "Agent starts that failed (exited or did not register in time)",
            ),
            &["provider"],
        )
        .expect("metric");
        let provider_agents = IntGaugeVec::new(
            Opts::new(
                "drover_provider_agents",
                "Agents a provider runs now (starting, running or stopping)",
            ),
            &["provider"],
        )
        .expect("metric");
        let leader = IntGauge::new(
            "drover_leader",
            "1 while this server runs the lease reaper, provisioner and retention",
        )
        .expect("metric");
        // Show every outcome's series from the start, so dashboards never see gaps.
        for outcome in ["succeeded", "failed", "timed_out", "canceled"] {
            job_duration.with_label_values(&[outcome]);
        }
        for c in [
            Box::new(jobs.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(agents_online.clone()),
            Box::new(polls_waiting.clone()),
            Box::new(submit_to_start.clone()),
            Box::new(job_duration.clone()),
            Box::new(http_requests.clone()),
            Box::new(http_duration.clone()),
            Box::new(provider_starts.clone()),
            Box::new(provider_failures.clone()),
            Box::new(provider_agents.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Metrics {
            registry,
            jobs,
            agents_online,
            polls_waiting,
            submit_to_start,
            job_duration,
            http_requests,
            http_duration,
            provider_starts,
            provider_failures,
            provider_agents,
            leader,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encode metrics");
        String::from_utf8(buf).expect("metrics are UTF-8")
    }
}
