//! `--scenario scaling`: Portico (`--threads 1` and `--threads 2`) and nginx
//! (`worker_processes 1` and `2`) on the plain GET 100 B route in the same run, and each
//! proxy's two-worker throughput over its one-worker throughput. The pinning is the tuned
//! mode's: on a 2-core machine the servers keep one core and the load generator the
//! other, so there the ratio says what a second worker costs or gains on a shared core,
//! not how a proxy scales over cores; the report says which it is.

use std::fmt::Write;

use super::drive::{self, Load, Outcome, Proxies, Scenario, Target};
use super::procs::{self, Basics, Pinning, Proc};
use super::report;
use super::{nginx, portico_conf};
use crate::Args;

struct Fleet {
    portico: [Proc; 2],
    nginx: Option<[Proc; 2]>,
    notes: Vec<String>,
    // Kept for its drop, after the proxies': the backends stop last.
    _basics: Basics,
}

impl Proxies for Fleet {
    fn proxy(&self, target: Target) -> Option<&Proc> {
        match target {
            Target::PorticoOneWorker => Some(&self.portico[0]),
            Target::PorticoTwoWorkers => Some(&self.portico[1]),
            Target::NginxOneWorker => self.nginx.as_ref().map(|n| &n[0]),
            Target::NginxTwoWorkers => self.nginx.as_ref().map(|n| &n[1]),
            _ => None,
        }
    }
}

fn start(args: &Args, pinning: &Pinning) -> Result<Fleet, String> {
    let basics = Basics::start(pinning)?;
    let opts = portico_conf::Options::default();
    let (one, _) = basics.start_portico(
        "portico 1 worker",
        procs::free_port()?,
        &opts,
        Some(1),
        pinning,
    )?;
    let (two, _) = basics.start_portico(
        "portico 2 workers",
        procs::free_port()?,
        &opts,
        Some(2),
        pinning,
    )?;
    let mut notes = vec![format!(
        "servers on cores {:?}: {}",
        pinning.servers,
        if pinning.servers.len() < 2 {
            "both workers of a 2-worker proxy share one core (the load generator keeps the other), so 2 / 1 workers measures a second worker's overhead, not scaling over cores"
        } else {
            "a 2-worker proxy can use two cores"
        }
    )];
    notes.push(format!(
        "Portico: `--threads 1` (current-thread runtime) and `--threads 2`, access log off, {} routes, {} upstreams",
        portico_conf::ROUTES,
        portico_conf::UPSTREAMS
    ));
    let mut nginx = None;
    if !args.no_nginx {
        if let Some((bin, version)) = nginx::find() {
            let with = |workers| nginx::Options {
                workers,
                access_log: None,
                tls: None,
            };
            let n1 = nginx::start(&bin, procs::free_port()?, &basics, &with(1), pinning)?;
            let n2 = nginx::start(&bin, procs::free_port()?, &basics, &with(2), pinning)?;
            notes.push(format!(
                "nginx: {version}, `worker_processes 1` and `2`, access log off"
            ));
            nginx = Some([n1, n2]);
        }
    }
    if nginx.is_none() {
        notes.push("nginx: not run (not installed or --no-nginx): no comparison".into());
    }
    Ok(Fleet {
        portico: [one, two],
        nginx,
        notes,
        _basics: basics,
    })
}

fn ratio(results: &[Outcome], one: Target, two: Target) -> Option<f64> {
    let one = report::rps(report::find(results, one, Load::Get100)?);
    let two = report::rps(report::find(results, two, Load::Get100)?);
    (one > 0.0).then(|| two / one)
}

pub fn run(args: &Args, pinning: &Pinning) -> Result<(String, Vec<Outcome>), String> {
    let fleet = start(args, pinning)?;
    let mut scenarios = vec![
        Scenario::plain_get(Target::PorticoOneWorker, fleet.portico[0].port),
        Scenario::plain_get(Target::PorticoTwoWorkers, fleet.portico[1].port),
    ];
    if let Some([n1, n2]) = &fleet.nginx {
        scenarios.push(Scenario::plain_get(Target::NginxOneWorker, n1.port));
        scenarios.push(Scenario::plain_get(Target::NginxTwoWorkers, n2.port));
    }
    let results = drive::measure(args, &fleet, &scenarios, drive::Pacing::Closed)?;

    let mut out = report::mode_header(
        "Portico load run: one worker against two",
        args,
        pinning,
        &fleet.notes,
    );
    out.push_str(&report::proxy_table(&results, "req/s", |_| true));
    out.push('\n');
    let portico = ratio(
        &results,
        Target::PorticoOneWorker,
        Target::PorticoTwoWorkers,
    );
    let nginx = ratio(&results, Target::NginxOneWorker, Target::NginxTwoWorkers);
    let show = |r: Option<f64>| r.map_or("–".into(), |r| format!("{r:.2}"));
    let _ = writeln!(
        out,
        "| proxy | 2 workers / 1 worker, req/s |\n|---|---:|\n| portico | {} |\n| nginx | {} |\n",
        show(portico),
        show(nginx)
    );
    if let (Some(p), Some(n)) = (portico, nginx) {
        let rel = p / n;
        let _ = writeln!(
            out,
            "Portico's 2/1 ratio is {rel:.2} x nginx's: {} (within 10% means 0.90 to 1.10)",
            if (rel - 1.0).abs() <= 0.10 {
                "within 10%"
            } else if rel > 1.0 {
                "more than 10% better"
            } else {
                "NOT within 10%"
            }
        );
    }
    Ok((out, results))
}
