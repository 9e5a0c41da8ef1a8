//! `--scenario https`: the proxies terminate TLS (an RSA 2048 certificate from a CA made
//! at start with rcgen; plain HTTP/1.1 to the backend), three ways in the same run:
//!
//! - kept-alive HTTPS connections from the harness's own load generator (rustls);
//! - a new TCP + TLS connection per request: full handshakes, since the client keeps no
//!   sessions or tickets;
//! - HTTP/2 clients: h2load (20 connections x 10 streams), when installed.
//!
//! Every client (the harness's and h2load) offers one TLS 1.3 suite, AES-128-GCM (what
//! browsers put first), and one group, X25519, so every proxy does the same handshake:
//! rustls would otherwise offer the hybrid post-quantum group first, which Portico's
//! rustls takes and nginx's and HAProxy's OpenSSL 3.0 do not know, and the servers do
//! not all follow the client's order of suites.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use super::drive::{self, Outcome, Proxies, Scenario, Target};
use super::procs::{self, Basics, Pinning, Proc};
use super::report;
use super::{haproxy, nginx, portico_conf};
use crate::Args;

/// The proxies of this mode, by name, each with its HTTPS port.
struct Fleet {
    proxies: Vec<Proxy>,
    notes: Vec<String>,
    /// The CA of the proxies' certificate.
    ca: PathBuf,
    // Last: the proxies stop before their backends.
    _basics: Basics,
}

struct Proxy {
    name: &'static str,
    keep_alive: Target,
    handshake: Target,
    tls_port: u16,
    proc: Proc,
}

impl Proxies for Fleet {
    fn proxy(&self, target: Target) -> Option<&Proc> {
        self.proxies
            .iter()
            .find(|p| p.keep_alive == target || p.handshake == target)
            .map(|p| &p.proc)
    }
}

/// The PEM files of the proxies' certificate.
struct Certificates {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// Certificate and key in one file, as HAProxy's `crt` wants them.
    combined: PathBuf,
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 signed by it, RSA 2048
/// both, as PEM files in `dir`.
fn certificates(dir: &Path) -> Result<Certificates, String> {
    let e = |e: rcgen::Error| e.to_string();
    let rsa =
        || rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048);
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "portico bench https CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rsa().map_err(e)?).map_err(e)?;
    let key = rsa().map_err(e)?;
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into()])
        .map_err(e)?
        .signed_by(&key, &ca)
        .map_err(e)?;
    let files = Certificates {
        ca: dir.join("https-ca.pem"),
        cert: dir.join("https-cert.pem"),
        key: dir.join("https-key.pem"),
        combined: dir.join("https-cert-and-key.pem"),
    };
    let (cert_pem, key_pem) = (leaf.pem(), key.serialize_pem());
    for (path, pem) in [
        (&files.ca, ca.pem()),
        (&files.cert, cert_pem.clone()),
        (&files.key, key_pem.clone()),
        (&files.combined, format!("{cert_pem}{key_pem}")),
    ] {
        std::fs::write(path, pem).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(files)
}

/// TLS 1.3 with AES-128-GCM and X25519 only, HTTP/1.1 by ALPN, trusting `ca`, and no
/// resumption: every connection is a full handshake.
fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    provider.cipher_suites =
        vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256];
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

fn start(args: &Args, pinning: &Pinning) -> Result<Fleet, String> {
    let basics = Basics::start(pinning)?;
    let dir = basics.dir().to_path_buf();
    let certs = &certificates(&dir)?;
    let threads = args.proxy_threads;
    let mut proxies = Vec::new();
    let mut notes = vec![format!(
        "proxies: {threads} worker(s) each (--proxy-threads), logs off, TLS terminated with an RSA 2048 certificate (rcgen CA), plain HTTP/1.1 kept alive to the backend"
    )];

    let tls_port = procs::free_port()?;
    let opts = portico_conf::Options {
        access_log: false,
        tls: Some((tls_port, &certs.cert, &certs.key)),
    };
    let (proc, _) = basics.start_portico(
        "portico https",
        procs::free_port()?,
        &opts,
        Some(threads),
        pinning,
    )?;
    proxies.push(Proxy {
        name: "portico",
        keep_alive: Target::PorticoHttps,
        handshake: Target::PorticoHandshake,
        tls_port,
        proc,
    });

    if !args.no_nginx {
        if let Some((bin, version)) = nginx::find() {
            let tls_port = procs::free_port()?;
            let opts = nginx::Options {
                workers: threads,
                access_log: None,
                tls: Some((tls_port, &certs.cert, &certs.key)),
            };
            let proc = nginx::start(&bin, procs::free_port()?, &basics, &opts, pinning)?;
            notes.push(format!("nginx: {version}, `listen ... ssl http2`"));
            proxies.push(Proxy {
                name: "nginx",
                keep_alive: Target::NginxHttps,
                handshake: Target::NginxHandshake,
                tls_port,
                proc,
            });
        }
    }
    let found = if args.no_haproxy {
        None
    } else {
        haproxy::find()
    };
    if let Some((bin, version)) = found {
        let tls_port = procs::free_port()?;
        let opts = haproxy::Options {
            threads,
            log: false,
            tls: Some((tls_port, &certs.combined)),
        };
        let port = procs::free_port()?;
        let backend = basics.backend.port;
        let proc = haproxy::start(&bin, &dir, port, backend, &opts, None, pinning)?;
        notes.push(format!(
            "haproxy: {version}, `bind ... ssl crt ... alpn h2,http/1.1`"
        ));
        proxies.push(Proxy {
            name: "haproxy",
            keep_alive: Target::HaproxyHttps,
            handshake: Target::HaproxyHandshake,
            tls_port,
            proc,
        });
    } else if !args.no_haproxy {
        eprintln!("haproxy not installed: its https rows are skipped");
        notes.push("haproxy: not installed, skipped".into());
    }
    Ok(Fleet {
        proxies,
        notes,
        ca: certs.ca.clone(),
        _basics: basics,
    })
}

