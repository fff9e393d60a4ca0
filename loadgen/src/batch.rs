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

/// The default window's budget at QoS 0: one subscriber's messages in flight stay
/// within ringmq's default `max_outbound_bytes` (1 MiB). Measured on fan-in 100 -> 1,
/// 64 B: windows of 128 (~1.0 MB in flight) lost nothing, 256 lost 69,163 messages.
const QOS0_INFLIGHT_BYTES: u64 = 1024 * 1024;
/// The default window's budget at QoS 1/2: ringmq's default `max_queued_messages`.
const QOS12_QUEUED_MESSAGES: u64 = 1000;
/// Bytes a loadgen PUBLISH takes beyond its payload (fixed header, topic, its length).
const FRAME_OVERHEAD_BYTES: u64 = 16;

/// `--window` when not given. QoS 0: the most messages per publisher that keep
/// `senders` publishers' messages to one subscriber within `QOS0_INFLIGHT_BYTES`,
/// clamped to 16..=128: below 16 every send carries too few messages (loadgen's CPU
/// per message is set by messages per send), above 128 the gain is small (fan-in
/// 100 -> 1: 0.31 us/msg at 16, 0.12 at 64, 0.08-0.10 at 128). QoS 1/2: the most
/// that keeps `senders` publishers' undelivered messages within ringmq's default
/// `max_queued_messages` (1,000), at most 16: a message the subscriber has received
/// leaves the window, but it holds one of the broker's in-flight slots until the
/// subscriber's PUBACK gets there, so every undelivered message can be queued at once
/// (fan-in 100 -> 1 at 16 per publisher: `queue_full` dropped 472 and 568 messages in
/// two of six runs; at 32, 10,584).
pub fn default_window(qos: QoS, senders: u64, size: usize) -> u32 {
    if qos != QoS::AtMostOnce {
        return (QOS12_QUEUED_MESSAGES / senders.max(1)).clamp(1, 16) as u32;
    }
    let frame = size as u64 + FRAME_OVERHEAD_BYTES;
    let fit = QOS0_INFLIGHT_BYTES / (senders.max(1) * frame);
    fit.clamp(16, 128) as u32
}

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
    fn default_window_fits_one_subscribers_outbound_at_qos0() {
        // Fan-in 100 -> 1, 64 B: 128 (100 x 128 x 80 B = 1.02 MB).
        assert_eq!(default_window(QoS::AtMostOnce, 100, 64), 128);
        // Larger payloads or more publishers: fewer, never below 16.
        assert_eq!(default_window(QoS::AtMostOnce, 100, 240), 40);
        assert_eq!(default_window(QoS::AtMostOnce, 100, 4096), 16);
        assert_eq!(default_window(QoS::AtMostOnce, 10_000, 64), 16);
        // One publisher per subscriber (pairs, fanout): the cap.
        assert_eq!(default_window(QoS::AtMostOnce, 1, 64), 128);
        // QoS 1/2: what the broker's default queue holds for one subscriber.
        assert_eq!(default_window(QoS::AtLeastOnce, 100, 64), 10);
        assert_eq!(default_window(QoS::AtLeastOnce, 50, 64), 16);
        assert_eq!(default_window(QoS::ExactlyOnce, 1, 64), 16);
        assert_eq!(default_window(QoS::AtLeastOnce, 5000, 64), 1);
    }

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
