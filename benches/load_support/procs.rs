//! Child processes (backends, Portico, and the nginx and HAProxy of the tuned mode), core
//! pinning and /proc readings.

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{haproxy, nginx, portico_conf};
use crate::Args;

/// Online cores of the machine (not of this process's affinity mask, which pinning narrows).
pub fn cores() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        1
    }
}

/// Which cores the load generator and the servers run on.
pub struct Pinning {
    pub client: Vec<usize>,
    pub servers: Vec<usize>,
}

impl Pinning {
    /// Load generator on core 0, everything else on the remaining cores. On one core
    /// nothing is pinned.
    pub fn plan(cores: usize) -> Pinning {
        if cores < 2 {
            return Pinning {
                client: Vec::new(),
                servers: Vec::new(),
            };
        }
        Pinning {
            client: vec![0],
            servers: (1..cores).collect(),
        }
    }

    pub fn describe(&self) -> String {
        if self.client.is_empty() {
            "not pinned (one core)".into()
        } else {
            format!(
                "load generator on core {:?}; backend and proxy on cores {:?} (sched_setaffinity)",
                self.client, self.servers
            )
        }
    }

    pub fn pin_self(&self) {
        pin(&self.client);
    }

    /// Pins a child to the server cores (when planned) and ties its life to the harness.
    pub fn pin_child(&self, cmd: &mut Command) {
        pin_to(cmd, self.servers.clone());
    }

    /// Pins a child with the load generator: for a service that in production runs on
    /// machines of its own (Redis), so it does not take the measured proxy's core.
    pub fn pin_with_client(&self, cmd: &mut Command) {
        pin_to(cmd, self.client.clone());
    }
}

fn pin_to(cmd: &mut Command, cores: Vec<usize>) {
    // SAFETY: sched_setaffinity is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            pin(&cores);
            // Children die with the harness, even when it is killed.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn pin(cores: &[usize]) {
    if cores.is_empty() {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in cores {
            libc::CPU_SET(*c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

pub struct Proc {
    pub port: u16,
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds (user + system) of the process and its children processes (nginx workers).
    pub fn cpu_seconds(&self) -> f64 {
        let pids = family(self.pid());
        pids.iter().map(|p| cpu_of(*p)).sum()
    }

    /// Peak resident set of the process (the largest member for nginx), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        family(self.pid())
            .iter()
            .map(|p| status_kib(*p, "VmHWM:"))
            .fold(0.0, f64::max)
            / 1024.0
    }

    /// Threads of the process whose name starts with `prefix` (Tokio names its workers
    /// `tokio-rt-worker`, older versions `tokio-runtime-w`), for the worker count a
    /// default configuration ended up with.
    pub fn threads_named(&self, prefix: &str) -> usize {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return 0;
        };
        tasks
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|name| name.starts_with(prefix))
            })
            .count()
    }
}

impl Proc {
    /// Waits until `port` takes connections; fails at once, with the exit status, when the
    /// process ends first (a proxy that refuses its config), instead of after the timeout.
    pub fn wait_ready(&mut self, port: u16, what: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{what} exited ({status}) before listening on {port}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("{what} did not start listening on {port}"))
    }

    /// Whether any process of this one's group (nginx's workers too) is still alive.
    pub fn group_alive(&self) -> bool {
        // SAFETY: kill with signal 0 only checks; the group id is our child's pid.
        unsafe { libc::kill(-(self.pid() as i32), 0) == 0 }
    }
}

impl Drop for Proc {
    /// Kills the whole process group: killing only nginx's master leaves its workers
    /// orphaned, still listening, skewing every later run on the machine.
    fn drop(&mut self) {
        // SAFETY: the child leads its own process group (set in `spawn`).
        unsafe {
            libc::kill(-(self.pid() as i32), libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while self.group_alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if self.group_alive() {
            eprintln!(
                "load: processes of group {} survived the harness; kill them by hand (kill -9 -{})",
                self.pid(),
                self.pid()
            );
        }
    }
}

fn family(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if stat_field(p, 3) == Some(pid as u64) {
                out.push(p);
            }
        }
    }
    out
}

/// Field `n` (0-based, after the command name) of /proc/PID/stat.
fn stat_field(pid: u32, n: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace()
        .nth(n - 2)
        .and_then(|v| v.parse().ok())
}

