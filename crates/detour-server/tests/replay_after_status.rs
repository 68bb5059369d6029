//! A request retried after a retriable status carries its whole body again
//! (regression: the engine used to drop the replay buffer whenever a
//! response head arrived, so the retry went out with an empty body).
#![allow(clippy::unwrap_used)]

mod support;

use detour_testkit::{Behavior, Upstream};
use support::{config, send, start};

#[tokio::test]
async fn a_put_retried_after_a_503_carries_its_body() {
    let failing = Upstream::start(Behavior::status(503)).await.unwrap();
    let echo = Upstream::start(Behavior::echo()).await.unwrap();
    let p = start(&[failing.addr(), echo.addr()], config());
    for i in 0..4 {
        let body = format!("payload-{i}");
        let raw = format!(
            "PUT /r HTTP/1.1\r\nhost: t\r\nx-request-id: put-{i}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let r = send(p.addr(), &raw).await.unwrap();
        assert_eq!(r.status, 200, "put-{i}");
        assert_eq!(
            r.body,
            body.as_bytes(),
            "put-{i}: the retry carried the body"
        );
    }
    assert!(failing.requests() >= 1);
}
