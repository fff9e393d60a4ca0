//! The `[[bridge]]`s this loop owns, and the IO they need: each bridge's socket to
//! its remote broker (an outbound connect through the loop's own io, so the loop
//! never blocks) and its virtual connection into this loop's shard (see
//! `bridge::link`). A bridge is owned by the loop that owns its local session's
//! client id, so its CONNECT stays on this shard and no hand-off is involved.
//!
//! Each turn, after the completions and the mesh: the shard's output on each
//! virtual connection goes to the bridge (messages for the remote, acks back), the
//! remote's messages go into the shard as PUBLISHes, timers run, and the bridge's
//! transport actions and bytes go to the io.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bridge::link::{LinkError, LocalLink};
use crate::bridge::{BridgeClient, Transport};
use crate::config::Config;
use crate::io::{Completion, EventLoop, SockId};
use crate::metrics::BridgeSnapshot;
use crate::protocol::QoS;
use crate::shard::{ConnId, Shard};
use crate::transport::client::TlsClient;

/// After the shard closed a bridge's virtual connection (a takeover of its client id,
/// an ACL refusal): wait this long before opening it again, so two claimants of one
/// id do not spin.
const REOPEN_DELAY: Duration = Duration::from_secs(1);

/// The local session's client id of bridge `name`.
pub fn local_client_id(name: &str) -> String {
    format!("$bridge/{name}")
}

struct Link {
    client: BridgeClient,
    local: LocalLink,
    local_id: String,
    addrs: Vec<SocketAddr>,
    next_addr: usize,
    /// Virtual connection into the shard.
    conn: Option<ConnId>,
    /// With a data directory: the local session is persistent and holds each
    /// message until the remote acknowledged it (`bridge::link`), so the held queue
    /// survives a restart.
    persistent: bool,
    reopen_at: Instant,
    next_ping: Option<Instant>,
    sock: Option<SockId>,
    /// Token of the connect in flight (the bridge's index and an attempt number, so
    /// an abandoned connect that completes late is recognised and closed).
    connecting: Option<u64>,
    attempt: u32,
    sending: bool,
    close_after_send: bool,
    /// Remote messages dropped because the virtual connection was down.
    local_dropped: u64,
    /// `mqtts://`: the client config (the CA file's roots) and the name to verify.
    tls: Option<(Arc<rustls::ClientConfig>, String)>,
    /// The TLS state of the current connection.
    session: Option<Box<TlsClient>>,
}

/// The bridges of one loop.
pub(super) struct Bridges {
    links: Vec<Link>,
    /// Sockets closed and not yet `Released`.
    closing: Vec<SockId>,
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

impl Bridges {
    /// The bridges loop `loop_id` of `loops` owns. Host names are resolved here,
    /// once, before the loop runs.
    pub(super) fn new(
        cfg: &Config,
        loop_id: usize,
        loops: usize,
        now: Instant,
    ) -> io::Result<Option<Bridges>> {
        let mut links = Vec::new();
        for b in &cfg.bridge {
            let local_id = local_client_id(&b.name);
            let owner = crate::shard::owner_shard(
                cfg.placement_seed.unwrap_or(0),
                local_id.as_bytes(),
                loops,
            );
            if owner != loop_id {
                continue;
            }
            let addrs: Vec<SocketAddr> = (b.host.as_str(), b.port)
                .to_socket_addrs()
                .map_err(|e| {
                    io::Error::other(format!(
                        "bridge[{}].address: cannot resolve {}:{}: {e}",
                        b.name, b.host, b.port
                    ))
                })?
                .collect();
            if addrs.is_empty() {
                return Err(io::Error::other(format!(
                    "bridge[{}].address: {}:{} has no address",
                    b.name, b.host, b.port
                )));
            }
            let tls = match &b.tls {
                Some(t) => Some((load_tls(&b.name, t)?, t.server_name.clone())),
                None => None,
            };
            tracing::info!(shard = loop_id, bridge = %b.name, remote = %addrs[0], "bridge owned by this loop");
            links.push(Link {
                client: BridgeClient::new(b.clone(), seed(), now),
                local: LocalLink::new(),
                local_id,
                addrs,
                next_addr: 0,
                conn: None,
                persistent: cfg.data_dir.is_some(),
                reopen_at: now,
                next_ping: None,
                sock: None,
                connecting: None,
                attempt: 0,
                sending: false,
                close_after_send: false,
                local_dropped: 0,
                tls,
                session: None,
            });
        }
        Ok((!links.is_empty()).then_some(Bridges {
            links,
            closing: Vec::new(),
        }))
    }

