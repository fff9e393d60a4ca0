//! A loadgen client's output: marking it dirty, flushing what it encoded as one send
//! (through TLS or WebSocket framing when it has them), and settling send completions.
//! Split out of `engine.rs`; what follows a sent DISCONNECT is `teardown.rs`.

use super::*;

impl Worker {
    pub(super) fn mark_dirty(&mut self, idx: usize) {
        let c = &mut self.clients[idx];
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(idx);
        }
    }

    pub(super) fn flush(&mut self) {
        // Indexed, not drained: a flush may push into a full SQ, which reaps, which can
        // mark more clients dirty; they are appended here and flushed in this same pass.
        let mut i = 0;
        while i < self.dirty.len() {
            let idx = self.dirty[i];
            self.clients[idx].dirty = false;
            self.flush_one(idx);
            i += 1;
        }
        self.dirty.clear();
    }

    pub(super) fn flush_one(&mut self, idx: usize) {
        let c = &mut self.clients[idx];
        if c.send_busy || c.state == St::Dead {
            return;
        }
        if let Some(tls) = c.tls.as_mut() {
            // Plaintext in (rustls holds it until the handshake is done), records out.
            if !c.out.is_empty() {
                use std::io::Write;
                let _ = tls.writer().write_all(&c.out);
                c.out.clear();
            }
            while tls.wants_write() {
                match tls.write_tls(&mut c.out) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        if c.out.is_empty() {
            if c.closing {
                if self.waits_for_broker_close(idx) {
                    self.await_broker_close(idx, now_ns());
                } else {
                    self.submit_close(idx);
                }
            }
            return;
        }
        match c.ws.as_deref() {
            // One frame per flush, as the broker sends.
            Some(w) if w.open => {
                c.sending.clear();
                ws::frame_into(&c.out, &mut c.sending);
            }
            _ => std::mem::swap(&mut c.out, &mut c.sending),
        }
        c.out.clear();
        c.send_off = 0;
        self.result.sends_measure += u64::from(self.phase == PHASE_MEASURE);
        self.submit_send(idx);
    }

    pub(super) fn submit_send(&mut self, idx: usize) {
        let c = &mut self.clients[idx];
        c.send_busy = true;
        let rest = &c.sending[c.send_off..];
        let e = opcode::Send::new(types::Fixed(idx as u32), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud(OP_SEND, idx));
        self.push(&[e]);
    }

    pub(super) fn on_send(&mut self, idx: usize, res: i32) {
        let c = &mut self.clients[idx];
        c.send_busy = false;
        if c.state == St::Dead {
            return;
        }
        if res < 0 {
            self.fail(idx, "send", -res);
            return;
        }
        c.send_off += res as usize;
        if c.send_off < c.sending.len() {
            self.submit_send(idx);
            return;
        }
        c.sending.clear();
        c.send_off = 0;
        let tls_pending = c.tls.as_ref().is_some_and(|t| t.wants_write());
        if !c.out.is_empty() || c.closing || tls_pending {
            self.flush_one(idx);
        }
    }
}
