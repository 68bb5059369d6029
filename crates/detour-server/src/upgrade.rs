//! Binary upgrade without a dropped connection.
//!
//! Starting a new process and stopping the old one loses the connections
//! still queued on the old process's listening sockets: the kernel resets
//! them when it closes its sockets. So the running server hands its
//! listening sockets to its successor instead, over a Unix socket
//! (`[server] upgrade_socket`), and the successor accepts on the very same
//! sockets:
//!
//! 1. the successor connects and says `detour-upgrade 1`;
//! 2. the running server answers `listeners ADDR ADDR …` with one listening
//!    socket per address attached (`SCM_RIGHTS`; a worker's socket each, so
//!    an address may repeat);
//! 3. the successor serves on them (binding the addresses it did not get),
//!    then says `ready`;
//! 4. the running server answers `bye`, stops accepting and drains
//!    ([`ServerHandle::handed_over`](crate::server::ServerHandle::handed_over)).
//!
//! A successor that fails before `ready` closes the connection, and the
//! running server goes on serving as if nothing happened.

use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::sync::watch;

/// What the successor says first.
const HELLO: &str = "detour-upgrade 1";
/// The most sockets one handoff carries (the kernel's `SCM_MAX_FD`).
const MAX_FDS: usize = 253;
/// How long either side waits for the other's next line. The successor's
/// start (its upstreams' first health checks) happens between `listeners`
/// and `ready`, so that wait is longer.
const LINE_WAIT: Duration = Duration::from_secs(10);
const START_WAIT: Duration = Duration::from_secs(120);

/// Listening sockets taken over from a running server, by address.
#[derive(Debug, Default)]
pub struct Inherited {
    listeners: Vec<(SocketAddr, OwnedFd)>,
}

impl Inherited {
    /// Take the sockets listening on `addr` out of the set.
    pub fn take(&mut self, addr: SocketAddr) -> Vec<OwnedFd> {
        let (mine, rest) = std::mem::take(&mut self.listeners)
            .into_iter()
            .partition(|(a, _)| *a == addr);
        self.listeners = rest;
        mine.into_iter().map(|(_, fd)| fd).collect()
    }

    /// How many sockets are left.
    pub fn len(&self) -> usize {
        self.listeners.len()
    }

    /// Whether none are left.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    /// The addresses of the sockets left, one per socket.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|(a, _)| *a).collect()
    }
}

/// The successor's end of a handoff.
#[derive(Debug)]
pub struct Successor {
    stream: BufReader<UnixStream>,
}

impl Successor {
    /// Tell the old server this one serves: it stops accepting and drains.
    /// Dropping a `Successor` instead tells it to go on serving.
    ///
    /// # Errors
    /// The old server went away or did not acknowledge.
    pub fn ready(mut self) -> io::Result<()> {
        self.stream.get_mut().write_all(b"ready\n")?;
        expect_line(&mut self.stream, "bye")
    }
}

/// Ask the server whose upgrade socket is `path` for its listening sockets.
///
/// # Errors
/// Nothing answers at `path`, or the answer is not a handoff.
pub fn take_over(path: &Path) -> io::Result<(Inherited, Successor)> {
    let stream = UnixStream::connect(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("no running Detour answers at {}: {e}", path.display()),
        )
    })?;
    stream.set_read_timeout(Some(LINE_WAIT))?;
    (&stream).write_all(format!("{HELLO}\n").as_bytes())?;
    let (line, fds) = receive(&stream)?;
    let addrs = line
        .strip_prefix("listeners")
        .ok_or_else(|| invalid(format!("unexpected answer {line:?}")))?
        .split_whitespace()
        .map(|a| {
            a.parse::<SocketAddr>()
                .map_err(|e| invalid(format!("{a:?}: {e}")))
        })
        .collect::<io::Result<Vec<_>>>()?;
    if addrs.len() != fds.len() {
        return Err(invalid(format!(
            "{} addresses but {} sockets",
            addrs.len(),
            fds.len()
        )));
    }
    Ok((
        Inherited {
            listeners: addrs.into_iter().zip(fds).collect(),
        },
        Successor {
            stream: BufReader::new(stream),
        },
    ))
}

