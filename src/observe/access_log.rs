//! The JSON access log: one line per request on stdout. Lines are handed to a writer task
//! through a bounded channel; when stdout cannot keep up, lines are dropped and counted
//! (`portico_access_log_dropped_total`) rather than slowing requests down. At shutdown
//! `flush` waits until every line queued so far is written, so a graceful stop loses none.

use std::time::SystemTime;

use prometheus::IntCounter;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

const QUEUE: usize = 16 * 1024;

#[derive(Clone, Debug)]
pub struct AccessLog {
    tx: Option<mpsc::Sender<Message>>,
    dropped: IntCounter,
}

#[derive(Debug)]
enum Message {
    Line(Vec<u8>),
    /// Write and flush everything before this, then answer.
    Flush(oneshot::Sender<()>),
}

#[derive(Serialize)]
pub struct AccessRecord<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub client_ip: String,
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub upstream: &'a str,
    pub endpoint: &'a str,
    pub status: u16,
    pub duration_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<&'a str>,
    /// The request's trace and server span, when tracing is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<&'a str>,
}

impl AccessLog {
    /// A log that writes to stdout from a background task (needs a Tokio runtime).
    pub fn stdout(dropped: IntCounter) -> AccessLog {
        let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
        tokio::spawn(async move {
            let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
            let mut waiting = Vec::new();
            while let Some(first) = rx.recv().await {
                let mut next = Some(first);
                // Everything queued is written before one flush.
                while let Some(message) = next.take().or_else(|| rx.try_recv().ok()) {
                    match message {
                        Message::Line(line) => {
                            if out.write_all(&line).await.is_err() {
                                return;
                            }
                        }
                        Message::Flush(done) => waiting.push(done),
                    }
                }
                if out.flush().await.is_err() {
                    return;
                }
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
            }
        });
        AccessLog {
            tx: Some(tx),
            dropped,
        }
    }

    pub fn disabled(dropped: IntCounter) -> AccessLog {
        AccessLog { tx: None, dropped }
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn write(&self, record: &AccessRecord<'_>) {
        let Some(tx) = &self.tx else { return };
        let mut line = Vec::with_capacity(256);
        if serde_json::to_writer(&mut line, record).is_err() {
            return;
        }
        line.push(b'\n');
        if tx.try_send(Message::Line(line)).is_err() {
            self.dropped.inc();
        }
    }
}

impl AccessLog {
    /// Waits until every line written before this call is on stdout (at most `within`).
    pub async fn flush(&self, within: std::time::Duration) {
        let Some(tx) = &self.tx else { return };
        let (done, flushed) = oneshot::channel();
        let wait = async {
            if tx.send(Message::Flush(done)).await.is_ok() {
                let _ = flushed.await;
            }
        };
        if tokio::time::timeout(within, wait).await.is_err() {
            tracing::warn!("access log not flushed within {within:?} at shutdown");
        }
    }
}

/// RFC 3339 UTC time with milliseconds, without pulling in a date crate.
pub fn rfc3339_now() -> String {
    rfc3339(SystemTime::now())
}

/// `at` as RFC 3339 UTC with milliseconds (times before the epoch show the epoch).
pub fn rfc3339(at: SystemTime) -> String {
    let now = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil-from-days, Howard Hinnant's algorithm.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::{rfc3339, AccessRecord};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[test]
    fn trace_ids_are_logged_only_when_there_is_a_trace() {
        let mut record = AccessRecord {
            time: "t".into(),
            request_id: "r",
            client_ip: "127.0.0.1".into(),
            method: "GET",
            path: "/",
            route: "api",
            upstream: "b",
            endpoint: "127.0.0.1:1",
            status: 200,
            duration_ms: 1.0,
            bytes_in: 0,
            bytes_out: 0,
            consumer: None,
            trace_id: None,
            span_id: None,
        };
        let line = serde_json::to_value(&record).unwrap();
        assert!(line.get("trace_id").is_none() && line.get("span_id").is_none());
        record.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736");
        record.span_id = Some("00f067aa0ba902b7");
        let line = serde_json::to_value(&record).unwrap();
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(line["span_id"], "00f067aa0ba902b7");
    }

    #[test]
    fn fixed_instants() {
        let at = |secs: u64, millis: u64| {
            rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        // A leap day, and the day after it.
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(951_868_799, 999), "2000-02-29T23:59:59.999Z");
        assert_eq!(at(951_868_800, 0), "2000-03-01T00:00:00.000Z");
        assert_eq!(at(1_709_164_800, 0), "2024-02-29T00:00:00.000Z");
        // Year ends and a far date.
        assert_eq!(at(1_704_067_199, 0), "2023-12-31T23:59:59.000Z");
        assert_eq!(at(4_102_444_800, 0), "2100-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000Z"
        );
        let now = super::rfc3339_now();
        assert_eq!(now.len(), 24);
        assert!(now.as_str() >= rfc3339(SystemTime::now() - Duration::from_secs(60)).as_str());
    }
}
