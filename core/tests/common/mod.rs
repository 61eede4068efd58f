//! Test support: a deterministic RNG, the committed test keys, and an
//! in-memory client/server pair with a virtual clock and a tamper hook.
#![allow(dead_code, unreachable_pub)]

#[path = "rng.rs"]
mod rng;
pub use rng::TestRng;

use std::sync::Arc;
use std::vec::Vec;

use hytun_core::{
    ClientConfig, Connection, Event, Instant, PrivateIdentity, PublicIdentity, ServerConfig,
    SessionConfig, StreamErrorCode, StreamId,
};
use hytun_core::{CloseCode, ConnectionError, ListenErrorCode, ListenId};

pub fn vector(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn private(name: &str, rng: &mut TestRng) -> PrivateIdentity {
    PrivateIdentity::from_pkcs8_der(&vector(&format!("{name}.key.der")), rng).unwrap()
}

/// A committed public key, encrypting with the `rsa` crate: the only
/// encryptor whose OAEP seed comes from the (deterministic) test RNG.
pub fn public(name: &str) -> PublicIdentity {
    PublicIdentity::from_spki_der(&vector(&format!("{name}.pub.der")))
        .unwrap()
        .using(hytun_core::crypto::RsaBackend::RustCrypto)
        .unwrap()
}

pub fn client_config(
    client: &str,
    pinned: &str,
    session: SessionConfig,
    rng: &mut TestRng,
) -> Arc<ClientConfig> {
    Arc::new(ClientConfig::new(
        private(client, rng),
        public(pinned),
        session,
    ))
}

pub fn server_config(
    server: &str,
    authorized: &[&str],
    session: SessionConfig,
    rng: &mut TestRng,
) -> Arc<ServerConfig> {
    let auth = authorized.iter().map(|n| public(n)).collect();
    Arc::new(ServerConfig::new(private(server, rng), auth, session))
}

/// An event with its data copied out of the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    Connected,
    OpenRequest(StreamId, String),
    Opened(StreamId),
    OpenFailed(StreamId, StreamErrorCode),
    Data(StreamId, Vec<u8>),
    Finished(StreamId),
    Reset(StreamId, StreamErrorCode),
    Writable(StreamId),
    GoAway(CloseCode),
    Closed(ConnectionError),
    ListenRequest(ListenId, String),
    ListenGranted(ListenId),
    ListenRefused(ListenId, ListenErrorCode),
    Incoming(StreamId, ListenId, String),
}

