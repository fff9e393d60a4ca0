//! The HTTP listener's connections, the `$SYS` publisher, and the scrapes both
//! answer from, on loop 0 (the loop given the HTTP listener).
//!
//! Bounded everywhere: at most [`MAX_CONNS`] connections (more are closed at
//! accept), a request head of at most `MAX_REQUEST_BYTES`, [`READ_TIMEOUT`] for the
//! whole request (a slowloris gets 408 and is closed), one request per connection.
//! Requests for `/metrics`, `/api/stats` and `/healthz` join the one scrape in
//! flight: a `StatsRequest` to every other loop over the mesh, answered with a
//! snapshot; the scrape ends when every loop answered or after [`SCRAPE_TIMEOUT`],
//! whichever comes first, and a loop that did not answer by then fails `/healthz`.
//! The request parsing and rendering are the sans-IO `metrics` module's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::io::{EventLoop, SockId};
use crate::metrics::http::{self as h, Parsed, Response, Route};
use crate::metrics::sys::SysState;
use crate::metrics::{json, prometheus, LoopSnapshot, NodeSnapshot};
use crate::ring::SendOutcome;

use super::{observe, Worker, WorkerMsg};

/// HTTP connections open at once; more are closed as they are accepted.
pub(super) const MAX_CONNS: usize = 64;
/// Time a connection has to send its whole request head, and then to take the answer.
pub(super) const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a scrape waits for every loop: a loop that has not turned in this time
/// is stuck, and `/healthz` says so.
pub(super) const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    Reading,
    /// Waiting for the scrape in flight.
    Waiting {
        route: Route,
        head: bool,
    },
    /// The answer is being sent; then the connection closes.
    Sending,
}

#[derive(Debug)]
struct HttpConn {
    rx: Vec<u8>,
    state: ConnState,
    deadline: Instant,
}

/// A scrape in flight: one slot per loop.
#[derive(Debug)]
struct Scrape {
    id: u64,
    loops: Vec<Option<LoopSnapshot>>,
    unanswered: usize,
    deadline: Instant,
}

/// The `$SYS` publisher: a scrape every interval, its figures published retained.
#[derive(Debug)]
struct SysPublisher {
    interval: Duration,
    next: Instant,
    last: Option<Instant>,
    /// The scrape in flight was started (or joined) for a publish.
    pending: bool,
    state: SysState,
}

/// The observability side of loop 0: HTTP connections, `$SYS`, scrapes.
#[derive(Debug)]
pub(super) struct HttpServer {
    /// Index of the HTTP listener among the loop's listeners (`Completion::Accepted`);
    /// `None`: no HTTP listener (only `$SYS`).
    pub(super) listener: Option<u8>,
    sys: Option<SysPublisher>,
    conns: HashMap<SockId, HttpConn>,
    scrape: Option<Scrape>,
    next_scrape: u64,
    /// When the broker started (uptime).
    started: Instant,
    io_backend: &'static str,
    /// Connections closed at accept because `MAX_CONNS` were open.
    pub(super) refused: u64,
    /// The cluster link's state (NATS connection, counters); `None` on a single node.
    pub(super) cluster: Option<std::sync::Arc<crate::cluster::ClusterStatus>>,
}

impl HttpServer {
    pub(super) fn new(
        listener: Option<u8>,
        sys_interval: Duration,
        started: Instant,
        io_backend: &'static str,
    ) -> HttpServer {
        let sys = (!sys_interval.is_zero()).then(|| SysPublisher {
            interval: sys_interval,
            // The first publish right away: retained status from the start.
            next: started,
            last: None,
            pending: false,
            state: SysState::default(),
        });
        HttpServer {
            listener,
            sys,
            conns: HashMap::new(),
            scrape: None,
            next_scrape: 1,
            cluster: None,
            started,
            io_backend,
            refused: 0,
        }
    }

    /// The scrape in flight: (its number, loops yet to answer).
    #[cfg(test)]
    pub(super) fn scrape_state(&self) -> Option<(u64, usize)> {
        self.scrape.as_ref().map(|s| (s.id, s.unanswered))
    }

    pub(super) fn owns(&self, sock: SockId) -> bool {
        self.conns.contains_key(&sock)
    }

