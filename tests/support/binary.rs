//! The `portico` binary as a child process: started on a config, its listening
//! addresses read from its JSON log, signalled.

use std::process::Command;
use std::time::Duration;

/// Starts the binary on `config` (which listens on `127.0.0.1:0`) and returns it with the
/// address it bound, read from its JSON log: no port is picked, dropped and reused.
pub fn start_binary(
    config: &std::path::Path,
    extra: &[&str],
    stdout: std::process::Stdio,
) -> (std::process::Child, std::net::SocketAddr) {
    let (child, fields) = start_binary_logged(config, extra, stdout);
    (child, http_addr(&fields))
}

/// The proxy address in the fields of the "portico listening" line.
pub fn http_addr(fields: &serde_json::Value) -> std::net::SocketAddr {
    fields["http_addr"]
        .as_str()
        .expect("an http_addr field")
        .parse()
        .expect("an address")
}

/// Waits for the child to exit (it was started with a piped stdout) and returns its
/// exit status and everything it wrote to stdout.
pub async fn wait_with_stdout(
    mut child: std::process::Child,
) -> (std::io::Result<std::process::ExitStatus>, String) {
    let mut stdout = child.stdout.take().expect("stdout");
    tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        (child.wait(), text)
    })
    .await
    .expect("the waiting thread")
}

/// `start_binary`, returning the fields of the "portico listening" log line.
pub fn start_binary_logged(
    config: &std::path::Path,
    extra: &[&str],
    stdout: std::process::Stdio,
) -> (std::process::Child, serde_json::Value) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["run", "--log-format", "json", "--log-level", "info"])
        .args(extra)
        .arg("-c")
        .arg(config)
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start portico");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        // Read to the end, so the child never blocks on a full pipe.
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["fields"]["http_addr"].is_string() {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(v["fields"].clone());
                }
            }
        }
    });
    let fields = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("portico logged its listening address");
    (child, fields)
}

/// Sends `SIG<name>` to the child.
pub fn signal(child: &std::process::Child, name: &str) {
    let sent = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success(), "kill -{name} failed");
}

/// SIGTERM, then the exit status once the child has drained and exited.
pub async fn terminate(mut child: std::process::Child) -> std::process::ExitStatus {
    signal(&child, "TERM");
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("the waiting thread")
        .expect("wait")
}
