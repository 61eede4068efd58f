//! Live reload of a real `hytun server` process over loopback: after the
//! files are edited, SIGHUP makes the server re-read its config file and
//! `authorized_keys` without dropping sessions. A key added is admitted, a
//! key removed has its live sessions ended (and logged), a file that fails
//! to parse keeps the previous configuration (and says why), an allowlist
//! change applies to new streams while open streams keep running.
//!
//! Also here, because the reload log names keys by it: `hytun fingerprint`
//! prints the value the server logs, and the README's `openssl` one-liner
//! gives the same value.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hytun_host::allow::DestHost;
use hytun_host::config::Endpoint;
use hytun_host::setup::{self, ClientFlags};
use hytun_tests::harness::{RunningClient, forward_to, keydir, loopback};
use hytun_tests::{ChildGuard, EchoServer, free_port, spawn_hytun, wait_listening};

const IO_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_WAIT: Duration = Duration::from_secs(15);

/// A server process with its own directory (mode 0700, as from
/// `tempfile`), config file and `authorized_keys`, and its stderr log.
struct Fixture {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    child: ChildGuard,
    log: Arc<Mutex<String>>,
}

impl Fixture {
    /// Starts a server authorizing the keys named in `authorized` (of
    /// `client`, `stranger`) and allowing `allow`.
    fn start(authorized: &[&str], allow: &[String]) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("server.key");
        std::fs::copy(keydir().join("server.key"), &key).expect("copy server key");
        write_authorized(dir.path(), authorized);
        write_config(dir.path(), allow);
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let config = dir.path().join("hytun.toml");
        let mut child = spawn_hytun(
            dir.path(),
            &[
                // Debug: per-stream refusals are logged at that level.
                "-v",
                "server",
                "--listen",
                &listen,
                "--key",
                key.to_str().unwrap_or_default(),
                "--config",
                config.to_str().unwrap_or_default(),
                "--threads",
                "2",
            ],
        );
        let log = capture(child.0.stderr.take().expect("server stderr"));
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        assert!(wait_listening(addr, Duration::from_secs(20)), "server up");
        Fixture {
            dir,
            addr,
            child,
            log,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Sends SIGHUP and waits for the server to log the outcome (a new
    /// generation, or a failure), the `n`-th reload of this server.
    fn sighup(&self, n: usize) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP failed");
        let deadline = Instant::now() + LOG_WAIT;
        while self.count("SIGHUP: reloading") < n
            || self.count("reloaded configuration") + self.count("reload failed") < n
        {
            assert!(
                Instant::now() < deadline,
                "no reload logged:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Waits until a log line contains every one of `needles`.
    fn wait_log(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + LOG_WAIT;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.to_string();
            }
            assert!(Instant::now() < deadline, "no {needles:?} in log:\n{log}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client with key `name` forwarding a local port to `dest`.
    fn client(&self, name: &str, dest: SocketAddr) -> RunningClient {
        let mut opts = setup::client_options(ClientFlags {
            server: Some(Endpoint {
                host: DestHost::Ip(self.addr.ip()),
                port: self.addr.port(),
            }),
            key: Some(keydir().join(format!("{name}.key"))),
            server_key: Some(keydir().join("server.pub")),
            ..ClientFlags::default()
        })
        .expect("client options");
        opts.listeners = vec![(loopback(), forward_to(dest))];
        RunningClient::start(opts)
    }

    fn assert_running(&mut self) {
        assert!(
            matches!(self.child.0.try_wait(), Ok(None)),
            "server exited:\n{}",
            self.log()
        );
    }
}

fn write_authorized(dir: &Path, names: &[&str]) {
    let mut text = String::new();
    for name in names {
        text.push_str(&format!("# {name}\n"));
        text.push_str(&std::fs::read_to_string(keydir().join(format!("{name}.pub"))).expect("pub"));
    }
    std::fs::write(dir.join("authorized_keys"), text).expect("write authorized_keys");
}

fn write_config(dir: &Path, allow: &[String]) {
    let list: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
    let text = format!(
        "[server]\nauthorized-keys = \"authorized_keys\"\nallow = [{}]\n",
        list.join(", ")
    );
    std::fs::write(dir.join("hytun.toml"), text).expect("write config");
}

fn fingerprint(name: &str) -> String {
    let key = hytun_keys::load_public_key(&keydir().join(format!("{name}.pub"))).expect("pub");
    hytun_keys::fingerprint(&key).to_string()
}

/// Opens a stream through `client`'s forward and proves it carries data.
fn open_stream(client: &RunningClient) -> TcpStream {
    let mut s = TcpStream::connect(client.addrs[0]).expect("connect forward");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    echo(&mut s, b"hello");
    s
}

fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).expect("write");
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).expect("echo back");
    assert_eq!(buf, msg);
}

/// How a stream ended: `Ok(0)` for a clean EOF, else the error kind.
fn read_end(s: &mut TcpStream) -> Result<usize, io::ErrorKind> {
    let mut buf = [0u8; 64];
    s.read(&mut buf).map_err(|e| e.kind())
}

fn allow_only(addr: SocketAddr) -> Vec<String> {
    vec![addr.to_string()]
}

#[test]
fn sighup_admits_an_added_key_and_ends_a_removed_keys_sessions() {
    let echo_server = EchoServer::start().expect("echo");
    let mut f = Fixture::start(&["client"], &allow_only(echo_server.addr));

    // Before: the stranger is refused, the client works.
    let stranger = f.client("stranger", echo_server.addr);
    let _ = TcpStream::connect(stranger.addrs[0]);
    f.wait_log(&["refused unauthorized client key", &fingerprint("stranger")]);
    drop(stranger);
    let client = f.client("client", echo_server.addr);
    let mut held = open_stream(&client);

    // Swap the keys and reload.
    write_authorized(f.dir.path(), &["stranger"]);
    f.sighup(1);
    f.wait_log(&["client key", &fingerprint("stranger"), "added"]);
    f.wait_log(&["client key", &fingerprint("client"), "removed"]);
    let ended = f.wait_log(&["no longer in authorized_keys", &fingerprint("client")]);
    assert!(ended.contains("1 open streams aborted"), "{ended}");
    // The removed key's open stream is aborted, not ended cleanly.
    assert_eq!(read_end(&mut held), Err(io::ErrorKind::ConnectionReset));

    // After: the stranger gets in; the server lives on.
    let stranger = f.client("stranger", echo_server.addr);
    let mut s = open_stream(&stranger);
    echo(&mut s, b"after reload");
    f.assert_running();
}

/// A stderr reader: every line into a shared string.
fn capture(stderr: std::process::ChildStderr) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(mut l) = sink.lock() {
                l.push_str(&line);
                l.push('\n');
            }
        }
    });
    log
}

