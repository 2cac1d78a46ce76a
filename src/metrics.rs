//! Prometheus metrics of the controller, registered once in its own registry.
//!
//! Labels are bounded: results and reasons, never image names, tags or digests.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use std::time::Instant;

/// Every metric of the controller.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by `result` (`success`, `error`) and condition `reason`.
    pub reconciles: IntCounterVec,
    /// Reconcile duration in seconds.
    pub reconcile_duration: HistogramVec,
    /// Duration of copies that sent or checked content, by `result`.
    pub copy_duration: HistogramVec,
    /// Blob bytes sent to target registries.
    pub bytes_copied: IntCounter,
    /// Blobs by `outcome`: `copied`, `skipped`, `mounted`.
    pub blobs: IntCounterVec,
    /// Copies in progress.
    pub copies_in_flight: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "pma2docker_reconciles_total",
                "ImageCopy reconciles by result and reason.",
            ),
            &["result", "reason"],
        )
        .expect("valid metric");
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "pma2docker_reconcile_duration_seconds",
                "Time taken by one ImageCopy reconcile.",
            )
            .buckets(prometheus::exponential_buckets(0.01, 4.0, 9).expect("valid buckets")),
            &["result"],
        )
        .expect("valid metric");
        let copy_duration = HistogramVec::new(
            HistogramOpts::new(
                "pma2docker_copy_duration_seconds",
                "Time taken by copies that transferred or checked content.",
            )
            .buckets(prometheus::exponential_buckets(0.1, 3.0, 10).expect("valid buckets")),
            &["result"],
        )
        .expect("valid metric");
        let bytes_copied = IntCounter::new(
            "pma2docker_copied_bytes_total",
            "Blob bytes sent to target registries.",
        )
        .expect("valid metric");
        let blobs = IntCounterVec::new(
            Opts::new(
                "pma2docker_blobs_total",
                "Blobs handled, by outcome: copied, skipped, mounted.",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let copies_in_flight = IntGauge::new("pma2docker_copies_in_flight", "Copies in progress.")
            .expect("valid metric");

        for collector in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_duration.clone()),
            Box::new(copy_duration.clone()),
            Box::new(bytes_copied.clone()),
            Box::new(blobs.clone()),
            Box::new(copies_in_flight.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Metrics {
            registry,
            reconciles,
            reconcile_duration,
            copy_duration,
            bytes_copied,
            blobs,
            copies_in_flight,
        }
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> (String, Vec<u8>) {
        let encoder = TextEncoder::new();
        let mut buffer = Vec::new();
        encoder
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding never fails");
        (encoder.format_type().to_string(), buffer)
    }

    /// Starts timing a reconcile; the time is recorded when the guard is dropped.
    pub fn time_reconcile(&self) -> ReconcileTimer {
        ReconcileTimer {
            metrics: self.clone(),
            start: Instant::now(),
            result: "error",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Records a reconcile's duration on drop, under the result set last.
pub struct ReconcileTimer {
    metrics: Metrics,
    start: Instant,
    result: &'static str,
}

impl ReconcileTimer {
    pub fn succeeded(&mut self) {
        self.result = "success";
    }
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .with_label_values(&[self.result])
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_contains_series() {
        let metrics = Metrics::new();
        metrics
            .reconciles
            .with_label_values(&["success", "Copied"])
            .inc();
        metrics.blobs.with_label_values(&["copied"]).inc_by(3);
        {
            let mut timer = metrics.time_reconcile();
            timer.succeeded();
        }
        let (content_type, body) = metrics.render();
        let text = String::from_utf8(body).unwrap();
        assert!(content_type.starts_with("text/plain"));
        assert!(
            text.contains(r#"pma2docker_reconciles_total{reason="Copied",result="success"} 1"#)
        );
        assert!(text.contains(r#"pma2docker_blobs_total{outcome="copied"} 3"#));
        assert!(
            text.contains(r#"pma2docker_reconcile_duration_seconds_count{result="success"} 1"#)
        );
    }
}
