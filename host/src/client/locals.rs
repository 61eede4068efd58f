//! [`Locals`]: the client's table of local connections, keyed by their
//! poll tokens, with the token allocator (listeners draw from it too) and
//! the set of connections that have work pending for the next service
//! pass. It carries out what needs a connection and the tunnel session
//! together — opening a stream for a waiting request, ending a connection
//! (unmapping and resetting its stream), answering a failed stream — with
//! the session lent to each call, and it is the [`StreamRouter`] the
//! session hands its stream events to. The table owns no socket of the
//! tunnel; each [`Local`] owns its own. It also holds the resolver of `-R`
//! target names, if the client has one, so that a connection that ends
//! while its target's name is looked up cancels the lookup.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant as StdInstant};

use hytun_core::{StreamErrorCode, StreamId};
use mio::{Registry, Token};

use super::local::{End, Local, Negotiation, Outcome};
use super::reverse::TargetResolver;
use super::tunnel::{OpenError, StreamRouter, TunnelSession};
use crate::config::ReverseSpec;
use crate::pipe::Readiness;

/// The local connections of one client loop.
pub(super) struct Locals {
    table: HashMap<Token, Local>,
    next_token: usize,
    /// Connections to service in the next pass.
    touched: HashSet<Token>,
    /// Looks up `-R` target names (only when some target is a name).
    pub(super) targets: Option<TargetResolver>,
}

impl Locals {
    /// An empty table whose tokens start after `last_used`.
    pub(super) fn new(last_used: usize) -> Locals {
        Locals {
            table: HashMap::new(),
            next_token: last_used,
            touched: HashSet::new(),
            targets: None,
        }
    }

    /// A poll token no other socket of the loop uses.
    pub(super) fn next_token(&mut self) -> Token {
        self.next_token += 1;
        Token(self.next_token)
    }

    /// Adds a connection whose socket is registered under `t`.
    pub(super) fn insert(&mut self, t: Token, local: Local) {
        self.table.insert(t, local);
    }

    pub(super) fn get_mut(&mut self, t: Token) -> Option<&mut Local> {
        self.table.get_mut(&t)
    }

    /// Takes a connection out of the table (its socket still registered).
    pub(super) fn remove(&mut self, t: Token) -> Option<Local> {
        self.table.remove(&t)
    }

    /// Marks a connection for the next service pass.
    pub(super) fn touch(&mut self, t: Token) {
        self.touched.insert(t);
    }

    /// The connections marked for service since the last pass.
    pub(super) fn take_touched(&mut self) -> Vec<Token> {
        self.touched.drain().collect()
    }

    pub(super) fn has_touched(&self) -> bool {
        !self.touched.is_empty()
    }

    /// The connections whose reading stopped for lack of credit or
    /// transmit space.
    pub(super) fn read_blocked(&self) -> Vec<Token> {
        self.table
            .iter()
            .filter(|(_, l)| l.read_blocked())
            .map(|(t, _)| *t)
            .collect()
    }

    pub(super) fn any_read_blocked(&self) -> bool {
        self.table.values().any(Local::read_blocked)
    }

    /// Time from `now` until the first connection's deadline.
    pub(super) fn next_timeout(&self, now: StdInstant) -> Option<Duration> {
        self.table
            .values()
            .filter_map(Local::deadline)
            .map(|d| d.saturating_duration_since(now))
            .min()
    }

    /// A connection just accepted (and registered under `t`): a `-L`
    /// connection asks for its stream at once.
    pub(super) fn accept(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        t: Token,
        local: Local,
    ) {
        let waiting = local.is_waiting();
        self.table.insert(t, local);
        if waiting {
            self.open_for(registry, tunnel, t);
        }
    }

    /// Readiness on a local socket.
    pub(super) fn on_ready(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        t: Token,
        ready: Readiness,
    ) {
        let Some(l) = self.table.get_mut(&t) else {
            return;
        };
        if ready.read_closed {
            l.note_read_closed();
        }
        if l.connecting().is_some() {
            if ready.readable || ready.writable {
                self.finish_target_connect(registry, tunnel, t);
            }
            return;
        }
        if ready.readable && l.is_negotiating() {
            match l.negotiate() {
                Negotiation::Pending | Negotiation::Refused => {}
                Negotiation::Request => self.open_for(registry, tunnel, t),
                Negotiation::End(end) => self.end(registry, tunnel, t, end),
            }
        }
        self.touched.insert(t);
    }

    /// One connection's share of a service pass: flush to the socket,
    /// read into the stream, and end it if it is finished.
    pub(super) fn service(&mut self, registry: &Registry, tunnel: &mut TunnelSession, t: Token) {
        let Some(l) = self.table.get_mut(&t) else {
            return;
        };
        if let Some(end) = l.service(tunnel.conn_mut()) {
            self.end(registry, tunnel, t, end);
        }
    }

    /// Opens streams for every local connection waiting for one.
    pub(super) fn open_waiting(&mut self, registry: &Registry, tunnel: &mut TunnelSession) {
        let waiting: Vec<Token> = self
            .table
            .iter()
            .filter(|(_, l)| l.is_waiting())
            .map(|(t, _)| *t)
            .collect();
        for t in waiting {
            self.open_for(registry, tunnel, t);
        }
    }

    /// Opens the stream for a local connection whose request is known.
    fn open_for(&mut self, registry: &Registry, tunnel: &mut TunnelSession, t: Token) {
        let Some(l) = self.table.get_mut(&t) else {
            return;
        };
        let Some((host, port, early)) = l.request() else {
            return;
        };
        match tunnel.open_stream(t, host, port, early) {
            Ok((id, sent)) => match l.stream_opened(id, sent) {
                Ok(()) => {
                    self.touched.insert(t);
                }
                Err(end) => self.end(registry, tunnel, t, end),
            },
            // Retried when the session is up, streams end or the buffer
            // drains (service loop), or on the next session after GOAWAY.
            Err(OpenError::Wait) => {}
            Err(OpenError::Failed(e)) => {
                self.fail(registry, tunnel, t, format!("cannot open a stream: {e}"));
            }
        }
    }

