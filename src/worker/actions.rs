//! The worker's output side: draining the shard's actions (flushes, closes,
//! hand-offs, messages for other shards) into IO submissions and mesh sends, a
//! bounded batch per turn, and handing the shard's control messages to the mesh.
//! Split out of `worker/mod.rs`, unchanged; the loop that calls it lives there.

use super::*;

impl<L: EventLoop> Worker<L> {
    /// Drains the shard's actions. Returns true when the batch bound stopped it.
    pub(super) fn drain_actions(&mut self, now: Instant) -> bool {
        for _ in 0..ACTION_BATCH {
            let Some(action) = self.shard.poll_action() else {
                return false;
            };
            match action {
                Action::Flush(conn) => {
                    let Some(Some(c)) = self.conns.get_mut(conn) else {
                        // No socket: an MQTT-SN client's virtual connection, or gone.
                        if let Some(sn) = self.sn.as_mut().filter(|s| s.node.owns(conn)) {
                            sn.node.on_flush(&mut self.shard, conn, now);
                        }
                        continue;
                    };
                    if c.sending || !matches!(c.state, State::Open | State::Draining) {
                        continue;
                    }
                    if let Some(data) =
                        Self::next_tx(&mut self.shard, c, conn, &mut self.tls.by_conn)
                    {
                        c.sending = true;
                        self.io.send(c.sock, data);
                    }
                }
                Action::Close(conn) => {
                    let Some(Some(c)) = self.conns.get_mut(conn) else {
                        if let Some(sn) = self.sn.as_mut().filter(|s| s.node.owns(conn)) {
                            sn.node.on_close(&mut self.shard, conn, now);
                        }
                        // No socket: perhaps a bridge's virtual connection.
                        if let Some(b) = self.bridges.as_mut() {
                            b.on_shard_close(&mut self.shard, conn, now);
                        }
                        continue;
                    };
                    if c.state != State::Open {
                        continue;
                    }
                    c.state = State::Draining;
                    let session = if c.transformed {
                        self.tls.by_conn.get_mut(&conn)
                    } else {
                        None
                    };
                    if let Some(t) = session.filter(|t| t.is_websocket()) {
                        // The shard writes nothing after its Close: frame what it has
                        // left, then the close frame (a browser sees 1000, not 1006).
                        if let Some(plain) = self.shard.take_tx(conn) {
                            t.encode(&plain);
                        }
                        t.close_websocket();
                    }
                    if !c.sending {
                        if let Some(data) =
                            Self::next_tx(&mut self.shard, c, conn, &mut self.tls.by_conn)
                        {
                            c.sending = true;
                            self.io.send(c.sock, data);
                        } else {
                            c.state = State::Closing;
                            self.io.close(c.sock);
                        }
                    }
                    if c.state == State::Draining {
                        self.draining.push_back((now + DRAIN_TIMEOUT, conn, c.sock));
                    }
                }
                Action::Migrate { conn, to, handoff } => {
                    let Some(Some(c)) = self.conns.get_mut(conn) else {
                        // A virtual connection is opened on its owner; should one be
                        // asked to move all the same, it is refused (CONNACK rc 3).
                        if self.sn.as_ref().is_some_and(|s| s.node.owns(conn)) {
                            self.shard.on_migrate_refused(conn, now);
                        }
                        continue;
                    };
                    if c.state != State::Open || self.shutting_down {
                        if c.state == State::Open {
                            c.state = State::Closing;
                            self.io.close(c.sock);
                        }
                        continue;
                    }
                    if !self.mesh.reserve(to) {
                        // The hand-off could not follow the socket: refuse now, while
                        // the socket is still ours (the shard answers and closes).
                        // The reservation holds a place for it until `Migrated`.
                        self.report.migrations_failed += 1;
                        self.shard.on_migrate_refused(conn, now);
                        continue;
                    }
                    c.state = State::Migrating;
                    tracing::debug!(shard = self.id, conn, sock = c.sock, to, "migrating");
                    if std::mem::take(&mut c.transformed) {
                        if let Some(session) = self.tls.by_conn.remove(&conn) {
                            self.tls.migrating.insert(c.sock, session);
                        }
                    }
                    self.outgoing.insert(c.sock, (to, handoff));
                    self.io.migrate(c.sock, to);
                }
                Action::Verify { conn, generation } => {
                    let Some(job) = self.shard.take_verify_job(conn, generation) else {
                        continue;
                    };
                    let sent = self
                        .auth
                        .as_ref()
                        .is_some_and(|a| a.verifier.submit(conn, generation, job));
                    if !sent {
                        self.shard.on_verified(conn, generation, None, now);
                    }
                }
                Action::Send { to, msg } => match self.mesh.send(to, WorkerMsg::Shard(msg)) {
                    Ok(SendOutcome::QueuedWake) => self.wake.insert(to),
                    Ok(SendOutcome::Queued) | Ok(SendOutcome::Overflowed) => {}
                    Err(SendError::Rejected(m)) => {
                        if let WorkerMsg::Shard(ShardMsg::Publish { hold, .. }) = m {
                            self.shard.on_publish_dropped(to, hold, now);
                        }
                        self.report.mesh_rejected += 1;
                        if self.report.mesh_rejected.is_power_of_two() {
                            tracing::warn!(
                                shard = self.id,
                                to,
                                rejected = self.report.mesh_rejected,
                                "mesh full: message dropped"
                            );
                        }
                    }
                    Err(SendError::NoSuchShard(_)) => {
                        tracing::error!(shard = self.id, to, "message to unknown shard dropped");
                    }
                },
            }
        }
        true
    }

    /// Hands the shard's control messages (route updates, route acks) to the mesh
    /// while it has room for them; the rest wait in the shard for a later turn, never
    /// dropped (see `shard::control::ControlOutbox`).
    pub(super) fn send_control(
        id: usize,
        shard: &mut Shard,
        mesh: &mut Endpoint<WorkerMsg>,
        wake: &mut WakeSet,
    ) {
        if !shard.control_waiting() {
            return;
        }
        for to in (0..mesh.shard_count()).filter(|&to| to != id) {
            // `is_full` stays false until our next send: the send below cannot fail.
            while !mesh.is_full(to) {
                let Some(msg) = shard.poll_control(to) else {
                    break;
                };
                match mesh.send(to, WorkerMsg::Shard(msg)) {
                    Ok(SendOutcome::QueuedWake) => wake.insert(to),
                    Ok(_) => {}
                    Err(_) => {
                        tracing::error!(shard = id, to, "control message refused with room");
                        break;
                    }
                }
            }
        }
    }
}
