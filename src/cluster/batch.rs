//! Rate-limit decisions sent to one Redis in batches. Every decision that arrives while
//! a batch is in flight waits for the next one, which carries all of them as one
//! pipeline: one write, one read and one wake-up for the batch instead of a command
//! each. Under load most decisions share a batch; alone, a decision costs what a single
//! command does. (A Redis Cluster spreads keys over nodes, so it is sent command by
//! command.)

use std::sync::Weak;

use tokio::sync::{mpsc, oneshot};

use super::{Cluster, ClusterError, Op};

/// Decisions queued at most (past it a decision is taken without Redis).
const QUEUE: usize = 4096;
/// Decisions in one pipeline at most.
const MAX_BATCH: usize = 256;

/// The script's answer: allowed, remaining, µs until full, µs until allowed.
pub type Answer = (i64, i64, i64, i64);

pub struct Job {
    pub key: Vec<u8>,
    pub interval_us: u64,
    pub burst: u32,
    pub reply: oneshot::Sender<Result<Answer, ClusterError>>,
}

pub fn channel() -> (mpsc::Sender<Job>, mpsc::Receiver<Job>) {
    mpsc::channel(QUEUE)
}

/// Sends what is queued, one batch at a time, until the cluster is gone.
pub async fn run(
    cluster: Weak<Cluster>,
    mut queue: mpsc::Receiver<Job>,
    script: &'static redis::Script,
    source: &'static str,
) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    loop {
        if queue.recv_many(&mut jobs, MAX_BATCH).await == 0 {
            return;
        }
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        let mut answers = send(&cluster, &jobs, script).await;
        if matches!(answers, Err(ClusterError::NoScript)) {
            let loaded = cluster
                .query::<String>(Op::RateLimit, redis::cmd("SCRIPT").arg("LOAD").arg(source))
                .await;
            answers = match loaded {
                Ok(_) => send(&cluster, &jobs, script).await,
                Err(e) => Err(e),
            };
        }
        match answers {
            Ok(answers) if answers.len() == jobs.len() => {
                for (job, answer) in jobs.drain(..).zip(answers) {
                    let _ = job.reply.send(Ok(answer));
                }
            }
            Ok(_) => {
                for job in jobs.drain(..) {
                    let _ = job
                        .reply
                        .send(Err(ClusterError::Redis("short pipeline answer".into())));
                }
            }
            Err(e) => {
                let text = e.to_string();
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(ClusterError::Redis(text.clone())));
                }
            }
        }
    }
}

async fn send(
    cluster: &Cluster,
    jobs: &[Job],
    script: &redis::Script,
) -> Result<Vec<Answer>, ClusterError> {
    let mut pipe = redis::pipe();
    for job in jobs {
        pipe.cmd("EVALSHA")
            .arg(script.get_hash())
            .arg(1)
            .arg(&job.key)
            .arg(job.interval_us)
            .arg(job.burst);
    }
    cluster.query_pipe(Op::RateLimit, &pipe).await
}
