//! Checks of the `consul:` section and the resilience keys of an upstream, by YAML path.
//! Called from `config::validate`; reuses the parsers the runtime uses.

use http::Method;

use crate::config::{Config, UpstreamConfig};
use crate::upstream::discovery::consul;
use crate::wire::tls::{ClientTls, ClientTlsError, ClientTlsSettings, PemError};

/// Longest blocking-query wait Consul accepts.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// `(path, message)` for every problem found.
pub fn problems(config: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut push = |path: String, message: String| out.push((path, message));
    if let Some(c) = &config.consul {
        if let Err(e) = consul::parse_address(&c.address) {
            push("consul.address".into(), e);
        }
        if c.wait.0.is_zero() || c.wait.0 > MAX_WAIT {
            push(
                "consul.wait".into(),
                "must be above zero and at most 10m".into(),
            );
        }
        if let Some(t) = &c.token {
            if http::HeaderValue::from_str(t).is_err() {
                push("consul.token".into(), "not a valid header value".into());
            }
        }
        let settings = ClientTlsSettings {
            ca_file: c.ca_file.as_deref(),
            client_cert: c.client_cert.as_deref(),
            client_key: c.client_key.as_deref(),
            ..ClientTlsSettings::default()
        };
        let https = c.address.starts_with("https://");
        if !https && (c.ca_file.is_some() || c.client_cert.is_some() || c.client_key.is_some()) {
            push(
                "consul.address".into(),
                "ca_file, client_cert and client_key need an https:// address".into(),
            );
        } else if https {
            if let Err(e) = ClientTls::build(&settings) {
                push(tls_path("consul", &settings, &e), e.to_string());
            }
        }
    }
    for (name, up) in &config.upstreams {
        upstream(
            &format!("upstreams.{name}"),
            up,
            config.consul.is_some(),
            &mut push,
        );
    }
    out
}

/// The YAML path of a TLS problem: the file it is about, else the section.
fn tls_path(section: &str, settings: &ClientTlsSettings<'_>, e: &ClientTlsError) -> String {
    let file = match e {
        ClientTlsError::Pem(
            PemError::Read { path, .. }
            | PemError::NoCertificate { path }
            | PemError::NoKey { path },
        )
        | ClientTlsError::BadCa { path, .. } => Some(path.as_str()),
        _ => None,
    };
    let field = match (e, file) {
        (ClientTlsError::BadServerName(_), _) => "server_name",
        (ClientTlsError::ClientCert(_) | ClientTlsError::HalfClientCert, _) => "client_key",
        (_, Some(f)) if Some(f) == settings.ca_file => "ca_file",
        (_, Some(f)) if Some(f) == settings.client_cert => "client_cert",
        (_, Some(f)) if Some(f) == settings.client_key => "client_key",
        _ => return section.to_string(),
    };
    format!("{section}.{field}")
}

/// The upstreams whose certificates are not verified, for `portico check` to warn about.
pub fn insecure_upstreams(config: &Config) -> Vec<String> {
    config
        .upstreams
        .iter()
        .filter(|(_, up)| up.tls.as_ref().is_some_and(|t| t.insecure_skip_verify))
        .map(|(name, _)| format!("upstreams.{name}.tls.insecure_skip_verify"))
        .collect()
}

