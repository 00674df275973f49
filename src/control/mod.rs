//! The daemon's control socket: `STORE/control.sock`.
//!
//! Decision: **the CLI keeps working while the store is mounted.** The
//! mount daemon owns the store (it holds the store lock, as any opener
//! does); nothing else opens the store while it is mounted. A CLI command
//! that finds the store busy calls [`call`], which forwards its argument
//! vector to the daemon; the daemon runs it in-process against its own
//! open [`Engine`] (through the `ControlHandler` the CLI gave to
//! `fs::mount`) and sends back stdout, stderr and the exit code, which the
//! CLI prints and exits with. So `strata volume create`, `status`,
//! `snapshot create` ... behave the same mounted or not, and the mount sees
//! their effect at once (the fs layer invalidates the kernel's caches after
//! every command).
//!
//! Protocol: one request per connection. The client writes one JSON object
//! `{"argv": ["volume", "list"], "cwd": "/root"}` and shuts down its write
//! side; the server answers one JSON object
//! `{"stdout": "...", "stderr": "...", "code": 0}` and closes. Relative
//! paths in argv are the handler's business: it gets the client's cwd from
//! [`request_cwd`].
//!
//! Security: the socket is mode 0600 and the server also checks the peer's
//! uid (SO_PEERCRED): only root or the daemon's own user may run commands,
//! because a command can remove volumes.
//!
//! Bounded work: the accept loop runs on one named thread; each command
//! runs on its own named thread, at most [`MAX_CONCURRENT`] at once (more
//! are refused with exit code [`EXIT_BUSY`]); a request larger than
//! [`MAX_REQUEST_BYTES`] or slower than [`REQUEST_TIMEOUT`] is dropped.
//! [`Server::stop`] ends the accept loop, waits for running commands, and
//! removes the socket.
//!
//! Depends on: `volume` (the Engine type) only. Lock order: `Active`'s mutex
//! is a leaf lock.

use crate::volume::Engine;
use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub const SOCKET_NAME: &str = "control.sock";
pub const MAX_CONCURRENT: usize = 8;
pub const MAX_REQUEST_BYTES: u64 = 1 << 20;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Exit code when the daemon refuses a command because too many run (EX_TEMPFAIL).
pub const EXIT_BUSY: i32 = 75;
/// Exit code when the command panicked inside the daemon (EX_SOFTWARE).
pub const EXIT_INTERNAL: i32 = 70;

/// Runs one command line inside the daemon: (stdout, stderr, exit code).
/// `T` is what the command runs against: the daemon's [`Engine`] (tests
/// use a stand-in).
pub type Handler<T = Engine> = Arc<dyn Fn(&T, &[String]) -> (String, String, i32) + Send + Sync>;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Request {
    argv: Vec<String>,
    #[serde(default)]
    cwd: Option<String>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Response {
    stdout: String,
    stderr: String,
    code: i32,
}

thread_local! {
    static CWD: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// The working directory of the client whose command runs on this thread
/// (None outside a control request). Handlers resolve relative paths
/// against it, since the daemon's own cwd is `/`.
pub fn request_cwd() -> Option<PathBuf> {
    CWD.with(|c| c.borrow().clone())
}

pub fn socket_path(store: &Path) -> PathBuf {
    store.join(SOCKET_NAME)
}

/// Forward `argv` to the daemon serving `store`. `Ok(None)` when no daemon
/// listens (no socket, or a stale one, which is then removed).
pub fn call(store: &Path, argv: &[String]) -> io::Result<Option<(String, String, i32)>> {
    let path = socket_path(store);
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            // Nobody accepts on it: a daemon that died without cleaning up.
            // Remove it only if no live daemon is recorded for the store, so
            // a daemon that is just starting keeps its socket.
            if !daemon_alive(store) {
                let _ = std::fs::remove_file(&path);
            }
            return Ok(None);
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("connecting to the strata daemon at {}: {e}", path.display()),
            ));
        }
    };
    let cwd = std::env::current_dir().ok().map(|p| p.to_string_lossy().into_owned());
    let req = serde_json::to_vec(&Request { argv: argv.to_vec(), cwd }).map_err(io::Error::other)?;
    stream.write_all(&req)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf)?;
    let resp: Response = serde_json::from_slice(&buf).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed answer from the strata daemon at {}: {e}", path.display()),
        )
    })?;
    Ok(Some((resp.stdout, resp.stderr, resp.code)))
}

