//! The proxy's own tests: each fault against a plain TCP echo server, so a failing
//! whole-stack test can rule the proxy out.

use super::*;
use std::io::ErrorKind;
use std::sync::atomic::AtomicUsize;

/// Long enough for a loaded 2-core machine, short enough that a hang fails soon.
const PATIENCE: Duration = Duration::from_secs(10);
/// How long a client waits on a blackholed link before it gives up.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(300);

/// The server behind the proxy: it answers each request (bytes up to a blank line)
/// by echoing it, and remembers what it received.
struct EchoServer {
    addr: SocketAddr,
    seen: Arc<Seen>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    bytes: Mutex<Vec<u8>>,
    requests: Mutex<Vec<Vec<u8>>>,
}

impl EchoServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    seen.connections.fetch_add(1, Relaxed);
                    tokio::spawn(echo_requests(stream, Arc::clone(&seen)));
                }
            }
        });
        Self { addr, seen, task }
    }

    fn connections(&self) -> usize {
        self.seen.connections.load(Relaxed)
    }

    fn bytes(&self) -> Vec<u8> {
        self.seen.bytes.lock().unwrap().clone()
    }

    fn requests(&self) -> Vec<Vec<u8>> {
        self.seen.requests.lock().unwrap().clone()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_requests(mut stream: TcpStream, seen: Arc<Seen>) {
    const END: &[u8] = b"\r\n\r\n";
    let mut pending = Vec::new();
    let mut chunk = [0; 4096];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        seen.bytes.lock().unwrap().extend_from_slice(&chunk[..n]);
        pending.extend_from_slice(&chunk[..n]);
        while let Some(at) = pending.windows(END.len()).position(|w| w == END) {
            let request: Vec<u8> = pending.drain(..at + END.len()).collect();
            // Recorded before answering: once the answer exists, the server has acted.
            seen.requests.lock().unwrap().push(request.clone());
            if stream.write_all(&request).await.is_err() {
                return;
            }
        }
    }
}

/// A request of `body_len` bytes plus the blank line; the body never contains one.
fn request(body_len: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..body_len).map(|i| (i % 251) as u8).collect();
    bytes.extend_from_slice(b"\r\n\r\n");
    bytes
}

async fn within<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, work)
        .await
        .unwrap_or_else(|_| panic!("timed out after {PATIENCE:?}: {what}"))
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    within("connecting to the proxy", TcpStream::connect(proxy.addr()))
        .await
        .unwrap()
}

/// Sends `request` and reads an answer of the same length.
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> std::io::Result<Vec<u8>> {
    within("a request and its answer", async {
        stream.write_all(request).await?;
        let mut answer = vec![0; request.len()];
        stream.read_exact(&mut answer).await?;
        Ok(answer)
    })
    .await
}

/// The first read fails with a reset: no byte came first, and no clean end of stream.
async fn assert_reset(stream: &mut TcpStream) {
    let mut buf = [0; 64];
    let read = within("the reset", stream.read(&mut buf)).await;
    assert!(
        matches!(&read, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "expected a connection reset, got {read:?}"
    );
}

#[tokio::test]
async fn a_healed_link_passes_bytes_through_unchanged_both_ways() {
    let server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr).await;
    let request = request(5 * CHUNK + 123);

    let mut client = connect(&proxy).await;
    for _ in 0..2 {
        assert!(exchange(&mut client, &request).await.unwrap() == request);
    }

    assert!(server.requests() == [request.clone(), request.clone()]);
    let forwarded = 2 * request.len() as u64;
    assert_eq!(
        proxy.stats(),
        ProxyStats {
            accepted: 1,
            resets: 0,
            bytes_to_upstream: forwarded,
            bytes_to_client: forwarded,
        }
    );
}

#[tokio::test]
async fn latency_delays_a_round_trip_by_at_least_twice_the_latency() {
    let server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr).await;
    let latency = Duration::from_millis(150);
    proxy.set(Faults {
        latency,
        ..Faults::default()
    });

    let mut client = connect(&proxy).await;
    let started = tokio::time::Instant::now();
    exchange(&mut client, &request(10)).await.unwrap();

    let took = started.elapsed();
    assert!(took >= 2 * latency, "a round trip took only {took:?}");
}

#[tokio::test]
async fn reset_after_request_delivers_the_request_and_loses_the_whole_answer() {
    let server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr).await;
    proxy.set(Faults {
        reset_after_request: 1.0,
        ..Faults::default()
    });
    let request = request(3 * CHUNK);

    let mut client = connect(&proxy).await;
    client.write_all(&request).await.unwrap();
    assert_reset(&mut client).await;

    assert!(server.requests() == [request.clone()]);
    let stats = proxy.stats();
    assert_eq!((stats.resets, stats.bytes_to_client), (1, 0), "{stats:?}");
}