    /// Each bridge's figures, for a scrape.
    pub(super) fn snapshot(&self) -> Vec<BridgeSnapshot> {
        self.links
            .iter()
            .map(|l| BridgeSnapshot {
                name: l.client.config().name.clone(),
                up: l.client.is_up(),
                held: l.client.held() as u64,
                local_dropped: l.local_dropped,
                stats: l.client.stats(),
            })
            .collect()
    }

    /// Takes the completions of the bridges' sockets. `false`: not a bridge's.
    pub(super) fn on_completion<L: EventLoop>(
        &mut self,
        io: &mut L,
        c: &Completion,
        now: Instant,
    ) -> bool {
        match *c {
            Completion::Connected { token, result } => {
                let link = self
                    .links
                    .get_mut((token >> 32) as usize)
                    .filter(|l| l.connecting == Some(token));
                let Some(link) = link else {
                    // Abandoned (connect timeout): nobody wants the socket.
                    if let Ok(sock) = result {
                        io.close(sock);
                        self.closing.push(sock);
                    }
                    return true;
                };
                link.connecting = None;
                match result {
                    Ok(sock) => {
                        link.sock = Some(sock);
                        io.start_recv(sock);
                        link.session = None;
                        if let Some((config, name)) = &link.tls {
                            match TlsClient::new(config.clone(), name) {
                                Ok(t) => link.session = Some(Box::new(t)),
                                Err(e) => {
                                    tracing::warn!(bridge = %link.client.config().name, "tls: {e}");
                                    Self::close_sock(link, io, &mut self.closing);
                                    link.client.on_closed(now);
                                    return true;
                                }
                            }
                        }
                        // With TLS, rustls holds the CONNECT until the handshake ends.
                        link.client.on_connected(now);
                        Self::flush(link, io, &mut self.closing);
                    }
                    Err(errno) => {
                        tracing::warn!(bridge = %link.client.config().name, errno, "connect to the remote failed");
                        link.client.on_closed(now);
                    }
                }
                true
            }
            Completion::Recv { sock, buf } => {
                let Some(link) = self.links.iter_mut().find(|l| l.sock == Some(sock)) else {
                    return self.closing.contains(&sock) && {
                        io.recycle(buf);
                        true
                    };
                };
                match link.session.as_mut() {
                    None => link.client.on_bytes(io.buf(buf), now),
                    Some(session) => {
                        let mut plain = Vec::new();
                        let r = session.on_recv(io.buf(buf), &mut plain);
                        link.client.on_bytes(&plain, now);
                        if let Err(e) = r {
                            tracing::warn!(bridge = %link.client.config().name, "remote closed: {e}");
                            io.recycle(buf);
                            Self::close_sock(link, io, &mut self.closing);
                            link.client.on_closed(now);
                            return true;
                        }
                    }
                }
                io.recycle(buf);
                // Handshake flights and acks go out at once.
                Self::flush(link, io, &mut self.closing);
                true
            }
            Completion::RecvEnd { sock, .. } => {
                let Some(link) = self.links.iter_mut().find(|l| l.sock == Some(sock)) else {
                    return self.closing.contains(&sock);
                };
                tracing::info!(bridge = %link.client.config().name, "remote closed the connection");
                Self::close_sock(link, io, &mut self.closing);
                link.client.on_closed(now);
                true
            }
            Completion::SendDone { sock, errno } => {
                let Some(link) = self.links.iter_mut().find(|l| l.sock == Some(sock)) else {
                    return self.closing.contains(&sock);
                };
                link.sending = false;
                if errno != 0 {
                    Self::close_sock(link, io, &mut self.closing);
                    link.client.on_closed(now);
                } else {
                    link.client.on_sent(now);
                    Self::flush(link, io, &mut self.closing);
                }
                true
            }
            Completion::Released { sock } => match self.closing.iter().position(|s| *s == sock) {
                Some(i) => {
                    self.closing.swap_remove(i);
                    true
                }
                None => false,
            },
            _ => false,
        }
    }