/// What one TLS connection to `port` with `config` negotiated, as a note.
fn negotiated(config: &Arc<rustls::ClientConfig>, port: u16) -> Result<String, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connecting to {port}: {e}"))?;
        let name =
            rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake with {port}: {e}"))?;
        let conn = tls.get_ref().1;
        let unknown = || "?".to_string();
        Ok(format!(
            "{}, {}, {}, ALPN {}",
            conn.protocol_version()
                .map_or_else(unknown, |v| format!("{v:?}")),
            conn.negotiated_cipher_suite()
                .map_or_else(unknown, |s| format!("{:?}", s.suite())),
            conn.negotiated_key_exchange_group()
                .map_or_else(unknown, |g| format!("{:?}", g.name())),
            conn.alpn_protocol()
                .map_or("none".into(), |p| String::from_utf8_lossy(p).into_owned())
        ))
    })
}

/// The sum of h2load's measured segments against one proxy.
struct H2Outcome {
    name: &'static str,
    succeeded: u64,
    failed: u64,
    seconds: f64,
    cpu: f64,
    /// h2load's TLS and ALPN lines of the last run.
    negotiated: String,
}

impl H2Outcome {
    fn rps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.succeeded as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// h2load's counts: (succeeded, failed + errored + timeout, measured seconds, TLS lines).
fn parse_h2load(out: &str) -> Result<(u64, u64, f64, String), String> {
    let seconds = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("finished in "))
        .and_then(|rest| rest.split(',').next())
        .and_then(|d| {
            let d = d.trim();
            let (number, scale) = if let Some(v) = d.strip_suffix("ms") {
                (v, 1e-3)
            } else if let Some(v) = d.strip_suffix("us") {
                (v, 1e-6)
            } else {
                (d.strip_suffix('s')?, 1.0)
            };
            number.parse::<f64>().ok().map(|n| n * scale)
        })
        .ok_or_else(|| format!("no \"finished in\" line in h2load's output:\n{out}"))?;
    let requests = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("requests: "))
        .ok_or_else(|| format!("no \"requests:\" line in h2load's output:\n{out}"))?;
    let count = |what: &str| {
        requests
            .split(',')
            .find_map(|part| part.trim().strip_suffix(what))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let failed = count(" failed") + count(" errored") + count(" timeout");
    let negotiated = out
        .lines()
        .filter(|l| {
            [
                "TLS Protocol:",
                "Cipher:",
                "Server Temp Key:",
                "Application protocol:",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .collect::<Vec<_>>()
        .join(", ");
    Ok((count(" succeeded"), failed, seconds, negotiated))
}

fn h2load_once(
    bin: &Path,
    port: u16,
    length: Duration,
    pinning: &Pinning,
) -> Result<(u64, u64, f64, String), String> {
    let mut cmd = Command::new(bin);
    cmd.args(["-c", "20", "-m", "10", "-t", "1"])
        .args([
            "--tls13-ciphers",
            "TLS_AES_128_GCM_SHA256",
            "--groups",
            "X25519",
        ])
        // The name `localhost` for SNI, as the harness's client sends it.
        .arg(format!("--connect-to=127.0.0.1:{port}"))
        .arg("-D")
        .arg(format!("{}ms", length.as_millis().max(1)))
        .arg(format!("https://localhost:{port}/plain/100b"));
    pinning.pin_with_client(&mut cmd);
    let out = cmd.output().map_err(|e| format!("running h2load: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "h2load against {port} failed ({}): {}{}",
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse_h2load(&text)
}

/// h2load against each proxy in the same alternating rounds as the other measurements,
/// with a warm-up run before each measured one; None when h2load is not installed.
fn h2load_rounds(
    args: &Args,
    fleet: &Fleet,
    pinning: &Pinning,
) -> Result<Option<Vec<H2Outcome>>, String> {
    let Some(bin) = procs::which("h2load") else {
        return Ok(None);
    };
    let mut outcomes: Vec<H2Outcome> = fleet
        .proxies
        .iter()
        .map(|p| H2Outcome {
            name: p.name,
            succeeded: 0,
            failed: 0,
            seconds: 0.0,
            cpu: 0.0,
            negotiated: String::new(),
        })
        .collect();
    let segment = args.duration / args.rounds.max(1);
    for round in 0..args.rounds.max(1) {
        for (p, o) in fleet.proxies.iter().zip(outcomes.iter_mut()) {
            eprintln!(
                "h2load round {}/{}: {} ({segment:?})",
                round + 1,
                args.rounds,
                p.name
            );
            h2load_once(&bin, p.tls_port, args.warmup, pinning)?;
            let before = p.proc.cpu_seconds();
            let (ok, failed, seconds, negotiated) =
                h2load_once(&bin, p.tls_port, segment, pinning)?;
            o.cpu += p.proc.cpu_seconds() - before;
            o.succeeded += ok;
            o.failed += failed;
            o.seconds += seconds;
            o.negotiated = negotiated;
        }
    }
    Ok(Some(outcomes))
}

fn h2load_table(outcomes: &[H2Outcome]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| target | req/s | proxy CPU µs / req | req/s vs nginx | CPU / req vs nginx | failed | negotiated |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
    let cpu = |o: &H2Outcome| (o.succeeded > 0).then(|| o.cpu / o.succeeded as f64 * 1e6);
    let nginx = outcomes.iter().find(|o| o.name == "nginx");
    for o in outcomes {
        let vs = match nginx.map(H2Outcome::rps) {
            Some(n) if n > 0.0 => format!("{:.2}", o.rps() / n),
            _ => "–".into(),
        };
        let cpu_vs = match (cpu(o), nginx.and_then(cpu)) {
            (Some(c), Some(n)) if n > 0.0 => format!("{:.2}", c / n),
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {} h2load | {:.0} | {} | {vs} | {cpu_vs} | {} | {} |",
            o.name,
            o.rps(),
            cpu(o).map_or("–".into(), |c| format!("{c:.1}")),
            o.failed,
            o.negotiated
        );
    }
    out
}

/// Measures the three HTTPS loads, and returns the report and the load generator's
/// outcomes (keep-alive and handshakes).
pub fn run(args: &Args, pinning: &Pinning) -> Result<(String, Vec<Outcome>), String> {
    let mut fleet = start(args, pinning)?;
    let config = client_config(&fleet.ca)?;
    for p in &fleet.proxies {
        let n = negotiated(&config, p.tls_port)?;
        fleet.notes.push(format!("{} negotiates {n}", p.name));
    }
    let mut scenarios = Vec::new();
    for fresh in [false, true] {
        for p in &fleet.proxies {
            let target = if fresh { p.handshake } else { p.keep_alive };
            let mut s = Scenario::plain_get(target, p.tls_port);
            s.tls = Some(config.clone());
            s.fresh = fresh;
            scenarios.push(s);
        }
    }
    let results = drive::measure(args, &fleet, &scenarios, drive::Pacing::Closed)?;
    let h2 = h2load_rounds(args, &fleet, pinning)?;

    let mut notes = fleet.notes.clone();
    notes.push("clients: TLS 1.3, TLS13_AES_128_GCM_SHA256 and X25519 only, server name localhost; the harness's (rustls) keeps no sessions".into());
    let mut out = report::mode_header(
        "Portico load run: TLS terminated by the proxy",
        args,
        pinning,
        &notes,
    );
    let _ = writeln!(
        out,
        "#### HTTPS keep-alive ({} connections, GET 100 B, HTTP/1.1)\n",
        args.connections
    );
    out.push_str(&report::proxy_table(&results, "req/s", |t| {
        fleet.proxies.iter().any(|p| p.keep_alive == t)
    }));
    let _ = writeln!(
        out,
        "\n#### Full handshakes ({} connectors, a new TCP + TLS connection per GET 100 B, `Connection: close`; CPU includes the request)\n",
        args.connections
    );
    out.push_str(&report::proxy_table(&results, "handshakes/s", |t| {
        fleet.proxies.iter().any(|p| p.handshake == t)
    }));
    out.push_str("\n#### HTTP/2 clients (h2load -c 20 -m 10 -t 1 -D, GET 100 B)\n\n");
    match h2 {
        Some(h2) => out.push_str(&h2load_table(&h2)),
        None => {
            eprintln!("h2load not installed: the HTTP/2 measurement is skipped");
            out.push_str("skipped: h2load is not installed (apt-get install nghttp2-client)\n");
        }
    }
    Ok((out, results))
}