#[tokio::test]
async fn reset_after_request_draws_for_each_answer_on_a_kept_alive_connection() {
    let server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr).await;
    let first = request(10);
    let second = request(20);

    let mut client = connect(&proxy).await;
    assert!(exchange(&mut client, &first).await.unwrap() == first);
    proxy.set(Faults {
        reset_after_request: 1.0,
        ..Faults::default()
    });
    client.write_all(&second).await.unwrap();
    assert_reset(&mut client).await;

    assert!(server.requests() == [first, second]);
}

#[tokio::test]
async fn the_same_seed_loses_the_same_answers_after_each_set() {
    let server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr).await;
    let faults = Faults {
        reset_after_request: 0.5,
        seed: 7,
        ..Faults::default()
    };
    let request = request(10);

    let mut runs = Vec::new();
    for _ in 0..2 {
        proxy.set(faults);
        let mut losses = Vec::new();
        for _ in 0..24 {
            let mut client = connect(&proxy).await;
            losses.push(match exchange(&mut client, &request).await {
                Ok(answer) => {
                    assert!(answer == request);
                    false
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
                Err(e) => panic!("neither an answer nor a reset: {e}"),
            });
        }
        runs.push(losses);
    }

    assert_eq!(runs[0], runs[1]);
    assert!(
        runs[0].contains(&true) && runs[0].contains(&false),
        "half the answers should be lost, not all or none: {:?}",
        runs[0]
    );
}

#[tokio::test]
async fn a_blackhole_times_the_client_out_and_heal_lets_new_connections_through() {
    let server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr).await;
    proxy.set(Faults {
        blackhole: true,
        ..Faults::default()
    });
    let request = request(10);

    let mut swallowed = connect(&proxy).await;
    swallowed.write_all(&request).await.unwrap();
    let mut buf = [0; 64];
    let read = tokio::time::timeout(CLIENT_TIMEOUT, swallowed.read(&mut buf)).await;
    assert!(read.is_err(), "expected a timeout, got {read:?}");
    assert_eq!((server.connections(), server.bytes().len()), (0, 0));

    proxy.heal();
    let mut client = connect(&proxy).await;
    assert!(exchange(&mut client, &request).await.unwrap() == request);
}

#[tokio::test]
async fn a_blackhole_stalls_open_connections() {
    let server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr).await;
    let first = request(10);

    let mut client = connect(&proxy).await;
    assert!(exchange(&mut client, &first).await.unwrap() == first);
    proxy.set(Faults {
        blackhole: true,
        ..Faults::default()
    });
    client.write_all(&request(20)).await.unwrap();
    let mut buf = [0; 64];
    let read = tokio::time::timeout(CLIENT_TIMEOUT, client.read(&mut buf)).await;

    assert!(read.is_err(), "expected a timeout, got {read:?}");
    assert!(server.bytes() == first);
}

#[tokio::test]
async fn refuse_resets_the_client_before_the_server_sees_it() {
    let server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr).await;
    proxy.set(Faults {
        refuse: true,
        ..Faults::default()
    });

    // The kernel completes the handshake before the proxy accepts, so the connect
    // succeeds and the first read fails.
    let mut client = connect(&proxy).await;
    assert_reset(&mut client).await;

    assert_eq!(server.connections(), 0);
    assert_eq!(proxy.stats().resets, 1);
}

#[tokio::test]
async fn cut_all_resets_every_open_connection() {
    let server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr).await;
    let request = request(10);
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut client = connect(&proxy).await;
        assert!(exchange(&mut client, &request).await.unwrap() == request);
        clients.push(client);
    }

    proxy.cut_all();
    for client in &mut clients {
        assert_reset(client).await;
    }
    assert_eq!(proxy.stats().resets, 2);

    let mut after = connect(&proxy).await;
    assert!(exchange(&mut after, &request).await.unwrap() == request);
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_listener_and_its_connections() {
    let server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr).await;
    let addr = proxy.addr();
    let request = request(10);
    let mut client = connect(&proxy).await;
    assert!(exchange(&mut client, &request).await.unwrap() == request);

    drop(proxy);

    let mut buf = [0; 64];
    let read = within("the open connection to close", client.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "still open: {read:?}");
    super::super::eventually("the listener to close", PATIENCE, || async {
        TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await;
}
