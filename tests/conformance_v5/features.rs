//! MQTT 5.0 conformance: subscription identifiers, no local, shared subscriptions,
//! request/response and content properties, topic names and filters.

use super::*;

// Subscription identifiers, no local, shared subscriptions
// ----------------------------------------------------------------------------------

#[test]
fn mqtt_3_3_4_3_subscription_identifier_returned() {
    let b = Broker::two_shards();
    let mut s = c5(b.addr(), "sid");
    let mut plain = c5(b.addr(), "sidn");
    let mut p = c5(b.addr(), "sidp");
    let t = format!("sid/{}", uniq("t"));
    let ack = subscribe_v5(&mut s, 1, &p_var(0x0b, 7), &[(&t, 0)]);
    assert_eq!(ack.codes, vec![0]);
    sub_ok(&mut plain, &t, 0);
    p.publish_complete(&t, 0, false, 0, b"x");
    assert_eq!(s.recv_publish().props.sub_ids(), vec![7]);
    assert_eq!(plain.recv_publish().props.sub_ids(), Vec::<u32>::new());
}

#[test]
fn mqtt_3_3_4_4_overlapping_subscriptions_carry_all_identifiers() {
    let b = Broker::two_shards();
    let mut s = c5(b.addr(), "sido");
    let mut p = c5(b.addr(), "sidop");
    let u = uniq("t");
    let t = format!("sido/{u}/x");
    subscribe_v5(&mut s, 1, &p_var(0x0b, 7), &[(&format!("sido/{u}/#"), 0)]);
    subscribe_v5(&mut s, 2, &p_var(0x0b, 300), &[(&format!("sido/{u}/+"), 0)]);
    p.publish_complete(&t, 0, false, 0, b"x");
    // Either one message with both identifiers or one message per subscription.
    let first = s.recv_publish().props.sub_ids();
    let mut all = first.clone();
    if first.len() == 1 {
        all.extend(s.recv_publish().props.sub_ids());
    }
    all.sort_unstable();
    assert_eq!(all, vec![7, 300]);
    s.expect_silence();
}

#[test]
fn mqtt_3_8_3_3_no_local() {
    let b = Broker::two_shards();
    let mut c = c5(b.addr(), "nl");
    let mut other = c5(b.addr(), "nlo");
    let t = format!("nl/{}", uniq("t"));
    sub_ok(&mut c, &t, opts(1, true, false, 0));
    c.publish_complete(&t, 1, false, 1, b"mine");
    other.publish_complete(&t, 1, false, 1, b"theirs");
    let m = c.recv_publish_ack();
    assert_eq!(m.payload, b"theirs", "own message echoed despite No Local");
}

/// How long the shared group gets to deliver all its messages.
const GROUP_WAIT: Duration = Duration::from_secs(30);

#[test]
fn mqtt_4_8_2_shared_subscription_delivers_each_message_to_one_member() {
    let b = Broker::two_shards();
    let u = uniq("t");
    let t = format!("shr/{u}");
    let filter = format!("$share/g{u}/{t}");
    let mut members: Vec<RawClient> = (0..3).map(|_| c5(b.addr(), "shm")).collect();
    for m in &mut members {
        sub_ok(m, &filter, 1);
    }
    let mut all = c5(b.addr(), "shall");
    sub_ok(&mut all, &t, 1);
    let mut p = c5(b.addr(), "shp");
    const N: u16 = 30;
    for i in 1..=N {
        p.publish_complete(&t, 1, false, i, format!("{i}").as_bytes());
    }
    // The non-shared subscriber gets every message.
    for i in 1..=N {
        assert_eq!(all.recv_publish_ack().payload, format!("{i}").as_bytes());
    }
    // Then each message reached exactly one member of the group. The members' copies
    // travel apart from `all`'s (another loop, possibly), so they may still be on
    // their way: read round the members until all N came, bounded by a deadline on
    // the whole, not on each round (a loaded runner can leave every member quiet for
    // one short read).
    let mut got: Vec<u16> = Vec::new();
    let deadline = std::time::Instant::now() + GROUP_WAIT;
    while got.len() < N as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "group delivered {} of {N} messages within {GROUP_WAIT:?}: {got:?}",
            got.len()
        );
        for m in &mut members {
            if let ReadOutcome::Frame(f) = m.read_frame_within(Duration::from_millis(200)) {
                assert_eq!(f.ptype(), 3, "{f:?}");
                let msg = PublishMsg::parse(V5, &f);
                m.ack_received(&msg);
                got.push(std::str::from_utf8(&msg.payload).unwrap().parse().unwrap());
            }
        }
    }
    got.sort_unstable();
    assert_eq!(got, (1..=N).collect::<Vec<_>>());
    for m in &mut members {
        m.expect_silence();
    }
}

#[test]
fn mqtt_4_8_2_shared_subscription_gets_no_retained_on_subscribe() {
    // Mosquitto 2.0.11 deviates: it sends the retained message to the shared subscriber.
    // 4.8.2: retained messages are not sent to a session subscribing to a shared subscription.
    let b = Broker::two_shards();
    let u = uniq("t");
    let t = format!("shr/{u}");
    let mut p = c5(b.addr(), "shrp");
    p.publish_complete(&t, 1, true, 1, b"retained");
    let mut m = c5(b.addr(), "shrm");
    sub_ok(&mut m, &format!("$share/g{u}/{t}"), 1);
    m.expect_silence();
}

// ----------------------------------------------------------------------------------
// Request / response, content properties (3.3.2.3)
// ----------------------------------------------------------------------------------

