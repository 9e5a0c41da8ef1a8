//! The JSON access log: one line per request on stdout.
//!
//! Requests format their line and hand it to a writer thread of its own through a
//! bounded queue; when stdout cannot keep up, lines are dropped and counted
//! (`portico_access_log_dropped_total`) rather than slowing requests down. The writer
//! wakes every `TICK` while lines keep coming and writes everything queued with one
//! `write` call, so a busy gateway pays no wake-up or system call per line (the
//! Tokio `stdout()` it replaced made a blocking-pool hop for every flush). When a tick
//! finds nothing it sleeps on the queue until the next line. At shutdown `flush` waits
//! until every line queued so far is written, so a graceful stop loses none.

use std::cell::Cell;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;
use serde::{Serialize, Serializer};
use tokio::sync::oneshot;

const QUEUE: usize = 16 * 1024;
/// How long a line may wait in the queue while the gateway is busy (nginx's buffered
/// log waits up to its `flush=` interval; a second is too long to tail a log).
const TICK: Duration = Duration::from_millis(10);
/// The writer's buffer: a busy tick's lines go out in one `write`.
const WRITE_BUFFER: usize = 64 * 1024;

#[derive(Clone, Debug)]
pub struct AccessLog {
    tx: Option<SyncSender<Message>>,
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
    pub time: Timestamp,
    pub request_id: &'a str,
    pub client_ip: IpAddr,
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
    /// A log that writes to stdout from a thread of its own.
    pub fn stdout(dropped: IntCounter) -> AccessLog {
        let (tx, rx) = mpsc::sync_channel::<Message>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("portico-access-log".into())
            .spawn(move || write_lines(rx, std::io::stdout()));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the access log writer; access log off");
            return AccessLog::disabled(dropped);
        }
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
        let mut line = Vec::with_capacity(320);
        if serde_json::to_writer(&mut line, record).is_err() {
            return;
        }
        line.push(b'\n');
        if tx.try_send(Message::Line(line)).is_err() {
            self.dropped.inc();
        }
    }

    /// Waits until every line written before this call is on stdout (at most `within`).
    pub async fn flush(&self, within: Duration) {
        let Some(tx) = &self.tx else { return };
        let (done, flushed) = oneshot::channel();
        let wait = async {
            // The queue may be full: retry without blocking this thread, and without a
            // blocking-pool task that a stuck stdout would keep the process waiting on.
            let mut marker = Message::Flush(done);
            loop {
                match tx.try_send(marker) {
                    Ok(()) => break,
                    Err(TrySendError::Full(back)) => {
                        marker = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(TrySendError::Disconnected(_)) => return,
                }
            }
            let _ = flushed.await;
        };
        if tokio::time::timeout(within, wait).await.is_err() {
            tracing::warn!("access log not flushed within {within:?} at shutdown");
        }
    }
}

/// The writer thread: returns when every sender is gone or the output fails.
fn write_lines(rx: Receiver<Message>, out: impl std::io::Write) {
    let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, out);
    let mut waiting = Vec::new();
    let mut next = match rx.recv() {
        Ok(message) => Some(message),
        Err(_) => return,
    };
    loop {
        let mut wrote = false;
        while let Some(message) = next.take().or_else(|| rx.try_recv().ok()) {
            match message {
                Message::Line(line) => {
                    if out.write_all(&line).is_err() {
                        return;
                    }
                    wrote = true;
                }
                Message::Flush(done) => waiting.push(done),
            }
        }
        if out.flush().is_err() {
            return;
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
        // Busy: let lines gather for a tick. Quiet: sleep on the queue itself.
        next = if wrote {
            match rx.recv_timeout(TICK) {
                Ok(message) => {
                    std::thread::sleep(TICK);
                    Some(message)
                }
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match rx.recv() {
                Ok(message) => Some(message),
                Err(_) => return,
            }
        };
    }
}

/// The time of a log line, formatted into the line without a `String` of its own.
#[derive(Clone, Copy, Debug)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp(SystemTime::now())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = format_rfc3339(self.0);
        // The formatter writes ASCII digits and separators only.
        serializer.serialize_str(std::str::from_utf8(&text).unwrap_or(""))
    }
}

/// RFC 3339 UTC time with milliseconds, without pulling in a date crate.
pub fn rfc3339_now() -> String {
    rfc3339(SystemTime::now())
}

/// `at` as RFC 3339 UTC with milliseconds (times before the epoch show the epoch).
pub fn rfc3339(at: SystemTime) -> String {
    String::from_utf8_lossy(&format_rfc3339(at)).into_owned()
}

thread_local! {
    /// The last second formatted on this thread and its `YYYY-MM-DDTHH:MM:SS.`: lines
    /// within one second share the calendar arithmetic.
    static LAST_SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
}

fn format_rfc3339(at: SystemTime) -> [u8; 24] {
    let now = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let prefix = LAST_SECOND.with(|last| {
        let (second, prefix) = last.get();
        if second == secs {
            return prefix;
        }
        let prefix = second_prefix(secs);
        last.set((secs, prefix));
        prefix
    });
    let mut text = [0u8; 24];
    text[..20].copy_from_slice(&prefix);
    let millis = now.subsec_millis();
    text[20] = b'0' + (millis / 100) as u8;
    text[21] = b'0' + (millis / 10 % 10) as u8;
    text[22] = b'0' + (millis % 10) as u8;
    text[23] = b'Z';
    text
}

fn second_prefix(secs: u64) -> [u8; 20] {
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
    let y = (yoe + era * 400 + i64::from(mo <= 2)).clamp(0, 9999) as u64;
    let mut out = *b"0000-00-00T00:00:00.";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for i in (0..width).rev() {
            out[at + i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, y);
    put(5, 2, mo as u64);
    put(8, 2, d as u64);
    put(11, 2, h);
    put(14, 2, m);
    put(17, 2, s);
    out
}

#[cfg(test)]
mod tests {
    use super::{rfc3339, AccessRecord};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[test]
    fn trace_ids_are_logged_only_when_there_is_a_trace() {
        let mut record = AccessRecord {
            time: super::Timestamp(UNIX_EPOCH),
            request_id: "r",
            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
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
        assert_eq!(line["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(line["client_ip"], "127.0.0.1");
        record.client_ip = std::net::Ipv6Addr::LOCALHOST.into();
        assert_eq!(serde_json::to_value(&record).unwrap()["client_ip"], "::1");
        record.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736");
        record.span_id = Some("00f067aa0ba902b7");
        let line = serde_json::to_value(&record).unwrap();
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(line["span_id"], "00f067aa0ba902b7");
    }

    /// Lines queued before a flush marker are all written when the marker is answered,
    /// and the writer ends when the last sender is gone.
    #[test]
    fn the_writer_writes_every_line_before_answering_a_flush() {
        #[derive(Clone, Default)]
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Shared {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Shared::default();
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        let writer = {
            let out = out.clone();
            std::thread::spawn(move || super::write_lines(rx, out))
        };
        for i in 0..50 {
            tx.send(super::Message::Line(format!("{i}\n").into_bytes()))
                .unwrap();
        }
        let (done, flushed) = tokio::sync::oneshot::channel();
        tx.send(super::Message::Flush(done)).unwrap();
        flushed.blocking_recv().unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let expected: String = (0..50).map(|i| format!("{i}\n")).collect();
        assert_eq!(text, expected);
        drop(tx);
        writer.join().unwrap();
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
