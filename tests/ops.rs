//! Operations: the Prometheus endpoints of a real server and client
//! process (validated with `promtool check metrics`, and moving as traffic
//! flows), the systemd units (`systemd-analyze verify`), readiness and
//! stopping through `NOTIFY_SOCKET`, and journald-style logs.
//!
//! Needs `promtool` (Debian: `prometheus`) and `systemd-analyze` (Debian:
//! `systemd`); `scripts/test-all.sh` installs both.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hytun_tests::harness::keydir;
use hytun_tests::{ChildGuard, EchoServer, free_port, hytun_bin, wait_listening, workspace_root};

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn key(name: &str) -> String {
    keydir().join(name).to_string_lossy().into_owned()
}

/// `hytun ARGS` with piped output and extra environment.
fn spawn(args: &[&str], env: &[(&str, &str)]) -> ChildGuard {
    let mut cmd = Command::new(hytun_bin());
    cmd.current_dir(keydir())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    ChildGuard(cmd.spawn().expect("spawn hytun"))
}

fn server_args(port: u16, allow: &str) -> Vec<String> {
    [
        "server",
        "--listen",
        &loopback(port).to_string(),
        "--key",
        &key("server.key"),
        "--authorized-keys",
        &key("authorized_keys"),
        "--allow",
        allow,
    ]
    .map(String::from)
    .to_vec()
}

fn client_args(server: u16, key_name: &str) -> Vec<String> {
    [
        "client",
        "--server",
        &loopback(server).to_string(),
        "--key",
        &key(key_name),
        "--server-key",
        &key("server.pub"),
    ]
    .map(String::from)
    .to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// One HTTP GET of `/metrics`: (status line, body).
fn scrape(addr: SocketAddr, accept: Option<&str>) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}\r\n").expect("request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, body.to_string())
}

