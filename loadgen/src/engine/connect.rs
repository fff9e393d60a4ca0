//! A loadgen client's connect chain (socket, TCP_NODELAY, bind, connect, then the
//! MQTT or WebSocket handshake), paced start of connects, and the bookkeeping of a
//! failed or ended attempt. Split out of `engine.rs`, unchanged.

use super::*;

impl Worker {
    pub(super) fn start_connects(&mut self, now: u64) {
        if self.phase >= PHASE_DISCONNECT {
            return;
        }
        let mut budget = self
            .cfg
            .connect_inflight
            .saturating_sub(self.connects_inflight) as usize;
        if self.connect_rate_per_thread > 0.0 {
            let allowed = ((now - self.connect_t0_ns) as f64 * 1e-9 * self.connect_rate_per_thread)
                as usize
                + 1;
            budget = budget.min(allowed.saturating_sub(self.next_connect));
        }
        // Bound the work per turn so completions keep flowing.
        budget = budget.min(512);
        for _ in 0..budget {
            if self.next_connect >= self.clients.len() {
                return;
            }
            let idx = self.next_connect;
            self.next_connect += 1;
            self.connect(idx, now);
        }
    }

    pub(super) fn connect(&mut self, idx: usize, now: u64) {
        let slot = idx as u32;
        let Ok(dest) = types::DestinationSlot::try_from_slot_target(slot) else {
            self.err_msg(format!("slot {slot} out of range"));
            return;
        };
        let c = &mut self.clients[idx];
        c.state = St::Connecting;
        c.connect_start_ns = now;
        let global = c.spec.index as usize;
        self.connects_inflight += 1;
        self.clients[idx].attempt_open = true;
        self.open += 1;
        let link = squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS;
        let fixed = types::Fixed(slot);
        let mut chain = Vec::with_capacity(5);
        chain.push(
            opcode::Socket::new(libc::AF_INET, libc::SOCK_STREAM, 0)
                .file_index(Some(dest))
                .build()
                .flags(link)
                .user_data(ud(OP_SOCKET, idx)),
        );
        let one = &ONE as *const libc::c_int as *const libc::c_void;
        // Plain MQTT connect and storm send each packet (CONNECT, SUBSCRIBE, DISCONNECT)
        // only once everything before it was acknowledged (the CONNACK's and SUBACK's
        // segments carry the ACK), so Nagle never holds one back there; the step is one
        // SQE and one setsockopt per connection, ~1.5% of loadgen's CPU in a 100k
        // storm. TLS and WebSocket handshakes may write twice in a row: they keep it.
        let plain = self.cfg.tls.is_none() && self.cfg.ws_path.is_none();
        if !(plain && self.cfg.scenario.is_connect_storm()) {
            chain.push(
                opcode::SetSockOpt::new(
                    fixed,
                    libc::IPPROTO_TCP as u32,
                    libc::TCP_NODELAY as u32,
                    one,
                    4,
                )
                .build()
                .flags(link)
                .user_data(ud(OP_NODELAY, idx)),
            );
        }
        if !self.srcs.is_empty() {
            let src = &self.srcs[global % self.srcs.len()];
            // Port chosen at connect time, so the 4-tuple (not the port alone) must be unique.
            chain.push(
                opcode::SetSockOpt::new(
                    fixed,
                    libc::SOL_IP as u32,
                    libc::IP_BIND_ADDRESS_NO_PORT as u32,
                    one,
                    4,
                )
                .build()
                .flags(link)
                .user_data(ud(OP_NOPORT, idx)),
            );
            chain.push(
                opcode::Bind::new(
                    fixed,
                    src as *const libc::sockaddr_in as *const libc::sockaddr,
                    16,
                )
                .build()
                .flags(link)
                .user_data(ud(OP_BIND, idx)),
            );
        }
        chain.push(
            opcode::Connect::new(
                fixed,
                &self.dst[self.clients[idx].target] as *const libc::sockaddr_in
                    as *const libc::sockaddr,
                16,
            )
            .build()
            .user_data(ud(OP_CONNECT, idx)),
        );
        self.push(&chain);
    }

    pub(super) fn fail(&mut self, idx: usize, what: &str, errno: i32) {
        self.err(what, errno);
        let c = &mut self.clients[idx];
        let was_connecting = matches!(c.state, St::Connecting | St::AwaitConnAck | St::AwaitSubAck);
        c.state = St::Dead;
        if was_connecting {
            self.shared.failed.fetch_add(1, Ordering::AcqRel);
        }
        self.submit_close(idx);
    }

    /// The connection attempt (SOCKET .. CONNACK) is over, whichever way it ended.
    pub(super) fn end_attempt(&mut self, idx: usize) {
        let c = &mut self.clients[idx];
        if c.attempt_open {
            c.attempt_open = false;
            self.connects_inflight -= 1;
        }
    }

    pub(super) fn on_connect(&mut self, idx: usize, res: i32) {
        if self.clients[idx].state != St::Connecting {
            return;
        }
        if res < 0 {
            let errno = if res == -libc::ECANCELED {
                libc::ECANCELED
            } else {
                -res
            };
            if errno == libc::ECANCELED {
                // The chain failed earlier and was already counted; just settle state.
                let c = &mut self.clients[idx];
                if c.state == St::Connecting {
                    c.state = St::Dead;
                    self.shared.failed.fetch_add(1, Ordering::AcqRel);
                    self.submit_close(idx);
                }
                return;
            }
            self.fail(idx, "connect", errno);
            return;
        }
        if let Some((config, name)) = &self.cfg.tls {
            match rustls::ClientConnection::new(config.clone(), name.clone()) {
                Ok(t) => self.clients[idx].tls = Some(Box::new(t)),
                Err(e) => {
                    self.err_msg(format!("tls client: {e}"));
                    self.clients[idx].state = St::Dead;
                    self.shared.failed.fetch_add(1, Ordering::AcqRel);
                    self.submit_close(idx);
                    return;
                }
            }
        }
        let c = &mut self.clients[idx];
        c.state = St::AwaitConnAck;
        if let (Some(path), Some(_)) = (&self.cfg.ws_path, &c.ws) {
            // The CONNECT follows the 101.
            // The Host header names the node this client dials (`--hosts`).
            let (host, port) = self.cfg.targets[c.target];
            c.out = ws::request(&host.to_string(), port, path);
            self.arm_recv(idx);
            self.mark_dirty(idx);
            return;
        }
        self.queue_connect(idx);
        self.arm_recv(idx);
    }

    /// Queues the CONNECT (after the TCP connect, or the WebSocket upgrade).
    pub(super) fn queue_connect(&mut self, idx: usize) {
        let v = self.cfg.protocol;
        let c = &mut self.clients[idx];
        let mut props = Properties::default();
        if v.is_v5() {
            props.to_mut().receive_maximum = Some(u16::MAX);
            if self.cfg.persistent {
                props.to_mut().session_expiry_interval_s = Some(3600);
            }
        }
        let conn = Packet::Connect(Box::new(Connect {
            protocol: v,
            clean_start: !self.cfg.persistent,
            keep_alive_s: 0,
            client_id: Bytes::from(client_id(c.spec.index).into_bytes()),
            will: None,
            username: self
                .cfg
                .username
                .as_ref()
                .map(|u| Bytes::from(u.clone().into_bytes())),
            password: self
                .cfg
                .password
                .as_ref()
                .map(|p| Bytes::from(p.clone().into_bytes())),
            properties: props,
        }));
        encode(&conn, v, &mut c.out);
        self.mark_dirty(idx);
    }
}
