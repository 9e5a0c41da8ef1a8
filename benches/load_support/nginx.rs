//! nginx as the reference proxy: its config (the same routes as Portico's measured plain
//! and HTTPS-upstream ones) and its process.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::procs::{self, Basics, Pinning, Proc};

/// What differs between the harness's nginx processes.
pub struct Options<'a> {
    pub workers: usize,
    /// The access log file (buffered, JSON lines with Portico's fields); None: off.
    pub access_log: Option<&'a Path>,
    /// An HTTPS (and HTTP/2) listener: its port and the certificate and key PEM files.
    pub tls: Option<(u16, &'a Path, &'a Path)>,
}

/// Portico's access-log fields, each from the nearest nginx variable. nginx has no route
/// or upstream names for a `proxy_pass` to an upstream block, so those are the literal
/// names of Portico's equivalents.
const LOG_FORMAT: &str = r#"log_format json_fields escape=json '{"time":"$time_iso8601","request_id":"$request_id","client_ip":"$remote_addr","method":"$request_method","path":"$request_uri","route":"plain","upstream":"backend","endpoint":"$upstream_addr","status":$status,"duration_ms":$request_time,"bytes_in":$request_length,"bytes_out":$bytes_sent}';"#;

/// nginx as a keep-alive reverse proxy equivalent to Portico's plain route.
pub fn config(dir: &Path, port: u16, basics: &Basics, opts: &Options<'_>) -> String {
    let d = dir.display();
    let (backend, tls, ca) = (
        basics.backend.port,
        basics.backend_tls_port,
        basics.ca_file.display(),
    );
    let workers = opts.workers;
    let access_log = match opts.access_log {
        Some(file) => format!(
            "{LOG_FORMAT}\n    access_log {} json_fields buffer=64k flush=1s;",
            file.display()
        ),
        None => "access_log off;".into(),
    };
    let tls_listener = match opts.tls {
        Some((tls_port, cert, key)) => format!(
            // TLS 1.3 is named: nginx before 1.23.4 leaves it out of its default list.
            "listen 127.0.0.1:{tls_port} ssl http2 reuseport;\n        ssl_protocols TLSv1.2 TLSv1.3;\n        ssl_certificate {};\n        ssl_certificate_key {};",
            cert.display(),
            key.display()
        ),
        None => String::new(),
    };
    format!(
        r#"daemon off;
master_process on;
worker_processes {workers};
pid {d}/nginx-{port}.pid;
error_log {d}/error-{port}.log warn;
user root;
events {{ worker_connections 8192; }}
http {{
    {access_log}
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 256;
    }}
    upstream backend_tls {{
        server 127.0.0.1:{tls};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        {tls_listener}
        location /plain/ {{
            proxy_pass http://backend/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering on;
        }}
        location /tls/ {{
            proxy_pass https://backend_tls/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;
            proxy_buffering on;
        }}
    }}
}}
"#
    )
}

/// The nginx binary and its version line, or None when it is not installed.
pub fn find() -> Option<(PathBuf, String)> {
    let bin = procs::which("nginx")?;
    let version = Command::new(&bin)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_else(|| "nginx (version unknown)".into());
    Some((bin, version))
}

/// An nginx on `port` (and the TLS port of `opts`), pinned with the proxies, once it
/// listens. Its config goes to a file named after the port in the harness directory.
pub fn start(
    bin: &Path,
    port: u16,
    basics: &Basics,
    opts: &Options<'_>,
    pinning: &Pinning,
) -> Result<Proc, String> {
    let dir = basics.dir();
    let conf = dir.join(format!("nginx-{port}.conf"));
    std::fs::write(&conf, config(dir, port, basics, opts))
        .map_err(|e| format!("{}: {e}", conf.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("-p").arg(dir).arg("-c").arg(&conf);
    pinning.pin_child(&mut cmd);
    let mut p = procs::spawn("nginx", port, cmd, None)?;
    p.wait_ready(port, "nginx")?;
    if let Some((tls_port, _, _)) = opts.tls {
        p.wait_ready(tls_port, "nginx (https)")?;
    }
    Ok(p)
}