/// The value of the series `series` (name with its labels, exactly as
/// exposed), or 0 if absent.
fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            (name == series).then(|| v.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// `promtool check metrics` on `body`: (success, output).
fn promtool(body: &str) -> (bool, String) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        panic!(
            "promtool not found: install Debian's 'prometheus' package (scripts/test-all.sh does)"
        );
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(body.as_bytes()).expect("feed promtool");
    }
    let out = child.wait_with_output().expect("promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Waits until `f` holds on a fresh scrape of `addr`; returns that scrape.
fn scrape_until(addr: SocketAddr, what: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = scrape(addr, None);
        if f(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}; last scrape:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Echoes `len` bytes through `addr`; returns what came back.
fn echo_through(addr: SocketAddr, len: usize) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect -L");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    s.write_all(&data).expect("send");
    s.shutdown(std::net::Shutdown::Write).expect("half-close");
    let mut back = Vec::new();
    s.read_to_end(&mut back).expect("echo");
    assert_eq!(back, data, "the echo must come back intact");
    back
}

#[test]
fn metrics_are_valid_and_move_with_traffic() {
    let echo = EchoServer::start().expect("echo");
    let (sp, smp, cmp, lp, denied) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let mut args = server_args(sp, &format!("127.0.0.1:{}", echo.addr.port()));
    args.extend(["--metrics".into(), loopback(smp).to_string()]);
    let _server = spawn(&strs(&args), &[]);
    assert!(wait_listening(loopback(sp), Duration::from_secs(20)));
    assert!(wait_listening(loopback(smp), Duration::from_secs(20)));

    // Before any client: everything at zero, and already valid.
    let (status, before) = scrape(loopback(smp), None);
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (ok, out) = promtool(&before);
    assert!(
        ok,
        "promtool rejects the idle server's metrics:\n{out}\n{before}"
    );
    assert_eq!(value(&before, "hytun_server_sessions"), 0.0);
    assert!(before.contains("hytun_build_info{version=\""));

    let mut args = client_args(sp, "client.key");
    args.extend([
        "-L".into(),
        format!("127.0.0.1:{lp}:127.0.0.1:{}", echo.addr.port()),
        "-L".into(),
        format!("127.0.0.1:{denied}:127.0.0.1:9"),
        "--metrics".into(),
        loopback(cmp).to_string(),
    ]);
    let _client = spawn(&strs(&args), &[]);
    // The -L listeners are bound before the metrics endpoint (connecting to
    // one to see whether it is up would open a stream).
    assert!(wait_listening(loopback(cmp), Duration::from_secs(20)));
    let up = scrape_until(loopback(smp), "the client's session never came up", |b| {
        value(b, "hytun_server_sessions") == 1.0
    });
    assert_eq!(
        value(&up, "hytun_server_handshakes_total{outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(
        value(&up, "hytun_server_handshake_duration_seconds_count"),
        1.0
    );
    let rx0 = value(
        &up,
        "hytun_server_tunnel_bytes_total{direction=\"received\"}",
    );
    let tx0 = value(&up, "hytun_server_tunnel_bytes_total{direction=\"sent\"}");
    assert!(rx0 > 0.0 && tx0 > 0.0, "the handshake moved bytes");

    // 1 MB each way through the tunnel.
    const LEN: usize = 1 << 20;
    echo_through(loopback(lp), LEN);
    let after = scrape_until(loopback(smp), "the stream never closed", |b| {
        value(b, "hytun_server_streams_opened_total") == 1.0
            && value(b, "hytun_server_streams") == 0.0
    });
    let rx1 = value(
        &after,
        "hytun_server_tunnel_bytes_total{direction=\"received\"}",
    );
    let tx1 = value(
        &after,
        "hytun_server_tunnel_bytes_total{direction=\"sent\"}",
    );
    assert!(rx1 - rx0 >= LEN as f64, "received {rx0} -> {rx1}");
    assert!(tx1 - tx0 >= LEN as f64, "sent {tx0} -> {tx1}");
    assert!(value(&after, "hytun_server_memory_budget_limit_bytes") > 0.0);
    assert!(value(&after, "hytun_server_descriptor_budget_limit") > 0.0);

    // A destination outside the allowlist is refused, and counted by code.
    let mut s = TcpStream::connect(loopback(denied)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let _ = s.read(&mut [0u8; 16]);
    let refused = scrape_until(loopback(smp), "the refusal was not counted", |b| {
        value(
            b,
            "hytun_server_streams_refused_total{code=\"not_allowed\"}",
        ) == 1.0
    });
    let (ok, out) = promtool(&refused);
    assert!(
        ok,
        "promtool rejects the busy server's metrics:\n{out}\n{refused}"
    );

    // The client counts the same traffic from its side.
    let client = scrape_until(loopback(cmp), "the client did not count the refusal", |b| {
        value(
            b,
            "hytun_client_streams_refused_total{code=\"not_allowed\"}",
        ) == 1.0
    });
    let (ok, out) = promtool(&client);
    assert!(
        ok,
        "promtool rejects the client's metrics:\n{out}\n{client}"
    );
    assert_eq!(value(&client, "hytun_client_tunnel_up"), 1.0);
    assert_eq!(
        value(&client, "hytun_client_handshakes_total{outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(value(&client, "hytun_client_streams_opened_total"), 1.0);
    assert!(
        value(
            &client,
            "hytun_client_tunnel_bytes_total{direction=\"sent\"}"
        ) >= LEN as f64
    );

    // An unauthorized key is counted as such, and not as a session.
    let args = client_args(sp, "stranger.key");
    let _stranger = spawn(&strs(&args), &[]);
    let denied = scrape_until(loopback(smp), "the stranger was not counted", |b| {
        value(b, "hytun_server_handshakes_total{outcome=\"unauthorized\"}") >= 1.0
    });
    assert_eq!(value(&denied, "hytun_server_sessions"), 1.0);

    // Prometheus asks for OpenMetrics and gets it.
    let (status, om) = scrape(
        loopback(smp),
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE hytun_server_handshakes counter"));
}

/// Copies `dist/NAME` into `dir` with ExecStart pointing at the built
/// binary (`systemd-analyze verify` checks that it is executable).
fn unit_copy(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(workspace_root().join("dist").join(name)).expect("unit");
    let bin = hytun_bin().to_string_lossy().into_owned();
    assert!(text.contains("ExecStart=/usr/local/bin/hytun "), "{name}");
    assert!(text.contains("Type=notify"), "{name}");
    assert!(
        text.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "{name}"
    );
    for hardening in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "ConfigurationDirectory=",
        "StateDirectory=",
    ] {
        assert!(text.contains(hardening), "{name} lacks {hardening:?}");
    }
    let text = text.replace("/usr/local/bin/hytun", &bin);
    std::fs::write(dir.join(name), text).expect("write unit");
    name.to_string()
}

#[test]
fn systemd_units_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let units = [
        unit_copy(dir.path(), "hytun-server.service"),
        unit_copy(dir.path(), "hytun-client.service"),
    ];
    let out = Command::new("systemd-analyze")
        .current_dir(dir.path())
        .args(["verify", "--man=no"])
        .args(&units)
        .output();
    let Ok(out) = out else {
        panic!(
            "systemd-analyze not found: install Debian's 'systemd' package (scripts/test-all.sh does)"
        );
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // Unknown keys and bad values are only warnings: there must be none.
    assert!(stderr.trim().is_empty(), "systemd-analyze warns:\n{stderr}");
}

/// Datagrams arriving on `sock` until one contains `needle`.
fn wait_notify(sock: &UnixDatagram, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.lines().any(|l| l == needle) {
                return msg;
            }
            seen.push(msg);
        }
    }
    panic!("no {needle} within 20 s; got {seen:?}");
}

fn sigterm(child: &ChildGuard) {
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn readiness_and_stopping_are_notified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let port = free_port();
    let args = server_args(port, "127.0.0.1:*");
    let notify = path.to_string_lossy().into_owned();
    let mut server = spawn(&strs(&args), &[("NOTIFY_SOCKET", &notify)]);
    let ready = wait_notify(&sock, "READY=1");
    // READY comes after the listener is bound: connecting works at once.
    assert!(TcpStream::connect(loopback(port)).is_ok(), "{ready}");
    assert!(ready.contains("STATUS=listening on 127.0.0.1:"), "{ready}");
    // The status line follows the session count.
    let args = client_args(port, "client.key");
    let client = spawn(&strs(&args), &[]);
    wait_notify(&sock, "STATUS=1 sessions");
    drop(client);
    wait_notify(&sock, "STATUS=0 sessions");
    sigterm(&server);
    wait_notify(&sock, "STOPPING=1");
    let status = server.0.wait().expect("wait");
    assert!(status.success(), "graceful stop exits 0: {status}");

    // The client says it is ready once its listeners are bound.
    let (sp, lp) = (free_port(), free_port());
    let mut args = client_args(sp, "client.key");
    args.extend(["-L".into(), format!("127.0.0.1:{lp}:127.0.0.1:9")]);
    let client = spawn(&strs(&args), &[("NOTIFY_SOCKET", &notify)]);
    wait_notify(&sock, "READY=1");
    assert!(TcpStream::connect(loopback(lp)).is_ok());
    sigterm(&client);
    wait_notify(&sock, "STOPPING=1");
}

/// Runs `hytun ARGS` with stderr on a pipe; with `journal`, JOURNAL_STREAM
/// names that pipe, as systemd does for a unit logging to the journal.
/// Returns the child and a channel of its stderr lines.
fn spawn_logging(args: &[&str], journal: bool) -> (ChildGuard, mpsc::Receiver<String>) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    let writer = File::from(OwnedFd::from(writer));
    let meta = writer.metadata().expect("fstat pipe");
    let stream = if journal {
        format!("{}:{}", meta.dev(), meta.ino())
    } else {
        // Stale: inherited from a parent whose stderr was the journal.
        format!("{}:{}", meta.dev(), meta.ino() + 1)
    };
    let child = Command::new(hytun_bin())
        .args(args)
        .env("JOURNAL_STREAM", stream)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(writer))
        .spawn()
        .expect("spawn hytun");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (ChildGuard(child), rx)
}

/// Lines from `rx` until one contains `needle` (or 20 s pass).
fn lines_until(rx: &mpsc::Receiver<String>, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => {
                let done = l.contains(needle);
                lines.push(l);
                if done {
                    return lines;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no line with {needle:?}; got {lines:?}");
}

#[test]
fn logs_fit_the_journal() {
    // On the journal: level prefixes, no timestamps.
    let port = free_port();
    let args = server_args(port, "127.0.0.1:*");
    let (mut server, rx) = spawn_logging(&strs(&args), true);
    let lines = lines_until(&rx, "listening on");
    let listening = lines.last().cloned().unwrap_or_default();
    assert!(
        listening.starts_with("<6>listening on 127.0.0.1:"),
        "{lines:?}"
    );
    for l in &lines {
        let prefixed = ["<3>", "<4>", "<5>", "<6>", "<7>"]
            .iter()
            .any(|p| l.starts_with(p));
        assert!(prefixed, "journal line without a level prefix: {l:?}");
    }
    let _ = server.0.kill();

    // A JOURNAL_STREAM that is not our stderr: the usual format.
    let port = free_port();
    let args = server_args(port, "127.0.0.1:*");
    let (_server, rx) = spawn_logging(&strs(&args), false);
    let lines = lines_until(&rx, "listening on");
    let listening = lines.last().cloned().unwrap_or_default();
    assert!(
        listening.starts_with('[') && listening.contains("INFO"),
        "{lines:?}"
    );

    // -q: warnings only (the missing --allow warns; info lines are gone).
    let port = free_port();
    let mut args = server_args(port, "x");
    args.truncate(args.len() - 2);
    args.insert(0, "-q".into());
    let (server, rx) = spawn_logging(&strs(&args), true);
    let lines = lines_until(&rx, "no --allow patterns");
    assert!(lines.iter().all(|l| l.starts_with("<4>")), "{lines:?}");
    assert!(wait_listening(loopback(port), Duration::from_secs(20)));
    drop(server);
    let rest: Vec<String> = rx.iter().collect();
    assert!(
        rest.iter().all(|l| !l.starts_with("<6>")),
        "-q printed info lines: {rest:?}"
    );
}
