//! The `hytun` command line as a new user meets it, through the real
//! binary: option names and range checks shared by flags and the TOML file,
//! help texts, error messages that carry their cause, closed standard
//! streams, and a second stop signal during the graceful drain. Every
//! socket is on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use hytun_host::client::ListenerKind;
use hytun_host::origin::Origin;
use hytun_tests::harness::*;
use hytun_tests::*;

const WAIT: Duration = Duration::from_secs(20);

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Neither a panic nor Rust `Debug` text reached the user.
fn assert_clean(text: &str) {
    assert!(!text.contains("panicked"), "{text}");
    assert!(!text.contains("RUST_BACKTRACE"), "{text}");
    assert!(!text.contains("Some("), "{text}");
}

fn key_args() -> Vec<String> {
    vec![
        "--key".into(),
        keydir().join("server.key").display().to_string(),
        "--authorized-keys".into(),
        keydir().join("authorized_keys").display().to_string(),
    ]
}

fn run(dir: &Path, args: &[&str]) -> Output {
    let out = hytun(dir, args);
    assert_clean(&stderr(&out));
    out
}

#[test]
fn zero_and_out_of_range_values_are_refused_alike_by_flags_and_toml() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value, message) in [
        (
            "threads",
            "0",
            "threads must be a whole number from 1 to 256, not 0",
        ),
        (
            "idle-timeout",
            "0",
            "idle-timeout must be a whole number from 3 to 86400, not 0",
        ),
        (
            "max-sessions",
            "0",
            "max-sessions must be a whole number from 1 to 1000000, not 0",
        ),
        (
            "max-streams",
            "2000",
            "max-streams must be a whole number from 1 to 1024, not 2000",
        ),
    ] {
        let out = run(dir.path(), &["server", &format!("--{flag}"), value]);
        assert_eq!(out.status.code(), Some(2), "--{flag} {value}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("for '--{flag} ")) && err.contains(message),
            "{err}"
        );

        let config = dir.path().join(format!("{flag}.toml"));
        std::fs::write(&config, format!("[server]\n{flag} = {value}\n")).unwrap();
        let out = run(
            dir.path(),
            &["server", "--config", config.to_str().unwrap()],
        );
        assert_eq!(out.status.code(), Some(1), "{flag} = {value}");
        let err = stderr(&out);
        let at = format!("{}:2:", config.display());
        assert!(err.contains(&at) && err.contains(message), "{err}");
    }
}

#[test]
fn old_toml_key_names_still_work_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("old.toml");
    std::fs::write(
        &config,
        "[server]\nmax-streams-per-session = 8\nidle-timeout-secs = 30\nlisten = 7000\n",
    )
    .unwrap();
    // A missing key file stops the server after the config was read.
    let out = run(
        dir.path(),
        &[
            "server",
            "--config",
            config.to_str().unwrap(),
            "--key",
            "missing.key",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("key 'max-streams-per-session' is deprecated, write 'max-streams'"),
        "{err}"
    );
    assert!(
        err.contains("key 'idle-timeout-secs' is deprecated, write 'idle-timeout'"),
        "{err}"
    );
    assert!(err.contains("missing.key"), "{err}");
}

