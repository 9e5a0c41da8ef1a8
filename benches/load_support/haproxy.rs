//! HAProxy as a second reference proxy (optional: CI does not install it): its config,
//! equivalent to nginx's plain route, and its process, run in the foreground (`-db`) so
//! the harness's process group holds it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::procs::{self, Pinning, Proc};

/// What differs between the harness's HAProxy processes.
pub struct Options<'a> {
    pub threads: usize,
    /// The access log, one line per request on stdout (which the harness sends to a file).
    pub log: bool,
    /// An HTTPS (and HTTP/2) listener: its port and one PEM with certificate and key.
    pub tls: Option<(u16, &'a Path)>,
}

/// Portico's access-log fields from HAProxy's log variables (`%Ta`, the active time, is
/// the nearest to Portico's `duration_ms`). `+E` escapes quotes and backslashes in the
/// one field a client controls.
const LOG_FORMAT: &str = r#"log-format "{\"time\":\"%trg\",\"request_id\":\"%ID\",\"client_ip\":\"%ci\",\"method\":\"%HM\",\"path\":\"%{+E}HU\",\"route\":\"plain\",\"upstream\":\"%b\",\"endpoint\":\"%si:%sp\",\"status\":%ST,\"duration_ms\":%Ta,\"bytes_in\":%U,\"bytes_out\":%B}""#;

/// HAProxy as a keep-alive reverse proxy equivalent to nginx's `/plain/` location:
/// connections to the backend kept and shared (`http-reuse always`, like nginx's
/// `keepalive` pool), the prefix stripped, `X-Forwarded-For` added. `maxconn` stays far
/// above the harness's connections but low enough that the descriptors HAProxy reserves
/// for it (twice as many, and more) fit a hard limit of 20 000, or it refuses to start.
pub fn config(port: u16, backend_port: u16, opts: &Options<'_>) -> String {
    let threads = opts.threads;
    let (global_log, defaults_log) = if opts.log {
        (
            "log stdout format raw local0".to_string(),
            // `dontlognull`, as HAProxy's packaged config has it: the harness's own
            // "is it listening" connections carry no request.
            format!("log global\n    option dontlognull\n    {LOG_FORMAT}"),
        )
    } else {
        (String::new(), "no log".to_string())
    };
    let tls_bind = match opts.tls {
        Some((tls_port, pem)) => format!(
            "bind 127.0.0.1:{tls_port} ssl crt {} alpn h2,http/1.1",
            pem.display()
        ),
        None => String::new(),
    };
    format!(
        r#"global
    nbthread {threads}
    maxconn 4096
    {global_log}
defaults
    mode http
    {defaults_log}
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend fe
    bind 127.0.0.1:{port}
    {tls_bind}
    unique-id-format %[uuid()]
    use_backend plain if {{ path_beg /plain/ }}
backend plain
    http-request replace-path /plain(/.*) \1
    option forwardfor
    server backend 127.0.0.1:{backend_port}
"#
    )
}

/// The haproxy binary and its version line, or None when it is not installed.
pub fn find() -> Option<(PathBuf, String)> {
    let bin = procs::which("haproxy")?;
    let version = Command::new(&bin)
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "HAProxy (version unknown)".into());
    Some((bin, version))
}

/// A HAProxy on `port` (and the TLS port of `opts`), pinned with the proxies, once it
/// listens; its stdout (the log, when on) goes to `log_file`. The config is checked first
/// so a mistake in it is reported with HAProxy's words instead of as a listener that never
/// came up.
pub fn start(
    bin: &Path,
    dir: &Path,
    port: u16,
    backend_port: u16,
    opts: &Options<'_>,
    log_file: Option<&Path>,
    pinning: &Pinning,
) -> Result<Proc, String> {
    let conf = dir.join(format!("haproxy-{port}.cfg"));
    std::fs::write(&conf, config(port, backend_port, opts))
        .map_err(|e| format!("{}: {e}", conf.display()))?;
    let check = Command::new(bin)
        .arg("-c")
        .arg("-q")
        .arg("-f")
        .arg(&conf)
        .output()
        .map_err(|e| format!("haproxy -c: {e}"))?;
    if !check.status.success() {
        return Err(format!(
            "haproxy refused {}: {}",
            conf.display(),
            String::from_utf8_lossy(&check.stderr).trim()
        ));
    }
    let mut cmd = Command::new(bin);
    cmd.arg("-db").arg("-f").arg(&conf);
    pinning.pin_child(&mut cmd);
    let mut p = procs::spawn("haproxy", port, cmd, log_file)?;
    p.wait_ready(port, "haproxy")?;
    if let Some((tls_port, _)) = opts.tls {
        p.wait_ready(tls_port, "haproxy (https)")?;
    }
    Ok(p)
}
