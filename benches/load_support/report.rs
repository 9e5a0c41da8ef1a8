//! The harness's output: a markdown table with ratios, an SVG latency-percentile plot,
//! the open-loop latency table and plot, and the optional release gate.

use std::fmt::Write;
use std::process::ExitCode;

use super::drive::{Load, Outcome, Target};
use super::procs::{Fleet, Pinning};
use crate::Args;

pub fn rps(o: &Outcome) -> f64 {
    if o.seconds > 0.0 {
        o.requests as f64 / o.seconds
    } else {
        0.0
    }
}

pub fn ms(o: &Outcome, q: f64) -> f64 {
    o.histogram.value_at_quantile(q) as f64 / 1000.0
}

pub fn find(results: &[Outcome], target: Target, load: Load) -> Option<&Outcome> {
    results
        .iter()
        .find(|o| o.scenario.target == target && o.scenario.load == load)
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

pub fn markdown(args: &Args, pinning: &Pinning, fleet: &Fleet, results: &[Outcome]) -> String {
    let open_loop = if args.rate > 0.0 {
        format!(
            "{} req/s in total over the same connections, GET 100 B, same rounds and warm-up; {}",
            args.rate,
            if pinning.client.is_empty() {
                "paced by tokio's 1 ms timer (one core: send times up to 1 ms late, counted as latency)"
            } else {
                "paced by busy-polling the load generator's core"
            }
        )
    } else {
        "off".into()
    };
    let notes = [
        format!("open loop: {open_loop}"),
        format!("proxy threads: {}", args.proxy_threads),
        format!(
            "Portico: {} routes, {} upstreams, access log off, listening {} ms after spawn; nginx: {}; haproxy: {}",
            super::portico_conf::ROUTES,
            super::portico_conf::UPSTREAMS,
            fleet.portico_startup.as_millis(),
            fleet.nginx_version.as_deref().unwrap_or("not run"),
            fleet.haproxy_version.as_deref().unwrap_or("not run"),
        ),
    ];
    let mut out = mode_header("Portico load run", args, pinning, &notes);
    let _ = writeln!(
        out,
        "| load | target | req/s | p50 ms | p99 ms | p99.9 ms | proxy CPU s / 10k req | proxy peak RSS MiB | req/s vs direct | req/s vs nginx | req/s vs portico plain | errors |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for o in results {
        let direct = find(results, Target::Direct, o.scenario.load).map(rps);
        let nginx = find(results, o.scenario.target.nginx_peer(), o.scenario.load).map(rps);
        let plain = find(results, Target::Portico, o.scenario.load).map(rps);
        let ratio = |base: Option<f64>| match base {
            Some(b) if b > 0.0 => format!("{:.2}", rps(o) / b),
            _ => "–".into(),
        };
        let cpu = match o.proxy_cpu {
            Some(c) if o.requests > 0 => format!("{:.3}", c / o.requests as f64 * 10_000.0),
            _ => "–".into(),
        };
        let rss = o.proxy_rss_mib.map_or("–".into(), |r| format!("{r:.1}"));
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} | {} | {} |",
            o.scenario.load.label(),
            o.scenario.target.label(),
            rps(o),
            ms(o, 0.5),
            ms(o, 0.99),
            ms(o, 0.999),
            cpu,
            rss,
            ratio(direct),
            ratio(nginx),
            ratio(plain),
            o.errors
        );
    }
    out
}

/// Proxy CPU per answered request in microseconds (None for direct or without requests).
pub fn cpu_micros(o: &Outcome) -> Option<f64> {
    match o.proxy_cpu {
        Some(c) if o.requests > 0 => Some(c / o.requests as f64 * 1e6),
        _ => None,
    }
}

