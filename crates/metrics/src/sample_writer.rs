//! Writing samples at scrape time, for [`crate::ScrapeTimeMetrics`].

use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// The label set of a metric without labels.
pub type NoLabels = [(&'static str, &'static str); 0];

/// The value of [`NoLabels`].
pub const NO_LABELS: NoLabels = [];

/// Writes whole metric families, descriptor and samples, while the registry is
/// encoded.
///
/// Hides `prometheus-client`'s collector encoder behind the two shapes Haven uses,
/// and appends the help's full stop as [`crate::Registry::register`] does.
pub struct SampleWriter<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl<'a> SampleWriter<'a> {
    pub(crate) fn new(encoder: DescriptorEncoder<'a>) -> Self {
        Self { encoder }
    }

    /// Writes a gauge family: one sample per `(labels, value)`.
    pub fn gauge<L, V>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, V)>,
    ) -> std::fmt::Result
    where
        L: EncodeLabelSet,
        V: EncodeGaugeValue,
    {
        self.family(name, help, MetricType::Gauge, samples, ConstGauge::new)
    }

    /// Writes a counter family (`name` without `_total`, which is appended): one
    /// sample per `(labels, count)`; counts are integers or, for measured totals like
    /// CPU seconds, `f64`.
    pub fn counter<L, V>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, V)>,
    ) -> std::fmt::Result
    where
        L: EncodeLabelSet,
        V: EncodeCounterValue,
    {
        self.family(name, help, MetricType::Counter, samples, ConstCounter::new)
    }

    fn family<L, V, M>(
        &mut self,
        name: &str,
        help: &str,
        metric_type: MetricType,
        samples: impl IntoIterator<Item = (L, V)>,
        metric: impl Fn(V) -> M,
    ) -> std::fmt::Result
    where
        L: EncodeLabelSet,
        M: EncodeMetric,
    {
        let help = format!("{help}.");
        let mut descriptor = self
            .encoder
            .encode_descriptor(name, &help, None, metric_type)?;
        for (labels, value) in samples {
            metric(value).encode(descriptor.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