    /// The shard closed `conn`: if it is a bridge's virtual connection, release it
    /// and open it again after `REOPEN_DELAY`. `false`: not a bridge's.
    pub(super) fn on_shard_close(&mut self, shard: &mut Shard, conn: ConnId, now: Instant) -> bool {
        let Some(link) = self.links.iter_mut().find(|l| l.conn == Some(conn)) else {
            return false;
        };
        tracing::warn!(bridge = %link.client.config().name, "the broker closed the bridge's local session");
        shard.release(conn);
        link.conn = None;
        link.local.on_closed();
        link.reopen_at = now + REOPEN_DELAY;
        true
    }

    /// One turn of every bridge; see the module comment.
    pub(super) fn turn<L: EventLoop>(
        &mut self,
        io: &mut L,
        shard: &mut Shard,
        now: Instant,
        shutting_down: bool,
    ) {
        for (i, link) in self.links.iter_mut().enumerate() {
            if shutting_down {
                // The shard ends the virtual connection itself; say goodbye remotely.
                if let Some(sock) = link.sock {
                    if !link.sending {
                        io.close(sock);
                        self.closing.push(sock);
                        link.sock = None;
                    }
                }
                continue;
            }
            if link.conn.is_none() && now >= link.reopen_at {
                let conn = shard.accept(SocketAddr::from(([127, 0, 0, 1], 0)), now);
                // Stands for the username (no password asked); the ACL follows it.
                shard.set_cert_username(conn, link.local_id.clone());
                let subs = link.client.local_subscriptions();
                let open = link.local.open(&link.local_id, &subs, link.persistent);
                link.conn = Some(conn);
                link.next_ping = None;
                shard.on_read(conn, &open, now);
            }
            Self::pump_shard(link, shard, now);
            while let Some(m) = link.client.poll_local() {
                match link.conn.filter(|_| link.local.can_publish()) {
                    Some(conn) => {
                        let bytes = link.local.publish(m);
                        shard.on_read(conn, &bytes, now);
                        Self::pump_shard(link, shard, now);
                    }
                    None if m.qos == QoS::AtMostOnce => link.local_dropped += 1,
                    // Held (the remote's ack waits for the local one) until the
                    // session is back or its window has room.
                    None => {
                        link.client.unpoll_local(m);
                        break;
                    }
                }
            }
            // The local broker has these: acknowledge them to the remote.
            while let Some(token) = link.local.poll_remote_done() {
                link.client.local_acked(token, now);
            }
            link.client.read_on(now);
            // Messages the remote acknowledged (or the bridge dropped): their
            // local acks, so the session lets go of them.
            while let Some(token) = link.client.poll_local_done() {
                link.local.ack(token);
            }
            if let (Some(conn), Some(acks)) = (link.conn, link.local.take()) {
                shard.on_read(conn, &acks, now);
                Self::pump_shard(link, shard, now);
            }
            if let (Some(conn), true) = (link.conn, link.local.is_up()) {
                let every = u64::from(link.local.ping_interval_s());
                if every > 0 {
                    let due = *link
                        .next_ping
                        .get_or_insert(now + Duration::from_secs(every));
                    if now >= due {
                        let ping = link.local.ping();
                        shard.on_read(conn, &ping, now);
                        link.next_ping = Some(now + Duration::from_secs(every));
                    }
                }
            }
            if link.client.next_timeout().is_some_and(|t| now >= t) {
                link.client.on_timeout(now);
            }
            while let Some(t) = link.client.poll_transport() {
                match t {
                    Transport::Connect => {
                        // A socket still sending its goodbye is closed now.
                        Self::close_sock(link, io, &mut self.closing);
                        link.attempt = link.attempt.wrapping_add(1);
                        let token = ((i as u64) << 32) | u64::from(link.attempt);
                        let addr = link.addrs[link.next_addr % link.addrs.len()];
                        link.next_addr = link.next_addr.wrapping_add(1);
                        link.connecting = Some(token);
                        io.connect(addr, token);
                    }
                    Transport::Close => {
                        // A connect in flight is abandoned (its late socket is closed).
                        link.connecting = None;
                        if let Some(sock) = link.sock {
                            // The last bytes (DISCONNECT) go out before the close.
                            link.close_after_send = true;
                            if !link.sending {
                                if let Some(data) = Self::next_tx(link) {
                                    link.sending = true;
                                    io.send(sock, data.into());
                                }
                            }
                        }
                        link.client.on_closed(now);
                    }
                }
            }
            Self::flush(link, io, &mut self.closing);
        }
    }

