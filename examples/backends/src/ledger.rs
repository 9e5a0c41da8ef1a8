//! The payments ledger over gRPC (`shop.ledger.v1.Ledger`, proto/ledger.proto): what a
//! user paid and was refunded, and their payments as a stream. Served by payments in
//! `shop all` on h2c (port 50051), from the payments database, so the demo has a real
//! gRPC service behind Portico's `grpc: true` route.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::common::Ctx;

/// Where `shop all` serves the ledger.
pub const LEDGER_PORT: u16 = 50051;
const SERVICE: &str = "/shop.ledger.v1.Ledger/";

#[derive(Clone, PartialEq, prost::Message)]
pub struct AccountRequest {
    #[prost(int64, tag = "1")]
    pub user_id: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AccountBalance {
    #[prost(int64, tag = "1")]
    pub user_id: i64,
    #[prost(int64, tag = "2")]
    pub paid_cents: i64,
    #[prost(int64, tag = "3")]
    pub refunded_cents: i64,
    #[prost(uint32, tag = "4")]
    pub payments: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    #[prost(int64, tag = "1")]
    pub payment_id: i64,
    #[prost(int64, tag = "2")]
    pub order_id: i64,
    #[prost(int64, tag = "3")]
    pub amount_cents: i64,
    #[prost(string, tag = "4")]
    pub status: String,
    #[prost(string, tag = "5")]
    pub created_at: String,
}

/// The payments of `user_id`, oldest first.
fn entries(ctx: &Ctx, user_id: i64) -> Result<Vec<Entry>, Status> {
    if user_id <= 0 {
        return Err(Status::invalid_argument("user_id must be a positive id"));
    }
    ctx.db
        .with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT id, order_id, amount_cents, status, created_at FROM payments WHERE user_id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([user_id], |row| {
                Ok(Entry {
                    payment_id: row.get(0)?,
                    order_id: row.get(1)?,
                    amount_cents: row.get(2)?,
                    status: row.get(3)?,
                    created_at: row.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .map_err(|e| Status::internal(format!("ledger: {e}")))
}

struct Balance(Ctx);

impl tonic::server::UnaryService<AccountRequest> for Balance {
    type Response = AccountBalance;
    type Future =
        futures_util::future::BoxFuture<'static, Result<Response<AccountBalance>, Status>>;

    fn call(&mut self, request: Request<AccountRequest>) -> Self::Future {
        let ctx = self.0.clone();
        Box::pin(async move {
            let user_id = request.into_inner().user_id;
            let entries = entries(&ctx, user_id)?;
            if entries.is_empty() {
                return Err(Status::not_found(format!("no payments for user {user_id}")));
            }
            let sum = |status: &str| {
                entries
                    .iter()
                    .filter(|e| e.status == status)
                    .map(|e| e.amount_cents)
                    .sum()
            };
            Ok(Response::new(AccountBalance {
                user_id,
                paid_cents: sum("completed") + sum("refunded"),
                refunded_cents: sum("refunded"),
                payments: entries.len() as u32,
            }))
        })
    }
}

struct History(Ctx);

impl tonic::server::ServerStreamingService<AccountRequest> for History {
    type Response = Entry;
    type ResponseStream = ReceiverStream<Result<Entry, Status>>;
    type Future =
        futures_util::future::BoxFuture<'static, Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<AccountRequest>) -> Self::Future {
        let ctx = self.0.clone();
        Box::pin(async move {
            let entries = entries(&ctx, request.into_inner().user_id)?;
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            let latency = ctx.opts.latency;
            tokio::spawn(async move {
                for entry in entries {
                    // `--latency` applies per message, so a slow stream can be shown.
                    if latency > Duration::ZERO {
                        tokio::time::sleep(latency).await;
                    }
                    if tx.send(Ok(entry)).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        })
    }
}

/// Serves the ledger on `listener` (HTTP/2 without TLS) until `shutdown` turns true.
pub fn serve(listener: TcpListener, ctx: Ctx, mut shutdown: watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<Incoming>| {
                    let ctx = ctx.clone();
                    async move {
                        let method = req.uri().path().strip_prefix(SERVICE).unwrap_or("");
                        let response = match method {
                            "Balance" => {
                                let codec = ProstCodec::<AccountBalance, AccountRequest>::default();
                                tonic::server::Grpc::new(codec)
                                    .unary(Balance(ctx), req)
                                    .await
                            }
                            "History" => {
                                let codec = ProstCodec::<Entry, AccountRequest>::default();
                                tonic::server::Grpc::new(codec)
                                    .server_streaming(History(ctx), req)
                                    .await
                            }
                            _ => Status::unimplemented("no such method").into_http(),
                        };
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
