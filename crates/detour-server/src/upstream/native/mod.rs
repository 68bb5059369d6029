//! Detour's own HTTP/1.1 upstream connection (`http1_client = "native"`).
//!
//! hyper's client gives every upstream connection a task of its own and
//! every request an envelope through a channel to it, and the response body
//! comes back through another: a few thousand instructions and two task
//! wake-ups per request that a proxy does not need. Here the connection is
//! a plain value the request's task drives: [`conn::send`] writes the
//! request and reads the response head, and the response body reads on from
//! the same connection and returns it to the pool at its end.
//!
//! * [`head`]: the request head written, the response head parsed (with
//!   `httparse`, as hyper does) and the framing both imply;
//! * [`decode`]: the response body's framing, decoded from a buffer;
//! * [`conn`]: the connection, the exchange and the body.
//!
//! It accepts and refuses what hyper's client does (a differential test
//! suite holds it to that), upstream only; upgrades (`101`, `CONNECT`) and
//! HTTP/2 stay on hyper.

pub(crate) mod conn;
pub(crate) mod decode;
pub(crate) mod head;

pub(crate) use conn::{send, H1Body, H1Conn, SendFailed};

#[cfg(test)]
mod tests;
