//! `/metrics`: a [`Report`] in the Prometheus text format (0.0.4), encoded
//! with prometheus-client at scrape time from the counters the pipeline
//! keeps anyway, so collecting them costs the hot path nothing.
//!
//! Names follow Prometheus' conventions: the `thoth_ingest_` prefix, base
//! units in the name (`_bytes`, `_seconds`), `_total` on counters (added
//! by the encoder). Counters count since the daemon started.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::report::Report;

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The report, encoded.
pub fn encode(report: &Report) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("thoth_ingest");
    registry.register_collector(Box::new(Snapshot(report.clone())));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

#[derive(Debug)]
struct Snapshot(Report);

/// One metric's rows: its labels and value.
type Rows<'a> = Vec<(Vec<(&'static str, &'a str)>, f64)>;

fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    kind: MetricType,
    rows: Rows<'_>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit.as_ref(), kind)?;
    for (labels, value) in rows {
        let mut row = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => row.encode_counter::<NoLabelSet, f64, f64>(&value, None)?,
            _ => row.encode_gauge(&value)?,
        }
    }
    Ok(())
}

/// A metric without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    kind: MetricType,
    value: f64,
) -> Result<(), std::fmt::Error> {
    family(encoder, name, help, unit, kind, vec![(Vec::new(), value)])
}

