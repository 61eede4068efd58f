//! How stream ends travel through the tunnel, over real loopback sockets:
//! only an authenticated FIN is a clean end. A cut tunnel (server killed,
//! relay closed mid-transfer), a RESET from either side and a CLOSE with
//! streams open reach the local application and the destination as
//! `ECONNRESET`, and the client log says "aborted".

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::Duration;

use hytun_host::client::ListenerKind;
use hytun_tests::harness::*;
use hytun_tests::*;

const IO_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_WAIT: Duration = Duration::from_secs(10);

/// How the client's log names a local connection: its address, then ": ".
fn log_name(app: &TcpStream) -> String {
    format!("{}: ", app.local_addr().unwrap())
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect local listener");
    // Ports are reused across the tests of this process: forget the lines
    // of an earlier connection from the same address.
    forget_log_lines_with(&log_name(&s));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// A destination that accepts connections, writes `first` bytes of a
/// pattern, and hands each accepted socket to the test (which then holds
/// it open, reads from it, or resets it).
fn destination(first: usize) -> (SocketAddr, Receiver<TcpStream>) {
    let l = TcpListener::bind(loopback()).unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let data: Vec<u8> = (0..first).map(|i| (i % 251) as u8).collect();
            if s.write_all(&data).is_err() || tx.send(s).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// A server allowing loopback, a client forwarding to a fresh
/// [`destination`] that sends `first` bytes, and the accept side of it.
fn forwarded(first: usize) -> (RunningServer, RunningClient, Receiver<TcpStream>) {
    let (dest, accepted) = destination(first);
    let server = RunningServer::start(server_opts(&["127.0.0.1:*"]));
    let client = RunningClient::start(client_opts(
        server.addr,
        vec![(loopback(), forward_to(dest))],
    ));
    (server, client, accepted)
}

fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)
        .expect("the bytes sent before the break");
    buf
}

/// Reads until EOF or an error; the error kind, or `Ok(bytes)` on EOF.
fn read_end(s: &mut TcpStream) -> Result<usize, io::ErrorKind> {
    let mut total = 0;
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) => return Err(e.kind()),
        }
    }
}

fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

fn assert_aborted(app: &TcpStream) -> String {
    let peer = log_name(app);
    wait_log(&peer, "aborted (", LOG_WAIT).unwrap_or_else(|| {
        panic!(
            "no 'aborted' log line for {peer}: {:?}",
            log_lines_with(&peer)
        )
    })
}

#[test]
fn clean_transfer_ends_with_fin_and_the_exact_bytes() {
    capture_logs();
    let (_server, client, accepted) = forwarded(1_000_000);
    let mut app = connect(client.addrs[0]);
    app.write_all(b"upload").unwrap();
    app.shutdown(Shutdown::Write).unwrap();
    let mut far = accepted.recv_timeout(IO_TIMEOUT).unwrap();
    let mut got = Vec::new();
    far.read_to_end(&mut got).unwrap();
    assert_eq!(
        got, b"upload",
        "the destination sees the upload and a clean EOF"
    );
    far.shutdown(Shutdown::Write).unwrap();
    let body = read_end(&mut app);
    assert_eq!(body, Ok(1_000_000), "clean end with every byte");
    let peer = log_name(&app);
    let line = wait_log(&peer, " closed (", LOG_WAIT).expect("a 'closed' log line");
    assert!(line.contains("6 bytes sent, 1000000 received"), "{line}");
    assert!(log_lines_with(&peer).iter().all(|l| !l.contains("aborted")));
}

#[test]
fn killing_the_server_mid_download_resets_the_application() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let (dest, accepted) = destination(327_680);
    let port = free_port();
    let mut server = server_process(dir.path(), port, "127.0.0.1:*");
    let server_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = RunningClient::start(client_opts(
        server_addr,
        vec![(loopback(), forward_to(dest))],
    ));
    let mut app = connect(client.addrs[0]);
    let _far = accepted.recv_timeout(IO_TIMEOUT).unwrap();
    read_exactly(&mut app, 327_680);
    server.0.kill().unwrap();
    let _ = server.0.wait();
    assert_eq!(read_end(&mut app), Err(io::ErrorKind::ConnectionReset));
    let line = assert_aborted(&app);
    assert!(line.contains("tunnel lost"), "{line}");
    assert!(line.contains("327680 received"), "{line}");
}