    /// The earliest deadline of a connection or the scrape, for the loop's timeout.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let conns = self.conns.values().map(|c| c.deadline).min();
        let scrape = self.scrape.as_ref().map(|s| s.deadline);
        let sys = self.sys.as_ref().map(|s| s.next);
        conns.into_iter().chain(scrape).chain(sys).min()
    }

    pub(super) fn accept<L: EventLoop>(&mut self, io: &mut L, sock: SockId, now: Instant) {
        if self.conns.len() >= MAX_CONNS {
            self.refused += 1;
            io.close(sock);
            return;
        }
        self.conns.insert(
            sock,
            HttpConn {
                rx: Vec::new(),
                state: ConnState::Reading,
                deadline: now + READ_TIMEOUT,
            },
        );
        io.start_recv(sock);
    }

    /// Bytes from `sock`. A request that needs a scrape waits for `http_turn`.
    pub(super) fn on_recv<L: EventLoop>(&mut self, io: &mut L, sock: SockId, data: &[u8]) {
        let Some(c) = self.conns.get_mut(&sock) else {
            return;
        };
        if c.state != ConnState::Reading {
            // One request per connection: what follows it is ignored.
            return;
        }
        let room = h::MAX_REQUEST_BYTES.saturating_sub(c.rx.len());
        c.rx.extend_from_slice(&data[..data.len().min(room)]);
        match h::parse(&c.rx) {
            Parsed::Partial => {}
            Parsed::Error(r) => Self::answer(io, sock, c, &r, false),
            Parsed::Request { route, head } if route.needs_scrape() => {
                c.rx = Vec::new();
                c.state = ConnState::Waiting { route, head };
            }
            Parsed::Request { route, head } => {
                let r = match route {
                    Route::Status => Response::new(200, "text/html; charset=utf-8", h::STATUS_PAGE),
                    _ => Response::new(200, "text/plain; charset=utf-8", "ready\n"),
                };
                Self::answer(io, sock, c, &r, head);
            }
        }
    }

    fn answer<L: EventLoop>(io: &mut L, sock: SockId, c: &mut HttpConn, r: &Response, head: bool) {
        c.rx = Vec::new();
        c.state = ConnState::Sending;
        io.send(sock, r.to_bytes(head).into());
    }

    /// The one send finished (or failed): the connection is done.
    pub(super) fn on_send_done<L: EventLoop>(&mut self, io: &mut L, sock: SockId) {
        if self.conns.remove(&sock).is_some() {
            io.close(sock);
        }
    }

    /// The peer closed or the receive failed.
    pub(super) fn on_recv_end<L: EventLoop>(&mut self, io: &mut L, sock: SockId) {
        match self.conns.get(&sock).map(|c| c.state) {
            // Half-closed after its request: the answer still goes out.
            Some(ConnState::Sending) | Some(ConnState::Waiting { .. }) => {}
            Some(ConnState::Reading) => {
                self.conns.remove(&sock);
                io.close(sock);
            }
            None => {}
        }
    }

    /// Connections past their deadline: a request still being read gets 408, an
    /// answer not taken in time is dropped with its connection.
    pub(super) fn expire<L: EventLoop>(&mut self, io: &mut L, now: Instant) {
        let mut gone = Vec::new();
        for (&sock, c) in self.conns.iter_mut() {
            if c.deadline > now {
                continue;
            }
            match c.state {
                ConnState::Reading => {
                    c.deadline = now + READ_TIMEOUT;
                    Self::answer(io, sock, c, &h::timeout_response(), false);
                }
                ConnState::Sending => gone.push(sock),
                // Bounded by the scrape's own deadline.
                ConnState::Waiting { .. } => {}
            }
        }
        for sock in gone {
            self.conns.remove(&sock);
            io.close(sock);
        }
    }

    fn waiting(&self) -> bool {
        self.conns
            .values()
            .any(|c| matches!(c.state, ConnState::Waiting { .. }))
    }

    fn context(&self, now: Instant) -> prometheus::Context {
        prometheus::Context {
            version: env!("CARGO_PKG_VERSION"),
            io_backend: self.io_backend,
            process: observe::read_process_info(),
            uptime_seconds: now.saturating_duration_since(self.started).as_secs_f64(),
            http_refused: self.refused,
        }
    }

    /// A `$SYS` publish is due and not yet part of a scrape.
    fn sys_due(&self, now: Instant) -> bool {
        self.sys
            .as_ref()
            .is_some_and(|s| !s.pending && now >= s.next)
    }

    /// Answers every waiting request from a finished scrape.
    fn finish<L: EventLoop>(
        &mut self,
        io: &mut L,
        node: &NodeSnapshot,
        ctx: &prometheus::Context,
        now: Instant,
    ) {
        let ctx = ctx.clone();
        let mut metrics: Option<Bytes> = None;
        let mut stats: Option<Bytes> = None;
        let unhealthy = self.cluster.as_ref().and_then(|c| c.unhealthy());
        for (&sock, c) in self.conns.iter_mut() {
            let ConnState::Waiting { route, head } = c.state else {
                continue;
            };
            let r = match route {
                Route::Metrics => Response::new(
                    200,
                    prometheus::CONTENT_TYPE,
                    metrics
                        .get_or_insert_with(|| {
                            let mut text = prometheus::render(node, &ctx);
                            if let Some(c) = &self.cluster {
                                text.push_str(&c.prometheus_text());
                            }
                            text.into()
                        })
                        .clone(),
                ),
                Route::ApiStats => Response::new(
                    200,
                    "application/json",
                    stats
                        .get_or_insert_with(|| json::render(node, &ctx).into())
                        .clone(),
                ),
                // A node cut from NATS (or misconfigured, or still loading) serves
                // its own clients, but it is not a healthy member of the cluster: a
                // load balancer should know, and why (`ClusterStatus::unhealthy`).
                _ if unhealthy.is_some() => Response::new(
                    503,
                    "text/plain; charset=utf-8",
                    format!("{}\n", unhealthy.as_deref().unwrap_or_default()),
                ),
                _ if node.missing_loops.is_empty() => {
                    Response::new(200, "text/plain; charset=utf-8", "ok\n")
                }
                _ => Response::new(
                    503,
                    "text/plain; charset=utf-8",
                    format!("loops not answering: {:?}\n", node.missing_loops),
                ),
            };
            c.deadline = now + READ_TIMEOUT;
            Self::answer(io, sock, c, &r, head);
        }
    }
}

