//! One SQLite connection per service behind a mutex. Every handler locks it
//! for a few statements at most and never across an `.await`.

use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use rusqlite::Connection;

use crate::common::AppResult;
use crate::{idempotency, notifications, orders, outbox, payments, products, users, Service};

#[derive(Clone)]
pub struct Db(Arc<Mutex<Connection>>);

impl Db {
    /// Opens `path` (or `:memory:`) and creates the tables `service` needs.
    pub fn open(path: &str, service: Service) -> anyhow::Result<Db> {
        let conn = if path == ":memory:" {
            Connection::open_in_memory()?
        } else {
            let conn = Connection::open(path).with_context(|| format!("cannot open {path}"))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn
        };
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let schemas: &[&str] = match service {
            Service::Users => &[users::SCHEMA, outbox::SCHEMA],
            Service::Products => &[products::SCHEMA],
            Service::Orders => &[orders::SCHEMA, idempotency::SCHEMA, outbox::SCHEMA],
            Service::Payments => &[payments::SCHEMA, outbox::SCHEMA],
            Service::Notifications => &[notifications::SCHEMA],
            Service::Auth => &[],
            Service::Monolith => &[
                users::SCHEMA,
                products::SCHEMA,
                orders::SCHEMA,
                payments::SCHEMA,
                idempotency::SCHEMA,
                outbox::SCHEMA,
            ],
        };
        for schema in schemas {
            conn.execute_batch(schema)
                .with_context(|| format!("{}: schema", service.name()))?;
        }
        if matches!(service, Service::Products | Service::Monolith) {
            products::seed(&conn)?;
        }
        Ok(Db(Arc::new(Mutex::new(conn))))
    }

    /// Runs `f` with the connection locked.
    pub fn with<R>(&self, f: impl FnOnce(&mut Connection) -> AppResult<R>) -> AppResult<R> {
        let mut conn = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut conn)
    }
}
