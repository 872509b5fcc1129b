//! End-to-end tests: real backend instances on port 0, real redis-server processes, real
//! HTTP and Server-Sent Events over loopback.

mod accounts;
mod carriers;
mod cluster;
mod delivery;
mod helpers;
mod http_rules;
mod no_loss;
mod open_files;
mod presence;
mod publish;
mod security;
mod sentinel;
mod single_node;
mod stream;
mod topics;
mod topology;
mod upgrade;
