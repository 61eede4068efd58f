//! Starting and stopping what the peer benchmark measures, all on
//! 127.0.0.1: the targets (iperf3, the HTTP and echo servers of this
//! binary) and the tunnels (none for `raw`, OpenSSH `ssh -L` with and
//! without a tty session, hytun).
//!
//! Path of every measurement: load generator → entry port (tunnel entry
//! process) → tunnel exit process → target port.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::Instant as StdInstant;

use core::fmt;
use core::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use core::time::Duration;

/// A tunnel (or none) under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Tool {
    /// No tunnel: the load generator talks to the targets directly.
    Raw,
    /// `ssh -N -L`, aes128-gcm@openssh.com (Nagle stays on with `-N`).
    SshAes,
    /// `ssh -tt -L … 'sleep …'`: a tty session makes OpenSSH set
    /// TCP_NODELAY on its connection.
    SshAesTty,
    /// `hytun client -L` → `hytun server`.
    Hytun,
}

impl Tool {
    /// Every tool, in table order.
    pub(crate) const ALL: [Tool; 4] = [Tool::Raw, Tool::SshAes, Tool::SshAesTty, Tool::Hytun];

    /// The label used in tables, TSV and the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Tool::Raw => "raw",
            Tool::SshAes => "ssh-aes",
            Tool::SshAesTty => "ssh-aes-tty",
            Tool::Hytun => "hytun",
        }
    }

    /// Parses a label.
    pub(crate) fn from_name(s: &str) -> Option<Tool> {
        Tool::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Position in [`Tool::ALL`] (port layout).
    pub(crate) fn index(self) -> u16 {
        self as u16
    }
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The three kinds of target every tunnel forwards to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports {
    pub(crate) iperf: u16,
    pub(crate) http: u16,
    pub(crate) echo: u16,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// Port layout: targets at `base+1..=base+3`, tool `i`'s entry ports at
/// `base+10(i+1)+1..=+3` and its server side (sshd, hytun server) at
/// `base+10(i+1)+5`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub(crate) base: u16,
}

impl Layout {
    pub(crate) fn targets(self) -> Ports {
        Ports {
            iperf: self.base + 1,
            http: self.base + 2,
            echo: self.base + 3,
        }
    }

    pub(crate) fn entry(self, tool: Tool) -> Ports {
        if tool == Tool::Raw {
            return self.targets();
        }
        let b = self.base + 10 * (tool.index() + 1);
        Ports {
            iperf: b + 1,
            http: b + 2,
            echo: b + 3,
        }
    }

    /// Where `tool`'s server side (sshd, hytun server) listens.
    pub(crate) fn server_port(self, tool: Tool) -> u16 {
        self.base + 10 * (tool.index() + 1) + 5
    }

    /// Every port the run will listen on.
    pub(crate) fn all_ports(self, tools: &[Tool]) -> Vec<u16> {
        let t = self.targets();
        let mut v = vec![t.iperf, t.http, t.echo];
        for &tool in tools.iter().filter(|t| **t != Tool::Raw) {
            let e = self.entry(tool);
            v.extend([e.iperf, e.http, e.echo, self.server_port(tool)]);
        }
        v
    }
}

/// A child process that is killed and reaped when dropped.
pub(crate) struct Proc {
    name: String,
    child: Child,
    /// Kept open so a tty session never sees EOF on its input.
    _stdin: Option<ChildStdin>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr in `logs/NAME.log`.
    pub(crate) fn spawn(
        name: &str,
        cmd: &mut Command,
        logs: &Path,
        keep_stdin: bool,
    ) -> Result<Proc, String> {
        let log = fs::File::create(logs.join(format!("{name}.log")))
            .map_err(|e| format!("{name}: log file: {e}"))?;
        let err = log.try_clone().map_err(|e| format!("{name}: {e}"))?;
        cmd.stdout(log).stderr(err);
        cmd.stdin(if keep_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("{name}: cannot start {:?}: {e}", cmd.get_program()))?;
        let stdin = child.stdin.take();
        Ok(Proc {
            name: name.to_string(),
            child,
            _stdin: stdin,
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error if the process has exited.
    fn check_alive(&mut self, logs: &Path) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); see {}",
                self.name,
                logs.join(format!("{}.log", self.name)).display()
            )),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Already gone is fine; nothing else to do on failure.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion, failing with its output.
fn run_ok(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?} failed: {}{}",
            cmd,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// True if a 1-byte echo round trip through `port` works.
fn echo_works(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&loopback(port), Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut b = [0u8; 1];
    s.write_all(b"!").is_ok() && s.read_exact(&mut b).is_ok() && b == *b"!"
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&loopback(port), Duration::from_millis(200)).is_ok()
}

/// An error naming the first of `ports` on 127.0.0.1 that is taken.
pub(crate) fn check_ports_free(ports: &[u16]) -> Result<(), String> {
    for &port in ports {
        std::net::TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| format!("127.0.0.1:{port} is not free ({e}); pick another --base-port"))?;
    }
    Ok(())
}