pub fn own(ev: Event<'_>) -> Ev {
    match ev {
        Event::Connected => Ev::Connected,
        Event::OpenRequest { id, dest } => Ev::OpenRequest(id, dest.to_string()),
        Event::Opened { id } => Ev::Opened(id),
        Event::OpenFailed { id, code } => Ev::OpenFailed(id, code),
        Event::Data { id, data } => Ev::Data(id, data.to_vec()),
        Event::Finished { id } => Ev::Finished(id),
        Event::Reset { id, code } => Ev::Reset(id, code),
        Event::Writable { id } => Ev::Writable(id),
        Event::GoAway { code } => Ev::GoAway(code),
        Event::Closed { error } => Ev::Closed(error),
        Event::ListenRequest { id, bind } => Ev::ListenRequest(id, bind.to_string()),
        Event::ListenGranted { id } => Ev::ListenGranted(id),
        Event::ListenRefused { id, code } => Ev::ListenRefused(id, code),
        Event::IncomingStream { id, listen, origin } => {
            Ev::Incoming(id, listen, origin.to_string())
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    ClientToServer,
    ServerToClient,
}

pub type Conn = Connection<{ 64 * 1024 }, { 16384 + 18 }, 64>;
pub type SmallConn = Connection<2048, { 1024 + 18 }, 4>;

pub type Tamper = Box<dyn FnMut(Dir, &mut Vec<u8>)>;

/// Two connections joined by in-memory pipes.
pub struct Pair<const TX: usize, const RX: usize, const S: usize> {
    pub client: Connection<TX, RX, S>,
    pub server: Connection<TX, RX, S>,
    pub now: Instant,
    pub rng: TestRng,
    pub tamper: Option<Tamper>,
    /// Every byte each side wrote, in order (for vectors and replays).
    pub wire_c2s: Vec<u8>,
    pub wire_s2c: Vec<u8>,
    /// When false, the consumer does not report data as consumed (a slow
    /// reader): no credit flows back.
    pub client_consumes: bool,
    pub server_consumes: bool,
    /// Cap on bytes moved per direction per pump step (0 = unlimited).
    pub chunk: usize,
}

impl<const TX: usize, const RX: usize, const S: usize> Pair<TX, RX, S> {
    pub fn new(client: Arc<ClientConfig>, server: Arc<ServerConfig>, mut rng: TestRng) -> Self {
        let now = Instant::from_millis(1_000);
        let client = Connection::client(client, now, &mut rng);
        let server = Connection::server(server, now);
        Pair {
            client,
            server,
            now,
            rng,
            tamper: None,
            wire_c2s: Vec::new(),
            wire_s2c: Vec::new(),
            client_consumes: true,
            server_consumes: true,
            chunk: 0,
        }
    }

    /// Moves what one side has to send into the other (in `chunk`-sized
    /// pieces, through the tamper hook); false if there was nothing.
    fn deliver(&mut self, dir: Dir, events: &mut Vec<Ev>) -> bool {
        let (from, to, log, consumes) = match dir {
            Dir::ClientToServer => (
                &mut self.client,
                &mut self.server,
                &mut self.wire_c2s,
                self.server_consumes,
            ),
            Dir::ServerToClient => (
                &mut self.server,
                &mut self.client,
                &mut self.wire_s2c,
                self.client_consumes,
            ),
        };
        let (tamper, now, rng, chunk) = (&mut self.tamper, self.now, &mut self.rng, self.chunk);
        let pending = from.transmit_pending();
        if pending.is_empty() {
            return false;
        }
        let take = if chunk == 0 {
            pending.len()
        } else {
            pending.len().min(chunk)
        };
        let mut bytes = pending[..take].to_vec();
        from.transmit_done(take);
        log.extend_from_slice(&bytes);
        if let Some(t) = tamper.as_mut() {
            t(dir, &mut bytes);
        }
        let mut off = 0;
        loop {
            off += to.handle_input(&bytes[off..], now, rng);
            while let Some(ev) = to.poll_event() {
                let ev = own(ev);
                if let Ev::Data(id, d) = &ev
                    && consumes
                {
                    to.stream_consumed(*id, d.len());
                }
                events.push(ev);
            }
            if off >= bytes.len() {
                break;
            }
        }
        true
    }

    /// Moves bytes both ways until both sides are quiet; returns the
    /// events each side saw (client, server).
    pub fn pump(&mut self) -> (Vec<Ev>, Vec<Ev>) {
        let mut cev = Vec::new();
        let mut sev = Vec::new();
        while let Some(ev) = self.client.poll_event() {
            cev.push(own(ev));
        }
        while let Some(ev) = self.server.poll_event() {
            sev.push(own(ev));
        }
        for _ in 0..100_000 {
            let a = self.deliver(Dir::ClientToServer, &mut sev);
            let b = self.deliver(Dir::ServerToClient, &mut cev);
            if !a && !b {
                return (cev, sev);
            }
        }
        panic!("pump did not settle");
    }

    pub fn handshake(&mut self) -> (Vec<Ev>, Vec<Ev>) {
        let (c, s) = self.pump();
        assert!(self.client.is_established(), "client: {c:?} server: {s:?}");
        assert!(self.server.is_established(), "client: {c:?} server: {s:?}");
        (c, s)
    }

    pub fn advance(&mut self, ms: u64) {
        self.now = Instant::from_millis(self.now.as_millis() + ms);
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
    }
}

pub fn default_pair() -> Pair<{ 64 * 1024 }, { 16384 + 18 }, 64> {
    let mut rng = TestRng::new("keys");
    let c = client_config("client", "server", SessionConfig::HOST, &mut rng);
    let s = server_config("server", &["client"], SessionConfig::HOST, &mut rng);
    Pair::new(c, s, TestRng::new("session"))
}

pub fn data_of(events: &[Ev], id: StreamId) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        if let Ev::Data(i, d) = e
            && *i == id
        {
            out.extend_from_slice(d);
        }
    }
    out
}

// ------------------------------------------------- forged / read records --