/// Per source: `value` of each.
fn per_source<'a>(r: &'a Report, value: impl Fn(&super::report::SourceReport) -> f64) -> Rows<'a> {
    r.sources
        .iter()
        .map(|s| (vec![("source", s.name.as_str())], value(s)))
        .collect()
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let r = &self.0;
        let e = &mut enc;
        let info = Info::new(vec![("version", r.version.clone())]);
        let m = e.encode_descriptor("build", "The daemon's version.", None, info.metric_type())?;
        info.encode(m)?;
        single(
            e,
            "ready",
            "1 when ready (see /readyz), else 0.",
            None,
            Gauge,
            f64::from(u8::from(r.ready)),
        )?;
        single(
            e,
            "start_time",
            "When the daemon started, in Unix time.",
            Some(Unit::Seconds),
            Gauge,
            r.started_at,
        )?;

        family(
            e,
            "source_lines_read",
            "Lines (records) read by each source.",
            None,
            Counter,
            per_source(r, |s| s.lines as f64),
        )?;
        family(
            e,
            "source_read",
            "Bytes read by each source.",
            Some(Unit::Bytes),
            Counter,
            per_source(r, |s| s.bytes_read as f64),
        )?;
        family(
            e,
            "source_events",
            "Events made from each source's lines.",
            None,
            Counter,
            per_source(r, |s| s.events as f64),
        )?;
        let skipped: Rows<'_> = r
            .sources
            .iter()
            .flat_map(|s| {
                s.skipped.iter().map(|(reason, n)| {
                    (
                        vec![("source", s.name.as_str()), ("reason", reason.as_str())],
                        *n as f64,
                    )
                })
            })
            .collect();
        family(
            e,
            "source_lines_skipped",
            "Lines that made no event, by reason.",
            None,
            Counter,
            skipped,
        )?;
        family(
            e,
            "source_lines_truncated",
            "Lines cut to max_line_bytes.",
            None,
            Counter,
            per_source(r, |s| s.truncated_lines as f64),
        )?;
        family(
            e,
            "source_lines_invalid_utf8",
            "Lines whose invalid UTF-8 bytes were replaced.",
            None,
            Counter,
            per_source(r, |s| s.invalid_utf8_lines as f64),
        )?;
        family(
            e,
            "source_files",
            "Files each source follows now.",
            None,
            Gauge,
            per_source(r, |s| s.files as f64),
        )?;
        family(
            e,
            "source_position",
            "The read positions in each source's followed plain files, summed.",
            Some(Unit::Bytes),
            Gauge,
            per_source(r, |s| s.position_bytes as f64),
        )?;
        family(
            e,
            "source_lag",
            "Bytes between each source's read positions and the ends of its files.",
            Some(Unit::Bytes),
            Gauge,
            per_source(r, |s| s.lag_bytes as f64),
        )?;
        family(
            e,
            "source_waiting_for_room",
            "1 while the source's commit waits for room in a full queue or for disk space.",
            None,
            Gauge,
            per_source(r, |s| f64::from(u8::from(s.waiting_for_room))),
        )?;
        let cursor_age: Rows<'_> = r
            .sources
            .iter()
            .filter_map(|s| {
                s.cursor_age_seconds
                    .map(|a| (vec![("source", s.name.as_str())], a))
            })
            .collect();
        family(
            e,
            "journald_cursor_age",
            "Age of the journal entry at each journald source's committed cursor.",
            Some(Unit::Seconds),
            Gauge,
            cursor_age,
        )?;

        let q = &r.queue;
        single(
            e,
            "events_queued",
            "Events committed to the queue.",
            None,
            Counter,
            q.events_queued as f64,
        )?;
        single(
            e,
            "queue_events",
            "Events waiting for delivery.",
            None,
            Gauge,
            q.events as f64,
        )?;
        single(
            e,
            "queue",
            "Bytes of events waiting for delivery, as stored.",
            Some(Unit::Bytes),
            Gauge,
            q.bytes as f64,
        )?;
        if let Some(age) = q.oldest_event_age_seconds {
            single(
                e,
                "queue_oldest_event_age",
                "Time since the oldest waiting event was queued.",
                Some(Unit::Seconds),
                Gauge,
                age,
            )?;
        }
        single(
            e,
            "dead_lettered_events",
            "Events the API refused, set aside as dead letters.",
            None,
            Counter,
            q.dead_lettered_events as f64,
        )?;
        single(
            e,
            "dropped_events",
            "Events dropped by queue.when_full = drop_oldest.",
            None,
            Counter,
            q.dropped_events as f64,
        )?;

        let d = &r.delivery;
        let answers: Vec<(String, &str, f64)> = d
            .answers
            .iter()
            .map(|(code, n)| (status_class(code), code.as_str(), *n as f64))
            .collect();
        let rows: Rows<'_> = answers
            .iter()
            .map(|(class, code, n)| (vec![("status", *code), ("class", class.as_str())], *n))
            .collect();
        family(
            e,
            "requests",
            "Requests answered, by HTTP status and class (status none: no answer).",
            None,
            Counter,
            rows,
        )?;
        single(
            e,
            "delivered_events",
            "Events the API accepted.",
            None,
            Counter,
            d.delivered_events as f64,
        )?;
        single(
            e,
            "retries",
            "Requests that carried events sent before.",
            None,
            Counter,
            d.retries as f64,
        )?;
        single(
            e,
            "rate_limited",
            "Requests answered 429.",
            None,
            Counter,
            d.rate_limited as f64,
        )?;
        single(
            e,
            "rate_limit_waits",
            "Times a ready batch waited for the request budget or a Retry-After.",
            None,
            Counter,
            d.budget_waits as f64,
        )?;
        single(
            e,
            "requests_in_flight",
            "Requests sent and not yet answered.",
            None,
            Gauge,
            d.in_flight as f64,
        )?;
        single(
            e,
            "budget_requests_limit",
            "Requests the budget allows per window.",
            None,
            Gauge,
            d.budget.limit as f64,
        )?;
        single(
            e,
            "budget_window",
            "The budget's window (with its safety margin).",
            Some(Unit::Seconds),
            Gauge,
            d.budget.window_seconds,
        )?;
        single(
            e,
            "budget_requests_used",
            "Requests started in the budget's window ending now.",
            None,
            Gauge,
            d.budget.used as f64,
        )?;
        if let Some(at) = d.last_success_at {
            single(
                e,
                "last_delivery_time",
                "When the API last accepted a batch, in Unix time.",
                Some(Unit::Seconds),
                Gauge,
                at,
            )?;
        }
        if let Some(eta) = r.drain.eta_seconds {
            single(
                e,
                "drain_eta",
                "Estimated time to deliver what waits, at the budget and batch size.",
                Some(Unit::Seconds),
                Gauge,
                eta,
            )?;
        }
        let redactions: Rows<'_> = r
            .redactions
            .iter()
            .map(|(detector, n)| (vec![("detector", detector.as_str())], *n as f64))
            .collect();
        family(
            e,
            "redactions",
            "Secrets replaced, by detector.",
            None,
            Counter,
            redactions,
        )?;
        Ok(())
    }
}

/// `2xx` for `202`; `none` stays `none`.
fn status_class(code: &str) -> String {
    match code.chars().next() {
        Some(c @ '1'..='5') if code.len() == 3 => format!("{c}xx"),
        _ => "none".to_string(),
    }
}
