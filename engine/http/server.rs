//! The HTTP server's accept loop, written by hand (instead of `axum::serve`) so that a
//! hostile or broken client cannot hold the process's resources:
//!
//! - at most `http.max_connections` connections are served at once; one accepted beyond
//!   that is answered `503` (best effort, never waiting) and closed at once, so idle sockets
//!   can never take every file descriptor of the process (relay sockets need them too);
//! - a client must send a whole request head within `http.header_timeout_ms` (hyper's
//!   header-read timer, which also bounds the keep-alive wait between two requests);
//! - a connection that moves no byte for `http.idle_timeout_ms` while no request is being
//!   handled (a client that stops reading its answer) is closed by a watchdog;
//! - a request is answered within `http.request_timeout_ms` (else `503`);
//! - accept errors (EMFILE when descriptors run out) are counted and waited out briefly
//!   rather than spun on.

use super::api::ApiError;
use crate::config;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// The share of the process's file-descriptor limit HTTP connections may take at most; the
/// rest is kept for relay sockets, PostgreSQL connections and files.
pub const FD_SHARE_DIVISOR: u64 = 4;

/// Pause after an accept error (EMFILE, ENFILE, ENOBUFS…) before the next accept, so a
/// descriptor shortage is not spun on.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Longest [`serve`] waits, after a stop, for connections still serving a request.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// What a shed connection is told before it is closed (written only if the socket takes it
/// at once).
const SHED_ANSWER: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// The connection bounds of the server, from `[http]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to send a whole request head (and the keep-alive wait).
    pub header_timeout: Duration,
    /// Time without a byte moved while no request is handled.
    pub idle_timeout: Duration,
    /// Time from a request's head to its answer.
    pub request_timeout: Duration,
}

impl Limits {
    /// The bounds of `http`, with `max_connections` clamped (with a warning) to
    /// 1/[`FD_SHARE_DIVISOR`] of `nofile`, the process's file-descriptor limit, when known.
    pub fn new(http: &config::Http, nofile: Option<u64>) -> Limits {
        let mut max_connections = http.max_connections.max(1);
        if let Some(n) = nofile {
            let share = usize::try_from(n / FD_SHARE_DIVISOR)
                .unwrap_or(usize::MAX)
                .max(1);
            if max_connections > share {
                tracing::warn!(
                    configured = max_connections,
                    clamped = share,
                    nofile = n,
                    "http.max_connections exceeds a quarter of the file-descriptor limit: clamped, so relay sockets keep room"
                );
                max_connections = share;
            }
        }
        Limits {
            max_connections,
            header_timeout: http.header_timeout_ms.get().max(Duration::from_millis(1)),
            idle_timeout: http.idle_timeout_ms.get().max(Duration::from_millis(1)),
            request_timeout: http.request_timeout_ms.get().max(Duration::from_millis(1)),
        }
    }
}

/// The process's soft file-descriptor limit (RLIMIT_NOFILE), if it can be read and is finite.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every platform
pub fn nofile_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur as u64)
}

/// Connection counters of the server, shown in `/metrics`.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Connections being served now.
    pub open: AtomicU64,
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections closed at accept because `max_connections` were open.
    pub shed: AtomicU64,
    /// Accept calls that failed (EMFILE when file descriptors ran out, …).
    pub accept_errors: AtomicU64,
    /// Connections closed because they sent no complete request head in time, or broke
    /// the protocol.
    pub header_timeouts: AtomicU64,
    /// Connections closed by the idle watchdog.
    pub idle_closed: AtomicU64,
    /// Requests answered 503 because they ran past `request_timeout`.
    pub request_timeouts: AtomicU64,
}

/// A connection's place in `http.max_connections`, held while anything serves it: the HTTP
/// connection task, and a WebSocket upgraded from it (the relay endpoint), which outlives the
/// request that opened it. Every request carries a clone in its extensions.
#[derive(Clone)]
pub struct ConnSlot {
    _inner: Arc<SlotInner>,
}

struct SlotInner {
    _permit: OwnedSemaphorePermit,
    stats: Arc<ConnStats>,
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Relaxed);
    }
}

/// When a connection last moved a byte, and whether a request is being handled on it.
struct Activity {
    base: Instant,
    last_io_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            base: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_io_ms.store(ms, Relaxed);
    }

    /// True when nothing moved for `limit` and no handler runs.
    fn idle_past(&self, limit: Duration) -> bool {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        let idle = now.saturating_sub(self.last_io_ms.load(Relaxed));
        self.in_flight.load(Relaxed) == 0 && Duration::from_millis(idle) >= limit
    }
}

/// Marks a request in flight until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: Arc<Activity>) -> InFlight {
        a.in_flight.fetch_add(1, Relaxed);
        InFlight(a)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
        self.0.touch();
    }
}