/// Whether `STORE/daemon.pid` names a running process.
pub fn daemon_alive(store: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(store.join(crate::fs::PIDFILE_NAME)) else {
        return false;
    };
    let Some(pid) = text.lines().next().and_then(|l| l.trim().parse::<i32>().ok()) else {
        return false;
    };
    crate::fs::process_alive(pid)
}

/// Commands running now, so stop() can wait for them.
struct Active {
    count: Mutex<usize>,
    idle: Condvar,
}

pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    active: Arc<Active>,
}

impl Server {
    /// Bind `STORE/control.sock` and serve it on a named thread.
    pub fn start<T: Send + Sync + 'static>(store: &Path, engine: Arc<T>, handler: Handler<T>) -> io::Result<Server> {
        let path = socket_path(store);
        match UnixStream::connect(&path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is served by another strata daemon; unmount it first", path.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // A leftover socket nobody serves: ours to replace (we hold the
            // store lock, so no other daemon can be starting).
            Err(_) => std::fs::remove_file(&path)
                .or_else(|e| if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) })?,
        }
        let listener = UnixListener::bind(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("binding the control socket {}: {e}", path.display())))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(Active { count: Mutex::new(0), idle: Condvar::new() });
        let thread = {
            let stop = stop.clone();
            let active = active.clone();
            std::thread::Builder::new()
                .name("strata-control".into())
                .spawn(move || accept_loop(listener, engine, handler, stop, active))?
        };
        Ok(Server { path, stop, thread: Some(thread), active })
    }

    /// Stop accepting, wait for running commands, remove the socket.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("control socket thread panicked");
        }
        let mut n = self.active.count.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            tracing::info!(running = *n, "waiting for control commands to finish before closing the store");
            let (g, _) = self.active.idle.wait_timeout(n, Duration::from_secs(10)).unwrap_or_else(|p| p.into_inner());
            n = g;
        }
        drop(n);
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
        }
    }
}

fn accept_loop<T: Send + Sync + 'static>(
    listener: UnixListener,
    engine: Arc<T>,
    handler: Handler<T>,
    stop: Arc<AtomicBool>,
    active: Arc<Active>,
) {
    while !stop.load(Ordering::Acquire) {
        // Poll with a timeout instead of blocking in accept(), so stop()
        // works even if someone removed the socket file.
        let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, 250) };
        if rc <= 0 {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let admitted = {
            let mut n = active.count.lock().unwrap_or_else(|p| p.into_inner());
            if *n >= MAX_CONCURRENT {
                false
            } else {
                *n += 1;
                true
            }
        };
        if !admitted {
            let _ = respond(
                &stream,
                &Response {
                    stdout: String::new(),
                    stderr: format!("strata daemon is busy: {MAX_CONCURRENT} commands are running; try again\n"),
                    code: EXIT_BUSY,
                },
            );
            continue;
        }
        let engine = engine.clone();
        let handler = handler.clone();
        let active2 = active.clone();
        let spawned = std::thread::Builder::new().name("strata-command".into()).spawn(move || {
            serve_one(stream, &*engine, &handler);
            let mut n = active2.count.lock().unwrap_or_else(|p| p.into_inner());
            *n -= 1;
            active2.idle.notify_all();
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start a thread for a control command");
            let mut n = active.count.lock().unwrap_or_else(|p| p.into_inner());
            *n -= 1;
        }
    }
}

fn serve_one<T>(stream: UnixStream, engine: &T, handler: &Handler<T>) {
    let resp = match read_request(&stream) {
        Ok(req) => {
            let _s = tracing::info_span!("control", argv = ?req.argv).entered();
            CWD.with(|c| *c.borrow_mut() = req.cwd.map(PathBuf::from));
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(engine, &req.argv)));
            CWD.with(|c| *c.borrow_mut() = None);
            match run {
                Ok((stdout, stderr, code)) => Response { stdout, stderr, code },
                Err(_) => {
                    tracing::error!("control command panicked");
                    Response {
                        stdout: String::new(),
                        stderr: "internal error: the command panicked in the strata daemon (see its log)\n".into(),
                        code: EXIT_INTERNAL,
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "bad control request");
            Response { stdout: String::new(), stderr: format!("strata daemon refused the request: {e}\n"), code: 2 }
        }
    };
    if let Err(e) = respond(&stream, &resp) {
        tracing::warn!(error = %e, "could not send a control answer (client gone?)");
    }
}