/// One line and the descriptors sent with it.
fn receive(stream: &UnixStream) -> io::Result<(String, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut buf = vec![0u8; 16 * 1024];
    let got = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    buf.truncate(got.bytes);
    // The descriptors come with the first byte; the rest of the line may
    // come in later reads.
    let mut reader = BufReader::new(stream);
    while !buf.ends_with(b"\n") {
        let before = buf.len();
        reader.read_until(b'\n', &mut buf)?;
        if buf.len() == before {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    let line = String::from_utf8(buf).map_err(|_| invalid("not UTF-8".into()))?;
    Ok((line.trim_end().to_string(), fds))
}

fn expect_line(stream: &mut BufReader<UnixStream>, want: &str) -> io::Result<()> {
    let mut line = String::new();
    stream.read_line(&mut line)?;
    if line.trim_end() == want {
        Ok(())
    } else {
        Err(invalid(format!("expected {want:?}, got {line:?}")))
    }
}

fn invalid(why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("upgrade handoff: {why}"),
    )
}

/// The sockets a running server offers its successor: its listeners, and
/// whatever else the application adds (an admin listener).
pub(crate) type Offered = Arc<Mutex<Vec<(SocketAddr, OwnedFd)>>>;

/// Serve handoffs at `path` on a thread of its own until one succeeds,
/// then turn `handed` true. `successor`: this server took its sockets over
/// from the one that listened at `path` before, so the path is taken over
/// too; otherwise a live server there is an error (a second server started
/// by mistake), and a stale path is replaced.
///
/// # Errors
/// The path is in use by a live server, or cannot be bound.
pub(crate) fn serve(
    path: PathBuf,
    offered: Offered,
    handed: watch::Sender<bool>,
    successor: bool,
) -> io::Result<()> {
    if path.exists() && !successor && UnixStream::connect(&path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another Detour serves upgrades at {}; start this one with --upgrade to take over from it",
                path.display()
            ),
        ));
    }
    let listener = bind(&path)?;
    std::thread::Builder::new()
        .name("detour-upgrade".into())
        .spawn(move || handoffs(listener, &path, &offered, &handed))?;
    Ok(())
}

/// Bind `path`, replacing what is there (a stale socket, or the one of
/// the server this one took over from).
fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    UnixListener::bind(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind the upgrade socket {}: {e}", path.display()),
        )
    })
}

/// Accept successors until one takes over. A successor that failed may
/// have taken the path already (it binds it before it says `ready`), so
/// after a failure the path is bound again.
fn handoffs(
    mut listener: UnixListener,
    path: &Path,
    offered: &Offered,
    handed: &watch::Sender<bool>,
) {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin. This is
                // the upgrade socket's own thread, outside any runtime.
                tracing::warn!(error = %e, "the upgrade socket cannot accept");
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        match hand_over(stream, offered) {
            Ok(()) => {
                tracing::info!("listening sockets handed to the successor; draining");
                handed.send_replace(true);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "an upgrade did not complete; serving on");
                match bind(path) {
                    Ok(l) => listener = l,
                    Err(e) => tracing::warn!(error = %e, "the upgrade socket is lost"),
                }
            }
        }
    }
}

/// One handoff: the sockets out, `ready` in, `bye` out.
fn hand_over(stream: UnixStream, offered: &Offered) -> io::Result<()> {
    stream.set_read_timeout(Some(LINE_WAIT))?;
    let mut reader = BufReader::new(stream);
    expect_line(&mut reader, HELLO)?;
    {
        let offered = offered
            .lock()
            .map_err(|_| io::Error::other("the offered sockets are poisoned"))?;
        if offered.len() > MAX_FDS {
            return Err(io::Error::other(format!(
                "{} listening sockets, more than one handoff carries ({MAX_FDS})",
                offered.len()
            )));
        }
        let addrs: Vec<String> = offered.iter().map(|(a, _)| a.to_string()).collect();
        let line = format!("listeners {}\n", addrs.join(" "));
        let fds: Vec<_> = offered
            .iter()
            .map(|(_, fd)| std::os::fd::AsFd::as_fd(fd))
            .collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("the sockets do not fit one message"));
        }
        let sent = rustix::net::sendmsg(
            reader.get_ref(),
            &[IoSlice::new(line.as_bytes())],
            &mut control,
            SendFlags::empty(),
        )?;
        // The descriptors went with the first byte; the rest of the line
        // may need more writes.
        reader.get_ref().write_all(&line.as_bytes()[sent..])?;
    }
    reader.get_ref().set_read_timeout(Some(START_WAIT))?;
    expect_line(&mut reader, "ready")?;
    reader.get_ref().write_all(b"bye\n")
}
