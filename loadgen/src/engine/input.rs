//! A loadgen client's input: receive completions, plain/TLS/WebSocket bytes into
//! packets, and what each packet does (CONNACK readiness, SUBACK, acknowledgements,
//! and deliveries checked for order, loss and latency). Split out of `engine.rs`,
//! unchanged.

use super::*;

impl Worker {
    /// Settles a receive completion's effect on the connection; true when its bytes
    /// are to be read.
    pub(super) fn on_recv(&mut self, idx: usize, res: i32, more: bool) -> bool {
        if self.clients[idx].state == St::Dead {
            return false;
        }
        if res == 0 {
            let closing = self.clients[idx].closing;
            if !closing {
                let msg = format!(
                    "connection closed by broker ({:?})",
                    self.clients[idx].state
                );
                self.err_msg(msg);
                let c = &mut self.clients[idx];
                if matches!(c.state, St::AwaitConnAck | St::AwaitSubAck) {
                    self.shared.failed.fetch_add(1, Ordering::AcqRel);
                }
            }
            // The broker closed after our DISCONNECT (sent, or in flight when it read
            // it): nothing unread can be lost at its end any more.
            if closing && self.waits_for_broker_close(idx) {
                self.close_after_broker(idx);
            } else {
                self.submit_close(idx);
            }
            return false;
        }
        if res < 0 {
            if res == -libc::ENOBUFS {
                self.rearm.push(idx);
                return false;
            }
            if self.clients[idx].closing {
                self.submit_close(idx);
            } else {
                self.fail(idx, "recv", -res);
            }
            return false;
        }
        if !more {
            self.rearm.push(idx);
        }
        true
    }

    /// Reads one receive buffer in place as far as `rx::scan` can; what it cannot (from
    /// a frame that needs the full decoder on, or a partial frame) is copied into the
    /// client's `inbuf`. True when `inbuf` then holds frames for `process_input`.
    pub(super) fn feed(&mut self, idx: usize, bid: u16, len: usize, now: u64) -> bool {
        let v5 = self.cfg.protocol.is_v5();
        let ws_mode = self.clients[idx].ws.is_some();
        if ws_mode {
            self.ws_scratch.clear();
            let raw = self.bufs.data(bid, len);
            let Some(w) = self.clients[idx].ws.as_deref_mut() else {
                return false;
            };
            match w.on_bytes(raw, &mut self.ws_scratch) {
                Ok(false) => {}
                Ok(true) => self.queue_connect(idx),
                Err(e) => {
                    self.err_msg(e);
                    self.shared.failed.fetch_add(1, Ordering::AcqRel);
                    self.clients[idx].state = St::Dead;
                    self.submit_close(idx);
                    return false;
                }
            }
        }
        let data: &[u8] = if ws_mode {
            &self.ws_scratch
        } else {
            self.bufs.data(bid, len)
        };
        let c = &mut self.clients[idx];
        let mut off = 0;
        if !c.inbuf.is_empty() {
            // The last buffer ended inside a frame: complete that frame from this one
            // (copying only its own bytes) and read it first.
            match rx::complete_frame(&mut c.inbuf, data, MAX_PACKET_BYTES) {
                Ok(n) => off = n,
                // The full decoder reports it.
                Err(_) => {
                    c.inbuf.extend_from_slice(data);
                    return true;
                }
            }
            let mut conn = Conn {
                v5,
                plain_subscriber: c.spec.role == Role::Plain,
                streams: &mut c.streams,
                out: &mut c.out,
            };
            let s = rx::scan(&c.inbuf, &mut conn, &mut self.rx, MAX_PACKET_BYTES, now);
            c.inbuf.advance(s.consumed);
            Self::settle(c, &mut self.dirty, idx, s.acked, s.wrote, now);
            if let Some(e) = s.foreign {
                *self
                    .result
                    .errors
                    .entry(format!("foreign payload: {e}"))
                    .or_insert(0) += 1;
            }
            match s.stop {
                // The completed frame was read: go on with the rest of this buffer.
                Stop::End => {}
                // Only when this buffer is used up: nothing is left to read.
                Stop::Partial => {
                    c.inbuf.extend_from_slice(&data[off..]);
                    return false;
                }
                // A frame for the full decoder (or what follows a foreign payload, or a
                // malformed frame): `process_input` reads it and the rest.
                Stop::Slow => {
                    c.inbuf.extend_from_slice(&data[off..]);
                    return true;
                }
            }
        }
        let rest = &data[off..];
        let mut conn = Conn {
            v5,
            plain_subscriber: c.spec.role == Role::Plain,
            streams: &mut c.streams,
            out: &mut c.out,
        };
        let s = rx::scan(rest, &mut conn, &mut self.rx, MAX_PACKET_BYTES, now);
        Self::settle(c, &mut self.dirty, idx, s.acked, s.wrote, now);
        if let Some(e) = s.foreign {
            *self
                .result
                .errors
                .entry(format!("foreign payload: {e}"))
                .or_insert(0) += 1;
        }
        c.inbuf.extend_from_slice(&rest[s.consumed..]);
        s.stop == Stop::Slow
    }

