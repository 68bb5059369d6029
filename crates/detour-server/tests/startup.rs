//! What `Server::start` refuses before any listener opens.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use detour_server::{HttpProxy, Server};
use support::RoundRobin;

#[test]
fn a_config_built_in_code_is_validated_at_start() {
    // ServerConfig is plain data: a program can set a field past the bound
    // without ever calling validate(). It must not start and panic later.
    let mut cfg = support::config();
    cfg.grace_period = Duration::from_secs(10_000_000_000_000_000_000);
    let proxy = HttpProxy::builder(RoundRobin::new(&["127.0.0.1:9".parse().unwrap()]))
        .config(cfg.clone())
        .build();
    let e = Server::new(cfg).start(proxy).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("server.grace_period"), "{e}");
}