/// The traffic secrets `(c_ts0, s_ts0)` of a `default_pair()` session,
/// recomputed from its handshake bytes with the committed private keys and
/// the client's ephemeral X25519 key (the first 32 bytes drawn from
/// `TestRng::new("session")`). Lets a test read what a side sent, or send
/// frames the client API never produces.
pub fn default_pair_traffic_secrets(c2s: &[u8], s2c: &[u8]) -> ([u8; 32], [u8; 32]) {
    use hytun_core::crypto::schedule;
    use hytun_core::wire::handshake::{ClientHello, HEADER_LEN, ServerHello};
    use rand_core::Rng as _;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::{Oaep, PrivateKey};
    use sha2::{Digest, Sha256};
    use x25519_dalek::{PublicKey, StaticSecret};

    let ch_len = HEADER_LEN + usize::from(u16::from_be_bytes([c2s[1], c2s[2]]));
    let sh_len = HEADER_LEN + usize::from(u16::from_be_bytes([s2c[1], s2c[2]]));
    let ch = ClientHello::parse(&c2s[HEADER_LEN..ch_len]).unwrap();
    let sh = ServerHello::parse(&s2c[HEADER_LEN..sh_len]).unwrap();
    let unwrap = |key: &str, label: &'static [u8], ct: &[u8]| -> [u8; 32] {
        PrivateKey::from_pkcs8_der(&vector(key))
            .unwrap()
            .decrypt(Oaep::<Sha256>::new_with_label(label), ct)
            .unwrap()
            .try_into()
            .unwrap()
    };
    let client_secret = unwrap(
        "server.key.der",
        b"hytun/1 client secret",
        ch.encrypted_secret,
    );
    let server_secret = unwrap(
        "client.key.der",
        b"hytun/1 server secret",
        sh.encrypted_secret,
    );
    let mut eph = [0u8; 32];
    TestRng::new("session").fill_bytes(&mut eph);
    let eph = StaticSecret::from(eph);
    assert_eq!(PublicKey::from(&eph).as_bytes(), ch.key_share);
    let shared = eph.diffie_hellman(&PublicKey::from(*sh.key_share));
    let th1: [u8; 32] = Sha256::new()
        .chain_update(&c2s[..ch_len])
        .chain_update(&s2c[..sh_len])
        .finalize()
        .into();
    let s = schedule::derive(&client_secret, &server_secret, shared.as_bytes(), &th1);
    (*s.client_traffic, *s.server_traffic)
}

/// Seals records under one direction's keys (AES-128-GCM, the suite of
/// `default_pair()`), starting at sequence number 0.
pub struct Forger(hytun_core::crypto::RecordSealer);

impl Forger {
    pub fn new(traffic_secret: [u8; 32]) -> Self {
        Forger(hytun_core::crypto::RecordSealer::new(
            hytun_core::Suite::Aes128Gcm,
            zeroize::Zeroizing::new(traffic_secret),
        ))
    }

    /// One record holding `frames`, in order.
    pub fn record(&mut self, frames: &[hytun_core::wire::frame::Frame<'_>]) -> Vec<u8> {
        let mut plain = Vec::new();
        for f in frames {
            let mut buf = [0u8; 512];
            let n = f.emit(&mut buf).unwrap();
            plain.extend_from_slice(&buf[..n]);
        }
        let hdr = ((plain.len() + 16) as u16).to_be_bytes();
        let tag = self.0.seal(&hdr, &mut plain).unwrap();
        let mut out = hdr.to_vec();
        out.extend_from_slice(&plain);
        out.extend_from_slice(&tag);
        out
    }
}

/// Opens every record in `wire` (one direction, from its first record) and
/// returns the frames of each record, `Debug`-formatted.
pub fn read_records(traffic_secret: [u8; 32], wire: &[u8]) -> Vec<Vec<String>> {
    use hytun_core::wire::frame::Frame;
    let mut opener = hytun_core::crypto::RecordOpener::new(
        hytun_core::Suite::Aes128Gcm,
        zeroize::Zeroizing::new(traffic_secret),
    );
    let mut records = Vec::new();
    let mut off = 0;
    while off < wire.len() {
        let len = usize::from(u16::from_be_bytes([wire[off], wire[off + 1]]));
        let end = off + 2 + len;
        let hdr = [wire[off], wire[off + 1]];
        let mut body = wire[off + 2..end - 16].to_vec();
        let tag: [u8; 16] = wire[end - 16..end].try_into().unwrap();
        opener.open(&hdr, &mut body, &tag).expect("record opens");
        let mut frames = Vec::new();
        let mut at = 0;
        while at < body.len() {
            let (f, n) = Frame::parse(&body[at..]).unwrap();
            frames.push(format!("{f:?}"));
            at += n;
        }
        // A key update switches the key for the following records.
        if frames.last().is_some_and(|f| f.starts_with("KeyUpdate")) {
            opener.update();
        }
        records.push(frames);
        off = end;
    }
    records
}

/// Feeds `bytes` to `conn` as one read (looping over records) and returns
/// the events it produced.
pub fn feed<const TX: usize, const RX: usize, const S: usize>(
    conn: &mut Connection<TX, RX, S>,
    bytes: &[u8],
    now: Instant,
    rng: &mut TestRng,
) -> Vec<Ev> {
    let mut evs = Vec::new();
    let mut off = 0;
    loop {
        off += conn.handle_input(&bytes[off..], now, rng);
        while let Some(e) = conn.poll_event() {
            evs.push(own(e));
        }
        if off >= bytes.len() {
            return evs;
        }
    }
}