    /// With --tls: decrypts one receive buffer into `inbuf` (read by `process_input`,
    /// the same decoder as plaintext); handshake answers are flushed. True when
    /// `inbuf` holds plaintext.
    pub(super) fn feed_tls(&mut self, idx: usize, bid: u16, len: usize) -> bool {
        use std::io::Read;
        let mut rd = self.bufs.data(bid, len);
        let c = &mut self.clients[idx];
        let Some(tls) = c.tls.as_mut() else {
            return false;
        };
        let mut failed = None;
        // Bounded: each pass consumes bytes of `rd` or stops.
        while !rd.is_empty() {
            match tls.read_tls(&mut rd) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
            match tls.process_new_packets() {
                Ok(st) => {
                    let n = st.plaintext_bytes_to_read();
                    if n > 0 {
                        let start = c.inbuf.len();
                        c.inbuf.resize(start + n, 0);
                        let got = tls.reader().read(&mut c.inbuf[start..]).unwrap_or(0);
                        c.inbuf.truncate(start + got);
                    }
                }
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        let wants_write = tls.wants_write();
        let has_input = !c.inbuf.is_empty();
        if let Some(e) = failed {
            self.err_msg(format!("tls: {e}"));
            let c = &mut self.clients[idx];
            if matches!(c.state, St::AwaitConnAck | St::AwaitSubAck) {
                self.shared.failed.fetch_add(1, Ordering::AcqRel);
            }
            c.state = St::Dead;
            self.submit_close(idx);
            return false;
        }
        if wants_write {
            self.mark_dirty(idx);
        }
        has_input
    }

    /// Applies what a scan read to the client: acknowledged publishes leave its
    /// window; acknowledgements written make it dirty.
    pub(super) fn settle(
        c: &mut Client,
        dirty: &mut Vec<usize>,
        idx: usize,
        acked: u32,
        wrote: bool,
        now: u64,
    ) {
        if acked > 0 {
            c.inflight = c.inflight.saturating_sub(acked);
            if let Some(pb) = c.publ.as_mut() {
                pb.last_progress_ns = now;
            }
        }
        if wrote && !c.dirty {
            c.dirty = true;
            dirty.push(idx);
        }
    }

    /// Reads the frames buffered in the client's `inbuf`: the fast path first, the
    /// full decoder for the frames it leaves.
    pub(super) fn process_input(&mut self, idx: usize, now: u64) {
        let v = self.cfg.protocol;
        // `inbuf` holds at most one provided buffer (16 KiB) plus one partial frame,
        // so this loop is bounded by the packets that fit in it.
        loop {
            let c = &mut self.clients[idx];
            if c.inbuf.is_empty() {
                return;
            }
            let mut conn = Conn {
                v5: v.is_v5(),
                plain_subscriber: c.spec.role == Role::Plain,
                streams: &mut c.streams,
                out: &mut c.out,
            };
            let s = rx::scan(&c.inbuf, &mut conn, &mut self.rx, MAX_PACKET_BYTES, now);
            c.inbuf.advance(s.consumed);
            Self::settle(c, &mut self.dirty, idx, s.acked, s.wrote, now);
            if let Some(e) = s.foreign {
                self.err_msg(format!("foreign payload: {e}"));
                continue;
            }
            if s.stop != Stop::Slow {
                return;
            }
            let c = &mut self.clients[idx];
            match decode_packet(&mut c.inbuf, v, MAX_PACKET_BYTES) {
                Ok(None) => return,
                Ok(Some(p)) => self.on_packet(idx, p, now),
                Err(e) => {
                    self.err_msg(format!("malformed packet from broker: {e}"));
                    let c = &mut self.clients[idx];
                    if matches!(c.state, St::AwaitConnAck | St::AwaitSubAck) {
                        self.shared.failed.fetch_add(1, Ordering::AcqRel);
                    }
                    self.submit_close(idx);
                    return;
                }
            }
            if self.clients[idx].state == St::Dead {
                return;
            }
        }
    }

    pub(super) fn became_ready(&mut self, idx: usize) {
        self.clients[idx].state = St::Ready;
        self.shared.ready.fetch_add(1, Ordering::AcqRel);
        self.shared
            .last_connack_ns
            .fetch_max(now_ns(), Ordering::AcqRel);
        if self.phase >= PHASE_WARMUP && self.phase < PHASE_DRAIN {
            // Late joiner (connect timeout already passed): still publish.
            self.init_publisher(idx, now_ns());
        }
        if self.phase == PHASE_DISCONNECT {
            self.begin_close(idx, true);
        }
    }

    pub(super) fn on_packet(&mut self, idx: usize, p: Packet, now: u64) {
        let v = self.cfg.protocol;
        let qos = self.cfg.qos;
        match p {
            Packet::ConnAck(ack) => {
                let c = &mut self.clients[idx];
                if c.state != St::AwaitConnAck {
                    self.err_msg("unexpected CONNACK".into());
                    return;
                }
                if ack.code.is_error() {
                    self.err_msg(format!("CONNACK refused: {:?}", ack.code));
                    self.shared.failed.fetch_add(1, Ordering::AcqRel);
                    self.submit_close(idx);
                    return;
                }
                if ack.session_present {
                    self.shared.session_present.fetch_add(1, Ordering::AcqRel);
                }
                if let Some(rm) = ack.properties.receive_maximum {
                    c.server_receive_max = u32::from(rm);
                }
                let now = now_ns();
                let dt = now.saturating_sub(c.connect_start_ns).max(1);
                let _ = self.result.connect.record(dt);
                self.end_attempt(idx);
                let c = &mut self.clients[idx];
                if let Some(f) = c.spec.subscribe.clone() {
                    c.state = St::AwaitSubAck;
                    let opts = SubscriptionOptions {
                        qos,
                        ..Default::default()
                    };
                    let s = Packet::Subscribe(Subscribe {
                        packet_id: 1,
                        filters: vec![(Bytes::from(f.into_bytes()), opts)].into(),
                        properties: Properties::default(),
                    });
                    encode(&s, v, &mut c.out);
                    self.mark_dirty(idx);
                } else {
                    self.became_ready(idx);
                }
            }
            Packet::SubAck(ack) => {
                if self.clients[idx].state != St::AwaitSubAck {
                    self.err_msg("unexpected SUBACK".into());
                    return;
                }
                if ack.codes.iter().any(|c| c.is_error()) {
                    self.err_msg(format!("SUBACK refused: {:?}", ack.codes));
                    self.shared.failed.fetch_add(1, Ordering::AcqRel);
                    self.submit_close(idx);
                    return;
                }
                self.became_ready(idx);
            }
            Packet::Publish(p) => self.on_publish(idx, p, now),
            Packet::PubAck(_) | Packet::PubComp(_) => {
                let c = &mut self.clients[idx];
                c.inflight = c.inflight.saturating_sub(1);
                if let Some(pb) = c.publ.as_mut() {
                    pb.last_progress_ns = now;
                }
            }
            Packet::PubRec(r) => {
                let c = &mut self.clients[idx];
                encode(&Packet::PubRel(PubResp::new(r.packet_id)), v, &mut c.out);
                self.mark_dirty(idx);
            }
            Packet::PubRel(r) => {
                let c = &mut self.clients[idx];
                encode(&Packet::PubComp(PubResp::new(r.packet_id)), v, &mut c.out);
                self.mark_dirty(idx);
            }
            Packet::Disconnect(d) => {
                self.err_msg(format!("DISCONNECT from broker: {:?}", d.code));
            }
            Packet::PingResp | Packet::UnsubAck(_) => {}
            other => self.err_msg(format!("unexpected {:?} from broker", other.packet_type())),
        }
    }

    pub(super) fn on_publish(&mut self, idx: usize, p: Publish, now: u64) {
        let v = self.cfg.protocol;
        {
            let c = &mut self.clients[idx];
            match p.qos {
                QoS::AtMostOnce => {}
                // PUBACK, Success, no properties: 4 bytes in every version.
                QoS::AtLeastOnce => {
                    let [hi, lo] = p.packet_id.to_be_bytes();
                    c.out.extend_from_slice(&[0x40, 0x02, hi, lo]);
                }
                QoS::ExactlyOnce => {
                    encode(&Packet::PubRec(PubResp::new(p.packet_id)), v, &mut c.out)
                }
            }
        }
        if p.qos != QoS::AtMostOnce {
            self.mark_dirty(idx);
        }
        let h = match payload::decode(&p.payload) {
            Ok(h) => h,
            Err(e) => {
                self.rx.unexpected += 1;
                self.err_msg(format!("foreign payload: {e}"));
                return;
            }
        };
        let c = &mut self.clients[idx];
        let role = c.spec.role;
        let Delivery::Counted { latency_ns } =
            self.rx.deliver(&mut c.streams, &h, p.payload.len(), now)
        else {
            return;
        };
        match role {
            Role::Controller => {
                let c = &mut self.clients[idx];
                c.cmd_outstanding = c.cmd_outstanding.saturating_sub(1);
                if let Some(pb) = c.publ.as_mut() {
                    pb.last_progress_ns = now;
                }
                if let Some(lat) = latency_ns {
                    let _ = self.result.rtt.record(lat);
                }
            }
            Role::Device(id) if h.kind == KIND_COMMAND => {
                if let Some(lat) = latency_ns {
                    let _ = self.rx.latency.record(lat);
                }
                // Echo unchanged (same stream, seq and timestamp) so the controller
                // measures the whole round trip. Replies are never held back by the window.
                let qos = self.cfg.qos;
                let c = &mut self.clients[idx];
                let pid = if qos == QoS::AtMostOnce {
                    0
                } else {
                    Self::next_pid(c)
                };
                if qos != QoS::AtMostOnce {
                    c.inflight += 1;
                }
                let reply = Publish {
                    dup: false,
                    qos,
                    retain: false,
                    topic: Bytes::from(format!("dev/{id}/reply").into_bytes()),
                    packet_id: pid,
                    properties: PublishProperties::default(),
                    payload: p.payload.clone(),
                };
                encode(&Packet::Publish(reply), v, &mut c.out);
                self.mark_dirty(idx);
            }
            _ => {
                if let Some(lat) = latency_ns {
                    let _ = self.rx.latency.record(lat);
                }
            }
        }
    }
}
