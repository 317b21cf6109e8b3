//! trackstore's front end: the v1 HTTP API (API.md) over HTTP/1.1, HTTP/2 and HTTP/3, live
//! subscriptions, Prometheus metrics, health and graceful shutdown, around the storage engine.
//!
//! | module | job |
//! |---|---|
//! | [`config`] | defaults, TOML file, `TRACKSTORE_*` environment, flags |
//! | [`api`] | the router and its handlers |
//! | [`auth`] | bearer tokens with scopes: configuration, route classes, the middleware |
//! | [`audit`] | the audit log of admin actions (`DATA/audit.log`) |
//! | [`problem`] | RFC 9457 errors and the mapping from engine errors |
//! | [`hub`] | live subscriptions: the head of the log and a bounded ring of recent events |
//! | [`metrics`] | Prometheus metrics |
//! | [`replication`] | the node's role: replication listener, follower, promotion |
//! | [`net`] | TCP (hyper) and QUIC (quinn + h3) listeners, bounds, graceful shutdown |
//! | [`tls`] | certificates and TLS configurations |
//! | [`server`] | wiring: open the engine, bind, serve, shut down |

pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod hub;
pub mod maintenance;
pub mod metrics;
pub mod net;
pub mod problem;
pub mod replication;
pub mod server;
pub mod tls;