/// The header of the other modes' reports: the machine, the pinning, the load, and
/// `notes` (one list item each).
pub fn mode_header(title: &str, args: &Args, pinning: &Pinning, notes: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### {title}\n");
    let _ = writeln!(
        out,
        "- machine: {} cores, {}\n- pinning: {}\n- load: {} connections, closed loop, {:?} measured per target in {} alternating rounds, {:?} warm-up per segment, load generator threads {}",
        super::procs::cores(),
        cpu_model(),
        pinning.describe(),
        args.connections,
        args.duration,
        args.rounds,
        args.warmup,
        args.client_threads,
    );
    for n in notes {
        let _ = writeln!(out, "- {n}");
    }
    out.push('\n');
    out
}

/// One row per target that `keep` keeps: throughput (`rate` names its unit), latency, the
/// proxy's CPU per request and peak RSS, and both against the target's nginx peer.
pub fn proxy_table(results: &[Outcome], rate: &str, keep: impl Fn(Target) -> bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| target | {rate} | p50 ms | p99 ms | proxy CPU µs / req | proxy peak RSS MiB | {rate} vs nginx | CPU / req vs nginx | errors |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for o in results.iter().filter(|o| keep(o.scenario.target)) {
        let nginx = find(results, o.scenario.target.nginx_peer(), o.scenario.load);
        let vs = match nginx.map(rps) {
            Some(n) if n > 0.0 => format!("{:.2}", rps(o) / n),
            _ => "–".into(),
        };
        let cpu = cpu_micros(o);
        let cpu_vs = match (cpu, nginx.and_then(cpu_micros)) {
            (Some(c), Some(n)) if n > 0.0 => format!("{:.2}", c / n),
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.3} | {:.3} | {} | {} | {} | {} | {} |",
            o.scenario.target.label(),
            rps(o),
            ms(o, 0.5),
            ms(o, 0.99),
            cpu.map_or("–".into(), |c| format!("{c:.1}")),
            o.proxy_rss_mib.map_or("–".into(), |r| format!("{r:.1}")),
            vs,
            cpu_vs,
            o.errors
        );
    }
    out
}

const QUANTILES: [(f64, &str); 6] = [
    (0.5, "p50"),
    (0.75, "p75"),
    (0.9, "p90"),
    (0.99, "p99"),
    (0.999, "p99.9"),
    (0.9999, "p99.99"),
];

/// The open-loop table: latency at a fixed request rate, and what each proxy adds to the
/// direct connection's percentiles.
pub fn open_loop_markdown(args: &Args, results: &[Outcome]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "#### Latency at a fixed rate (open loop, {} req/s over {} connections)\n",
        args.rate, args.connections
    );
    let _ = writeln!(
        out,
        "Connection i sends its k-th request at start + (k x {n} + i) / {r} s; latency counts from that intended time, so waiting behind a slow answer is included. Sending late is never skipped. Errors are failed requests and requests still unanswered when the drain after the schedule ended.\n",
        n = args.connections,
        r = args.rate,
    );
    let _ = writeln!(
        out,
        "| target | achieved req/s | p50 ms | p99 ms | p99.9 ms | p99 added over direct ms | errors |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    let direct = find(results, Target::Direct, Load::Get100);
    for o in results {
        let added = match direct {
            Some(d) if o.scenario.target != Target::Direct && d.requests > 0 => {
                format!("{:.3}", ms(o, 0.99) - ms(d, 0.99))
            }
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {} |",
            o.scenario.target.label(),
            rps(o),
            ms(o, 0.5),
            ms(o, 0.99),
            ms(o, 0.999),
            added,
            o.errors
        );
    }
    out
}

/// Latency by percentile for the GET 100 B load, one line per target.
pub fn svg(results: &[Outcome]) -> String {
    percentile_svg(results, "Latency by percentile, GET 100 B (ms)")
}

/// The same plot for the open-loop pass.
pub fn open_loop_svg(args: &Args, results: &[Outcome]) -> String {
    percentile_svg(
        results,
        &format!(
            "Latency by percentile at {} req/s (open loop), GET 100 B (ms)",
            args.rate
        ),
    )
}