    /// When `turn` must run next.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.links
            .iter()
            .flat_map(|l| {
                [
                    l.client.next_timeout(),
                    l.conn.is_none().then_some(l.reopen_at),
                    l.next_ping,
                ]
            })
            .flatten()
            .min()
    }

    /// The shard's output on the virtual connection: deliveries to the bridge,
    /// answers back into the shard, until nothing moves.
    fn pump_shard(link: &mut Link, shard: &mut Shard, now: Instant) {
        let Some(conn) = link.conn else {
            return;
        };
        while let Some(data) = shard.take_tx(conn) {
            let client = &mut link.client;
            let r = link.local.on_shard_bytes(&data, |d| {
                client.forward(&d.topic, d.qos, d.retain, d.payload, d.token, now)
            });
            match r {
                Ok(Some(answer)) => shard.on_read(conn, &answer, now),
                Ok(None) => {}
                Err(e) => {
                    let name = &link.client.config().name;
                    match e {
                        LinkError::Refused(code) => {
                            tracing::error!(bridge = %name, ?code, "the broker refused the bridge's local session")
                        }
                        LinkError::Malformed(m) => {
                            tracing::error!(bridge = %name, "bad packet on the bridge's local session: {m}")
                        }
                    }
                    shard.on_closed(conn, now);
                    shard.release(conn);
                    link.conn = None;
                    link.local.on_closed();
                    link.reopen_at = now + REOPEN_DELAY;
                    return;
                }
            }
        }
    }

    /// One send in flight: everything the client encoded, then a requested close.
    fn flush<L: EventLoop>(link: &mut Link, io: &mut L, closing: &mut Vec<SockId>) {
        let Some(sock) = link.sock else {
            return;
        };
        if link.sending {
            return;
        }
        if let Some(data) = Self::next_tx(link) {
            link.sending = true;
            io.send(sock, data.into());
        } else if link.close_after_send {
            Self::close_sock(link, io, closing);
        }
    }

    /// The client's bytes, through the TLS session when there is one.
    fn next_tx(link: &mut Link) -> Option<bytes::Bytes> {
        let Some(session) = link.session.as_mut() else {
            return link.client.poll_transmit();
        };
        if let Some(plain) = link.client.poll_transmit() {
            session.encrypt(&plain);
        }
        session.take_tls()
    }

    fn close_sock<L: EventLoop>(link: &mut Link, io: &mut L, closing: &mut Vec<SockId>) {
        if let Some(sock) = link.sock.take() {
            io.close(sock);
            closing.push(sock);
        }
        link.sending = false;
        link.close_after_send = false;
        link.session = None;
    }
}

/// The client config of an `mqtts://` bridge: the remote is verified against the CAs
/// in `ca_file`, and the client certificate, if any, is presented when the remote
/// asks. Errors name the bridge, the key and the file.
pub fn load_tls(
    bridge: &str,
    tls: &crate::bridge::BridgeTls,
) -> io::Result<Arc<rustls::ClientConfig>> {
    use crate::transport::client::{client_config, client_config_with, ClientCertError};
    let named = |key: &str, file: &str, e: &dyn std::fmt::Display| {
        io::Error::other(format!("bridge[{bridge}].{key}: {file}: {e}"))
    };
    let ca_file = &tls.ca_file;
    let ca = std::fs::read(ca_file).map_err(|e| named("tls_ca_file", ca_file, &e))?;
    let config = client_config(&ca).map_err(|e| named("tls_ca_file", ca_file, &e))?;
    let Some((cert_file, key_file)) = &tls.client_cert else {
        return Ok(config);
    };
    let chain = std::fs::read(cert_file).map_err(|e| named("tls_cert_file", cert_file, &e))?;
    let key = std::fs::read(key_file).map_err(|e| named("tls_key_file", key_file, &e))?;
    let cert = crate::transport::client::ClientCertPem {
        chain: &chain,
        key: &key,
    };
    client_config_with(&ca, Some(cert)).map_err(|e| match e {
        ClientCertError::Chain(e) => named("tls_cert_file", cert_file, &e),
        ClientCertError::Key(e) => named("tls_key_file", key_file, &e),
    })
}