fn upstream(p: &str, up: &UpstreamConfig, has_consul: bool, push: &mut impl FnMut(String, String)) {
    use crate::config::UpstreamProtocol;
    match (up.protocol, up.tls.is_some()) {
        (UpstreamProtocol::H2, false) => push(
            format!("{p}.protocol"),
            "h2 needs tls: (HTTP/2 over TLS with ALPN h2); for HTTP/2 without TLS use h2c".into(),
        ),
        (UpstreamProtocol::H2c, true) => push(
            format!("{p}.protocol"),
            "h2c is HTTP/2 without TLS; with tls: use h2".into(),
        ),
        (UpstreamProtocol::Auto, false) => push(
            format!("{p}.protocol"),
            "auto chooses by ALPN in the TLS handshake: it needs tls: (for HTTP/2 without TLS use h2c)".into(),
        ),
        _ => {}
    }
    if let Some(tls) = &up.tls {
        let settings = ClientTlsSettings {
            ca_file: tls.ca_file.as_deref(),
            client_cert: tls.client_cert.as_deref(),
            client_key: tls.client_key.as_deref(),
            server_name: tls.server_name.as_deref(),
            insecure_skip_verify: tls.insecure_skip_verify,
            alpn: &[],
        };
        if let Err(e) = ClientTls::build(&settings) {
            push(tls_path(&format!("{p}.tls"), &settings, &e), e.to_string());
        }
    }
    if let Some(d) = &up.discovery {
        if !has_consul {
            push(
                format!("{p}.discovery"),
                "discovery needs the consul: section".into(),
            );
        }
        if !up.targets.is_empty() {
            push(
                format!("{p}.targets"),
                "targets and discovery are exclusive".into(),
            );
        }
        if d.consul.service.trim().is_empty() {
            push(
                format!("{p}.discovery.consul.service"),
                "must not be empty".into(),
            );
        }
    }
    if let Some(r) = &up.retries {
        if r.attempts == 0 || r.attempts > 10 {
            push(
                format!("{p}.retries.attempts"),
                "must be 1 to 10 (tries in all, the first included)".into(),
            );
        }
        if r.per_try_timeout.is_some_and(|d| d.0.is_zero()) {
            push(
                format!("{p}.retries.per_try_timeout"),
                "must be above zero".into(),
            );
        }
        if let Err(e) = super::retry::Conditions::parse(&r.on) {
            push(format!("{p}.retries.on"), e);
        }
        for (i, m) in r.methods.iter().enumerate() {
            if Method::from_bytes(m.to_ascii_uppercase().as_bytes()).is_err() {
                push(
                    format!("{p}.retries.methods[{i}]"),
                    format!("invalid method {m:?}"),
                );
            }
        }
    }
    if let Some(o) = &up.outlier_detection {
        if o.consecutive_errors == 0 {
            push(
                format!("{p}.outlier_detection.consecutive_errors"),
                "must be at least 1".into(),
            );
        }
        if o.base_ejection.0.is_zero() {
            push(
                format!("{p}.outlier_detection.base_ejection"),
                "must be above zero".into(),
            );
        }
        if o.interval.0.is_zero() {
            push(
                format!("{p}.outlier_detection.interval"),
                "must be above zero".into(),
            );
        }
    }
    if let Some(h) = &up.health_check {
        if !h.path.starts_with('/') || h.path.parse::<http::uri::PathAndQuery>().is_err() {
            push(
                format!("{p}.health_check.path"),
                format!("invalid path {:?} (must start with /)", h.path),
            );
        }
        for (field, zero) in [
            ("interval", h.interval.0.is_zero()),
            ("timeout", h.timeout.0.is_zero()),
        ] {
            if zero {
                push(
                    format!("{p}.health_check.{field}"),
                    "must be above zero".into(),
                );
            }
        }
        for (field, n) in [
            ("healthy_threshold", h.healthy_threshold),
            ("unhealthy_threshold", h.unhealthy_threshold),
        ] {
            if n == 0 {
                push(
                    format!("{p}.health_check.{field}"),
                    "must be at least 1".into(),
                );
            }
        }
    }
    if let Some(b) = &up.circuit_breaker {
        if b.min_requests == 0 {
            push(
                format!("{p}.circuit_breaker.min_requests"),
                "must be at least 1".into(),
            );
        }
        if b.window.0.as_millis() < 10 {
            push(
                format!("{p}.circuit_breaker.window"),
                "must be at least 10ms".into(),
            );
        }
        if b.open_for.0.is_zero() {
            push(
                format!("{p}.circuit_breaker.open_for"),
                "must be above zero".into(),
            );
        }
        if let Some(f) = &b.fallback {
            if !(200..=599).contains(&f.status) {
                push(
                    format!("{p}.circuit_breaker.fallback.status"),
                    "must be 200 to 599".into(),
                );
            }
        }
    }
    if up.max_connections == Some(0) {
        push(format!("{p}.max_connections"), "must be at least 1".into());
    }
    if up.max_pending.is_some() && up.max_connections.is_none() {
        push(
            format!("{p}.max_pending"),
            "only meaningful with max_connections".into(),
        );
    }
}
