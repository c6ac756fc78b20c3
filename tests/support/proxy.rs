//! A TCP fault-injection proxy on loopback, put between a client (a PoS terminal,
//! reqwest, a WebSocket client) and a server (the HTTP ingress, the WebSocket fanout) to
//! make the faults a shop's Wi-Fi makes: latency, an answer lost after the request
//! arrived, a link that swallows everything, a server that cannot be reached, a drop of
//! every open connection.
//!
//! Data flow: the client connects to [`FaultProxy::addr`]; the proxy opens one upstream
//! connection per accepted client and one task pumps both directions in chunks of at
//! most [`CHUNK`] bytes. Each chunk reads the current [`Faults`] before it is forwarded,
//! so [`FaultProxy::set`] reaches open connections as well as new ones. A fault that
//! ends a connection drops the client side with `SO_LINGER` zero, so the client reads
//! "connection reset", never a clean end of stream that could pass for an answer.
//!
//! ```ignore
//! let ingress = stack.api.base.trim_start_matches("http://").parse().unwrap();
//! let proxy = FaultProxy::start(ingress).await;
//! let terminal = Api::new(proxy.url("http"), &stack.tenant);
//! proxy.set(Faults { reset_after_request: 1.0, ..Faults::default() });
//! // terminal.post(..) now reaches the ingress, and the terminal sees a reset.
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Bytes read at once, per direction. It is the only buffer a connection holds, so a
/// side that stops reading pushes back through TCP instead of filling the proxy's memory.
pub const CHUNK: usize = 16 * 1024;

/// What the link does now. `Faults::default()` is a healthy link.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Waited before each chunk is forwarded, in each direction: a request and its
    /// answer gain at least twice this.
    pub latency: Duration,
    /// Probability, drawn per response, that the answer is lost: at the first server
    /// chunk after client bytes were forwarded, the client gets an RST and the upstream
    /// connection is closed. The request reached the server; the client never learns
    /// what it did. On a kept-alive connection every request/answer pair is a new draw.
    pub reset_after_request: f64,
    /// Forward nothing either way and keep connections open, so clients time out. A
    /// connection accepted meanwhile never reaches the server and stays a sink after
    /// [`FaultProxy::heal`]; an open connection loses what crosses it meanwhile, so treat
    /// it as dead (as a client that timed out does).
    pub blackhole: bool,
    /// Reset new connections as soon as they are accepted (server unreachable). Open
    /// connections go on: add [`FaultProxy::cut_all`] for a server that went away.
    pub refuse: bool,
    /// Seeds the draws for `reset_after_request`. Each [`FaultProxy::set`] restarts the
    /// sequence, so a client sending one request after another sees the same losses on
    /// every run.
    pub seed: u64,
}

/// Counters since [`FaultProxy::start`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    pub accepted: u64,
    /// RSTs sent to clients because of a fault: `refuse`, `reset_after_request`, `cut_all`.
    pub resets: u64,
    pub bytes_to_upstream: u64,
    pub bytes_to_client: u64,
}

pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Owns every connection task through a `JoinSet`, so aborting it on drop closes the
    /// listener and every connection with it.
    accept_task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 with a port of the system's choice, healthy until [`Self::set`].
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fault proxy on loopback");
        let addr = listener.local_addr().expect("the fault proxy's address");
        let shared = Arc::new(Shared {
            upstream,
            link: Mutex::new(Link::new(Faults::default())),
            cuts: watch::Sender::new(0),
            accepted: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            bytes_to_upstream: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
        });
        let accept_task = tokio::spawn(accept(listener, Arc::clone(&shared)));
        FaultProxy {
            addr,
            shared,
            accept_task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `url("http")` is `http://127.0.0.1:PORT`, to hand to a client in place of the server's.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    pub fn set(&self, faults: Faults) {
        *self.shared.link.lock().unwrap() = Link::new(faults);
    }

    pub fn heal(&self) {
        self.set(Faults::default());
    }

    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        ProxyStats {
            accepted: s.accepted.load(Relaxed),
            resets: s.resets.load(Relaxed),
            bytes_to_upstream: s.bytes_to_upstream.load(Relaxed),
            bytes_to_client: s.bytes_to_client.load(Relaxed),
        }
    }

    /// Resets every open connection (the link dropped). Connections accepted afterwards
    /// follow the current [`Faults`].
    pub fn cut_all(&self) {
        self.shared.cuts.send_modify(|cuts| *cuts += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

struct Shared {
    upstream: SocketAddr,
    /// A std mutex: it is held for a copy or a draw, never across an await.
    link: Mutex<Link>,
    /// Bumped by `cut_all`. A watch rather than a `Notify`: each connection subscribes as
    /// it is accepted, so one whose task has not run yet still sees the cut.
    cuts: watch::Sender<u64>,
    accepted: AtomicU64,
    resets: AtomicU64,
    bytes_to_upstream: AtomicU64,
    bytes_to_client: AtomicU64,
}

impl Shared {
    fn faults(&self) -> Faults {
        self.link.lock().unwrap().faults
    }

    fn answer_lost(&self) -> bool {
        let mut link = self.link.lock().unwrap();
        // No draw at probability zero, so healthy stretches do not shift a seed's pattern.
        let p = link.faults.reset_after_request;
        p > 0.0 && link.dice.roll() < p
    }

    fn inject_reset(&self, client: TcpStream) {
        self.resets.fetch_add(1, Relaxed);
        reset(client);
    }
}

struct Link {
    faults: Faults,
    dice: Dice,
}

impl Link {
    fn new(faults: Faults) -> Self {
        Self {
            faults,
            dice: Dice(faults.seed),
        }
    }
}

/// SplitMix64: any seed, zero included, starts a full-period sequence.
struct Dice(u64);

impl Dice {
    /// A draw in [0, 1).
    fn roll(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The top 53 bits fill an f64's mantissa exactly.
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Closes with an RST instead of a FIN. `set_zero_linger` replaces the deprecated
/// `set_linger`, whose warning is about non-zero lingers blocking the thread on drop; a
/// zero linger never blocks.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    shared.accepted.fetch_add(1, Relaxed);
                    let cuts = shared.cuts.subscribe();
                    connections.spawn(serve(client, Arc::clone(&shared), cuts));
                }
                // Out of file descriptors or the like: back off rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reaped so that the set holds open connections only.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Why a connection ended before both directions closed cleanly.
#[derive(Clone, Copy)]
enum Abort {
    /// A fault ended it: the client gets an RST, counted in `resets`.
    Fault,
    /// The server reset or failed: the client gets an RST, as from the server itself.
    Upstream,
    /// The client went away: there is no one left to tell.
    Client,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToUpstream,
    ToClient,
}

async fn serve(mut client: TcpStream, shared: Arc<Shared>, mut cuts: watch::Receiver<u64>) {
    let faults = shared.faults();
    if faults.refuse {
        shared.inject_reset(client);
        return;
    }
    if faults.blackhole {
        swallow(client, &shared, cuts).await;
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(shared.upstream).await else {
        reset(client);
        return;
    };
    // Nagle's algorithm would hold small writes back and add a delay of its own to the
    // configured latency.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    // Set once request bytes have been written to the server; the next server chunk
    // starts an answer and draws for `reset_after_request`.
    let answer_due = AtomicBool::new(false);
    let ending = {
        let (mut from_client, mut to_client) = client.split();
        let (mut from_upstream, mut to_upstream) = upstream.split();
        let both_ways = async {
            tokio::try_join!(
                pump(
                    Direction::ToUpstream,
                    &mut from_client,
                    &mut to_upstream,
                    &shared,
                    &answer_due
                ),
                pump(
                    Direction::ToClient,
                    &mut from_upstream,
                    &mut to_client,
                    &shared,
                    &answer_due
                ),
            )
        };
        tokio::select! {
            pumped = both_ways => pumped.err(),
            _ = cuts.changed() => Some(Abort::Fault),
        }
    };
    match ending {
        None | Some(Abort::Client) => {}
        Some(Abort::Fault) => shared.inject_reset(client),
        Some(Abort::Upstream) => reset(client),
    }
    // `upstream` closes here with a plain FIN, after the client's RST has gone out.
}

/// Forwards one direction until its source ends (passing the half-close on) or an abort.
async fn pump<R, W>(
    direction: Direction,
    from: &mut R,
    to: &mut W,
    shared: &Shared,
    answer_due: &AtomicBool,
) -> Result<(), Abort>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (read_failed, write_failed) = match direction {
        Direction::ToUpstream => (Abort::Client, Abort::Upstream),
        Direction::ToClient => (Abort::Upstream, Abort::Client),
    };
    let mut chunk = vec![0; CHUNK];
    loop {
        let n = from.read(&mut chunk).await.map_err(|_| read_failed)?;
        if n == 0 {
            // Answers framed by end of stream, and clients that half-close after a
            // request, rely on the FIN reaching the other side.
            let _ = to.shutdown().await;
            return Ok(());
        }
        let faults = shared.faults();
        if faults.blackhole {
            continue;
        }
        if direction == Direction::ToClient
            && answer_due.swap(false, Relaxed)
            && shared.answer_lost()
        {
            return Err(Abort::Fault);
        }
        if !faults.latency.is_zero() {
            tokio::time::sleep(faults.latency).await;
        }
        to.write_all(&chunk[..n]).await.map_err(|_| write_failed)?;
        match direction {
            Direction::ToUpstream => {
                shared.bytes_to_upstream.fetch_add(n as u64, Relaxed);
                answer_due.store(true, Relaxed);
            }
            Direction::ToClient => {
                shared.bytes_to_client.fetch_add(n as u64, Relaxed);
            }
        }
    }
}

/// A connection accepted during a blackhole: it never reaches the server, and what the
/// client sends is read and dropped until the client gives up or the link is cut.
async fn swallow(mut client: TcpStream, shared: &Shared, mut cuts: watch::Receiver<u64>) {
    let mut chunk = vec![0; CHUNK];
    let cut = tokio::select! {
        () = async { while matches!(client.read(&mut chunk).await, Ok(n) if n > 0) {} } => false,
        _ = cuts.changed() => true,
    };
    if cut {
        shared.inject_reset(client);
    }
}

#[cfg(test)]
mod tests;
