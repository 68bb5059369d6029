//! Living under a service manager: systemd's readiness protocol, and a
//! binary upgrade the running process starts itself (SIGUSR2), so the new
//! process is the manager's to follow.
//!
//! systemd follows the process it started (`Type=notify`, `MainPID`).
//! When `detour --upgrade` takes over, it tells systemd it is the main
//! process now (`MAINPID=`, which `NotifyAccess=all` allows), before the old
//! one exits; otherwise systemd would take the old one's exit for the
//! service's end. And the new process must run inside the service, which a
//! shell's `detour --upgrade` does not: so SIGUSR2 makes the running process
//! start its successor itself, with the same binary path (where a package
//! manager has just put the new version) and configuration file.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;

/// Tell the service manager `state` (`READY=1`, `STOPPING=1`, …) when it
/// asked to be told (`NOTIFY_SOCKET`); a no-op otherwise, and never an
/// error that stops the proxy (it is logged).
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&socket, state) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

fn send(socket: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let bytes = socket.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket (systemd's usual choice).
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), PathBuf::from(socket))?;
    }
    Ok(())
}

/// What the manager is told once this process serves: ready, and, after an
/// upgrade, that it is the main process now.
pub fn ready(upgraded: bool) {
    if upgraded {
        notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
    } else {
        notify("READY=1");
    }
}

/// How to start this process's successor: the same binary path and
/// configuration file, with `--upgrade`.
#[derive(Debug, Clone)]
pub struct SuccessorCommand {
    program: OsString,
    config: PathBuf,
    /// Further arguments (how to reach etcd), passed on as they came.
    args: Vec<OsString>,
}

impl SuccessorCommand {
    /// The command for a process started as `argv0` with `config`: the
    /// path it was started by (not `/proc/self/exe`, which names the old
    /// binary's inode, deleted once a package manager replaced the file),
    /// so the successor runs whatever is there now.
    pub fn new(argv0: OsString, config: PathBuf) -> Self {
        SuccessorCommand {
            program: argv0,
            config,
            args: Vec::new(),
        }
    }

    /// Pass `args` on too (the `--etcd-…` flags of a configuration read
    /// from etcd; the environment is inherited anyway).
    pub fn with_args(mut self, args: Vec<OsString>) -> Self {
        self.args = args;
        self
    }

    /// Start the successor; it takes the listening sockets over through
    /// `[server] upgrade_socket` and this process drains once it serves.
    /// The child is reaped on a thread of its own, whether it takes over
    /// or fails.
    pub fn spawn(&self) {
        let child = Command::new(&self.program)
            .arg("--config")
            .arg(&self.config)
            .args(&self.args)
            .arg("--upgrade")
            .spawn();
        match child {
            Ok(mut child) => {
                tracing::info!(pid = child.id(), "SIGUSR2: started the successor");
                std::thread::spawn(move || {
                    if let Ok(status) = child.wait() {
                        if !status.success() {
                            tracing::warn!(%status, "the successor failed; serving on");
                        }
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "SIGUSR2: cannot start the successor; serving on"),
        }
    }
}
