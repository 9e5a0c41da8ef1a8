//! `--scenario defaults`: the proxies as they ship, not as the tuned mode sets them up.
//! Portico without `--threads` (Tokio's one worker per core it may run on) and with its
//! access log on; nginx with `worker_processes` = cores and a buffered JSON access log;
//! HAProxy (when installed) with `nbthread` = cores and its log on stdout. Every log goes
//! to a real file, which is what a deployment pays for. Portico runs a second time with
//! the log off, so the log's own cost per request can be stated. The pinning is the
//! tuned mode's; only the plain GET 100 B route (and direct) is measured.

use std::fmt::Write;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::drive::{self, Load, Outcome, Proxies, Scenario, Target};
use super::procs::{self, Basics, Pinning, Proc};
use super::report;
use super::{haproxy, nginx, portico_conf};
use crate::Args;

struct Fleet {
    portico_on: Proc,
    portico_off: Proc,
    nginx: Option<Proc>,
    haproxy: Option<Proc>,
    /// Each logging target's access log file.
    logs: Vec<(Target, PathBuf)>,
    notes: Vec<String>,
    basics: Basics,
}

impl Proxies for Fleet {
    fn proxy(&self, target: Target) -> Option<&Proc> {
        match target {
            Target::PorticoLogOn => Some(&self.portico_on),
            Target::PorticoLogOff => Some(&self.portico_off),
            Target::NginxDefaults => self.nginx.as_ref(),
            Target::HaproxyDefaults => self.haproxy.as_ref(),
            _ => None,
        }
    }
}

fn start(args: &Args, pinning: &Pinning) -> Result<Fleet, String> {
    let basics = Basics::start(pinning)?;
    let cores = procs::cores();
    let dir = basics.dir().to_path_buf();
    let mut notes = Vec::new();
    let mut logs = Vec::new();
    let on = portico_conf::Options {
        access_log: true,
        tls: None,
    };
    let (portico_on, startup) =
        basics.start_portico("portico log on", procs::free_port()?, &on, None, pinning)?;
    logs.push((Target::PorticoLogOn, dir.join("portico-log-on-access.log")));
    let off = portico_conf::Options::default();
    let (portico_off, _) =
        basics.start_portico("portico log off", procs::free_port()?, &off, None, pinning)?;
    notes.push(format!(
        "Portico: `portico run -c` without `--threads`: {} serving runtimes (its default: one per core it may run on, each a current-thread runtime), on the server cores {:?}; access log on to a file, and a second Portico with it off; {} routes, {} upstreams, listening {} ms after spawn",
        serving_runtimes(&portico_on),
        pinning.servers,
        portico_conf::ROUTES,
        portico_conf::UPSTREAMS,
        startup.as_millis()
    ));
    let mut nginx = None;
    if !args.no_nginx {
        if let Some((bin, version)) = nginx::find() {
            let log = dir.join("nginx-access.log");
            let opts = nginx::Options {
                workers: cores,
                access_log: Some(&log),
                tls: None,
            };
            let proc = nginx::start(&bin, procs::free_port()?, &basics, &opts, pinning)?;
            notes.push(format!(
                "nginx: {version}, `worker_processes {cores}` on the server cores, `access_log FILE json_fields buffer=64k flush=1s` (Portico's fields, `escape=json`)"
            ));
            logs.push((Target::NginxDefaults, log));
            nginx = Some(proc);
        }
    }
    let mut haproxy = None;
    let found = if args.no_haproxy {
        None
    } else {
        haproxy::find()
    };
    if let Some((bin, version)) = found {
        let log = dir.join("haproxy-access.log");
        let opts = haproxy::Options {
            threads: cores,
            log: true,
            tls: None,
        };
        let port = procs::free_port()?;
        let backend = basics.backend.port;
        let proc = haproxy::start(&bin, &dir, port, backend, &opts, Some(&log), pinning)?;
        notes.push(format!(
            "haproxy: {version}, `nbthread {cores}`, `log stdout format raw` to a file with a `log-format` of Portico's fields, `http-reuse always`"
        ));
        logs.push((Target::HaproxyDefaults, log));
        haproxy = Some(proc);
    } else if !args.no_haproxy {
        eprintln!("haproxy not installed: its defaults row is skipped");
        notes.push("haproxy: not installed, skipped".into());
    }
    Ok(Fleet {
        portico_on,
        portico_off,
        nginx,
        haproxy,
        logs,
        notes,
        basics,
    })
}

/// Lines in `path` (0 when it cannot be read).
fn lines_in(path: &Path) -> u64 {
    let Ok(mut f) = std::fs::File::open(path) else {
        return 0;
    };
    let mut buf = vec![0u8; 1 << 16];
    let mut lines = 0;
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        lines += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
    }
    lines
}

/// Measures the defaults, and returns the report and the outcomes.
pub fn run(args: &Args, pinning: &Pinning) -> Result<(String, Vec<Outcome>), String> {
    let fleet = start(args, pinning)?;
    let mut scenarios = vec![Scenario::plain_get(
        Target::Direct,
        fleet.basics.backend.port,
    )];
    scenarios.push(Scenario::plain_get(
        Target::PorticoLogOn,
        fleet.portico_on.port,
    ));
    scenarios.push(Scenario::plain_get(
        Target::PorticoLogOff,
        fleet.portico_off.port,
    ));
    if let Some(p) = &fleet.nginx {
        scenarios.push(Scenario::plain_get(Target::NginxDefaults, p.port));
    }
    if let Some(p) = &fleet.haproxy {
        scenarios.push(Scenario::plain_get(Target::HaproxyDefaults, p.port));
    }
    let results = drive::measure(args, &fleet, &scenarios, drive::Pacing::Closed)?;
    // nginx flushes its log buffer at most a second late.
    std::thread::sleep(Duration::from_millis(1200));

    let mut out = report::mode_header(
        "Portico load run: shipped defaults, access logs on",
        args,
        pinning,
        &fleet.notes,
    );
    out.push_str(&report::proxy_table(&results, "req/s", |_| true));
    out.push('\n');
    for (target, path) in &fleet.logs {
        let Some(o) = results.iter().find(|o| o.scenario.target == *target) else {
            continue;
        };
        let answered = o.requests + o.warmup_requests;
        let lines = lines_in(path);
        let _ = writeln!(
            out,
            "- {}: {lines} access log lines for {answered} answered requests ({:.3} per request)",
            target.label(),
            lines as f64 / answered.max(1) as f64
        );
    }
    let on =
        report::find(&results, Target::PorticoLogOn, Load::Get100).and_then(report::cpu_micros);
    let off =
        report::find(&results, Target::PorticoLogOff, Load::Get100).and_then(report::cpu_micros);
    if let (Some(on), Some(off)) = (on, off) {
        let cost = (on / off - 1.0) * 100.0;
        let _ = writeln!(
            out,
            "\nPortico's access log on costs {cost:+.1}% CPU per request against off ({on:.1} vs {off:.1} µs; target ≤ 5%: {})",
            if cost <= 5.0 { "met" } else { "not met" }
        );
    }
    Ok((out, results))
}

/// Portico's serving runtimes: the main thread and one `portico-worker-N` thread per
/// further runtime, or the threads of a work-stealing runtime.
fn serving_runtimes(portico: &procs::Proc) -> usize {
    match portico.threads_named("tokio-r") {
        0 => 1 + portico.threads_named("portico-worker"),
        stealing => stealing,
    }
}