/// A TCP stream that records when it last moved a byte, for the idle watchdog.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `app` on `listener` within `limits` until `stop` turns true; then stops
/// accepting, lets requests in flight finish (at most [`DRAIN_GRACE`]) and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stats: Arc<ConnStats>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut last_error_log: Option<Instant> = None;
    // The owner dropped the sender without stopping: serve on, no longer watching it.
    let mut detached = false;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            closed = async { stop.wait_for(|s| *s).await.is_err() }, if !detached => {
                if closed {
                    detached = true;
                    continue;
                }
                break;
            }
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                stats.accept_errors.fetch_add(1, Relaxed);
                // One line per second at most: a descriptor shortage repeats per accept.
                if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    last_error_log = Some(Instant::now());
                    tracing::warn!(error = %e, open = stats.open.load(Relaxed), "HTTP accept failed");
                }
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            stats.shed.fetch_add(1, Relaxed);
            // Never wait on a client we refuse: write what fits now, then close.
            let _ = stream.try_write(SHED_ANSWER);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        stats.accepted.fetch_add(1, Relaxed);
        stats.open.fetch_add(1, Relaxed);
        let slot = ConnSlot {
            _inner: Arc::new(SlotInner {
                _permit: permit,
                stats: stats.clone(),
            }),
        };
        let (app, stats, stop) = (app.clone(), stats.clone(), stop.clone());
        tokio::spawn(async move {
            serve_connection(stream, app, limits, &stats, stop, slot).await;
        });
    }
    // Every permit back means every connection task (and upgraded WebSocket) ended.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN_GRACE, slots.acquire_many(all)).await;
}

/// One connection: HTTP/1.1 with the header timer, the request deadline and the idle
/// watchdog; a stop signal asks it to finish the request in flight and close. A WebSocket
/// upgrade (the relay endpoint) ends this task: the socket is then served by its own task,
/// with its own idle timeout, holding `slot`.
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    limits: Limits,
    stats: &Arc<ConnStats>,
    mut stop: watch::Receiver<bool>,
    slot: ConnSlot,
) {
    let activity = Arc::new(Activity::new());
    activity.touch();
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let inner = TowerToHyperService::new(app);
    let (act, st) = (activity.clone(), stats.clone());
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(slot.clone());
        let guard = InFlight::new(act.clone());
        let answer = hyper::service::Service::call(&inner, req);
        let st = st.clone();
        async move {
            let _guard = guard;
            match tokio::time::timeout(limits.request_timeout, answer).await {
                Ok(r) => r,
                Err(_) => {
                    st.request_timeouts.fetch_add(1, Relaxed);
                    Ok(request_timeout_answer(limits.request_timeout))
                }
            }
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut conn = pin!(builder.serve_connection(io, service).with_upgrades());
    let tick = (limits.idle_timeout / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut watchdog = tokio::time::interval(tick);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    // Header timeouts and malformed heads end here; a client that went away
                    // mid-answer too. Only the first two are the server's doing.
                    if e.is_timeout() || e.is_parse() || e.is_parse_too_large() {
                        stats.header_timeouts.fetch_add(1, Relaxed);
                    }
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
                break;
            }
            closed = async { stop.wait_for(|s| *s).await.is_err() }, if !stopping => {
                stopping = true;
                if !closed {
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = watchdog.tick() => {
                if activity.idle_past(limits.idle_timeout) {
                    stats.idle_closed.fetch_add(1, Relaxed);
                    tracing::debug!("HTTP connection idle past http.idle_timeout_ms: closed");
                    break;
                }
            }
        }
    }
}

/// The 503 of a request that ran past `http.request_timeout_ms`.
fn request_timeout_answer(limit: Duration) -> Response {
    ApiError::unavailable(format!(
        "the request ran past the server's {} ms limit (http.request_timeout_ms)",
        limit.as_millis()
    ))
    .into_response()
}

/// Raises the process's soft RLIMIT_NOFILE to its hard limit, so many relay sockets and
/// HTTP connections fit; returns (soft before, soft after, hard). Errors leave it as is.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every platform
pub fn raise_nofile_limit() -> io::Result<(u64, u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = lim.rlim_cur as u64;
    let hard = lim.rlim_max as u64;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let after = nofile_limit().unwrap_or(hard);
    Ok((before, after, hard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_connections_to_a_share_of_descriptors() {
        let http = config::Http {
            max_connections: 10_000,
            ..config::Http::default()
        };
        assert_eq!(Limits::new(&http, Some(1024)).max_connections, 256);
        assert_eq!(Limits::new(&http, None).max_connections, 10_000);
        let small = config::Http {
            max_connections: 100,
            ..config::Http::default()
        };
        assert_eq!(Limits::new(&small, Some(1024)).max_connections, 100);
    }

    #[test]
    fn idle_needs_no_request_in_flight() {
        let a = Arc::new(Activity::new());
        assert!(a.idle_past(Duration::ZERO));
        let g = InFlight::new(a.clone());
        assert!(!a.idle_past(Duration::ZERO));
        drop(g);
        assert!(a.idle_past(Duration::ZERO));
        assert!(!a.idle_past(Duration::from_secs(3600)));
    }
}
