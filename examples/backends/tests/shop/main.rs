//! Integration tests of the shop services: one test binary (one link), one
//! module per service. Every test starts its own services on 127.0.0.1:0.

mod auth;
mod monolith;
mod notifications;
mod orders;
mod payments;
mod products;
mod support;
mod users;
