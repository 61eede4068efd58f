//! Name resolution off the event loop: a worker thread runs the blocking
//! system resolver and hands results back through a channel, waking the
//! loop with a `mio::Waker`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;

/// A lookup request, tagged by the caller.
#[derive(Debug)]
pub struct Lookup<T> {
    /// Caller's tag (e.g. session token and stream id).
    pub tag: T,
    /// Name to resolve.
    pub host: String,
    /// Port to attach.
    pub port: u16,
}

/// A finished lookup.
#[derive(Debug)]
pub struct Resolved<T> {
    /// The request's tag.
    pub tag: T,
    /// Addresses, or the resolver's error text.
    pub result: Result<Vec<SocketAddr>, String>,
}

/// Handle to the resolver thread.
pub struct Resolver<T> {
    requests: Sender<Lookup<T>>,
    results: Receiver<Resolved<T>>,
}

impl<T: Send + 'static> Resolver<T> {
    /// Starts the worker; `waker` is woken after each result.
    pub fn start(waker: Arc<mio::Waker>) -> std::io::Result<Self> {
        let (req_tx, req_rx) = mpsc::channel::<Lookup<T>>();
        let (res_tx, res_rx) = mpsc::channel::<Resolved<T>>();
        thread::Builder::new()
            .name("hytun-resolver".into())
            .spawn(move || {
                for Lookup { tag, host, port } in req_rx {
                    let result = (host.as_str(), port)
                        .to_socket_addrs()
                        .map(|it| it.collect::<Vec<_>>())
                        .map_err(|e| e.to_string())
                        .and_then(|v| {
                            if v.is_empty() {
                                Err("no addresses".into())
                            } else {
                                Ok(v)
                            }
                        });
                    if res_tx.send(Resolved { tag, result }).is_err() {
                        return;
                    }
                    let _ = waker.wake();
                }
            })?;
        Ok(Resolver {
            requests: req_tx,
            results: res_rx,
        })
    }

    /// Queues a lookup.
    pub fn lookup(&self, tag: T, host: String, port: u16) {
        // The worker only exits when this handle is dropped.
        let _ = self.requests.send(Lookup { tag, host, port });
    }

    /// Takes a finished lookup, if any.
    pub fn try_result(&self) -> Option<Resolved<T>> {
        self.results.try_recv().ok()
    }
}
