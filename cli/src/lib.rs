//! llmgw: the gateway in one command. `run` renders an Envoy bootstrap with the llmgw filter from
//! the environment or a config file (llmgw's own, Envoy AI Gateway's, AIBrix's), starts Envoy and
//! serves the admin port; `render`, `check` and `stat` are the companions; `ratelimit` is Envoy's rate limit service
//! (limitador, Redis) for token budgets shared by many gateways.
//!
//! Flow: (`autoconfig` | `formats::*`) → `model::Gateway` (plugin config + upstreams) →
//! `validate` (the filter's own parser) → `bootstrap` → `run` (`envoy`, `admin`, `demo`).

pub mod admin;
pub mod autoconfig;
pub mod bootstrap;
pub mod budgets;
pub mod check;
pub mod cli;
pub mod consumers;
pub mod demo;
pub mod diag;
pub mod duration;
pub mod envoy;
pub mod envsubst;
pub mod fallback;
pub mod formats;
pub mod http;
pub mod locate;
pub mod model;
pub mod otel;
pub mod ratelimit;
pub mod render_eg;
pub mod run;
pub mod stat;
pub mod table;
pub mod url;
pub mod validate;
