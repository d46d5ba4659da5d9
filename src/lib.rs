//! keygate: an API-key authentication proxy.
//!
//! Module map (each folder owns one noun; arrows are "uses"):
//!
//! * [`proxy`] — data plane: listeners, forwarding, header rewriting, refusals → `auth`, `mcp`
//! * [`auth`] — the decision pipeline (route → credential → verify → authorize → rate limit → quota)
//!   → `cache`, `store`, `quota`, `keys`
//! * [`keys`] — key format, generation, hashing, the record (pure)
//! * [`cache`] — the in-process L1 key cache
//! * [`quota`] — periods, counters and rate limits
//! * [`mcp`] — MCP routes: JSON-RPC messages judged per key, `tools/list` filtered (pure)
//! * [`store`] — the admin store (SQLite)
//! * [`admin`] — the admin listener: REST API, OpenAPI, console, health
//! * [`manage`] — key lifecycle shared by the CLI, the admin API and the server
//! * [`config`] — TOML → validated settings (read only by `app` and `cli`)
//! * [`app`] — wiring and the serve loop; [`cli`] — the command line
//! * [`telemetry`] — logs; [`demo`] — the quickstart's echo upstream; [`clock`] — time

pub mod admin;
pub mod app;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod keys;
pub mod manage;
pub mod mcp;
pub mod proxy;
pub mod quota;
pub mod store;
pub mod telemetry;
