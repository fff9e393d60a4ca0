//! When a closed-loop publisher sends: the refill threshold that turns a trickle of
//! window room into one send per half window. Sans-IO: the engine passes the window
//! state, this says how many messages to send now.
//!
//! Why: one subscriber receive completion frees a message or two in each of many
//! publishers' windows. Sending as soon as any room appears makes one `send` (and, on
//! loopback, the broker socket's whole receive path, which runs in the sender's
//! context) per one or two messages: that, not the receive path, was most of
//! loadgen's CPU per message. Waiting until half the window is free keeps at least
//! half of it in flight and makes every send carry at least half a window.

use ringmq::protocol::QoS;

/// Room below which a publisher with messages in flight waits: `send_batch`
/// (`--send-batch`) or else half the most it can ever have in flight (the window,
/// and at QoS >= 1 the broker's Receive Maximum); never above that most, never below
/// 1, so every window, even of 1, sends once it is empty.
pub fn refill_at(window: u32, server_receive_max: u32, qos: QoS, send_batch: Option<u32>) -> u32 {
    let cap = if qos == QoS::AtMostOnce {
        window
    } else {
        window.min(server_receive_max)
    };
    send_batch.unwrap_or(cap.div_ceil(2)).min(cap).max(1)
}

/// Messages to send now given `room` in the window: all of it once it reaches
/// `refill`, none before. A publisher with nothing in flight has the whole window
/// as room, which is always at least `refill`, so this never stalls a publisher.
pub fn gate(room: u32, refill: u32) -> u32 {
    if room >= refill {
        room
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refill_is_half_the_reachable_window() {
        assert_eq!(refill_at(16, u32::MAX, QoS::AtMostOnce, None), 8);
        assert_eq!(refill_at(17, u32::MAX, QoS::AtMostOnce, None), 9);
        assert_eq!(refill_at(1, u32::MAX, QoS::AtMostOnce, None), 1);
        // QoS >= 1: the broker's Receive Maximum caps what can be in flight.
        assert_eq!(refill_at(64, 10, QoS::AtLeastOnce, None), 5);
        assert_eq!(refill_at(64, 10, QoS::AtMostOnce, None), 32);
        assert_eq!(refill_at(64, 1, QoS::ExactlyOnce, None), 1);
    }

    #[test]
    fn send_batch_overrides_within_the_reachable_window() {
        assert_eq!(refill_at(16, u32::MAX, QoS::AtMostOnce, Some(1)), 1);
        assert_eq!(refill_at(16, u32::MAX, QoS::AtMostOnce, Some(16)), 16);
        // Above what the broker lets be in flight it could never be reached.
        assert_eq!(refill_at(64, 10, QoS::AtLeastOnce, Some(40)), 10);
    }

    #[test]
    fn gate_sends_a_half_window_or_nothing() {
        let refill = refill_at(16, u32::MAX, QoS::AtMostOnce, None);
        assert_eq!(gate(16, refill), 16);
        assert_eq!(gate(8, refill), 8);
        assert_eq!(gate(7, refill), 0);
        assert_eq!(gate(0, refill), 0);
        // A window of 1 sends whenever it has room.
        assert_eq!(gate(1, refill_at(1, u32::MAX, QoS::AtMostOnce, None)), 1);
    }

    #[test]
    fn an_empty_window_always_sends() {
        for window in 1..=300u32 {
            for rmax in [1, 2, 7, 64, u32::MAX] {
                for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                    for batch in [None, Some(1), Some(window), Some(window / 3 + 1)] {
                        let cap = if qos == QoS::AtMostOnce {
                            window
                        } else {
                            window.min(rmax)
                        };
                        let refill = refill_at(window, rmax, qos, batch);
                        assert!(
                            gate(cap, refill) == cap && cap > 0,
                            "{window} {rmax} {qos:?} {batch:?}"
                        );
                    }
                }
            }
        }
    }
}