#[test]
fn addresses_say_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["server", "--listen", "127.0.0.1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("missing port"), "{}", stderr(&out));

    // `--server HOST` is accepted (port 7000; config.rs tests the port).
    // The key is missing, so no connection is even tried.
    let out = run(
        dir.path(),
        &[
            "fetch",
            "http://127.0.0.1/",
            "--server",
            "127.0.0.1",
            "--key",
            "missing.key",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing.key"), "{}", stderr(&out));
}

#[test]
fn help_texts_answer_a_new_users_questions() {
    let dir = tempfile::tempdir().unwrap();
    let top = stdout(&run(dir.path(), &["--help"]));
    assert!(!top.contains("mio"), "{top}");
    assert!(top.contains("encrypted TCP forwarding tunnel"), "{top}");
    let keygen = stdout(&run(dir.path(), &["keygen", "--help"]));
    assert!(
        keygen.contains("possible values: 2048, 3072, 4096"),
        "{keygen}"
    );
    let server = stdout(&run(dir.path(), &["server", "--help"]));
    assert!(
        server.contains("Without any --allow every stream is refused"),
        "{server}"
    );
    assert!(server.contains("--drain-timeout"), "{server}");
    let client = stdout(&run(dir.path(), &["client", "--help"]));
    for flag in ["--forward", "--socks", "--http-proxy", "--keepalive"] {
        assert!(client.contains(flag), "{flag}: {client}");
    }
    assert!(client.contains("port 7000 if omitted"), "{client}");
}

#[test]
fn a_proxy_open_to_the_network_warns_it_has_no_authentication() {
    let dir = tempfile::tempdir().unwrap();
    // The missing key stops the client before it binds anything.
    let out = run(
        dir.path(),
        &[
            "client",
            "-D",
            "0.0.0.0:1080",
            "--http-proxy",
            "127.0.0.1:3128",
            "--key",
            "missing.key",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("SOCKS5 proxy on 0.0.0.0:1080 is not on loopback and has no authentication"),
        "{err}"
    );
    assert!(!err.contains("HTTP proxy on 127.0.0.1:3128"), "{err}");
}

/// `hytun ARGS` with stdout (or stderr) a pipe whose read end is closed.
fn with_closed(dir: &Path, args: &[&str], close_stderr: bool) -> Output {
    let mut child = Command::new(hytun_bin())
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before the child writes anything.
    if close_stderr {
        drop(child.stderr.take());
    } else {
        drop(child.stdout.take());
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_closed_stdout_or_stderr_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let out = with_closed(
        dir.path(),
        &["keygen", "--bits", "2048", "--out", "k"],
        false,
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_clean(&err);
    assert!(err.contains("cannot write to standard output"), "{err}");
    assert!(dir.path().join("k/id.key").exists());

    // An error with nowhere to report it: a plain failure, not exit 101.
    let out = with_closed(
        dir.path(),
        &["keygen", "--bits", "2048", "--out", "k"],
        true,
    );
    assert_eq!(out.status.code(), Some(1));

    // fetch's error paths, with stdout or stderr closed.
    let origin = Origin::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let port = free_port();
    let _srv = server_process(dir.path(), port, "127.0.0.1:1");
    let url = format!("http://{}/", origin.addr());
    let server = format!("127.0.0.1:{port}");
    let ck = keydir().join("client.key").display().to_string();
    let sp = keydir().join("server.pub").display().to_string();
    let args = [
        "fetch",
        url.as_str(),
        "--server",
        &server,
        "--key",
        &ck,
        "--server-key",
        &sp,
    ];
    for close_stderr in [false, true] {
        let out = with_closed(dir.path(), &args, close_stderr);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert_clean(&stderr(&out));
    }
}

#[test]
fn a_refused_fetch_names_the_cause_even_with_warn_logging() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let port = free_port();
    let _srv = server_process(dir.path(), port, "127.0.0.1:1");
    let url = format!("http://{}/", origin.addr());
    let server = format!("127.0.0.1:{port}");
    let ck = keydir().join("client.key").display().to_string();
    let sp = keydir().join("server.pub").display().to_string();
    let out = Command::new(hytun_bin())
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .args([
            "fetch",
            &url,
            "--server",
            &server,
            "--key",
            &ck,
            "--server-key",
            &sp,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_clean(&err);
    assert!(err.contains("not allowed"), "{err}");
    assert!(!err.contains("see the log above"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_wrong_pinned_key_fails_once_without_doubled_prefixes_or_reconnecting() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _srv = server_process(dir.path(), port, "127.0.0.1:*");
    let server = format!("127.0.0.1:{port}");
    let ck = keydir().join("client.key").display().to_string();
    // The stranger's key is not the server's.
    let wrong = keydir().join("stranger.pub").display().to_string();
    let out = run(
        dir.path(),
        &[
            "client",
            "--server",
            &server,
            "--key",
            &ck,
            "--server-key",
            &wrong,
            "-L",
            "0:127.0.0.1:1",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(!err.contains("failed: handshake failed"), "{err}");
    assert!(!err.contains("reconnecting"), "{err}");
    assert!(!err.contains("ERROR"), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("hytun: error: handshake with {server} failed: ")),
        "{err}"
    );
    assert!(last.contains("pinned"), "{err}");
}

#[test]
fn the_http_proxy_counts_the_bytes_of_plain_http_requests() {
    capture_logs();
    let origin = Origin::start(loopback()).unwrap();
    let server = RunningServer::start(server_opts(&["127.0.0.1:*"]));
    let client = RunningClient::start(client_opts(
        server.addr,
        vec![(loopback(), ListenerKind::HttpProxy)],
    ));
    let mut app = TcpStream::connect(client.addrs[0]).unwrap();
    // The log names the connection by its address, which an earlier
    // connection of this test process may have used too.
    let peer = format!("{}: ", app.local_addr().unwrap());
    forget_log_lines_with(&peer);
    app.set_read_timeout(Some(WAIT)).unwrap();
    let request = format!(
        "GET http://{}/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        origin.addr(),
        origin.addr()
    );
    app.write_all(request.as_bytes()).unwrap();
    let mut reply = Vec::new();
    app.read_to_end(&mut reply).unwrap();
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{reply:?}");
    drop(app);
    let line = wait_log(&peer, " closed (", WAIT).expect("a 'closed' log line");
    assert!(
        line.starts_with("DEBUG"),
        "per-stream lines are debug: {line}"
    );
    assert!(!line.contains("(0 bytes sent"), "{line}");
    let sent: u64 = line
        .split(" closed (")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(sent >= 40, "the forwarded request head is counted: {line}");
}

/// A destination that accepts one connection and holds it open.
fn holding_destination() -> (SocketAddr, mpsc::Receiver<TcpStream>) {
    let l = TcpListener::bind(loopback()).unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            if tx.send(s).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_second_sigint_during_the_drain_stops_the_server_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (dest, accepted) = holding_destination();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "server".to_string(),
        "--listen".into(),
        listen.clone(),
        "--allow".into(),
        dest.to_string(),
        "--threads".into(),
        "2".into(),
        "--drain-timeout".into(),
        "120".into(),
    ];
    args.extend(key_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut srv = spawn_hytun(dir.path(), &args);
    let server_addr: SocketAddr = listen.parse().unwrap();
    assert!(wait_listening(server_addr, WAIT));
    // One open stream through the server keeps the drain waiting.
    let client = RunningClient::start(client_opts(
        server_addr,
        vec![(loopback(), forward_to(dest))],
    ));
    let _app = TcpStream::connect(client.addrs[0]).unwrap();
    let _far = accepted
        .recv_timeout(WAIT)
        .expect("the stream reached the destination");

    let pid = srv.0.id();
    signal(pid, "-INT");
    thread::sleep(Duration::from_millis(500));
    assert!(
        srv.0.try_wait().unwrap().is_none(),
        "the first SIGINT drains (up to 120 s) instead of exiting"
    );
    let second = Instant::now();
    signal(pid, "-INT");
    let status = loop {
        if let Some(status) = srv.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            second.elapsed() < Duration::from_secs(5),
            "the second SIGINT did not stop the server at once"
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let mut err = String::new();
    if let Some(mut e) = srv.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert_clean(&err);
    assert!(err.contains("repeat to stop now"), "{err}");
    assert!(err.contains("again: closing every session now"), "{err}");
    // Start-up lines once per server, not once per event loop.
    assert_eq!(err.matches("listening on").count(), 1, "{err}");
    assert_eq!(err.matches("allowed destinations: ").count(), 1, "{err}");
    assert_eq!(err.matches("server stopped").count(), 1, "{err}");
    client.stop();
}

#[test]
fn a_client_that_must_connect_first_time_says_why_it_could_not() {
    let port = free_port();
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut opts = client_opts(server, vec![]);
    opts.fail_fast_on_first_attempt = true;
    let client = hytun_host::client::Client::bind(opts).unwrap();
    let err = client
        .run(false)
        .expect_err("nothing listens there")
        .to_string();
    assert!(
        err.starts_with(&format!("cannot establish a tunnel to {server}: ")),
        "{err}"
    );
    assert!(!err.contains("see the log above"), "{err}");
    assert!(
        err.contains("refused") || err.contains("unreachable"),
        "{err}"
    );
}
