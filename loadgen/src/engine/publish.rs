//! The loadgen publishers: their start state, pacing by rate, the in-flight window,
//! packet ids, and emitting PUBLISHes in bounded bursts. Split out of `engine.rs`,
//! unchanged.

use super::*;

impl Worker {
    pub(super) fn init_publisher(&mut self, idx: usize, now: u64) {
        let v = self.cfg.protocol;
        let qos = self.cfg.qos;
        let size = self.cfg.size;
        let c = &mut self.clients[idx];
        if c.state != St::Ready {
            return;
        }
        if c.spec.role == Role::Controller && self.cfg.cmd_rate > 0.0 && self.devices > 0 {
            let period_ns = (1e9 / self.cfg.cmd_rate) as u64;
            c.publ = Some(PubState {
                stream: u32::MAX,
                template: Default::default(),
                period_ns,
                next_due_ns: now + period_ns,
                seq: 0,
                written_off: 0,
                last_delivered: 0,
                last_progress_ns: now,
            });
            self.paced.push(Reverse((now + period_ns, idx)));
            return;
        }
        let Some(spec) = c.spec.publish.clone() else {
            return;
        };
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: Bytes::from(spec.topic.clone().into_bytes()),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
            properties: PublishProperties::default(),
            payload: Bytes::from(vec![0u8; size]),
        };
        let mut template = Vec::new();
        encode(&Packet::Publish(publish), v, &mut template);
        let pid_off = fixed_header_len(&template) + 2 + spec.topic.len();
        let period_ns = if spec.rate > 0.0 {
            (1e9 / spec.rate).max(1.0) as u64
        } else {
            0
        };
        let first = now + spec.phase_offset_ns;
        c.publ = Some(PubState {
            stream: spec.stream,
            template: crate::tx::Template {
                frame: template,
                pid_off,
                payload_len: size,
                stream: spec.stream,
            },
            period_ns,
            next_due_ns: first,
            seq: 0,
            written_off: 0,
            last_delivered: 0,
            last_progress_ns: now,
        });
        if period_ns > 0 {
            self.paced.push(Reverse((first, idx)));
        } else {
            self.unpaced.push(idx);
        }
    }

    pub(super) fn next_pid(c: &mut Client) -> u16 {
        c.next_pid = if c.next_pid == u16::MAX {
            1
        } else {
            c.next_pid + 1
        };
        c.next_pid
    }

    /// Emits what each publisher may send now: paced by its rate, limited by its window.
    pub(super) fn generate(&mut self, now: u64) {
        let unpaced = std::mem::take(&mut self.unpaced);
        for &idx in &unpaced {
            self.publish_some(idx, now);
        }
        self.unpaced = unpaced;
        while let Some(&Reverse((due, idx))) = self.paced.peek() {
            if due > now {
                break;
            }
            self.paced.pop();
            self.publish_some(idx, now);
            if let Some(pb) = self.clients[idx].publ.as_ref() {
                // Window-blocked publishers are retried soon; others at their next due time.
                let next = if pb.next_due_ns <= now {
                    now + 50_000
                } else {
                    pb.next_due_ns
                };
                self.paced.push(Reverse((next, idx)));
            }
        }
    }

    /// Messages the window still allows for client `idx` (u32::MAX when open loop).
    pub(super) fn window_room(&mut self, idx: usize, now: u64) -> u32 {
        if self.cfg.open_loop {
            // Even an open loop must respect MQTT 5 Receive Maximum (the broker would
            // disconnect); falling behind then shows up as latency from the schedule.
            let c = &self.clients[idx];
            if self.cfg.qos != QoS::AtMostOnce && c.server_receive_max != u32::MAX {
                return c.server_receive_max.saturating_sub(c.inflight);
            }
            return u32::MAX;
        }
        let window = self.cfg.window;
        let send_batch = self.cfg.send_batch;
        let qos = self.cfg.qos;
        let c = &mut self.clients[idx];
        if c.spec.role == Role::Controller {
            let out = c.cmd_outstanding;
            let Some(pb) = c.publ.as_mut() else { return 0 };
            if out >= u64::from(window) && now.saturating_sub(pb.last_progress_ns) > STALL_NS {
                // Replies stopped coming back: count them as lost and carry on.
                self.result.qos0_written_off += out;
                c.cmd_outstanding = 0;
                pb.last_progress_ns = now;
            }
            return window.saturating_sub(c.cmd_outstanding.min(u64::from(u32::MAX)) as u32);
        }
        let Some(pb) = c.publ.as_mut() else { return 0 };
        // QoS >= 1: bounded by unacknowledged messages (and the broker's Receive
        // Maximum) *and*, below, by undelivered ones: a PUBACK only says the broker
        // has the message, so without the second bound publishers outrun a slower
        // subscriber and the run measures the broker's queue limits, not its rate.
        let ack_room = if qos != QoS::AtMostOnce {
            window.min(c.server_receive_max).saturating_sub(c.inflight)
        } else {
            u32::MAX
        };
        let stream = pb.stream as usize;
        let mult = u64::from(self.shared.multiplicity[stream].max(1));
        let delivered = self.shared.delivered[stream].load(Ordering::Relaxed);
        if delivered != pb.last_delivered {
            pb.last_delivered = delivered;
            pb.last_progress_ns = now;
        }
        let done = delivered / mult + pb.written_off;
        let mut inflight = pb.seq.saturating_sub(done);
        let room = ack_room.min(window.saturating_sub(inflight.min(u64::from(window)) as u32));
        let refill = crate::batch::refill_at(window, c.server_receive_max, qos, send_batch);
        if inflight > 0 && room < refill && now.saturating_sub(pb.last_progress_ns) > STALL_NS {
            // Deliveries stopped: stop waiting for them. For QoS 0 that is counted
            // here; QoS >= 1 messages that never arrive are counted as lost at the end.
            pb.written_off += inflight;
            if qos == QoS::AtMostOnce {
                self.result.qos0_written_off += inflight;
            }
            pb.last_progress_ns = now;
            inflight = 0;
        }
        let room = ack_room.min(window.saturating_sub(inflight.min(u64::from(window)) as u32));
        crate::batch::gate(room, refill)
    }

    pub(super) fn publish_some(&mut self, idx: usize, now: u64) {
        if self.clients[idx].state != St::Ready || self.clients[idx].closing {
            return;
        }
        let room = self.window_room(idx, now).min(BURST_MAX);
        let measuring = self.phase == PHASE_MEASURE;
        let qos = self.cfg.qos;
        let size = self.cfg.size;
        let v = self.cfg.protocol;
        let devices = self.devices;
        let c = &mut self.clients[idx];
        let is_controller = c.spec.role == Role::Controller;
        let mut sent = 0u32;
        while sent < room {
            let Some(pb) = c.publ.as_mut() else { return };
            // Paced: the timestamp is the intended send time, so a late loop shows up as
            // latency instead of being hidden (no coordinated omission).
            let ts = if pb.period_ns > 0 {
                if pb.next_due_ns > now {
                    break;
                }
                let t = pb.next_due_ns;
                pb.next_due_ns += pb.period_ns;
                if self.cfg.open_loop {
                    t
                } else {
                    now
                }
            } else {
                now
            };
            if is_controller {
                let dev = c.cmd_next_device;
                c.cmd_next_device = (dev + 1) % devices.max(1);
                let Some(seq_slot) = c.cmd_seq.get_mut(dev as usize) else {
                    return;
                };
                let seq = *seq_slot;
                *seq_slot += 1;
                let stream = devices + dev;
                let body = payload::encode(
                    &Header {
                        kind: KIND_COMMAND,
                        stream,
                        seq,
                        send_ns: ts,
                    },
                    size,
                );
                let pid = if qos == QoS::AtMostOnce {
                    0
                } else {
                    Self::next_pid(c)
                };
                let p = Publish {
                    dup: false,
                    qos,
                    retain: false,
                    topic: Bytes::from(format!("dev/{dev}/cmd").into_bytes()),
                    packet_id: pid,
                    properties: PublishProperties::default(),
                    payload: Bytes::from(body),
                };
                encode(&Packet::Publish(p), v, &mut c.out);
                c.cmd_outstanding += 1;
                if qos != QoS::AtMostOnce {
                    c.inflight += 1;
                }
                self.shared.sent[stream as usize].store(seq + 1, Ordering::Release);
            } else {
                let seq = pb.seq;
                pb.seq += 1;
                let pid = if qos != QoS::AtMostOnce {
                    c.inflight += 1;
                    Some(Self::next_pid(c))
                } else {
                    None
                };
                let Some(pb) = c.publ.as_ref() else { return };
                crate::tx::append(&mut c.out, &pb.template, pid, seq, ts);
            }
            sent += 1;
        }
        if let (Some(pb), false) = (c.publ.as_ref(), is_controller || sent == 0) {
            // Once per burst, not per message: only the drain and the report read it.
            self.shared.sent[pb.stream as usize].store(pb.seq, Ordering::Release);
        }
        if sent > 0 {
            if measuring {
                self.result.sent_measure += u64::from(sent);
            }
            self.mark_dirty(idx);
        }
    }
}