fn read_request(stream: &UnixStream) -> io::Result<Request> {
    let uid = peer_uid(stream)?;
    // SAFETY: geteuid has no failure mode.
    let me = unsafe { libc::geteuid() };
    if uid != 0 && uid != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("uid {uid} may not control this daemon (root only)"),
        ));
    }
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut buf = Vec::new();
    stream.take(MAX_REQUEST_BYTES + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_REQUEST_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "request larger than 1 MiB"));
    }
    serde_json::from_slice(&buf)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("malformed request: {e}")))
}

fn respond(mut stream: &UnixStream, resp: &Response) -> io::Result<()> {
    let bytes = serde_json::to_vec(resp).map_err(io::Error::other)?;
    stream.write_all(&bytes)?;
    stream.flush()
}

fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip_as_json() {
        let r: Request = serde_json::from_str(r#"{"argv":["volume","list"],"cwd":"/tmp"}"#).unwrap();
        assert_eq!(r.argv, vec!["volume", "list"]);
        assert_eq!(r.cwd.as_deref(), Some("/tmp"));
        let r: Request = serde_json::from_str(r#"{"argv":[]}"#).unwrap();
        assert!(r.cwd.is_none());
        let s = serde_json::to_string(&Response { stdout: "a".into(), stderr: "b".into(), code: 3 }).unwrap();
        assert_eq!(s, r#"{"stdout":"a","stderr":"b","code":3}"#);
    }

    #[test]
    fn call_without_a_daemon_is_none_and_removes_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        assert!(call(dir.path(), &["status".into()]).unwrap().is_none());
        // A socket file nobody listens on.
        let path = socket_path(dir.path());
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        assert!(call(dir.path(), &["status".into()]).unwrap().is_none());
        assert!(!path.exists(), "stale socket should be removed");
    }

    #[test]
    fn a_command_runs_in_the_server_with_the_clients_cwd() {
        let dir = tempfile::tempdir().unwrap();
        let handler: Handler<u32> = Arc::new(|ctx: &u32, argv: &[String]| {
            let cwd = request_cwd().map(|p| p.display().to_string()).unwrap_or_default();
            (format!("{ctx} {} {cwd}", argv.join(" ")), "warn".into(), 4)
        });
        let server = Server::start(dir.path(), Arc::new(7u32), handler).unwrap();
        let mode = std::fs::metadata(socket_path(dir.path())).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (out, err, code) = call(dir.path(), &["volume".into(), "list".into()]).unwrap().unwrap();
        let cwd = std::env::current_dir().unwrap().display().to_string();
        assert_eq!(out, format!("7 volume list {cwd}"));
        assert_eq!((err.as_str(), code), ("warn", 4));
        server.stop();
        assert!(!socket_path(dir.path()).exists());
        assert!(call(dir.path(), &[]).unwrap().is_none());
    }

    #[test]
    fn a_panicking_command_gives_an_error_answer_not_a_dead_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let handler: Handler<()> = Arc::new(|_: &(), argv: &[String]| {
            if argv.is_empty() {
                panic!("boom");
            }
            ("ok".into(), String::new(), 0)
        });
        let server = Server::start(dir.path(), Arc::new(()), handler).unwrap();
        let (_, err, code) = call(dir.path(), &[]).unwrap().unwrap();
        assert_eq!(code, EXIT_INTERNAL);
        assert!(err.contains("panicked"));
        assert_eq!(call(dir.path(), &["x".into()]).unwrap().unwrap().0, "ok");
        server.stop();
    }

    #[test]
    fn garbage_requests_are_refused_with_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let handler: Handler<()> = Arc::new(|_: &(), _: &[String]| ("".into(), "".into(), 0));
        let server = Server::start(dir.path(), Arc::new(()), handler).unwrap();
        let mut s = UnixStream::connect(socket_path(dir.path())).unwrap();
        s.write_all(b"not json").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        let resp: Response = serde_json::from_str(&buf).unwrap();
        assert_eq!(resp.code, 2);
        assert!(resp.stderr.contains("malformed request"));
        server.stop();
    }
}