fn percentile_svg(results: &[Outcome], title: &str) -> String {
    let (w, h, left, bottom, top, right) = (860.0, 420.0, 70.0, 50.0, 40.0, 300.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let lines: Vec<&Outcome> = results
        .iter()
        .filter(|o| o.scenario.load == Load::Get100 && o.requests > 0)
        .collect();
    let max = lines.iter().map(|o| ms(o, 0.9999)).fold(0.001, f64::max) * 1.1;
    let x = |i: usize| left + plot_w * i as f64 / (QUANTILES.len() - 1) as f64;
    let y = |v: f64| top + plot_h * (1.0 - v / max);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="22" font-size="15">{title}</text>
"#
    );
    for k in 0..=5 {
        let v = max * k as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v:.2}</text>"##,
            left + plot_w,
            left - 6.0,
            y(v) + 4.0,
            y = y(v),
        );
    }
    for (i, (_, label)) in QUANTILES.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"#,
            x(i),
            h - bottom + 20.0
        );
    }
    for (n, o) in lines.iter().enumerate() {
        // One colour per target, so the closed- and open-loop plots match.
        let colour = match o.scenario.target {
            Target::Direct => "#1f77b4",
            Target::Portico => "#d62728",
            Target::PorticoFull => "#2ca02c",
            Target::PorticoCache => "#9467bd",
            Target::Nginx => "#ff7f0e",
            Target::PorticoTls => "#8c564b",
            Target::NginxTls => "#e377c2",
            Target::PorticoH2c => "#17becf",
            Target::PorticoGrpc => "#bcbd22",
            Target::PorticoTraced1 => "#7f7f7f",
            Target::PorticoTraced100 => "#393b79",
            Target::PorticoEdge => "#637939",
            Target::PorticoLocalLimit => "#8c6d31",
            Target::PorticoClusterLimit => "#843c39",
            Target::PorticoMirror => "#e7969c",
            Target::Haproxy => "#31a354",
            Target::PorticoLogOn | Target::PorticoHttps | Target::PorticoOneWorker => "#d62728",
            Target::PorticoLogOff | Target::PorticoHandshake | Target::PorticoTwoWorkers => {
                "#9467bd"
            }
            Target::NginxDefaults | Target::NginxHttps | Target::NginxOneWorker => "#ff7f0e",
            Target::NginxHandshake | Target::NginxTwoWorkers => "#e377c2",
            Target::HaproxyDefaults | Target::HaproxyHttps => "#31a354",
            Target::HaproxyHandshake => "#74c476",
        };
        let points: Vec<String> = QUANTILES
            .iter()
            .enumerate()
            .map(|(i, (q, _))| format!("{:.1},{:.1}", x(i), y(ms(o, *q))))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="14" height="3" fill="{colour}"/><text x="{}" y="{}">{}</text>"#,
            w - right + 15.0,
            top + 20.0 * n as f64 + 6.0,
            w - right + 35.0,
            top + 20.0 * n as f64 + 10.0,
            o.scenario.target.label()
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The release gate: Portico's plain-proxy req/s against nginx's, GET 100 B.
pub fn check(ratio: f64, results: &[Outcome]) -> ExitCode {
    let (Some(p), Some(n)) = (
        find(results, Target::Portico, Load::Get100),
        find(results, Target::Nginx, Load::Get100),
    ) else {
        eprintln!("check: needs both Portico and nginx results (is nginx installed?)");
        return ExitCode::FAILURE;
    };
    let got = rps(p) / rps(n).max(1.0);
    if got >= ratio {
        println!("check: ok, Portico/nginx = {got:.2} >= {ratio}");
        ExitCode::SUCCESS
    } else {
        println!("check: FAILED, Portico/nginx = {got:.2} < {ratio}");
        ExitCode::FAILURE
    }
}