fn cpu_of(pid: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let utime = stat_field(pid, 13).unwrap_or(0);
    let stime = stat_field(pid, 14).unwrap_or(0);
    (utime + stime) as f64 / ticks
}

fn status_kib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0)
}

pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

pub fn wait_listening(port: u16, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{what} did not start listening on {port}"))
}

pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{secs}")
}

/// The `sample_ratio`s of the traced Portico processes.
pub const TRACED_RATIOS: [f64; 2] = [0.01, 1.0];

/// The harness's temporary directory, removed when the run ends.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn create() -> Result<TempDir, String> {
        let dir = std::env::temp_dir().join(format!("portico-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What every mode's Portico config needs, started once: the backend (plain and HTTPS),
/// the mirror backend, the CA of the backend's certificate and the JWT key.
pub struct Basics {
    pub backend: Proc,
    /// The second backend the mirrored route copies its requests to.
    pub mirror_backend: Proc,
    pub backend_tls_port: u16,
    pub ca_file: PathBuf,
    pub public_key: PathBuf,
    /// `Authorization` value for the JWT route (an RS256 token minted at start).
    pub bearer: String,
    // Last, so the directory outlives the processes that use it.
    dir: TempDir,
}

impl Basics {
    pub fn start(pinning: &Pinning) -> Result<Basics, String> {
        let dir = TempDir::create()?;
        let backend_port = free_port()?;
        let backend_tls_port = free_port()?;
        let (ca_file, cert_file, key_file) = test_certificates(&dir.0)?;
        let mut cmd = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
        cmd.arg("--backend-port").arg(backend_port.to_string());
        cmd.arg("--backend-tls-port")
            .arg(backend_tls_port.to_string());
        cmd.arg("--backend-cert").arg(&cert_file);
        cmd.arg("--backend-key").arg(&key_file);
        pinning.pin_child(&mut cmd);
        let backend = spawn("backend", backend_port, cmd, None)?;
        wait_listening(backend_port, "backend")?;
        wait_listening(backend_tls_port, "backend (https)")?;
        let mirror_port = free_port()?;
        let mut cmd = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
        cmd.arg("--backend-port").arg(mirror_port.to_string());
        pinning.pin_child(&mut cmd);
        let mirror_backend = spawn("mirror backend", mirror_port, cmd, None)?;
        wait_listening(mirror_port, "mirror backend")?;

        let (public_pem, bearer) = rs256_key_and_token()?;
        let public_key = dir.0.join("jwt-public.pem");
        std::fs::write(&public_key, public_pem).map_err(|e| e.to_string())?;
        Ok(Basics {
            backend,
            mirror_backend,
            backend_tls_port,
            ca_file,
            public_key,
            bearer,
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// Writes the Portico config `name`.yaml with `opts` for `port`, and starts it
    /// (`threads`: None for Portico's default, one worker per core). Also returns how long
    /// it took from spawn to listening.
    pub fn start_portico(
        &self,
        name: &'static str,
        port: u16,
        opts: &portico_conf::Options<'_>,
        threads: Option<usize>,
        pinning: &Pinning,
    ) -> Result<(Proc, Duration), String> {
        let config = self.dir.0.join(format!("{}.yaml", name.replace(' ', "-")));
        std::fs::write(&config, portico_conf::config(port, self, opts))
            .map_err(|e| format!("{}: {e}", config.display()))?;
        // Its stdout is the access log: a real file, as nginx's is.
        let log = opts.access_log.then(|| {
            self.dir
                .0
                .join(format!("{}-access.log", name.replace(' ', "-")))
        });
        let started = Instant::now();
        let mut proc = start_portico(name, port, &config, threads, log.as_deref(), pinning)?;
        if let Some((tls_port, _, _)) = opts.tls {
            proc.wait_ready(tls_port, name)?;
        }
        Ok((proc, started.elapsed()))
    }
}

pub struct Fleet {
    pub portico: Proc,
    /// From spawn to listening, with the full route table.
    pub portico_startup: Duration,
    pub nginx: Option<Proc>,
    /// HAProxy, when installed (`nbthread` = proxy threads, no log).
    pub haproxy: Option<Proc>,
    /// Portico with `telemetry.tracing` on (the backend takes the exports), by
    /// `sample_ratio`: the same config otherwise, measured on its plain route.
    pub traced: Vec<(f64, Proc)>,
    /// A Portico with `cluster.redis` and a Redis beside it (when redis-server is
    /// installed): the same route with a local and with a `scope: cluster` limit.
    pub limited: Option<Limited>,
    pub nginx_version: Option<String>,
    pub haproxy_version: Option<String>,
    // Last: the proxies stop before their backends.
    pub basics: Basics,
}

pub struct Limited {
    pub portico: Proc,
    pub redis: Proc,
}

impl Limited {
    /// `EVALSHA` calls Redis has executed so far (`INFO commandstats`).
    pub fn redis_evalsha_calls(&self) -> Option<u64> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.redis.port.to_string(), "info", "commandstats"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.starts_with("cmdstat_evalsha:"))?;
        let calls = line.split("calls=").nth(1)?.split(',').next()?;
        calls.parse().ok()
    }
}

impl Fleet {
    pub fn start(args: &Args, pinning: &Pinning) -> Result<Fleet, String> {
        let basics = Basics::start(pinning)?;
        let threads = Some(args.proxy_threads);
        let (portico, portico_startup) = basics.start_portico(
            "portico",
            free_port()?,
            &portico_conf::Options::default(),
            threads,
            pinning,
        )?;

        let mut traced = Vec::new();
        if !args.smoke {
            let backend_port = basics.backend.port;
            for ratio in TRACED_RATIOS {
                let port = free_port()?;
                let config = basics.dir.0.join(format!("portico-traced-{ratio}.yaml"));
                let text = format!(
                    "{}telemetry:\n  tracing:\n    otlp_endpoint: http://127.0.0.1:{backend_port}\n    sample_ratio: {ratio}\n",
                    portico_conf::config(port, &basics, &portico_conf::Options::default())
                );
                std::fs::write(&config, text).map_err(|e| e.to_string())?;
                let proc =
                    start_portico("portico (traced)", port, &config, threads, None, pinning)?;
                traced.push((ratio, proc));
            }
        }

        let limited = if args.smoke {
            None
        } else {
            start_limited(basics.dir(), basics.backend.port, args, pinning)?
        };

        let (mut nginx, mut nginx_version) = (None, None);
        if !args.no_nginx {
            if let Some((bin, version)) = nginx::find() {
                let opts = nginx::Options {
                    workers: args.proxy_threads,
                    access_log: None,
                    tls: None,
                };
                nginx = Some(nginx::start(&bin, free_port()?, &basics, &opts, pinning)?);
                nginx_version = Some(version);
            }
        }
        let (mut haproxy, mut haproxy_version) = (None, None);
        if !args.no_haproxy {
            match haproxy::find() {
                Some((bin, version)) => {
                    let opts = haproxy::Options {
                        threads: args.proxy_threads,
                        log: false,
                        tls: None,
                    };
                    let port = free_port()?;
                    let backend = basics.backend.port;
                    haproxy = Some(haproxy::start(
                        &bin,
                        basics.dir(),
                        port,
                        backend,
                        &opts,
                        None,
                        pinning,
                    )?);
                    haproxy_version = Some(version);
                }
                None => eprintln!("haproxy not installed: the haproxy scenario is skipped"),
            }
        }
        Ok(Fleet {
            portico,
            portico_startup,
            nginx,
            haproxy,
            traced,
            limited,
            nginx_version,
            haproxy_version,
            basics,
        })
    }
}

/// Redis (pinned with the load generator: in production it has machines of its own, so
/// it must not take the measured proxy's core) and a Portico whose `/limit-local` and
/// `/limit-cluster` routes differ only in the limit's scope; None without redis-server.
fn start_limited(
    dir: &Path,
    backend_port: u16,
    args: &Args,
    pinning: &Pinning,
) -> Result<Option<Limited>, String> {
    let Some(redis_bin) = which("redis-server") else {
        eprintln!("redis-server not installed: the cluster limit scenario is skipped");
        return Ok(None);
    };
    let redis_port = free_port()?;
    let mut cmd = Command::new(redis_bin);
    cmd.args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir);
    pinning.pin_with_client(&mut cmd);
    let redis = spawn("redis", redis_port, cmd, None)?;
    wait_listening(redis_port, "redis")?;
    let port = free_port()?;
    let config = dir.join("portico-limited.yaml");
    let text = format!(
        r#"server:
  listen: 127.0.0.1:{port}
  access_log: false
  limits: {{ max_connections: 100000 }}
cluster:
  redis: {{ url: "redis://127.0.0.1:{redis_port}/0", timeout: 50ms }}
rate_limits:
  local: {{ key: client_ip, limit: 1000000000, per: 1s }}
  shared: {{ key: client_ip, limit: 1000000000, per: 1s, scope: cluster }}
upstreams:
  backend: {{ targets: ["127.0.0.1:{backend_port}"] }}
routes:
  - name: limit-local
    match: {{ path_prefix: /limit-local }}
    rewrite: {{ strip_prefix: /limit-local }}
    rate_limit: local
    upstream: backend
  - name: limit-cluster
    match: {{ path_prefix: /limit-cluster }}
    rewrite: {{ strip_prefix: /limit-cluster }}
    rate_limit: shared
    upstream: backend
"#
    );
    std::fs::write(&config, text).map_err(|e| e.to_string())?;
    let threads = Some(args.proxy_threads);
    let portico = start_portico("portico (cluster)", port, &config, threads, None, pinning)?;
    Ok(Some(Limited { portico, redis }))
}

/// A Portico process on `config`, pinned like the other proxies, once it listens. Without
/// `threads` it runs with its default (one worker per core); its stdout goes to `stdout`
/// (None: discarded).
fn start_portico(
    name: &'static str,
    port: u16,
    config: &Path,
    threads: Option<usize>,
    stdout: Option<&Path>,
    pinning: &Pinning,
) -> Result<Proc, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portico"));
    cmd.args(["run", "--watch-interval", "0"]);
    if let Some(n) = threads {
        cmd.arg("--threads").arg(n.to_string());
    }
    cmd.arg("-c").arg(config).env("RUST_LOG", "warn");
    pinning.pin_child(&mut cmd);
    let mut proc = spawn(name, port, cmd, stdout)?;
    proc.wait_ready(port, name)?;
    Ok(proc)
}

/// Starts `cmd` in a process group of its own, stdout to the file `stdout` (created
/// anew) or discarded.
pub fn spawn(
    name: &'static str,
    port: u16,
    mut cmd: Command,
    stdout: Option<&Path>,
) -> Result<Proc, String> {
    let out = match stdout {
        Some(path) => Stdio::from(
            std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?,
        ),
        None => Stdio::null(),
    };
    cmd.stdin(Stdio::null()).stdout(out);
    // Its own process group, so `Drop` can stop it with everything it started.
    cmd.process_group(0);
    let child = cmd.spawn().map_err(|e| format!("starting {name}: {e}"))?;
    Ok(Proc { port, child })
}

pub fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// An RS256 key pair (public key PEM) and a long-lived token signed with it.
fn rs256_key_and_token() -> Result<(String, String), String> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).map_err(|e| e.to_string())?;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes())
        .map_err(|e| e.to_string())?;
    let claims = serde_json::json!({
        "sub": "bench-user",
        "iss": "bench",
        "aud": "bench",
        "exp": 4_102_444_800u64,
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .map_err(|e| e.to_string())?;
    Ok((pair.public_key_pem(), format!("Bearer {token}")))
}

/// A CA and a certificate for `localhost` signed by it (rcgen), as PEM files in `dir`:
/// (CA, certificate, key).
fn test_certificates(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let e = |e: rcgen::Error| e.to_string();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "portico bench CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().map_err(e)?)
        .map_err(e)?;
    let leaf_key = rcgen::KeyPair::generate().map_err(e)?;
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .map_err(e)?
        .signed_by(&leaf_key, &ca)
        .map_err(e)?;
    let paths = (
        dir.join("ca.pem"),
        dir.join("backend.pem"),
        dir.join("backend-key.pem"),
    );
    for (path, pem) in [
        (&paths.0, ca.pem()),
        (&paths.1, leaf.pem()),
        (&paths.2, leaf_key.serialize_pem()),
    ] {
        std::fs::write(path, pem).map_err(|e| e.to_string())?;
    }
    Ok(paths)
}