/// Waits until `ready` holds, checking the processes are still alive.
pub(crate) fn wait_until(
    what: &str,
    procs: &mut [&mut Proc],
    logs: &Path,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let start = StdInstant::now();
    loop {
        if ready() {
            return Ok(());
        }
        for p in procs.iter_mut() {
            p.check_alive(logs)?;
        }
        if start.elapsed() > timeout {
            return Err(format!("{what}: not ready after {timeout:?}"));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The targets, running.
pub(crate) struct Targets {
    _procs: Vec<Proc>,
}

/// Starts iperf3 -s and this binary's HTTP and echo servers.
pub(crate) fn start_targets(layout: Layout, logs: &Path) -> Result<Targets, String> {
    let t = layout.targets();
    let me = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let mut iperf = Proc::spawn(
        "target-iperf3",
        Command::new("iperf3").args(["-s", "-B", "127.0.0.1", "-p", &t.iperf.to_string()]),
        logs,
        false,
    )?;
    let mut http = Proc::spawn(
        "target-http",
        Command::new(&me).args(["http", "--listen", &loopback(t.http).to_string()]),
        logs,
        false,
    )?;
    let mut echo = Proc::spawn(
        "target-echo",
        Command::new(&me).args(["echo", "--listen", &loopback(t.echo).to_string()]),
        logs,
        false,
    )?;
    let timeout = Duration::from_secs(10);
    wait_until("iperf3 -s", &mut [&mut iperf], logs, timeout, || {
        listening(t.iperf)
    })?;
    wait_until("http target", &mut [&mut http], logs, timeout, || {
        listening(t.http)
    })?;
    wait_until("echo target", &mut [&mut echo], logs, timeout, || {
        echo_works(t.echo)
    })?;
    Ok(Targets {
        _procs: vec![iperf, http, echo],
    })
}

/// A running tunnel: its entry and exit processes (none for `raw`).
pub(crate) struct Tunnel {
    pub(crate) tool: Tool,
    /// Entry side (the process the load generator connects to).
    pub(crate) entry: Option<Proc>,
    /// Exit side (the process that connects to the targets).
    pub(crate) exit: Option<Proc>,
    /// Where the exit side accepts tunnel connections (hytun server).
    pub(crate) server_addr: SocketAddr,
    /// Key material directory (hytun: client/server keys).
    pub(crate) keys: PathBuf,
    /// One-line description of the version and settings.
    pub(crate) version: String,
}

impl Tunnel {
    /// Pids of the entry side (empty for raw).
    pub(crate) fn entry_pids(&self) -> Vec<u32> {
        self.entry.iter().map(Proc::pid).collect()
    }

    /// Pids of the exit side (empty for raw).
    pub(crate) fn exit_pids(&self) -> Vec<u32> {
        self.exit.iter().map(Proc::pid).collect()
    }

    /// An error if a tunnel process died.
    pub(crate) fn check_alive(&mut self, logs: &Path) -> Result<(), String> {
        for p in self.entry.iter_mut().chain(self.exit.iter_mut()) {
            p.check_alive(logs)?;
        }
        Ok(())
    }
}

fn forwards(layout: Layout, tool: Tool) -> Vec<String> {
    let (e, t) = (layout.entry(tool), layout.targets());
    [(e.iperf, t.iperf), (e.http, t.http), (e.echo, t.echo)]
        .iter()
        .map(|(from, to)| format!("127.0.0.1:{from}:127.0.0.1:{to}"))
        .collect()
}

/// Starts `tool`'s tunnel and waits until an echo round trip through it
/// works. With `via`, the tunnel client connects to that port on
/// 127.0.0.1 (a relay in front of the server) instead of the server's.
pub(crate) fn start_tunnel(
    tool: Tool,
    layout: Layout,
    work: &Path,
    logs: &Path,
    hytun: &Path,
    via: Option<u16>,
) -> Result<Tunnel, String> {
    let mut tunnel = match tool {
        Tool::Raw => Tunnel {
            tool,
            entry: None,
            exit: None,
            server_addr: loopback(0),
            keys: work.to_path_buf(),
            version: "loopback, no tunnel".into(),
        },
        Tool::SshAes | Tool::SshAesTty => start_ssh(tool, layout, work, logs, via)?,
        Tool::Hytun => start_hytun(layout, work, logs, hytun, via)?,
    };
    let echo = layout.entry(tool).echo;
    let mut procs: Vec<&mut Proc> = tunnel
        .entry
        .iter_mut()
        .chain(tunnel.exit.iter_mut())
        .collect();
    wait_until(
        &format!("{tool} tunnel"),
        &mut procs,
        logs,
        Duration::from_secs(20),
        || echo_works(echo),
    )?;
    Ok(tunnel)
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).to_string();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

fn sshd_path() -> Result<PathBuf, String> {
    ["/usr/sbin/sshd", "/usr/bin/sshd", "/sbin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| "sshd not found (apt-get install openssh-server)".to_string())
}

/// A private sshd (own host key, own authorized_keys, root by key only)
/// and an `ssh -L` client for it.
fn start_ssh(
    tool: Tool,
    layout: Layout,
    work: &Path,
    logs: &Path,
    via: Option<u16>,
) -> Result<Tunnel, String> {
    let dir = work.join("ssh");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // sshd refuses to start without its privilege-separation directory.
    fs::create_dir_all("/run/sshd").map_err(|e| format!("/run/sshd: {e}"))?;
    for key in ["host_ed25519", "id_ed25519"] {
        if !dir.join(key).exists() {
            run_ok(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C"])
                    .args([
                        format!("hytun-bench {key}"),
                        "-f".into(),
                        dir.join(key).display().to_string(),
                    ]),
            )?;
        }
    }
    fs::copy(dir.join("id_ed25519.pub"), dir.join("authorized_keys"))
        .map_err(|e| format!("authorized_keys: {e}"))?;
    let port = layout.server_port(tool);
    let cipher = "aes128-gcm@openssh.com";
    let cfg = dir.join(format!("sshd_{}.conf", tool.name()));
    let config = format!(
        "# generated by hytun-bench\n\
         Port {port}\n\
         ListenAddress 127.0.0.1\n\
         HostKey {dir}/host_ed25519\n\
         PidFile {dir}/sshd_{name}.pid\n\
         AuthorizedKeysFile {dir}/authorized_keys\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         StrictModes no\n\
         AllowTcpForwarding yes\n\
         PermitTTY yes\n\
         Ciphers {cipher}\n\
         LogLevel ERROR\n",
        dir = dir.display(),
        name = tool.name(),
    );
    fs::write(&cfg, config).map_err(|e| format!("{}: {e}", cfg.display()))?;
    let sshd_bin = sshd_path()?;
    let mut sshd = Proc::spawn(
        &format!("{}-sshd", tool.name()),
        Command::new(&sshd_bin)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&cfg),
        logs,
        false,
    )?;
    wait_until(
        "sshd",
        &mut [&mut sshd],
        logs,
        Duration::from_secs(10),
        || listening(port),
    )?;

    let mut ssh = Command::new("ssh");
    ssh.args(["-F", "/dev/null"])
        .args(["-o", "BatchMode=yes"])
        .args(["-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "IdentitiesOnly=yes"])
        .args(["-o", "ExitOnForwardFailure=yes"])
        .args(["-o", "LogLevel=ERROR"])
        .arg("-o")
        .arg(format!("Ciphers={cipher}"))
        .arg("-i")
        .arg(dir.join("id_ed25519"))
        .args(["-p", &via.unwrap_or(port).to_string()]);
    for f in forwards(layout, tool) {
        ssh.arg("-L").arg(f);
    }
    let tty = tool == Tool::SshAesTty;
    if tty {
        ssh.args(["-tt", "root@127.0.0.1", "sleep 2147483647"]);
    } else {
        ssh.args(["-N", "root@127.0.0.1"]);
    }
    let client = Proc::spawn(&format!("{}-ssh", tool.name()), &mut ssh, logs, tty)?;
    let version = format!(
        "{} / {}, {cipher}, ed25519, {}",
        first_line(Command::new("ssh").arg("-V")),
        first_line(Command::new(&sshd_bin).arg("-V")),
        if tty {
            "ssh -tt (tty session: TCP_NODELAY)"
        } else {
            "ssh -N (no session: Nagle on)"
        }
    );
    Ok(Tunnel {
        tool,
        entry: Some(client),
        exit: Some(sshd),
        server_addr: loopback(port),
        keys: dir,
        version,
    })
}

/// Generates RSA-2048 keys with `hytun keygen` and starts `hytun server`
/// and `hytun client -L`.
fn start_hytun(
    layout: Layout,
    work: &Path,
    logs: &Path,
    hytun: &Path,
    via: Option<u16>,
) -> Result<Tunnel, String> {
    let dir = work.join("hytun-keys");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for name in ["server", "id"] {
        if !dir.join(format!("{name}.key")).exists() {
            run_ok(
                Command::new(hytun)
                    .args([
                        "keygen", "--bits", "2048", "--force", "--name", name, "--out",
                    ])
                    .arg(&dir),
            )?;
        }
    }
    fs::copy(dir.join("id.pub"), dir.join("authorized_keys"))
        .map_err(|e| format!("authorized_keys: {e}"))?;
    let server_addr = loopback(layout.server_port(Tool::Hytun));
    // The per-source handshake rate limit (default 20/s) is an abuse
    // control, not a capacity limit: it is raised so the handshake test
    // measures the server's CPU cost. Every other setting is the default.
    let mut server = Proc::spawn(
        "hytun-server",
        Command::new(hytun)
            .arg("server")
            .args(["--listen", &server_addr.to_string()])
            .arg("--key")
            .arg(dir.join("server.key"))
            .arg("--authorized-keys")
            .arg(dir.join("authorized_keys"))
            .args(["--allow", "127.0.0.1:*"])
            .args(["--handshake-rate", "1000000", "--max-sessions", "4096"])
            // The benchmark measures the handshake rate itself: no server-wide cap.
            .args(["--key-ops-rate", "1000000", "--max-pending", "4096"]),
        logs,
        false,
    )?;
    wait_until(
        "hytun server",
        &mut [&mut server],
        logs,
        Duration::from_secs(10),
        || listening(server_addr.port()),
    )?;
    let mut cmd = Command::new(hytun);
    let dial = via.map_or(server_addr, loopback);
    cmd.arg("client")
        .args(["--server", &dial.to_string()])
        .arg("--key")
        .arg(dir.join("id.key"))
        .arg("--server-key")
        .arg(dir.join("server.pub"));
    for f in forwards(layout, Tool::Hytun) {
        cmd.arg("-L").arg(f);
    }
    let client = Proc::spawn("hytun-client", &mut cmd, logs, false)?;
    let version = format!(
        "{}, RSA-2048 keys, AES-128-GCM, default settings",
        first_line(Command::new(hytun).arg("--version"))
    );
    Ok(Tunnel {
        tool: Tool::Hytun,
        entry: Some(client),
        exit: Some(server),
        server_addr,
        keys: dir,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_do_not_collide() {
        let l = Layout { base: 24100 };
        let mut all = l.all_ports(&Tool::ALL);
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
        assert_eq!(l.entry(Tool::Raw).http, l.targets().http);
    }

    #[test]
    fn tool_names_round_trip() {
        for t in Tool::ALL {
            assert_eq!(Tool::from_name(t.name()), Some(t));
        }
    }
}