#[test]
fn a_relay_cut_mid_transfer_resets_both_ends_of_forward_socks_and_connect_streams() {
    capture_logs();
    let (dest, accepted) = destination(200_000);
    let server = RunningServer::start(server_opts(&["127.0.0.1:*"]));
    let relay = Relay::start(server.addr, None).unwrap();
    let client = RunningClient::start(client_opts(
        relay.addr,
        vec![
            (loopback(), forward_to(dest)),
            (loopback(), ListenerKind::Socks),
            (loopback(), ListenerKind::HttpProxy),
        ],
    ));
    // A -L download and a SOCKS5 upload, both live when the tunnel is cut.
    let mut app = connect(client.addrs[0]);
    let mut far = accepted.recv_timeout(IO_TIMEOUT).unwrap();
    read_exactly(&mut app, 200_000);

    let mut socks = connect(client.addrs[1]);
    socks.write_all(&[5, 1, 0]).unwrap();
    read_exactly(&mut socks, 2);
    let mut req = vec![5, 1, 0, 1, 127, 0, 0, 1];
    req.extend_from_slice(&dest.port().to_be_bytes());
    socks.write_all(&req).unwrap();
    assert_eq!(read_exactly(&mut socks, 10)[1], 0, "SOCKS5 success");
    let mut socks_far = accepted.recv_timeout(IO_TIMEOUT).unwrap();
    read_exactly(&mut socks, 200_000);
    socks.write_all(&[7u8; 50_000]).unwrap();
    read_exactly(&mut socks_far, 50_000);

    // And an HTTP CONNECT stream past its 200 reply.
    let mut http = connect(client.addrs[2]);
    http.write_all(format!("CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n\r\n").as_bytes())
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.extend(read_exactly(&mut http, 1));
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    let mut http_far = accepted.recv_timeout(IO_TIMEOUT).unwrap();
    read_exactly(&mut http, 200_000);

    relay.cut();
    assert_eq!(read_end(&mut http), Err(io::ErrorKind::ConnectionReset));
    assert_eq!(read_end(&mut http_far), Err(io::ErrorKind::ConnectionReset));
    assert_eq!(read_end(&mut app), Err(io::ErrorKind::ConnectionReset));
    assert_eq!(read_end(&mut far), Err(io::ErrorKind::ConnectionReset));
    assert_eq!(read_end(&mut socks), Err(io::ErrorKind::ConnectionReset));
    assert_eq!(
        read_end(&mut socks_far),
        Err(io::ErrorKind::ConnectionReset)
    );
    assert!(assert_aborted(&app).contains("tunnel lost"));
    let line = assert_aborted(&socks);
    assert!(line.contains("50000 bytes sent"), "{line}");
}

#[test]
fn a_reset_by_the_application_resets_the_destination() {
    capture_logs();
    let (_server, client, accepted) = forwarded(10);
    let mut app = connect(client.addrs[0]);
    let mut far = accepted.recv_timeout(IO_TIMEOUT).unwrap();
    read_exactly(&mut app, 10);
    app.write_all(b"hello").unwrap();
    read_exactly(&mut far, 5);
    let peer = log_name(&app);
    reset(app);
    assert_eq!(read_end(&mut far), Err(io::ErrorKind::ConnectionReset));
    let line = wait_log(&peer, "aborted (", LOG_WAIT).expect("aborted log");
    assert!(
        line.contains("local application reset the connection"),
        "{line}"
    );
}

#[test]
fn a_reset_by_the_destination_resets_the_application() {
    capture_logs();
    let (_server, client, accepted) = forwarded(10);
    let mut app = connect(client.addrs[0]);
    let far = accepted.recv_timeout(IO_TIMEOUT).unwrap();
    read_exactly(&mut app, 10);
    reset(far);
    assert_eq!(read_end(&mut app), Err(io::ErrorKind::ConnectionReset));
    let line = assert_aborted(&app);
    assert!(line.contains("reset by the server"), "{line}");
}