    /// Removes a local connection and closes it: its stream is unmapped
    /// and, on an abort, reset.
    pub(super) fn end(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        t: Token,
        end: End,
    ) {
        let Some(l) = self.table.remove(&t) else {
            return;
        };
        self.cancel_lookup(&l);
        if let Some(id) = l.stream() {
            tunnel.forget_stream(id);
        }
        l.close(registry, tunnel.conn_mut(), end);
    }

    /// A failure of a local connection's stream: answered if a proxy reply
    /// is pending, aborted otherwise.
    fn fail(&mut self, registry: &Registry, tunnel: &mut TunnelSession, t: Token, reason: String) {
        let Some(l) = self.table.get_mut(&t) else {
            return;
        };
        let outcome = l.fail(reason);
        self.settle(registry, tunnel, t, outcome);
    }

    /// The server refused a local connection's stream.
    fn refuse(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        t: Token,
        code: StreamErrorCode,
    ) {
        let Some(l) = self.table.get_mut(&t) else {
            return;
        };
        let outcome = l.refuse(code);
        self.settle(registry, tunnel, t, outcome);
    }

    /// Carries out a connection's answer to a failure: an answered one
    /// gives up its stream and is serviced to flush the reply; one without
    /// an answer is aborted.
    fn settle(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        t: Token,
        outcome: Outcome,
    ) {
        match outcome {
            Outcome::Answered(stream) => {
                if let Some(id) = stream {
                    tunnel.forget_stream(id);
                }
                self.touched.insert(t);
            }
            Outcome::Abort(reason) => self.end(registry, tunnel, t, End::Abort(reason)),
        }
    }

    /// Deadlines: buffers of connections quiet for a second go back, and
    /// connections still waiting for their stream or target at their
    /// deadline are answered or aborted.
    pub(super) fn on_timer(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        now: StdInstant,
    ) {
        if let Some(quiet_before) = now.checked_sub(Duration::from_secs(1)) {
            for l in self.table.values_mut() {
                l.release_if_drained_before(quiet_before);
            }
        }
        let expired: Vec<Token> = self
            .table
            .iter()
            .filter(|(_, l)| l.deadline().is_some_and(|d| now >= d))
            .map(|(t, _)| *t)
            .collect();
        for t in expired {
            let Some(l) = self.table.get_mut(&t) else {
                continue;
            };
            if let Some(id) = l.connecting() {
                self.fail_target(
                    registry,
                    tunnel,
                    t,
                    id,
                    StreamErrorCode::TimedOut,
                    "target connect timed out",
                );
                continue;
            }
            if let Some((id, _)) = l.lookup() {
                // Only if the resolver pool missed its own deadline.
                self.fail_target(
                    registry,
                    tunnel,
                    t,
                    id,
                    StreamErrorCode::TimedOut,
                    "target name lookup timed out",
                );
                continue;
            }
            match l.expire() {
                Outcome::Answered(stream) => {
                    if let Some(id) = stream {
                        // The server may still connect it: cancel it there.
                        tunnel.forget_stream(id);
                        tunnel.cancel_stream(id);
                    }
                    self.touched.insert(t);
                }
                Outcome::Abort(reason) => self.end(registry, tunnel, t, End::Abort(reason)),
            }
        }
    }

    /// The client stops: every connection ends, those whose stream is cut
    /// abortively.
    pub(super) fn shutdown(&mut self, registry: &Registry, tunnel: &mut TunnelSession) {
        let live: Vec<Token> = self.table.keys().copied().collect();
        for t in live {
            let Some(end) = self.table.get(&t).map(Local::end_on_stop) else {
                continue;
            };
            self.end(registry, tunnel, t, end);
        }
    }
}

impl StreamRouter for Locals {
    fn session_up(&mut self, registry: &Registry, tunnel: &mut TunnelSession) {
        self.open_waiting(registry, tunnel);
    }

    fn opened(&mut self, local: Token, id: StreamId) {
        if let Some(l) = self.table.get_mut(&local) {
            l.on_opened(id);
            self.touched.insert(local);
        }
    }

    fn refused(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        local: Token,
        code: StreamErrorCode,
    ) {
        self.refuse(registry, tunnel, local, code);
    }

    fn data(&mut self, local: Token, data: &[u8]) {
        if let Some(l) = self.table.get_mut(&local) {
            l.queue_tunnel(data);
            self.touched.insert(local);
        }
    }

    fn finished(&mut self, local: Token) {
        if let Some(l) = self.table.get_mut(&local) {
            l.tunnel_finished();
            self.touched.insert(local);
        }
    }

    fn reset(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        local: Token,
        code: StreamErrorCode,
    ) {
        self.fail(
            registry,
            tunnel,
            local,
            format!("reset by the server: {code}"),
        );
    }

    fn writable(&mut self, local: Token) {
        self.touched.insert(local);
    }

    fn incoming(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        id: StreamId,
        spec: ReverseSpec,
        origin: String,
    ) {
        self.connect_target(registry, tunnel, id, &spec, &origin);
    }

    fn session_lost(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        broken: Vec<Token>,
        reason: &str,
    ) {
        // Every live stream is broken: the local side must not mistake the
        // break for a complete stream, so it is reset (or, with a proxy
        // reply still pending, answered with a failure).
        for t in broken {
            self.fail(registry, tunnel, t, reason.to_owned());
        }
    }
}