impl<L: EventLoop> Worker<L> {
    /// The HTTP side's turn: starts a scrape for waiting requests, finishes one whose
    /// loops all answered or whose time ran out, expires connections.
    pub(super) fn http_turn(&mut self, now: Instant) {
        let Some(http) = self.http.as_mut() else {
            return;
        };
        http.expire(&mut self.io, now);
        if http.sys_due(now) {
            if let Some(s) = http.sys.as_mut() {
                s.pending = true;
            }
        }
        let sys_pending = http.sys.as_ref().is_some_and(|s| s.pending);
        if http.scrape.is_none() && (sys_pending || http.waiting()) {
            self.start_scrape(now);
        }
        let Some(http) = self.http.as_mut() else {
            return;
        };
        let done = http
            .scrape
            .as_ref()
            .is_some_and(|s| s.unanswered == 0 || now >= s.deadline);
        if done {
            let s = http.scrape.take().expect("checked above");
            let mut node = NodeSnapshot::default();
            for (shard, l) in s.loops.into_iter().enumerate() {
                match l {
                    Some(l) => node.loops.push(l),
                    None => node.missing_loops.push(shard),
                }
            }
            let ctx = http.context(now);
            http.finish(&mut self.io, &node, &ctx, now);
            let Some(sys) = http.sys.as_mut().filter(|s| s.pending) else {
                return;
            };
            sys.pending = false;
            let interval_s = sys
                .last
                .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
            sys.last = Some(now);
            // Fixed steps from the start, so a slow scrape does not drift the schedule.
            while sys.next <= now {
                sys.next += sys.interval;
            }
            for (topic, payload) in sys.state.update(&node, &ctx, interval_s) {
                self.shard.publish_sys(topic.into(), payload.into(), now);
            }
        }
    }

    pub(super) fn start_scrape(&mut self, now: Instant) {
        let shards = self.mesh.shard_count();
        let own = self.snapshot(now);
        let Some(http) = self.http.as_mut() else {
            return;
        };
        let id = http.next_scrape;
        http.next_scrape += 1;
        let mut loops = vec![None; shards];
        loops[self.id] = Some(own);
        let mut unanswered = 0;
        for to in (0..shards).filter(|&to| to != self.id) {
            match self.mesh.send(to, WorkerMsg::StatsRequest { scrape: id }) {
                Ok(SendOutcome::QueuedWake) => {
                    self.wake.insert(to);
                    unanswered += 1;
                }
                Ok(_) => unanswered += 1,
                // Not even the overflow list had room: that loop is not answering.
                Err(_) => {}
            }
        }
        http.scrape = Some(Scrape {
            id,
            loops,
            unanswered,
            deadline: now + SCRAPE_TIMEOUT,
        });
    }

    /// A peer's answer to our scrape `scrape`; a late answer to an older one is dropped.
    pub(super) fn on_stats_reply(&mut self, from: usize, scrape: u64, snapshot: LoopSnapshot) {
        let Some(s) = self.http.as_mut().and_then(|h| h.scrape.as_mut()) else {
            return;
        };
        if s.id != scrape {
            return;
        }
        if let Some(slot) = s.loops.get_mut(from).filter(|slot| slot.is_none()) {
            *slot = Some(snapshot);
            s.unanswered = s.unanswered.saturating_sub(1);
        }
    }

    /// Answers the scrapes other loops asked for during this turn's mesh drain.
    pub(super) fn answer_stats_requests(&mut self, now: Instant) {
        while let Some((to, scrape)) = self.stats_requests.pop() {
            let snapshot = Box::new(self.snapshot(now));
            match self
                .mesh
                .send(to, WorkerMsg::StatsReply { scrape, snapshot })
            {
                Ok(SendOutcome::QueuedWake) => self.wake.insert(to),
                Ok(_) => {}
                // The asker counts us missing after its timeout.
                Err(_) => tracing::debug!(shard = self.id, to, "scrape answer dropped: mesh full"),
            }
        }
    }
}