#[test]
fn mqtt_3_3_2_passthrough_of_application_properties() {
    let b = Broker::two_shards();
    let mut s = c5(b.addr(), "rrs");
    let mut p = c5(b.addr(), "rrp");
    let t = format!("rr/{}", uniq("t"));
    sub_ok(&mut s, &t, 1);
    let props = [
        p_u8(0x01, 1),
        p_str(0x08, "resp/topic"),
        p_bin(0x09, b"\x00corr\xff"),
        p_pair("a", "1"),
        p_pair("a", "2"),
        p_pair("b", "3"),
        p_str(0x03, "text/plain"),
    ]
    .concat();
    publish_props(&mut p, &t, 1, false, 4, &props, "héllo".as_bytes());
    let m = s.recv_publish_ack();
    assert_eq!(m.payload, "héllo".as_bytes());
    assert_eq!(
        m.props.byte(0x01),
        Some(1),
        "MQTT-3.3.2-4: payload format indicator"
    );
    assert_eq!(
        m.props.str(0x08),
        Some("resp/topic"),
        "MQTT-3.3.2-15: response topic"
    );
    assert_eq!(
        m.props.bin(0x09),
        Some(&b"\x00corr\xff"[..]),
        "MQTT-3.3.2-16: correlation data"
    );
    assert_eq!(
        m.props.str(0x03),
        Some("text/plain"),
        "MQTT-3.3.2-20: content type"
    );
    assert_eq!(
        m.props.user_props(),
        vec![
            ("a".into(), "1".into()),
            ("a".into(), "2".into()),
            ("b".into(), "3".into())
        ],
        "MQTT-3.3.2-17/18: user properties unchanged and in order"
    );
}

#[test]
fn mqtt_3_3_2_passthrough_decoded_by_codec() {
    let b = Broker::two_shards();
    let mut s = c5(b.addr(), "rrcs");
    let mut p = c5(b.addr(), "rrcp");
    let t = format!("rrc/{}", uniq("t"));
    sub_ok(&mut s, &t, 0);
    let props = [p_str(0x08, "resp"), p_bin(0x09, b"id-1"), p_pair("k", "v")].concat();
    publish_props(&mut p, &t, 0, false, 0, &props, b"req");
    match s.recv_packet(V5) {
        ringmq::protocol::Packet::Publish(m) => {
            assert_eq!(&m.topic[..], t.as_bytes());
            assert_eq!(&m.payload[..], b"req");
            assert_eq!(
                m.properties.rare.response_topic.as_deref(),
                Some(&b"resp"[..])
            );
            assert_eq!(
                m.properties.rare.correlation_data.as_deref(),
                Some(&b"id-1"[..])
            );
            assert_eq!(m.properties.rare.user_properties.len(), 1);
            assert_eq!(&m.properties.rare.user_properties[0].0[..], b"k");
            assert_eq!(&m.properties.rare.user_properties[0].1[..], b"v");
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

#[test]
fn mqtt_3_3_2_6_message_expiry_forwarded_and_not_increased() {
    let b = Broker::two_shards();
    let mut s = c5(b.addr(), "mes");
    let mut p = c5(b.addr(), "mep");
    let t = format!("me/{}", uniq("t"));
    sub_ok(&mut s, &t, 1);
    publish_props(&mut p, &t, 1, false, 1, &p_u32(0x02, 100), b"x");
    let m = s.recv_publish_ack();
    let left = m
        .props
        .four(0x02)
        .expect("Message Expiry Interval must be forwarded");
    assert!((90..=100).contains(&left), "expiry {left}");
}

#[test]
fn mqtt_3_3_2_5_expired_message_not_delivered() {
    let b = Broker::two_shards();
    let id = uniq("mex");
    let t = format!("mex/{}", uniq("t"));
    let (mut s, _) = RawClient::connect_v5_with(b.addr(), &persistent(&id, 60));
    sub_ok(&mut s, &t, 1);
    s.disconnect();
    let mut p = c5(b.addr(), "mexp");
    publish_props(&mut p, &t, 1, false, 1, &p_u32(0x02, 1), b"expires");
    publish_props(&mut p, &t, 1, false, 2, &[], b"stays");
    std::thread::sleep(Duration::from_millis(2500));
    let (mut s, ack) = RawClient::connect_v5_with(b.addr(), &persistent(&id, 60));
    assert!(ack.session_present);
    let m = s.recv_publish_ack();
    assert_eq!(m.payload, b"stays", "an expired message was delivered");
}

// ----------------------------------------------------------------------------------
// 4.7 Topic names and filters
// ----------------------------------------------------------------------------------

#[test]
fn mqtt_4_7_2_1_wildcards_do_not_match_dollar_topics() {
    let b = Broker::two_shards();
    let u = uniq("t");
    let dollar = format!("${u}/{u}");
    let plain = format!("s/{u}");
    let mut hash = c5(b.addr(), "dhash");
    sub_ok(&mut hash, "#", 0);
    let mut plus = c5(b.addr(), "dplus");
    sub_ok(&mut plus, &format!("+/{u}"), 0);
    let mut exact = c5(b.addr(), "dexact");
    sub_ok(&mut exact, &format!("${u}/#"), 0);
    let mut p = c5(b.addr(), "dpub");
    p.publish_complete(&dollar, 0, false, 0, b"dollar");
    p.publish_complete(&plain, 0, false, 0, b"plain");
    loop {
        let m = hash.recv_publish();
        assert!(!m.topic.starts_with('$'), "'#' matched {}", m.topic);
        if m.topic == plain {
            break;
        }
    }
    assert_eq!(plus.recv_publish().topic, plain);
    let m = exact.recv_publish();
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        (dollar.as_str(), &b"dollar"[..])
    );
}
