//! What `chaos` and `bench` both need from the system: free ports, programs
//! found or installed from Debian's packages, and child processes that are
//! stopped, with everything they started, whatever happens.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// Whether this process runs as root.
pub(crate) fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A free loopback port: bound, read and released. Another program could take
/// it in between; on a quiet loopback that does not happen in practice, and
/// the proxy's start fails loudly if it does.
///
/// # Errors
/// If no port can be bound.
pub(crate) fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Where `program` is: on `PATH`, or in the `sbin` directories Debian puts
/// nginx and HAProxy in (not on a normal user's `PATH`).
pub(crate) fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// `program`, installed from Debian's package `package` if absent (as root,
/// or through `sudo` without a password).
///
/// # Errors
/// Why it is not there: nobody may install it, or the installation failed.
pub(crate) fn ensure_program(program: &str, package: &str) -> Result<PathBuf, String> {
    if let Some(p) = find_program(program) {
        return Ok(p);
    }
    let sudo: &[&str] = if running_as_root() {
        &[]
    } else if Command::new("sudo")
        .args(["-n", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        &["sudo", "-n"]
    } else {
        return Err(format!(
            "{program} is not installed, and installing {package} needs root or sudo"
        ));
    };
    println!("installing {package} from Debian's packages");
    let apt = |args: &[&str]| {
        let mut all: Vec<&str> = sudo.to_vec();
        all.extend(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-q"]);
        all.extend(args);
        Command::new(all[0])
            .args(&all[1..])
            .status()
            .is_ok_and(|s| s.success())
    };
    // An image with stale package lists fails the first try; update and retry.
    let installed =
        apt(&["install", "-y", package]) || (apt(&["update"]) && apt(&["install", "-y", package]));
    match find_program(program) {
        Some(p) if installed => Ok(p),
        _ => Err(format!("could not install {package} with apt-get")),
    }
}

/// A child process in its own process group, stopped with the whole group
/// (nginx's worker included) when dropped.
///
/// The group keeps a Ctrl-C at the terminal from reaching the proxies before
/// the harness has stopped them in order; the harness catches Ctrl-C and
/// drops its guards. Should the harness itself be killed, `timeout` (when
/// present) ends the group after `limit`.
#[derive(Debug)]
pub(crate) struct Guard {
    name: String,
    child: Child,
    stopped: bool,
    /// How it ended, once it has.
    status: Option<ExitStatus>,
}

impl Guard {
    /// Spawns `cmd` with stdout and stderr going to `log`, ended by `timeout`
    /// after `limit` whatever happens.
    ///
    /// # Errors
    /// If the log cannot be created or the program cannot start.
    pub(crate) fn spawn(
        name: &str,
        cmd: Command,
        log: &Path,
        limit: Duration,
    ) -> Result<Guard, String> {
        let out = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = match find_program("timeout") {
            Some(timeout) => {
                let mut t = Command::new(timeout);
                t.args([
                    "-k",
                    "2",
                    "-s",
                    "INT",
                    &format!("{}", limit.as_secs().max(1)),
                ])
                .arg(cmd.get_program())
                .args(cmd.get_args());
                t
            }
            None => cmd,
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Guard {
            name: name.to_string(),
            child,
            stopped: false,
            status: None,
        })
    }

    /// The process id of the child (`timeout` when it wraps the program;
    /// the program is then its child).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has ended already.
    pub(crate) fn exited(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status.is_some()
    }

    /// How the process ended (under `timeout`, a child killed by signal N
    /// shows as exit status 128 + N), or `running`.
    pub(crate) fn status(&mut self) -> String {
        self.exited();
        self.status
            .map_or_else(|| "running".to_string(), |s| s.to_string())
    }

    /// Sends SIGINT to the group, waits up to 3 s, then SIGKILL. Every proxy
    /// here takes SIGINT as "stop now".
    pub(crate) fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let group = format!("-{}", self.child.id());
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args(["-s", sig, "--", &group])
                .stderr(Stdio::null())
                .status();
        };
        signal("INT");
        for _ in 0..300 {
            // Every process of the group got the signal itself (nginx's
            // worker too), so the leader's end is the group's end.
            if self.exited() {
                return;
            }
            // Drop is synchronous, and this waits a few milliseconds in
            // practice (3 s at worst) for a child that was told to stop.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("{} did not stop on SIGINT; killing it", self.name);
        signal("KILL");
        let _ = self.child.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}