#[test]
fn a_close_with_open_streams_resets_both_ends() {
    capture_logs();
    let (dest, accepted) = destination(1000);
    let server = RunningServer::start(server_opts(&["127.0.0.1:*"]));
    // The client ends its session (authenticated CLOSE) with a stream open.
    let client = RunningClient::start(client_opts(
        server.addr,
        vec![(loopback(), forward_to(dest))],
    ));
    let mut app = connect(client.addrs[0]);
    let mut far = accepted.recv_timeout(IO_TIMEOUT).unwrap();
    read_exactly(&mut app, 1000);
    client.stop();
    assert_eq!(read_end(&mut app), Err(io::ErrorKind::ConnectionReset));
    assert_eq!(read_end(&mut far), Err(io::ErrorKind::ConnectionReset));
    assert!(assert_aborted(&app).contains("client stopping"));

    // The server ends the session (GOAWAY, then CLOSE after its grace
    // period) with a stream open.
    let client = RunningClient::start(client_opts(
        server.addr,
        vec![(loopback(), forward_to(dest))],
    ));
    let mut app = connect(client.addrs[0]);
    let mut far = accepted.recv_timeout(IO_TIMEOUT).unwrap();
    read_exactly(&mut app, 1000);
    server.request_stop();
    assert_eq!(read_end(&mut app), Err(io::ErrorKind::ConnectionReset));
    assert_eq!(read_end(&mut far), Err(io::ErrorKind::ConnectionReset));
    let line = assert_aborted(&app);
    assert!(line.contains("server closed the session"), "{line}");
    drop(client);
}

#[test]
fn a_refused_forward_is_reset_and_socks_gets_its_failure_reply() {
    capture_logs();
    let closed_port = free_port();
    let target: SocketAddr = format!("127.0.0.1:{closed_port}").parse().unwrap();
    let server = RunningServer::start(server_opts(&["127.0.0.1:*"]));
    let client = RunningClient::start(client_opts(
        server.addr,
        vec![
            (loopback(), forward_to(target)),
            (loopback(), ListenerKind::Socks),
        ],
    ));
    let mut app = connect(client.addrs[0]);
    let _ = app.write_all(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(read_end(&mut app), Err(io::ErrorKind::ConnectionReset));
    assert!(assert_aborted(&app).contains("refused by server"));

    let mut socks = connect(client.addrs[1]);
    socks.write_all(&[5, 1, 0]).unwrap();
    read_exactly(&mut socks, 2);
    let mut req = vec![5, 1, 0, 1, 127, 0, 0, 1];
    req.extend_from_slice(&closed_port.to_be_bytes());
    socks.write_all(&req).unwrap();
    let reply = read_exactly(&mut socks, 10);
    assert_eq!(reply[1], 5, "SOCKS5 'connection refused' reply");
}

#[test]
fn a_busy_server_is_retried_at_first_contact() {
    capture_logs();
    let (dest, accepted) = destination(3);
    let mut opts = server_opts(&["127.0.0.1:*"]);
    opts.limits.max_sessions = 1;
    let server = RunningServer::start(opts);
    let holder = RunningClient::start(client_opts(
        server.addr,
        vec![(loopback(), forward_to(dest))],
    ));
    let mut app = connect(holder.addrs[0]);
    let _far = accepted.recv_timeout(IO_TIMEOUT).unwrap();
    read_exactly(&mut app, 3);
    // A second client (which exits on key errors at first contact) meets
    // a busy server: it must keep retrying, not give up.
    let second = RunningClient::start(client_opts(
        server.addr,
        vec![(loopback(), forward_to(dest))],
    ));
    let server_name = server.addr.to_string();
    wait_log(&server_name, "busy", LOG_WAIT).expect("the second client was refused as busy");
    drop(app);
    holder.stop();
    let mut app = connect(second.addrs[0]);
    let _far = accepted.recv_timeout(IO_TIMEOUT).unwrap();
    assert_eq!(
        read_exactly(&mut app, 3),
        [0, 1, 2],
        "carried once the slot is free"
    );
}
