//! The WebSocket transform driven in memory: upgrade answers and refusals (each with
//! its HTTP status), framing split at every byte, control frames, and every protocol
//! error with the close code it gets.

use std::sync::Arc;

use proptest::prelude::*;

use super::frame::unmask;
use super::{WsConfig, WsError, WsSession};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn request(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

fn mqtt_request() -> Vec<u8> {
    request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n")
}

fn session(config: WsConfig) -> WsSession {
    WsSession::new(Arc::new(config))
}

/// Feeds `input` as one read; returns the MQTT bytes it gave.
fn feed(s: &mut WsSession, input: &[u8]) -> Vec<u8> {
    let mut buf = b"keep".to_vec();
    s.restore_pending(&mut buf);
    buf.extend_from_slice(input);
    s.on_recv(&mut buf, 4);
    assert_eq!(&buf[..4], b"keep", "bytes before start are the caller's");
    buf[4..].to_vec()
}

fn open() -> WsSession {
    let mut s = session(WsConfig::default());
    assert!(feed(&mut s, &mqtt_request()).is_empty());
    let out = String::from_utf8(s.take_out()).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{out}"
    );
    s
}

/// A masked client frame.
fn frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut v = vec![first];
    match payload.len() {
        n if n < 126 => v.push(0x80 | n as u8),
        n if n < 65536 => {
            v.push(0x80 | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(0x80 | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    v.extend_from_slice(&mask);
    let mut p = payload.to_vec();
    unmask(&mut p, mask, 0);
    v.extend_from_slice(&p);
    v
}

fn binary(payload: &[u8]) -> Vec<u8> {
    frame(0x82, payload, [0x12, 0x34, 0x56, 0x78])
}

fn status_of(out: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(out);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

/// The close code of the server frame in `out` (the last frame there).
fn close_code_of(out: &[u8]) -> u16 {
    let n = out.len();
    assert_eq!(
        out[n - 4..n - 2],
        [0x88, 0x02],
        "a close frame with a code: {out:?}"
    );
    u16::from_be_bytes([out[n - 2], out[n - 1]])
}

#[test]
fn upgrade_answers_with_the_rfc_accept_key_and_the_mqtt_subprotocol() {
    let mut s = session(WsConfig::default());
    feed(&mut s, &mqtt_request());
    let out = String::from_utf8(s.take_out()).unwrap();
    // RFC 6455 section 1.3's example key and answer.
    assert!(
        out.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{out}"
    );
    assert!(out.contains("Sec-WebSocket-Protocol: mqtt\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\n"));
    assert!(!s.ended());
}

#[test]
fn mqttv31_is_accepted_and_mqtt_is_preferred() {
    let mut s = session(WsConfig::default());
    feed(
        &mut s,
        &request("/mqtt", "Sec-WebSocket-Protocol: mqttv3.1\r\n"),
    );
    let out = String::from_utf8(s.take_out()).unwrap();
    assert!(
        out.contains("Sec-WebSocket-Protocol: mqttv3.1\r\n"),
        "{out}"
    );
    let mut s = session(WsConfig::default());
    feed(
        &mut s,
        &request("/mqtt?x=1", "Sec-WebSocket-Protocol: mqttv3.1, MQTT\r\n"),
    );
    let out = String::from_utf8(s.take_out()).unwrap();
    assert!(out.contains("Sec-WebSocket-Protocol: mqtt\r\n"), "{out}");
}

#[test]
fn a_request_split_at_every_byte_upgrades() {
    let mut s = session(WsConfig::default());
    let req = mqtt_request();
    let mut got = Vec::new();
    let mut input = req.clone();
    input.extend(binary(&[0x10, 0x00]));
    for b in &input {
        got.extend(feed(&mut s, std::slice::from_ref(b)));
    }
    assert_eq!(
        got,
        [0x10, 0x00],
        "frames right behind the request are read too"
    );
    assert_eq!(status_of(&s.take_out()), 101);
}

fn refused(config: WsConfig, input: &[u8]) -> (u16, String, WsError) {
    let mut s = session(config);
    assert!(
        feed(&mut s, input).is_empty(),
        "no MQTT bytes from a refused upgrade"
    );
    assert!(s.ended());
    let out = s.take_out();
    let err = s.error().cloned().expect("an error");
    (status_of(&out), String::from_utf8(out).unwrap(), err)
}

#[test]
fn refusals_carry_an_http_status_and_say_why() {
    let d = WsConfig::default;
    let (st, body, _) = refused(d(), &request("/other", "Sec-WebSocket-Protocol: mqtt\r\n"));
    assert_eq!(st, 404);
    assert!(body.contains("served at /mqtt"), "{body}");
    let no_key = b"GET /mqtt HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";
    let (st, body, _) = refused(d(), no_key);
    assert_eq!(st, 400);
    assert!(body.contains("Sec-WebSocket-Key missing"), "{body}");
    let (st, body, e) = refused(d(), &request("/mqtt", ""));
    assert_eq!((st, e), (400, WsError::NoMqttSubprotocol));
    assert!(body.contains("mqtt"), "{body}");
    let (st, _, _) = refused(d(), &request("/mqtt", "Sec-WebSocket-Protocol: chat\r\n"));
    assert_eq!(st, 400);
    let (st, _, _) = refused(d(), b"POST /mqtt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(st, 405);
    let (st, body, _) = refused(d(), b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(st, 426);
    assert!(body.contains("Upgrade: websocket"), "{body}");
    let (st, _, _) = refused(d(), b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00");
    assert_eq!(
        st, 400,
        "garbage (here a raw MQTT CONNECT) before the upgrade"
    );
}

#[test]
fn origins_are_checked_when_a_list_is_set() {
    let config = || WsConfig {
        allowed_origins: vec!["https://app.example".into()],
        ..WsConfig::default()
    };
    let bad = request(
        "/mqtt",
        "Sec-WebSocket-Protocol: mqtt\r\nOrigin: https://evil.example\r\n",
    );
    let (st, _, e) = refused(config(), &bad);
    assert_eq!((st, e), (403, WsError::ForbiddenOrigin));
    let good = request(
        "/mqtt",
        "Sec-WebSocket-Protocol: mqtt\r\nOrigin: https://app.example\r\n",
    );
    let mut s = session(config());
    feed(&mut s, &good);
    assert_eq!(status_of(&s.take_out()), 101);
    // No Origin: not a browser, the list does not apply.
    let mut s = session(config());
    feed(&mut s, &mqtt_request());
    assert_eq!(status_of(&s.take_out()), 101);
    // Any origin without a list.
    let mut s = session(WsConfig::default());
    feed(&mut s, &bad);
    assert_eq!(status_of(&s.take_out()), 101);
}

#[test]
fn an_oversized_request_is_refused_with_431_before_it_ends() {
    let mut s = session(WsConfig::default());
    let mut head = b"GET /mqtt HTTP/1.1\r\n".to_vec();
    feed(&mut s, &head);
    head.clear();
    let mut refused = false;
    for i in 0..1000 {
        feed(
            &mut s,
            format!("X-Pad-{i}: {}\r\n", "a".repeat(100)).as_bytes(),
        );
        if s.ended() {
            refused = true;
            break;
        }
    }
    assert!(refused, "an endless header is refused");
    assert_eq!(status_of(&s.take_out()), 431);
}

#[test]
fn packets_spanning_frames_and_frames_holding_packets() {
    let mut s = open();
    let connect = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00".to_vec();
    let pingreq = [0xc0u8, 0x00];
    let mut wire = binary(&connect[..5]);
    wire.extend(binary(&connect[5..]));
    let mut both = pingreq.to_vec();
    both.extend_from_slice(&pingreq);
    wire.extend(binary(&both));
    wire.extend(binary(&[])); // an empty frame is legal and gives nothing
    let mut expect = connect.clone();
    expect.extend_from_slice(&both);
    // Every split of the wire into two reads gives the same bytes.
    for cut in 0..=wire.len() {
        let mut s = open();
        let mut got = feed(&mut s, &wire[..cut]);
        got.extend(feed(&mut s, &wire[cut..]));
        assert_eq!(got, expect, "cut at {cut}");
        assert!(!s.ended());
        assert!(s.take_out().is_empty(), "nothing to answer");
    }
    assert_eq!(feed(&mut s, &wire), expect);
}

#[test]
fn fragmented_messages_and_interleaved_pings() {
    let mut s = open();
    let mask = [1, 2, 3, 4];
    let mut wire = frame(0x02, b"ab", mask); // binary, not final
    wire.extend(frame(0x89, b"hi", mask)); // ping in between
    wire.extend(frame(0x00, b"cd", mask)); // continuation
    wire.extend(frame(0x80, b"ef", mask)); // final continuation
    wire.extend(frame(0x8a, b"", mask)); // unsolicited pong: ignored
    assert_eq!(feed(&mut s, &wire), b"abcdef");
    assert_eq!(
        s.take_out(),
        [0x8a, 0x02, b'h', b'i'],
        "one pong, same payload"
    );
    // A continuation with no message open.
    let mut s = open();
    feed(&mut s, &frame(0x80, b"x", mask));
    assert_eq!(close_code_of(&s.take_out()), 1002);
    // A new message inside an open one.
    let mut s = open();
    feed(&mut s, &frame(0x02, b"x", mask));
    feed(&mut s, &binary(b"y"));
    assert_eq!(close_code_of(&s.take_out()), 1002);
}

#[test]
fn a_close_frame_is_echoed_after_the_bytes_before_it() {
    let mut s = open();
    let mut wire = binary(&[0xe0, 0x00]);
    wire.extend(frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e'], [9, 9, 9, 9]));
    wire.extend(binary(&[0xc0, 0x00])); // after the close: ignored
    assert_eq!(feed(&mut s, &wire), [0xe0, 0x00]);
    assert!(s.ended());
    assert!(s.error().is_none(), "a clean close");
    assert_eq!(close_code_of(&s.take_out()), 1000);
    s.write(b"late");
    assert!(s.take_out().is_empty(), "no data frames after a close");
    // No code: answered with 1000; an invalid code: 1002.
    let mut s = open();
    feed(&mut s, &frame(0x88, &[], [1, 1, 1, 1]));
    assert_eq!(close_code_of(&s.take_out()), 1000);
    let mut s = open();
    feed(&mut s, &frame(0x88, &[0x03, 0xed], [1, 1, 1, 1])); // 1005 may not be sent
    assert_eq!(close_code_of(&s.take_out()), 1002);
}

fn closes_with(wire: &[u8], config: WsConfig) -> (u16, WsError) {
    let mut s = session(config);
    feed(&mut s, &mqtt_request());
    s.take_out();
    let got = feed(&mut s, wire);
    assert!(got.is_empty(), "nothing from a bad frame reaches MQTT");
    assert!(s.ended());
    (close_code_of(&s.take_out()), s.error().cloned().unwrap())
}

#[test]
fn protocol_errors_close_with_their_codes() {
    let d = WsConfig::default;
    assert_eq!(
        closes_with(&frame(0x81, b"{}", [1, 2, 3, 4]), d()),
        (1003, WsError::TextFrame)
    );
    let unmasked = [0x82, 0x02, 0x10, 0x00];
    assert_eq!(closes_with(&unmasked, d()), (1002, WsError::Unmasked));
    assert_eq!(
        closes_with(&frame(0x83, b"", [1, 2, 3, 4]), d()),
        (1002, WsError::BadOpcode)
    );
    assert_eq!(
        closes_with(&frame(0x8b, b"", [1, 2, 3, 4]), d()),
        (1002, WsError::BadOpcode)
    );
    assert_eq!(
        closes_with(&frame(0xc2, b"", [1, 2, 3, 4]), d()),
        (1002, WsError::ReservedBits)
    );
    let big_ping = frame(0x89, &[0; 126], [1, 2, 3, 4]);
    assert_eq!(
        closes_with(&big_ping, d()),
        (1002, WsError::BadControlFrame)
    );
    let split_ping = frame(0x09, b"", [1, 2, 3, 4]);
    assert_eq!(
        closes_with(&split_ping, d()),
        (1002, WsError::BadControlFrame)
    );
    let small = WsConfig {
        max_frame_bytes: 16,
        ..WsConfig::default()
    };
    assert_eq!(
        closes_with(&binary(&[0; 17]), small.clone()),
        (1009, WsError::FrameTooLarge(17))
    );
    // Only the header is needed to refuse: the payload never has to arrive.
    let header_only = &binary(&[0; 70_000])[..14];
    assert_eq!(
        closes_with(header_only, small),
        (1009, WsError::FrameTooLarge(70_000))
    );
}

#[test]
fn each_flush_is_one_binary_frame() {
    for n in [0usize, 1, 125, 126, 65_535, 65_536, 100_000] {
        let mut s = open();
        let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
        s.write(&payload);
        let out = s.take_out();
        if n == 0 {
            assert!(out.is_empty(), "nothing to flush, no frame");
            continue;
        }
        assert_eq!(out[0], 0x82, "FIN + binary");
        assert_eq!(out[1] & 0x80, 0, "servers do not mask");
        let (len, at) = match out[1] {
            126 => (u16::from_be_bytes([out[2], out[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(out[2..10].try_into().unwrap()) as usize,
                10,
            ),
            l => (l as usize, 2),
        };
        assert_eq!((len, &out[at..]), (n, &payload[..]));
    }
}

#[test]
fn pending_bytes_stay_small_between_reads() {
    let mut s = open();
    // A frame header cut short, then a ping cut inside its payload.
    let mut wire = binary(&[0u8; 300]);
    wire.extend(frame(0x89, &[7; 100], [5, 6, 7, 8]));
    let got = feed(&mut s, &wire[..3]);
    assert!(got.is_empty());
    let got = feed(&mut s, &wire[3..wire.len() - 50]);
    assert_eq!(got.len(), 300);
    let mut buf = Vec::new();
    s.restore_pending(&mut buf);
    assert!(
        buf.len() <= 139,
        "only the incomplete control frame waits: {}",
        buf.len()
    );
    let mut s2 = open();
    feed(&mut s2, &wire);
    assert_eq!(s2.take_out().len(), 102, "a pong of the ping's 100 bytes");
}

proptest! {
    /// Any frames of any sizes, cut into reads anywhere, give the concatenated
    /// payloads; masks and mask offsets across reads are undone exactly.
    #[test]
    fn any_framing_and_any_reads_give_the_stream(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..8),
        masks in prop::collection::vec(any::<[u8; 4]>(), 8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut wire = Vec::new();
        let mut expect = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            wire.extend(frame(0x82, p, masks[i]));
            expect.extend_from_slice(p);
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        points.push(0);
        points.push(wire.len());
        points.sort_unstable();
        let mut s = open();
        let mut got = Vec::new();
        for w in points.windows(2) {
            got.extend(feed(&mut s, &wire[w[0]..w[1]]));
        }
        prop_assert_eq!(got, expect);
        prop_assert!(!s.ended());
    }
}

/// The committed fuzz seeds (and any crash inputs added to them) replay here.
#[test]
fn fuzz_seeds_replay() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz/seeds/ws_frame");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("the ws_frame seeds") {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        super::check_session(&data);
        n += 1;
    }
    assert!(n >= 5, "seeds found: {n}");
}

/// What an idle WebSocket connection costs beyond plain TCP is this box (and nothing
/// else: its buffers are empty between reads). Kept small on purpose: a rustls
/// connection inline would make every ws connection pay for TLS.
#[test]
fn an_idle_websocket_costs_one_small_box() {
    let size = std::mem::size_of::<crate::transport::Transport>();
    assert!(size <= 128, "Transport is {size} bytes");
    let mut s = open();
    feed(&mut s, &binary(&[0xc0, 0x00]));
    let mut held = Vec::new();
    s.restore_pending(&mut held);
    assert!(held.is_empty() && s.take_out().is_empty());
}

#[test]
fn a_close_by_the_broker_is_a_close_frame_or_a_503() {
    let mut s = open();
    s.write(&[0xe0, 0x00]);
    s.close();
    let out = s.take_out();
    assert_eq!(out[..4], [0x82, 0x02, 0xe0, 0x00], "the last output first");
    assert_eq!(close_code_of(&out), 1000);
    s.write(b"late");
    s.close();
    assert!(s.take_out().is_empty(), "once only, nothing after");
    let mut s = session(WsConfig::default());
    feed(&mut s, b"GET /mqtt HTTP/1.1\r\n");
    s.close();
    let out = s.take_out();
    assert_eq!(status_of(&out), 503);
    assert!(String::from_utf8_lossy(&out).contains("connect_timeout_ms"));
    assert!(s.ended());
}