#[test]
fn a_client_whose_key_is_removed_is_told_why() {
    let echo_server = EchoServer::start().expect("echo");
    let f = Fixture::start(&["client"], &allow_only(echo_server.addr));
    // A real `hytun client` process, so its own log can be read.
    let port = free_port();
    let forward = format!("127.0.0.1:{port}:{}", echo_server.addr);
    let key = keydir().join("client.key");
    let server_key = keydir().join("server.pub");
    let mut client = spawn_hytun(
        f.dir.path(),
        &[
            "client",
            "--server",
            &f.addr.to_string(),
            "--key",
            key.to_str().unwrap_or_default(),
            "--server-key",
            server_key.to_str().unwrap_or_default(),
            "-L",
            &forward,
        ],
    );
    let client_log = capture(client.0.stderr.take().expect("client stderr"));
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    assert!(wait_listening(local, Duration::from_secs(20)), "client up");
    let mut s = TcpStream::connect(local).expect("connect forward");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    echo(&mut s, b"before");

    write_authorized(f.dir.path(), &["stranger"]);
    f.sighup(1);
    f.wait_log(&["no longer in authorized_keys", &fingerprint("client")]);
    // The CLOSE says why (code 6, KeyRevoked), not "shutting down".
    let deadline = Instant::now() + LOG_WAIT;
    loop {
        let log = client_log.lock().map(|l| l.clone()).unwrap_or_default();
        if log.contains("client key no longer authorized by the server") {
            assert!(!log.contains("peer shutting down"), "{log}");
            break;
        }
        assert!(Instant::now() < deadline, "client never said why:\n{log}");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(read_end(&mut s), Err(io::ErrorKind::ConnectionReset));
}

#[test]
fn a_broken_file_keeps_the_previous_configuration() {
    let echo_server = EchoServer::start().expect("echo");
    let mut f = Fixture::start(&["client"], &allow_only(echo_server.addr));
    let client = f.client("client", echo_server.addr);
    let mut held = open_stream(&client);

    // A garbage line in authorized_keys: logged with the file and line.
    let path = f.path("authorized_keys");
    let mut text = std::fs::read_to_string(&path).expect("read");
    text.push_str("ssh-dss AAAAB3NzaC1kc3MAAACBAP... broken\n");
    std::fs::write(&path, text).expect("write");
    f.sighup(1);
    let line = f.wait_log(&["reload failed", "authorized_keys", "line"]);
    assert!(
        line.contains("keeping the previous configuration"),
        "{line}"
    );

    // A broken config file: same.
    std::fs::write(f.path("hytun.toml"), "[server]\nallow = [\"not a pattern\n").expect("write");
    f.sighup(2);
    f.wait_log(&["reload failed", "hytun.toml"]);
    assert_eq!(f.count("reloaded configuration"), 0, "{}", f.log());

    // Nothing was dropped, and the old keys and allowlist still apply.
    echo(&mut held, b"still here");
    let mut fresh = open_stream(&client);
    echo(&mut fresh, b"new stream");
    let new_client = f.client("client", echo_server.addr);
    let mut s = open_stream(&new_client);
    echo(&mut s, b"new session");
    f.assert_running();
}

#[test]
fn an_allowlist_change_applies_to_new_streams_and_open_ones_keep_running() {
    let first = EchoServer::start().expect("echo");
    let second = EchoServer::start().expect("echo");
    let mut f = Fixture::start(&["client"], &allow_only(first.addr));
    let to_first = f.client("client", first.addr);
    let to_second = f.client("client", second.addr);
    let mut held = open_stream(&to_first);
    // Not allowed yet: the local connection is closed without data.
    let mut refused = TcpStream::connect(to_second.addrs[0]).expect("connect");
    refused.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let _ = refused.write_all(b"x");
    assert!(matches!(read_end(&mut refused), Ok(0) | Err(_)));
    f.wait_log(&["not allowed"]);

    write_config(f.dir.path(), &allow_only(second.addr));
    f.sighup(1);
    let line = f.wait_log(&["reloaded configuration"]);
    assert!(line.contains("allowlist changed"), "{line}");

    // The stream opened under the old list keeps running...
    echo(&mut held, b"still flowing");
    // ...new streams follow the new list, in the same sessions.
    let mut now_allowed = open_stream(&to_second);
    echo(&mut now_allowed, b"second");
    let mut now_refused = TcpStream::connect(to_first.addrs[0]).expect("connect");
    now_refused
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("timeout");
    let _ = now_refused.write_all(b"x");
    let mut buf = [0u8; 8];
    assert!(
        !matches!(now_refused.read(&mut buf), Ok(n) if n > 0),
        "a stream to a destination removed from the allowlist carried data"
    );
    assert_eq!(f.count("session ended"), 0, "{}", f.log());
    assert_eq!(f.count("no longer in authorized_keys"), 0, "{}", f.log());
    f.assert_running();
}

#[test]
fn sighup_without_changes_drops_nothing() {
    let echo_server = EchoServer::start().expect("echo");
    let mut f = Fixture::start(&["client", "stranger"], &allow_only(echo_server.addr));
    let a = f.client("client", echo_server.addr);
    let b = f.client("stranger", echo_server.addr);
    let mut sa = open_stream(&a);
    let mut sb = open_stream(&b);
    f.sighup(1);
    f.sighup(2);
    let line = f.wait_log(&["reloaded configuration (generation 2)"]);
    assert!(line.contains("2 authorized client keys"), "{line}");
    assert!(line.contains("allowlist unchanged"), "{line}");
    echo(&mut sa, b"a");
    echo(&mut sb, b"b");
    f.assert_running();
}

/// The README's one-liner for a `.pub` (SPKI PEM) file.
fn openssl_fingerprint(public: &Path) -> String {
    let script = format!(
        "echo \"SHA256:$(openssl pkey -pubin -in '{}' -outform DER | openssl dgst -sha256 -binary | openssl base64 -A | tr -d =)\"",
        public.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn fingerprint_cli_matches_openssl_and_the_server_log() {
    let echo_server = EchoServer::start().expect("echo");
    let f = Fixture::start(&["client", "stranger"], &allow_only(echo_server.addr));
    let out = hytun_tests::hytun(
        f.dir.path(),
        &[
            "fingerprint",
            keydir().join("client.pub").to_str().unwrap_or_default(),
            keydir().join("client.key").to_str().unwrap_or_default(),
            "authorized_keys",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    let client_fp = openssl_fingerprint(&keydir().join("client.pub"));
    let stranger_fp = openssl_fingerprint(&keydir().join("stranger.pub"));
    assert!(
        client_fp.starts_with("SHA256:") && client_fp.len() == 50,
        "{client_fp}"
    );
    assert!(
        lines[0].starts_with(&format!("{client_fp} 2048-bit RSA public key")),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with(&format!("{client_fp} 2048-bit RSA private key")),
        "{stdout}"
    );
    assert!(lines[2].starts_with(&format!("{client_fp} ")), "{stdout}");
    assert!(lines[2].ends_with("(client)"), "{stdout}");
    assert!(lines[3].starts_with(&format!("{stranger_fp} ")), "{stdout}");

    // The server logs the same value when the key connects.
    let client = f.client("client", echo_server.addr);
    let _s = open_stream(&client);
    f.wait_log(&["session up, client key", &client_fp]);

    // A file that is not a key fails the command but the others are listed.
    let out = hytun_tests::hytun(
        f.dir.path(),
        &[
            "fingerprint",
            "hytun.toml",
            keydir().join("stranger.pub").to_str().unwrap_or_default(),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&stranger_fp));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hytun.toml"));
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn strict_modes_apply_at_start_and_on_reload() {
    let echo_server = EchoServer::start().expect("echo");
    let mut f = Fixture::start(&["client"], &allow_only(echo_server.addr));
    let client = f.client("client", echo_server.addr);
    let mut held = open_stream(&client);

    // A group-writable authorized_keys is refused on reload, with the fix.
    let ak = f.path("authorized_keys");
    chmod(&ak, 0o664);
    f.sighup(1);
    let line = f.wait_log(&["reload failed", "writable by group or others"]);
    assert!(
        line.contains(&format!("run chmod go-w {}", ak.display())),
        "{line}"
    );
    echo(&mut held, b"kept");
    chmod(&ak, 0o644);

    // A world-writable config file is refused when the server starts.
    let config = f.path("hytun.toml");
    chmod(&config, 0o666);
    let mut server = spawn_hytun(
        f.dir.path(),
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--key",
            "server.key",
            "--config",
            "hytun.toml",
        ],
    );
    let deadline = Instant::now() + LOG_WAIT;
    while matches!(server.0.try_wait(), Ok(None)) {
        assert!(
            Instant::now() < deadline,
            "the server started with a world-writable config"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(matches!(server.0.try_wait(), Ok(Some(status)) if !status.success()));
    let mut stderr = String::new();
    server
        .0
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(stderr.contains("config file"), "{stderr}");
    assert!(stderr.contains("chmod go-w"), "{stderr}");
    f.assert_running();
}

#[test]
fn a_reload_applies_live_limits_and_keeps_restart_only_ones() {
    hytun_tests::harness::capture_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("server.key");
    std::fs::copy(keydir().join("server.key"), &key).expect("copy server key");
    write_authorized(dir.path(), &["client"]);
    let config = dir.path().join("hytun.toml");
    let base = "authorized-keys = \"authorized_keys\"\nallow = [\"127.0.0.1:80\"]\n";
    std::fs::write(
        &config,
        format!(
            "[server]\n{base}max-sessions = 10\nmemory-budget = 100\nmax-streams-per-session = 8\n"
        ),
    )
    .expect("write config");
    // No --listen: the address comes from the config (the default at
    // first), so the reload sees it change. Nothing is bound here.
    let flags = hytun_host::setup::ServerFlags {
        key: Some(key),
        config: Some(config.clone()),
        ..Default::default()
    };
    let running = setup::server_options(flags.clone()).expect("server options");
    assert_eq!(running.limits.max_sessions, 10);
    assert_eq!(running.limits.memory_budget, 100 << 20);

    std::fs::write(
        &config,
        format!(
            "[server]\n{}max-sessions = 20\nmemory-budget = 200\n\
             max-streams-per-session = 16\nlisten = \"127.0.0.1:9\"\n",
            base.replace(":80", ":81")
        ),
    )
    .expect("write config");
    write_authorized(dir.path(), &["client", "stranger"]);
    let next = setup::reload_server_options(flags, &running).expect("reload");
    // Live: the keys, the allowlist, max-sessions, max-streams.
    assert_eq!(next.core.authorized.len(), 2);
    let port_81 = DestHost::Ip(Ipv4Addr::LOCALHOST.into());
    assert!(next.allow.allows(&port_81, 81));
    assert!(!next.allow.allows(&port_81, 80));
    assert_eq!(next.limits.max_sessions, 20);
    assert_eq!(next.core.session.max_streams, 16);
    // Restart-only: the pool size and the listen address keep their
    // running values; the server key is the running one.
    assert_eq!(next.limits.memory_budget, 100 << 20);
    assert_eq!(next.listen, running.listen);
    assert_eq!(running.listen.to_string(), setup::DEFAULT_LISTEN);
    for what in ["memory-budget changed from", "listen address changed from"] {
        let lines = hytun_tests::harness::log_lines_with(what);
        assert!(
            lines.iter().any(|l| l.contains("this takes a restart")),
            "{what}: {lines:?}"
        );
    }
    // Shown in the flag's unit, not as Rust debug output.
    let budget = hytun_tests::harness::log_lines_with("memory-budget changed from");
    assert!(
        budget
            .iter()
            .any(|l| l.contains("from 100 MiB to") && l.contains(" MiB: this")),
        "{budget:?}"
    );
    assert_eq!(
        next.core.identity.public().id(),
        running.core.identity.public().id()
    );
}
