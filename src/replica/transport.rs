//! TCP transport for the replication driver: a listener, dial attempts, and
//! per-connection reader and writer threads that split the byte stream
//! into frames (`wire::frame_len`) and report to the driver's channel.
//!
//! Nothing here interprets frames beyond their length: authentication,
//! sequence numbers and MACs are the core's (`auth.rs`, `protocol.rs`).
//! A malformed header closes the connection with the decoder's reason.
//! Silence is detected by the core's keepalive timeout, not here; the
//! writer never blocks the driver (a bounded queue; a peer that stops
//! reading until the queue is full is disconnected).
//!
//! Depends on: `wire`, `node` (message types).

use super::node::{Msg, Shared};
use super::wire;
use crossbeam_channel::{Sender, TrySendError, bounded};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Frames queued for the writer before the peer counts as not reading.
pub const SEND_QUEUE: usize = 4096;
/// How long one connect attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A write blocked this long (peer not reading) fails.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Poll interval of blocking socket calls (to notice stop requests).
const POLL: Duration = Duration::from_millis(100);

/// What the transport reports to the driver.
pub enum NetMsg {
    Accepted(TcpStream, SocketAddr),
    Dialed { attempt: u64, result: Result<TcpStream, String> },
    Frame(u64, Vec<u8>),
    Closed(u64, String),
}

/// Listen on `addr`; returns the stop flag, the thread and the bound
/// address (port 0 picks a free port).
pub(crate) fn listen(
    addr: SocketAddr,
    tx: Sender<Msg>,
) -> Result<(Arc<AtomicBool>, JoinHandle<()>, SocketAddr), String> {
    let l = TcpListener::bind(addr).map_err(|e| format!("listening on {addr}: {e}"))?;
    let bound = l.local_addr().map_err(|e| format!("listening on {addr}: {e}"))?;
    l.set_nonblocking(true).map_err(|e| format!("listening on {addr}: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let h = std::thread::Builder::new()
        .name("strata-repl-listen".into())
        .spawn(move || {
            while !st.load(Ordering::Acquire) {
                match l.accept() {
                    Ok((s, from)) => {
                        let _ = s.set_nonblocking(false);
                        if tx.send(Msg::Net(NetMsg::Accepted(s, from))).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => {
                        tracing::warn!(%e, "replication: accept failed");
                        std::thread::sleep(POLL);
                    }
                }
            }
        })
        .map_err(|e| format!("spawning the listener: {e}"))?;
    Ok((stop, h, bound))
}

/// One connect attempt on its own thread; the outcome goes to the driver.
pub(crate) fn dial(peer: String, attempt: u64, tx: Sender<Msg>) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name("strata-repl-dial".into())
        .spawn(move || {
            let result = (|| {
                let mut last = format!("{peer}: no address");
                for a in peer.to_socket_addrs().map_err(|e| format!("resolving {peer}: {e}"))? {
                    match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                        Ok(s) => return Ok(s),
                        Err(e) => last = format!("connecting to {a}: {e}"),
                    }
                }
                Err(last)
            })();
            let _ = tx.send(Msg::Net(NetMsg::Dialed { attempt, result }));
        })
        .map_err(|e| format!("spawning a dial thread: {e}"))
}

/// One live connection: its socket and its two threads.
pub struct Conn {
    pub id: u64,
    stream: TcpStream,
    closing: Arc<AtomicBool>,
    wtx: Option<Sender<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl Conn {
    pub(crate) fn start(id: u64, stream: TcpStream, tx: Sender<Msg>, shared: Arc<Shared>) -> Result<Conn, String> {
        let _ = stream.set_nodelay(true);
        stream.set_read_timeout(Some(POLL)).map_err(|e| format!("socket: {e}"))?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(|e| format!("socket: {e}"))?;
        let rs = stream.try_clone().map_err(|e| format!("socket: {e}"))?;
        let mut ws = stream.try_clone().map_err(|e| format!("socket: {e}"))?;
        let (wtx, wrx) = bounded::<Vec<u8>>(SEND_QUEUE);
        let sh = shared.clone();
        let closing = Arc::new(AtomicBool::new(false));
        let cl = closing.clone();
        let cw = closing.clone();
        let tx2 = tx.clone();
        let writer = std::thread::Builder::new()
            .name("strata-repl-tx".into())
            .spawn(move || {
                for f in wrx {
                    // Test hook: a hung peer neither reads nor writes.
                    while sh.stall_reads.load(Ordering::Acquire) {
                        if cw.load(Ordering::Acquire) {
                            return;
                        }
                        std::thread::sleep(POLL);
                    }
                    if let Err(e) = ws.write_all(&f) {
                        let _ = tx2.send(Msg::Net(NetMsg::Closed(id, format!("send failed: {e}"))));
                        return;
                    }
                    sh.wire_tx.fetch_add(f.len() as u64, Ordering::Relaxed);
                }
            })
            .map_err(|e| format!("spawning the writer: {e}"))?;
        let reader = std::thread::Builder::new()
            .name("strata-repl-rx".into())
            .spawn(move || read_frames(id, rs, tx, shared, cl))
            .map_err(|e| format!("spawning the reader: {e}"))?;
        Ok(Conn { id, stream, closing, wtx: Some(wtx), reader: Some(reader), writer: Some(writer) })
    }

    /// Queue a frame; an error means the peer is not reading.
    pub fn send(&self, frame: Vec<u8>) -> Result<(), String> {
        let Some(w) = &self.wtx else { return Err("connection closed".into()) };
        match w.try_send(frame) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(format!("the peer is not reading ({SEND_QUEUE} frames queued)")),
            Err(TrySendError::Disconnected(_)) => Err("connection closed".into()),
        }
    }

    /// Shut the socket down and join both threads.
    /// Frames already queued (an Error carrying a refusal reason, a
    /// Disconnect) are written first, bounded by the socket's write timeout.
    pub fn close(mut self) {
        self.closing.store(true, Ordering::Release);
        self.wtx.take();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

fn read_frames(id: u64, mut s: TcpStream, tx: Sender<Msg>, shared: Arc<Shared>, closing: Arc<AtomicBool>) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    let closed = |reason: String| {
        let _ = tx.send(Msg::Net(NetMsg::Closed(id, reason)));
    };
    loop {
        if closing.load(Ordering::Acquire) {
            return;
        }
        if shared.stall_reads.load(Ordering::Acquire) {
            // Test hook: behave like a hung process (socket open, nothing
            // read), until our side closes the connection.
            std::thread::sleep(POLL);
            continue;
        }
        match s.read(&mut chunk) {
            Ok(0) => return closed("closed by peer".into()),
            Ok(n) => {
                shared.wire_rx.fetch_add(n as u64, Ordering::Relaxed);
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    match wire::frame_len(&buf) {
                        Ok(Some(len)) if buf.len() >= len => {
                            let rest = buf.split_off(len);
                            let frame = std::mem::replace(&mut buf, rest);
                            if tx.send(Msg::Net(NetMsg::Frame(id, frame))).is_err() {
                                return;
                            }
                        }
                        Ok(_) => break,
                        Err(e) => return closed(format!("bad frame from the peer: {e}")),
                    }
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return closed(format!("receive failed: {e}")),
        }
    }
}
