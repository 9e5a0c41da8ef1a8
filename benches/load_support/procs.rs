//! Child processes (backend, Portico, nginx), core pinning and /proc readings.

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::super::Args;

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
    fn pin_child(&self, cmd: &mut Command) {
        pin_to(cmd, self.servers.clone());
    }

    /// Pins a child with the load generator: for a service that in production runs on
    /// machines of its own (Redis), so it does not take the measured proxy's core.
    fn pin_with_client(&self, cmd: &mut Command) {
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
}

impl Proc {
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

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn wait_listening(port: u16, what: &str) -> Result<(), String> {
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

pub struct Fleet {
    pub backend: Proc,
    /// The second backend the mirrored route copies its requests to (kept for its drop,
    /// which ends the process).
    _mirror_backend: Proc,
    pub portico: Proc,
    pub nginx: Option<Proc>,
    /// Portico with `telemetry.tracing` on (the backend takes the exports), by
    /// `sample_ratio`: the same config otherwise, measured on its plain route.
    pub traced: Vec<(f64, Proc)>,
    /// A Portico with `cluster.redis` and a Redis beside it (when redis-server is
    /// installed): the same route with a local and with a `scope: cluster` limit.
    pub limited: Option<Limited>,
    pub portico_routes: usize,
    pub nginx_version: Option<String>,
    /// `Authorization` value for the JWT route (an RS256 token minted at start).
    pub bearer: String,
    _dir: TempDir,
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

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Filler routes so the route table has the size of a real deployment (100 routes).
pub const ROUTES: usize = 100;

impl Fleet {
    pub fn start(args: &Args, pinning: &Pinning) -> Result<Fleet, String> {
        let dir = std::env::temp_dir().join(format!("portico-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let dir = TempDir(dir);

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
        let backend = spawn("backend", backend_port, cmd)?;
        wait_listening(backend_port, "backend")?;
        wait_listening(backend_tls_port, "backend (https)")?;
        let mirror_port = free_port()?;
        let mut cmd = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
        cmd.arg("--backend-port").arg(mirror_port.to_string());
        pinning.pin_child(&mut cmd);
        let mirror_backend = spawn("mirror backend", mirror_port, cmd)?;
        wait_listening(mirror_port, "mirror backend")?;

        let (public_pem, bearer) = rs256_key_and_token()?;
        let public_key = dir.0.join("jwt-public.pem");
        std::fs::write(&public_key, public_pem).map_err(|e| e.to_string())?;
        let portico_port = free_port()?;
        let config = dir.0.join("portico.yaml");
        let mut f = std::fs::File::create(&config).map_err(|e| e.to_string())?;
        let backends = Backends {
            plain: backend_port,
            mirror: mirror_port,
            tls: backend_tls_port,
            ca_file: &ca_file,
        };
        f.write_all(portico_config(portico_port, &backends, &public_key).as_bytes())
            .map_err(|e| e.to_string())?;
        let portico = start_portico("portico", portico_port, &config, args, pinning)?;

        let mut traced = Vec::new();
        if !args.smoke {
            for ratio in TRACED_RATIOS {
                let port = free_port()?;
                let config = dir.0.join(format!("portico-traced-{ratio}.yaml"));
                let text = format!(
                    "{}telemetry:\n  tracing:\n    otlp_endpoint: http://127.0.0.1:{backend_port}\n    sample_ratio: {ratio}\n",
                    portico_config(port, &backends, &public_key)
                );
                std::fs::write(&config, text).map_err(|e| e.to_string())?;
                let proc = start_portico("portico (traced)", port, &config, args, pinning)?;
                traced.push((ratio, proc));
            }
        }

        let limited = if args.smoke {
            None
        } else {
            start_limited(&dir.0, backend_port, args, pinning)?
        };

        let mut nginx = None;
        let mut nginx_version = None;
        if !args.no_nginx {
            if let Some(bin) = which("nginx") {
                let port = free_port()?;
                let conf = dir.0.join("nginx.conf");
                std::fs::write(
                    &conf,
                    nginx_config(&dir.0, port, &backends, args.proxy_threads),
                )
                .map_err(|e| e.to_string())?;
                nginx_version = Command::new(&bin)
                    .arg("-v")
                    .output()
                    .ok()
                    .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string());
                let mut cmd = Command::new(bin);
                cmd.arg("-p").arg(&dir.0).arg("-c").arg(&conf);
                pinning.pin_child(&mut cmd);
                let p = spawn("nginx", port, cmd)?;
                wait_listening(port, "nginx")?;
                nginx = Some(p);
            }
        }
        Ok(Fleet {
            backend,
            _mirror_backend: mirror_backend,
            portico,
            nginx,
            traced,
            limited,
            portico_routes: ROUTES,
            nginx_version,
            bearer,
            _dir: dir,
        })
    }
}

/// Redis (pinned with the load generator: in production it has machines of its own, so
/// it must not take the measured proxy's core) and a Portico whose `/limit-local` and
/// `/limit-cluster` routes differ only in the limit's scope; None without redis-server.
fn start_limited(
    dir: &std::path::Path,
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
    let redis = spawn("redis", redis_port, cmd)?;
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
    let portico = start_portico("portico (cluster)", port, &config, args, pinning)?;
    Ok(Some(Limited { portico, redis }))
}

/// A Portico process on `config`, pinned like the other proxies, once it listens.
fn start_portico(
    name: &'static str,
    port: u16,
    config: &std::path::Path,
    args: &Args,
    pinning: &Pinning,
) -> Result<Proc, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portico"));
    cmd.args(["run", "--watch-interval", "0", "--threads"])
        .arg(args.proxy_threads.to_string())
        .arg("-c")
        .arg(config)
        .env("RUST_LOG", "warn");
    pinning.pin_child(&mut cmd);
    let proc = spawn(name, port, cmd)?;
    wait_listening(port, name)?;
    Ok(proc)
}

fn spawn(name: &'static str, port: u16, mut cmd: Command) -> Result<Proc, String> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    // Its own process group, so `Drop` can stop it with everything it started.
    cmd.process_group(0);
    let child = cmd.spawn().map_err(|e| format!("starting {name}: {e}"))?;
    Ok(Proc { port, child })
}

fn which(bin: &str) -> Option<PathBuf> {
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

/// The backend's ports and the CA that signed its HTTPS certificate.
struct Backends<'a> {
    plain: u16,
    mirror: u16,
    tls: u16,
    ca_file: &'a std::path::Path,
}

/// A CA and a certificate for `localhost` signed by it (rcgen), as PEM files in `dir`:
/// (CA, certificate, key).
fn test_certificates(dir: &std::path::Path) -> Result<(PathBuf, PathBuf, PathBuf), String> {
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

/// The key the edge scenario's consumer holds.
pub const BENCH_API_KEY: &str = "bench-api-key-0123456789abcdef";

/// The edge route's IP allow list: loopback among 1 000 other ranges, so the check is a
/// real search.
fn edge_allow_list() -> String {
    let mut list = vec!["127.0.0.0/8".to_string()];
    list.extend((0..1000u32).map(|i| format!("10.{}.{}.0/24", i / 256, i % 256)));
    list.join(", ")
}

/// The measured routes first (plain; JWT + rate limit + header transform; cached; an
/// HTTPS upstream), then filler routes up to `ROUTES`.
fn portico_config(port: u16, backends: &Backends<'_>, public_key: &std::path::Path) -> String {
    let backend = backends.plain;
    let mut y = format!(
        r#"server:
  listen: 127.0.0.1:{port}
  access_log: false
  limits: {{ max_connections: 100000 }}
jwt:
  bench:
    issuer: bench
    audience: [bench]
    algorithms: [RS256]
    public_key: "{key}"
    required_claims: [sub, exp]
    forward_claims: {{ sub: X-User-Id }}
rate_limits:
  never-trips: {{ key: client_ip, limit: 1000000000, per: 1s }}
caches:
  bench: {{ max_size: 64MiB, max_entry: 1MiB, default_ttl: 60s }}
consumers:
  bench-app: {{ api_keys: ["{api_key}"], groups: [apps] }}
cors:
  storefront:
    origins: ["https://shop.example", "https://*.shop.example"]
    expose: [X-Request-Id]
    credentials: true
upstreams:
  backend:
    targets: ["127.0.0.1:{backend}"]
  backend-tls:
    targets: ["127.0.0.1:{tls}"]
    tls: {{ ca_file: "{ca}", server_name: localhost }}
  backend-h2c:
    targets: ["127.0.0.1:{backend}"]
    protocol: h2c
  mirror-backend:
    targets: ["127.0.0.1:{mirror}"]
routes:
  - name: grpc
    match: {{ path_prefix: /grpc }}
    rewrite: {{ strip_prefix: /grpc }}
    upstream: backend-h2c
    grpc: true
  - name: h2c
    match: {{ path_prefix: /h2c }}
    rewrite: {{ strip_prefix: /h2c }}
    upstream: backend-h2c
  - name: tls
    match: {{ path_prefix: /tls }}
    rewrite: {{ strip_prefix: /tls }}
    upstream: backend-tls
  - name: plain
    match: {{ path_prefix: /plain }}
    rewrite: {{ strip_prefix: /plain }}
    upstream: backend
  - name: full
    match: {{ path_prefix: /full }}
    rewrite: {{ strip_prefix: /full }}
    jwt: bench
    rate_limit: never-trips
    transform:
      request:
        set_headers: {{ X-Api-Version: "2.0", X-Caller: "${{claim.sub}}" }}
        remove_headers: [X-Debug]
      response:
        set_headers: {{ X-Gateway: portico }}
        remove_headers: [Server]
    upstream: backend
  - name: edge
    match: {{ path_prefix: /edge }}
    rewrite: {{ strip_prefix: /edge }}
    auth: {{ any: [api_key] }}
    allow: {{ groups: [apps] }}
    cors: storefront
    ip: {{ allow: [{allow_list}], deny: [10.6.6.0/24] }}
    upstream: backend
  - name: cached
    match: {{ path_prefix: /cached }}
    rewrite: {{ strip_prefix: /cached }}
    cache: bench
    upstream: backend
  - name: mirrored
    match: {{ path_prefix: /mirrored }}
    rewrite: {{ strip_prefix: /mirrored }}
    upstream: backend
    mirror:
      upstream: mirror-backend
      rewrite: {{ strip_prefix: /mirrored }}
      percent: 100
      methods: [GET, POST]
      max_in_flight: 1000
      compare: {{ status: true, headers: [Content-Type] }}
"#,
        mirror = backends.mirror,
        key = public_key.display(),
        api_key = BENCH_API_KEY,
        allow_list = edge_allow_list(),
        tls = backends.tls,
        ca = backends.ca_file.display(),
    );
    for i in 1..ROUTES - 5 {
        y.push_str(&format!(
            "  - name: svc-{i}\n    match: {{ path_prefix: /svc-{i}, methods: [GET] }}\n    rewrite: {{ strip_prefix: /svc-{i} }}\n    upstream: backend\n"
        ));
    }
    y
}

/// nginx as a keep-alive reverse proxy equivalent to Portico's plain route.
fn nginx_config(
    dir: &std::path::Path,
    port: u16,
    backends: &Backends<'_>,
    workers: usize,
) -> String {
    let d = dir.display();
    let (backend, tls, ca) = (backends.plain, backends.tls, backends.ca_file.display());
    format!(
        r#"daemon off;
master_process on;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
user root;
events {{ worker_connections 8192; }}
http {{
    access_log off;
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
