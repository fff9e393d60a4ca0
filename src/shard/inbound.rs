//! Packets from a connected client. Each handler starts with its guard clauses.

use std::time::Instant;

use bytes::Bytes;
use smallvec::SmallVec;

use super::conn::ConnState;
use super::durable::CopyChange;
use super::{ConnId, Shard};
use crate::cluster::bridge::Refusal;
use crate::protocol::{
    Disconnect, Packet, PubResp, Publish, QoS, ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use crate::session::{Delivery, Message, Phase, SessionError, SessionSub, NONE};

impl Shard {
    pub(crate) fn handle_packet(
        &mut self,
        conn: ConnId,
        packet: Packet,
        now: Instant,
    ) -> Result<(), SessionError> {
        match packet {
            Packet::Publish(p) => self.on_publish(conn, p, now),
            Packet::PubAck(r) => {
                self.on_flow_end(conn, r.packet_id, Phase::AwaitAck, now);
                Ok(())
            }
            Packet::PubRec(r) => {
                self.on_pubrec(conn, r, now);
                Ok(())
            }
            Packet::PubRel(r) => {
                self.on_pubrel(conn, r.packet_id);
                Ok(())
            }
            Packet::PubComp(r) => {
                self.on_flow_end(conn, r.packet_id, Phase::AwaitComp, now);
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(conn, s, now),
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(conn, u);
                Ok(())
            }
            Packet::PingReq => {
                self.write_control(conn, &Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => self.on_disconnect(conn, d, now),
            // A second CONNECT, server-only packets, and AUTH without enhanced auth.
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp
            | Packet::Auth(_) => Err(SessionError::ProtocolError),
        }
    }

    fn conn_session(&self, conn: ConnId) -> u32 {
        self.conns.get(conn).map_or(NONE, |c| c.session)
    }

    /// `conn`'s session index and its QoS 1/2 delivery state, if it has any.
    fn conn_delivery(&mut self, conn: ConnId) -> Option<(u32, &mut Delivery)> {
        let session = self.conn_session(conn);
        let d = self.sessions.get_mut(session)?.delivery.as_mut()?;
        Some((session, d))
    }

    fn on_publish(
        &mut self,
        conn: ConnId,
        mut p: Publish,
        now: Instant,
    ) -> Result<(), SessionError> {
        // Fields of `self.config` are read in place: cloning the `Arc` per PUBLISH
        // costs two atomic operations.
        let Some(c) = self.conns.get_mut(conn) else {
            return Ok(());
        };
        let session = c.session;
        // [MQTT-3.3.4-6]: only the server puts Subscription Identifiers on a PUBLISH.
        if !p.properties.rare.subscription_identifiers.is_empty() {
            return Err(SessionError::ProtocolError);
        }
        // Client → server topic alias.
        if let Some(alias) = p.properties.topic_alias.take() {
            if alias == 0 || alias > self.config.topic_alias_maximum || !c.version.is_v5() {
                return Err(SessionError::TopicAliasInvalid);
            }
            let i = usize::from(alias - 1);
            if p.topic.is_empty() {
                match c
                    .aliases_if_any()
                    .and_then(|a| a.inbound.get(i))
                    .filter(|t| !t.is_empty())
                {
                    Some(t) => p.topic = t.clone(),
                    None => return Err(SessionError::ProtocolError),
                }
            } else {
                let a = c.aliases();
                if a.inbound.len() <= i {
                    a.inbound.resize(i + 1, Bytes::new());
                }
                a.inbound[i] = Bytes::copy_from_slice(&p.topic);
            }
        }
        if p.topic.is_empty() {
            return Err(SessionError::ProtocolError);
        }
        // The codec refused wildcards, U+0000 and bad UTF-8 in the topic (an alias
        // resolves to a topic that was decoded the same way): only limits remain.
        let (max_len, max_levels) = (self.config.max_topic_len, self.config.max_topic_levels);
        if crate::topic::validate_decoded_name(&p.topic, max_len, max_levels).is_err() {
            return Err(SessionError::TopicNameInvalid);
        }
        if p.retain && !self.config.retain_available {
            return Err(SessionError::RetainNotSupported);
        }
        let packet_id = p.packet_id;
        let qos = p.qos;
        let dup = p.dup;
        // ACL (write): compiled at CONNECT, one branch without an ACL file.
        // `Some(is_v5)` when denied: one slab lookup on the allowed path.
        let denied = self
            .conns
            .get_mut(conn)
            .and_then(|c| (!c.acl.can_publish(&p.topic)).then(|| c.version.is_v5()));
        if let Some(v5) = denied {
            self.stats.acl_denied_publish += 1;
            // MQTT 5: 0x87, which ends a QoS 2 flow at the PUBREC. 3.x has no code:
            // the message is dropped and acknowledged as usual, so the client does
            // not resend it forever (its PUBREL then meets a PUBCOMP).
            let mut resp = PubResp::new(packet_id);
            if v5 {
                resp.code = ReasonCode::NotAuthorized;
            }
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => self.write_control(conn, &Packet::PubAck(resp)),
                QoS::ExactlyOnce => self.write_control(conn, &Packet::PubRec(resp)),
            }
            return Ok(());
        }
        // On a cluster node, a message NATS cannot carry is refused before anything
        // else (review10 H3): forwarding it would make nats-server close the node's
        // connection (and drop its JetStream acks in flight).
        if let Some(refused) = self.cluster_refuses(&p) {
            let v5 = self.conns.get(conn).is_some_and(|c| c.version.is_v5());
            let (code, err) = match refused {
                Refusal::Subject => (ReasonCode::TopicNameInvalid, SessionError::TopicNameInvalid),
                Refusal::TooLarge => (ReasonCode::QuotaExceeded, SessionError::QuotaExceeded),
            };
            // MQTT 5 QoS 1/2: a negative acknowledgement (0x90 or 0x97; a PUBREC of
            // 0x80 or more ends the flow). QoS 0 has no acknowledgement and 3.x has no
            // negative one (a PUBACK would say the message was taken): the connection
            // ends, as for a topic over `max_topic_len` (DISCONNECT 0x90/0x97 on 5).
            if !v5 || qos == QoS::AtMostOnce {
                return Err(err);
            }
            let mut resp = PubResp::new(packet_id);
            resp.code = code;
            let packet = match qos {
                QoS::AtLeastOnce => Packet::PubAck(resp),
                _ => Packet::PubRec(resp),
            };
            self.write_control(conn, &packet);
            return Ok(());
        }
        // Records this publish appends (persistent sessions only) start here; its
        // acknowledgement waits for them (`durable.rs`).
        let mark = self.store_publish_mark();
        if qos != QoS::AtMostOnce {
            let Some(s) = self.sessions.get_mut(session) else {
                return Ok(());
            };
            let d = s.delivery();
            if qos == QoS::ExactlyOnce && d.awaiting_pubrel.contains(&packet_id) {
                // A resend of a QoS 2 message already received: acknowledge, do not
                // deliver again.
                self.ack_publish(conn, packet_id, true, mark);
                return Ok(());
            }
            // QoS 1 is acknowledged at once, so only QoS 2 waiting for PUBREL stays
            // outstanding; this message would be one more.
            if d.awaiting_pubrel.len() >= usize::from(self.config.receive_maximum) {
                return Err(SessionError::ReceiveMaximumExceeded);
            }
            if qos == QoS::ExactlyOnce {
                d.awaiting_pubrel.push(packet_id);
                self.log_inbound_qos2(session, packet_id, true);
                // A re-send whose first copy reached this node through another node
                // (review10 H5): acknowledged, its PUBREL completes it, not delivered.
                if dup && self.cluster_qos2_resent(session, &p, now) {
                    self.ack_publish(conn, packet_id, true, mark);
                    return Ok(());
                }
            }
        }
        let msg = Message {
            topic: p.topic,
            payload: p.payload,
            qos,
            retain: p.retain,
            properties: p.properties,
            arrived_at: now,
            origin_shard: self.id,
            origin_session: session,
            owned: false,
            cluster_key: 0,
        };
        self.cluster_mark();
        let retain_refused = self.publish(msg, now);
        let forwarded = self.cluster_pushed();
        self.drop_slow_consumers(now);
        if qos == QoS::AtMostOnce {
            return Ok(());
        }
        // On a cluster node the acknowledgement waits for JetStream (`cluster.rs`).
        if forwarded.is_some()
            && !retain_refused
            && self.cluster_hold_ack(conn, packet_id, qos, dup, forwarded)
        {
            // One hold, two conditions: JetStream and the log (`durable_cluster.rs`).
            self.store_hold_with_cluster(conn, packet_id, qos == QoS::ExactlyOnce, mark);
            return Ok(());
        }
        if !retain_refused {
            self.ack_publish(conn, packet_id, qos == QoS::ExactlyOnce, mark);
            return Ok(());
        }
        let mut resp = PubResp::new(packet_id);
        // Retained but not stored: MQTT 5 publishers are told (3.x has no code).
        if retain_refused && self.conns.get(conn).is_some_and(|c| c.version.is_v5()) {
            resp.code = ReasonCode::QuotaExceeded;
            if qos == QoS::ExactlyOnce {
                // A PUBREC of 0x80 or more ends the QoS 2 flow: no PUBREL follows.
                if let Some(d) = self.sessions.get_mut(session).map(|s| s.delivery()) {
                    d.awaiting_pubrel.retain(|x| *x != packet_id);
                }
            }
        }
        let packet = match qos {
            QoS::AtLeastOnce => Packet::PubAck(resp),
            _ => Packet::PubRec(resp),
        };
        self.write_control(conn, &packet);
        Ok(())
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) for `packet_id`: the flow ends if the
    /// message is waiting for exactly that acknowledgement, and the window moves on.
    pub(super) fn on_flow_end(
        &mut self,
        conn: ConnId,
        packet_id: u16,
        waiting_for: Phase,
        now: Instant,
    ) {
        let Some((session, d)) = self.conn_delivery(conn) else {
            return;
        };
        if let Some(i) = d.inflight_pos(packet_id) {
            if d.inflight[i].phase == waiting_for {
                let gone = d.remove_inflight(i).map_or(0, |f| f.out.store_id);
                if gone != 0 {
                    self.log_copy_state(session, gone, CopyChange::Gone);
                }
                self.pump(session, now);
            }
        }
    }

    fn on_pubrec(&mut self, conn: ConnId, r: PubResp, now: Instant) {
        let Some((session, d)) = self.conn_delivery(conn) else {
            return;
        };
        let Some(i) = d.inflight_pos(r.packet_id) else {
            if let Some(c) = self.conns.get(conn) {
                if c.version.is_v5() {
                    let mut resp = PubResp::new(r.packet_id);
                    resp.code = ReasonCode::PacketIdentifierNotFound;
                    self.write_control(conn, &Packet::PubRel(resp));
                }
            }
            return;
        };
        if r.code.is_error() {
            // The client refused the message: the flow ends here (MQTT 5 4.3.3).
            let gone = d.remove_inflight(i).map_or(0, |f| f.out.store_id);
            if gone != 0 {
                self.log_copy_state(session, gone, CopyChange::Gone);
            }
            self.pump(session, now);
            return;
        }
        let f = &mut d.inflight[i];
        if f.phase == Phase::AwaitAck {
            return;
        }
        f.phase = Phase::AwaitComp;
        let id = f.out.store_id;
        let mark = self.store_mark();
        if id != 0 {
            self.log_copy_state(session, id, CopyChange::Released);
        }
        self.send_pubrel(conn, r.packet_id, mark);
    }

    fn on_pubrel(&mut self, conn: ConnId, packet_id: u16) {
        let v5 = self.conns.get(conn).is_some_and(|c| c.version.is_v5());
        let mut found = false;
        if let Some((session, d)) = self.conn_delivery(conn) {
            if let Some(i) = d.awaiting_pubrel.iter().position(|x| *x == packet_id) {
                d.awaiting_pubrel.swap_remove(i);
                found = true;
                self.log_inbound_qos2(session, packet_id, false);
            }
        }
        let mut resp = PubResp::new(packet_id);
        if !found && v5 {
            resp.code = ReasonCode::PacketIdentifierNotFound;
        }
        self.write_control(conn, &Packet::PubComp(resp));
    }

    fn on_subscribe(
        &mut self,
        conn: ConnId,
        s: Subscribe,
        now: Instant,
    ) -> Result<(), SessionError> {
        let cfg = self.config.clone();
        let Some(c) = self.conns.get(conn) else {
            return Ok(());
        };
        let session = c.session;
        // Cloned once per SUBSCRIBE (an `Arc`), not per filter.
        let acl = c.acl.clone();
        let sub_id = s.properties.subscription_identifier.unwrap_or(0);
        let mut codes: SmallVec<[ReasonCode; 2]> = SmallVec::new();
        // Retained messages are sent after the SUBACK.
        let mut retained: SmallVec<[(Bytes, crate::protocol::SubscriptionOptions); 2]> =
            SmallVec::new();
        for (filter, options) in &s.filters {
            let (group, inner) = match crate::topic::parse_shared(filter) {
                Ok(x) => (
                    x.as_ref().map(|s| s.group),
                    x.map_or(&filter[..], |s| s.filter),
                ),
                Err(_) => {
                    self.stats.refused_filters += 1;
                    codes.push(ReasonCode::TopicFilterInvalid);
                    continue;
                }
            };
            let shared = group.is_some();
            if shared && options.no_local {
                return Err(SessionError::ProtocolError);
            }
            let code =
                if crate::topic::validate_filter(filter, cfg.max_topic_len, cfg.max_topic_levels)
                    .is_err()
                {
                    Some(ReasonCode::TopicFilterInvalid)
                } else if shared && !cfg.shared_subscription_available {
                    Some(ReasonCode::SharedSubscriptionsNotSupported)
                } else if !cfg.wildcard_subscription_available
                    && filter.iter().any(|b| *b == b'+' || *b == b'#')
                {
                    Some(ReasonCode::WildcardSubscriptionsNotSupported)
                } else if sub_id != 0 && !cfg.subscription_identifier_available {
                    Some(ReasonCode::SubscriptionIdentifiersNotSupported)
                } else if cfg
                    .deny_subscribe
                    .iter()
                    .any(|d| d.as_bytes() == &filter[..])
                {
                    Some(ReasonCode::UnspecifiedError)
                } else if self.cluster.is_some()
                    && !crate::cluster::subject::filter_fits(inner, group)
                {
                    // Its NATS subscription would make nats-server close the node's
                    // connection, again after every reconnect (review10 H3).
                    if let Some(st) = self.cluster_status.as_deref() {
                        st.refused_subjects
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Some(ReasonCode::TopicFilterInvalid)
                } else if !acl.can_subscribe(inner) {
                    // 0x87; 3.1.1 SUBACK gets 0x80 for this filter alone.
                    self.stats.acl_denied_subscribe += 1;
                    Some(ReasonCode::NotAuthorized)
                } else {
                    None
                };
            if let Some(code) = code {
                if code == ReasonCode::TopicFilterInvalid {
                    self.stats.refused_filters += 1;
                }
                codes.push(code);
                continue;
            }
            let Some(sess) = self.sessions.get_mut(session) else {
                return Ok(());
            };
            let existing = sess.sub_pos(filter);
            if existing.is_none() && sess.subs.len() >= cfg.max_subscriptions_per_client {
                self.stats.refused_subscriptions += 1;
                codes.push(ReasonCode::QuotaExceeded);
                continue;
            }
            match existing {
                Some(i) => {
                    sess.subs[i].options = *options;
                    sess.subs[i].sub_id = sub_id;
                }
                None => {
                    // A device typically holds one or two subscriptions: grow exactly
                    // at first instead of Vec's minimum capacity of 4 (saves 72 B per
                    // one-subscription session).
                    if sess.subs.len() < 4 {
                        sess.subs.reserve_exact(1);
                    }
                    // Own copy: the decoded filter is a slice of the receive buffer.
                    sess.subs.push(SessionSub {
                        filter: Box::from(&filter[..]),
                        options: *options,
                        sub_id,
                    });
                }
            }
            self.log_sub(session, filter, Some((options, sub_id)));
            let (inner, group) = Self::split_filter(filter);
            let is_new = self.add_local_sub(session, &inner, group.as_ref(), *options, sub_id);
            // Retained messages are not sent for shared subscriptions [MQTT-4.8.2].
            let send = group.is_none()
                && match options.retain_handling {
                    0 => true,
                    1 => is_new,
                    _ => false,
                };
            if send {
                retained.push((inner, *options));
            }
            codes.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
            });
        }
        self.refresh_read_grant(conn, session);
        // 3.x SUBACKs carry only granted QoS or 0x80: the encoder maps the codes.
        let ack = SubAck {
            packet_id: s.packet_id,
            codes,
            properties: Default::default(),
        };
        if self.routes_settled() {
            self.finish_subscribe(conn, session, ack, retained, sub_id, now);
        } else {
            let generation = self.conns.get(conn).map_or(0, |c| c.generation);
            self.pending_subacks
                .push_back(crate::shard::routes::PendingSubAck {
                    conn,
                    generation,
                    session,
                    route_seq: self.route_seq,
                    ack,
                    retained,
                    sub_id,
                });
        }
        Ok(())
    }

    /// SUBACK, then the retained messages the new subscriptions asked for.
    pub(crate) fn finish_subscribe(
        &mut self,
        conn: ConnId,
        session: u32,
        ack: SubAck,
        retained: SmallVec<[(Bytes, crate::protocol::SubscriptionOptions); 2]>,
        sub_id: u32,
        now: Instant,
    ) {
        self.cluster_session_state(session);
        let Some((ack, retained)) = self.hold_subscribe(conn, session, ack, retained, sub_id)
        else {
            return;
        };
        self.send_subscribe_replies(conn, session, ack, retained, sub_id, now);
    }

    /// SUBACK, then the retained messages the new subscriptions asked for, once the
    /// subscriptions are durable.
    pub(crate) fn send_subscribe_replies(
        &mut self,
        conn: ConnId,
        session: u32,
        ack: SubAck,
        retained: SmallVec<[(Bytes, crate::protocol::SubscriptionOptions); 2]>,
        sub_id: u32,
        now: Instant,
    ) {
        self.write_control(conn, &Packet::SubAck(ack));
        for (filter, options) in retained {
            self.start_stream(session, filter, options, sub_id, now);
        }
        self.drop_slow_consumers(now);
    }

    fn on_unsubscribe(&mut self, conn: ConnId, u: Unsubscribe) {
        let session = self.conn_session(conn);
        let (max_len, max_levels) = (self.config.max_topic_len, self.config.max_topic_levels);
        let mut codes: SmallVec<[ReasonCode; 2]> = SmallVec::new();
        for filter in &u.filters {
            if crate::topic::validate_filter(filter, max_len, max_levels).is_err() {
                codes.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            let existing = self
                .sessions
                .get_mut(session)
                .and_then(|s| s.sub_pos(filter).map(|i| s.subs.swap_remove(i)));
            match existing {
                Some(sub) => {
                    self.log_sub(session, &sub.filter, None);
                    let (inner, group) = Self::split_filter(&sub.filter);
                    self.remove_local_sub(session, &inner, group.as_ref());
                    codes.push(ReasonCode::Success);
                }
                None => codes.push(ReasonCode::NoSubscriptionExisted),
            }
        }
        let ack = UnsubAck {
            packet_id: u.packet_id,
            codes,
            properties: Default::default(),
        };
        self.cluster_session_state(session);
        self.write_control(conn, &Packet::UnsubAck(ack));
    }

    fn on_disconnect(
        &mut self,
        conn: ConnId,
        d: Disconnect,
        now: Instant,
    ) -> Result<(), SessionError> {
        let session = self.conn_session(conn);
        let v5 = self.conns.get(conn).is_some_and(|c| c.version.is_v5());
        if let Some(c) = self.conns.get(conn) {
            tracing::debug!(
                shard = self.id,
                conn,
                client_id = %self.client_id_of(c.session),
                reason_code = format_args!("{:#04x}", d.code as u8),
                "client sent DISCONNECT"
            );
        }
        if v5 {
            if let Some(new_expiry) = d.properties.session_expiry_interval_s {
                let Some(s) = self.sessions.get_mut(session) else {
                    return Ok(());
                };
                // [MQTT-3.14.2-2]: zero at CONNECT cannot be raised at DISCONNECT.
                if s.expiry_s == 0 && new_expiry != 0 {
                    return Err(SessionError::ProtocolError);
                }
                let was = s.expiry_s;
                s.expiry_s = super::connect::granted_expiry_s(&self.config, new_expiry);
                if was > 0 && s.expiry_s == 0 {
                    let id = Bytes::copy_from_slice(&s.client_id);
                    self.log_session_del(&id);
                    // It ends with this connection now: nothing of it may stay saved.
                    self.cluster_session_ended(session);
                } else if was != s.expiry_s {
                    self.log_session(session);
                }
            }
        }
        // The will is dropped only on a normal disconnection (0x00).
        let abnormal = v5 && d.code != ReasonCode::Success;
        self.close(conn);
        if let Some(c) = self.conns.get(conn) {
            debug_assert_eq!(c.state, ConnState::Closing);
        }
        self.detach_session(conn, abnormal, now);
        Ok(())
    }
}
