//! Authentication and ACLs through the shard: CONNACK codes for each refusal, the
//! verifier round trip and its cache, the failure limit, PUBLISH/SUBSCRIBE/delivery
//! checks, wills, `$SYS`, and a reload under live connections.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use smallvec::smallvec;

use super::cfg;
use crate::auth::{AclFile, AuthPolicy, PasswordFile, StoredHash};
use crate::protocol::{
    encode_packet, Packet, Properties, ProtocolVersion, PubResp, QoS, ReasonCode, Subscribe,
    SubscriptionOptions,
};
use crate::shard::harness::*;
use crate::shard::{Action, Shard};

const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;

const ACL: &str = "\
topic read public/#
user alice
topic readwrite a/#
topic deny a/secret/#
topic read $SYS/#
user bob
topic readwrite #
pattern write dev/%c/out
";

fn policy(acl: &str, anonymous: bool) -> Arc<AuthPolicy> {
    let mut pw = PasswordFile::default();
    for (u, p) in [("alice", "wonderland"), ("bob", "builder")] {
        pw.upsert(u, StoredHash::new_pbkdf2(p.as_bytes(), b"0123456789ab", 1));
    }
    Arc::new(AuthPolicy::new(
        Some(pw),
        Some(AclFile::parse(acl).unwrap()),
        anonymous,
    ))
}

fn cluster(shards: usize, p: Arc<AuthPolicy>) -> Cluster {
    let mut cl = Cluster::new(shards, cfg());
    for s in &mut cl.shards {
        s.set_auth(p.clone());
    }
    cl
}

fn login(user: &str, pw: &str) -> ConnectOpts {
    ConnectOpts {
        username: Some(Bytes::copy_from_slice(user.as_bytes())),
        password: Some(Bytes::copy_from_slice(pw.as_bytes())),
        ..Default::default()
    }
}

fn stats(cl: &Cluster) -> crate::shard::ShardStats {
    cl.shards[0].stats().clone()
}

#[test]
fn wrong_password_unknown_user_and_anonymous_get_their_codes() {
    let mut cl = cluster(1, policy(ACL, false));
    // 3.1.1: return code 4 (bad user name or password), on the wire.
    let c = cl.connect(V311, "c1", login("alice", "nope"));
    assert_eq!(cl.clients[c].raw, vec![0x20, 0x02, 0x00, 0x04]);
    cl.expect_closed(c);
    let c = cl.connect(V311, "c2", login("mallory", "x"));
    assert_eq!(cl.clients[c].raw, vec![0x20, 0x02, 0x00, 0x04]);
    // Anonymous, not allowed: return code 5 (not authorized).
    let c = cl.connect(V311, "c3", ConnectOpts::default());
    assert_eq!(cl.clients[c].raw, vec![0x20, 0x02, 0x00, 0x05]);
    cl.expect_closed(c);
    // MQTT 5: 0x86 and 0x87.
    let c = cl.connect(V5, "c4", login("alice", "nope"));
    cl.expect(
        c,
        connack(
            false,
            ReasonCode::BadUserNameOrPassword,
            Properties::default(),
        ),
    );
    cl.expect_closed(c);
    let c = cl.connect(V5, "c5", ConnectOpts::default());
    cl.expect(
        c,
        connack(false, ReasonCode::NotAuthorized, Properties::default()),
    );
    let st = stats(&cl);
    assert_eq!((st.auth_bad_credentials, st.auth_not_authorized), (3, 2));
    // The wrong password went through the verifier; the unknown user did not.
    assert_eq!(st.auth_verified, 0);
}

#[test]
fn right_password_is_verified_once_then_cached() {
    let mut cl = cluster(1, policy(ACL, false));
    let c = cl.connect_ok(V311, "c1", login("alice", "wonderland"), false);
    cl.drop_connection(c);
    let c = cl.connect_ok(V311, "c1", login("alice", "wonderland"), false);
    cl.expect_open(c);
    let st = stats(&cl);
    assert_eq!((st.auth_verified, st.auth_cache_hits), (1, 1));
}

#[test]
fn connect_waits_for_the_verifier_and_keeps_what_arrives_meanwhile() {
    let mut shard = Shard::new(0, 1, Arc::new(cfg()));
    shard.set_auth(policy(ACL, false));
    let now = std::time::Instant::now();
    let conn = shard.accept(peer(), now);
    let mut buf = BytesMut::new();
    encode_packet(
        &connect_packet(V311, "c1", &login("alice", "wonderland")),
        ProtocolVersion::V311,
        &mut buf,
    );
    // A SUBSCRIBE right behind the CONNECT, before the answer.
    let sub = Packet::Subscribe(Subscribe {
        packet_id: 7,
        filters: smallvec![(Bytes::from_static(b"a/x"), SubscriptionOptions::default())],
        properties: Properties::default(),
    });
    encode_packet(&sub, ProtocolVersion::V311, &mut buf);
    shard.on_read(conn, &buf, now);
    let Some(Action::Verify {
        conn: vc,
        generation,
    }) = shard.poll_action()
    else {
        panic!("expected a Verify action");
    };
    assert_eq!(vc, conn);
    assert!(shard
        .take_verify_job(conn, generation.wrapping_add(1))
        .is_none());
    let job = shard.take_verify_job(conn, generation).expect("the job");
    assert!(
        shard.take_verify_job(conn, generation).is_none(),
        "taken once"
    );
    assert!(
        shard.take_tx(conn).is_none(),
        "nothing answered before the verifier"
    );
    // A stale answer (another generation) changes nothing.
    shard.on_verified(
        conn,
        generation.wrapping_add(1),
        Some(crate::auth::Verified::Denied),
        now,
    );
    assert!(shard.take_tx(conn).is_none());
    shard.on_verified(conn, generation, Some(job.run(0)), now);
    let out = shard.take_tx(conn).expect("CONNACK and SUBACK");
    assert_eq!(
        &out[..],
        &[0x20, 0x02, 0x00, 0x00, 0x90, 0x03, 0x00, 0x07, 0x00]
    );
}

#[test]
fn a_full_verifier_queue_is_answered_busy() {
    let mut shard = Shard::new(0, 1, Arc::new(cfg()));
    shard.set_auth(policy(ACL, false));
    let now = std::time::Instant::now();
    let conn = shard.accept(peer(), now);
    let mut buf = BytesMut::new();
    encode_packet(
        &connect_packet(V311, "c1", &login("alice", "wonderland")),
        ProtocolVersion::V311,
        &mut buf,
    );
    shard.on_read(conn, &buf, now);
    let Some(Action::Verify { generation, .. }) = shard.poll_action() else {
        panic!("expected a Verify action");
    };
    shard.on_verified(conn, generation, None, now);
    // 3.x return code 3 (server unavailable), then closed.
    assert_eq!(&shard.take_tx(conn).unwrap()[..], &[0x20, 0x02, 0x00, 0x03]);
    assert_eq!(shard.stats().auth_pool_busy, 1);
}

#[test]
fn failed_attempts_are_rate_limited_per_address() {
    let mut cl = cluster(1, policy(ACL, false));
    let limit = crate::shard::auth::FAILURES_PER_WINDOW as u64;
    for i in 0..limit + 5 {
        let c = cl.connect(V5, &format!("b{i}"), login("alice", "guess"));
        cl.expect(
            c,
            connack(
                false,
                ReasonCode::BadUserNameOrPassword,
                Properties::default(),
            ),
        );
    }
    let st = stats(&cl);
    assert_eq!((st.auth_verified, st.auth_rate_limited), (0, 5));
    assert_eq!(st.auth_bad_credentials, limit + 5);
    // The window passes: the right password works again.
    cl.advance(crate::shard::auth::FAILURE_WINDOW);
    cl.connect_ok(V5, "ok", login("alice", "wonderland"), false);
}

#[test]
fn denied_publish_v5_gets_0x87_and_3x_is_dropped() {
    let mut cl = cluster(1, policy(ACL, false));
    let bob = cl.connect_ok(V311, "bob", login("bob", "builder"), false);
    cl.subscribe(bob, "#", Q1);
    let a5 = cl.connect_ok(V5, "a5", login("alice", "wonderland"), false);
    cl.publish(a5, "b/x", "no", Q1, false, 1);
    cl.expect(
        a5,
        Packet::PubAck(PubResp {
            packet_id: 1,
            code: ReasonCode::NotAuthorized,
            properties: Properties::default(),
        }),
    );
    let a3 = cl.connect_ok(V311, "a3", login("alice", "wonderland"), false);
    cl.publish(a3, "b/x", "no", Q1, false, 2);
    cl.expect(a3, puback(2));
    cl.expect_nothing(bob);
    // Allowed topics still flow, and both clients stay connected.
    cl.publish(a3, "a/x", "yes", Q1, false, 3);
    cl.expect(a3, puback(3));
    assert!(matches!(cl.next(bob), Some(Packet::Publish(p)) if &p.topic[..] == b"a/x"));
    cl.expect_open(a5);
    cl.expect_open(a3);
    assert_eq!(stats(&cl).acl_denied_publish, 2);
}

#[test]
fn denied_subscribe_refuses_that_filter_alone() {
    let mut cl = cluster(1, policy(ACL, false));
    let a = cl.connect_ok(V5, "a", login("alice", "wonderland"), false);
    cl.send(
        a,
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: smallvec![
                (Bytes::from_static(b"a/x"), SubscriptionOptions::default()),
                (
                    Bytes::from_static(b"a/secret/#"),
                    SubscriptionOptions::default()
                ),
                (Bytes::from_static(b"b/#"), SubscriptionOptions::default()),
            ],
            properties: Properties::default(),
        }),
    );
    cl.expect(
        a,
        suback(
            1,
            &[
                ReasonCode::Success,
                ReasonCode::NotAuthorized,
                ReasonCode::NotAuthorized,
            ],
        ),
    );
    let a3 = cl.connect_ok(V311, "a3", login("alice", "wonderland"), false);
    cl.clients[a3].raw.clear();
    cl.subscribe_with(
        a3,
        "b/#",
        SubscriptionOptions::default(),
        Properties::default(),
    );
    assert_eq!(cl.clients[a3].raw, vec![0x90, 0x03, 0x00, 0x01, 0x80]);
    assert_eq!(stats(&cl).acl_denied_subscribe, 3);
}

#[test]
fn wildcard_subscription_does_not_leak_a_denied_topic() {
    let mut cl = cluster(1, policy(ACL, false));
    let a = cl.connect_ok(V311, "a", login("alice", "wonderland"), false);
    cl.subscribe(a, "a/#", Q0);
    let bob = cl.connect_ok(V311, "bob", login("bob", "builder"), false);
    cl.publish(bob, "a/secret/plans", "hidden", Q0, false, 0);
    cl.expect_nothing(a);
    cl.publish(bob, "a/open", "shown", Q0, false, 0);
    cl.expect(a, pubp("a/open", "shown", Q0, false, 0));
    assert_eq!(stats(&cl).acl_denied_delivery, 1);
}

/// Retained messages are deliveries too: a wildcard subscription streams only the
/// retained topics the client may read; the others are counted.
#[test]
fn retained_messages_do_not_leak_a_denied_topic() {
    let mut cl = cluster(1, policy(ACL, false));
    let bob = cl.connect_ok(V311, "bob", login("bob", "builder"), false);
    cl.publish(bob, "a/secret/plans", "hidden", Q0, true, 0);
    cl.publish(bob, "a/open", "shown", Q0, true, 0);
    let a = cl.connect_ok(V311, "a", login("alice", "wonderland"), false);
    cl.subscribe(a, "a/#", Q0);
    cl.expect(a, pubp("a/open", "shown", Q0, true, 0));
    cl.expect_nothing(a);
    assert_eq!(stats(&cl).acl_denied_delivery, 1);
}

/// Live delivery skips the read check only while every subscription is readable in
/// full: one more subscription that overlaps a deny turns the check back on.
#[test]
fn the_read_check_returns_with_a_partly_denied_subscription() {
    let mut cl = cluster(1, policy(ACL, false));
    let a = cl.connect_ok(V311, "a", login("alice", "wonderland"), false);
    let bob = cl.connect_ok(V311, "bob", login("bob", "builder"), false);
    cl.subscribe(a, "a/open/#", Q0);
    cl.publish(bob, "a/open/1", "1", Q0, false, 0);
    cl.expect(a, pubp("a/open/1", "1", Q0, false, 0));
    cl.subscribe(a, "a/#", Q0);
    cl.publish(bob, "a/secret/plans", "hidden", Q0, false, 0);
    cl.expect_nothing(a);
    assert_eq!(stats(&cl).acl_denied_delivery, 1);
    // Shared subscriptions are judged by their filter without the group.
    let s = cl.connect_ok(V311, "s", login("alice", "wonderland"), false);
    cl.subscribe(s, "$share/g/a/#", Q0);
    cl.publish(bob, "a/secret/more", "hidden", Q0, false, 0);
    cl.expect_nothing(s);
    cl.expect_nothing(a);
    assert_eq!(stats(&cl).acl_denied_delivery, 3);
}

/// A kept session's subscriptions set the read grant when it is resumed, as a
/// SUBSCRIBE does; one that overlaps a deny keeps the check on.
#[test]
fn a_resumed_session_gets_its_read_grant_from_its_subscriptions() {
    let granted = |cl: &Cluster| {
        cl.shards[0]
            .conns
            .iter()
            .filter(|(_, c)| c.state == crate::shard::conn::ConnState::Connected)
            .filter(|(_, c)| c.acl.skips_read_check())
            .count()
    };
    let mut cl = cluster(1, policy(ACL, false));
    let mut opts = login("alice", "wonderland");
    opts.clean = false;
    let a = cl.connect_ok(V311, "a", opts.clone(), false);
    assert_eq!(granted(&cl), 0, "no subscription yet: nothing learnt");
    cl.subscribe(a, "a/open/#", Q0);
    assert_eq!(granted(&cl), 1);
    cl.drop_connection(a);
    let a = cl.connect_ok(V311, "a", opts.clone(), true);
    assert_eq!(granted(&cl), 1, "resumed with a/open/# only");
    cl.subscribe(a, "a/#", Q0);
    assert_eq!(granted(&cl), 0);
    cl.drop_connection(a);
    let a = cl.connect_ok(V311, "a", opts, true);
    assert_eq!(granted(&cl), 0, "a/# overlaps the deny of a/secret/#");
    let bob = cl.connect_ok(V311, "bob", login("bob", "builder"), false);
    cl.publish(bob, "a/secret/plans", "hidden", Q0, false, 0);
    cl.expect_nothing(a);
    cl.publish(bob, "a/open/1", "1", Q0, false, 0);
    cl.expect(a, pubp("a/open/1", "1", Q0, false, 0));
}

/// Without rules the read check at delivery is skipped per shard (`acl_active`); a
/// reload that brings rules turns it on for live subscribers, one that removes them
/// turns it off again.
#[test]
fn delivery_read_check_follows_whether_rules_are_loaded() {
    let mut cl = Cluster::new(1, cfg());
    assert!(!cl.shards[0].auth.acl_active);
    let s = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "#", Q0);
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    cl.publish(p, "x/secret", "1", Q0, false, 0);
    cl.expect(s, pubp("x/secret", "1", Q0, false, 0));
    let rules = Arc::new(AuthPolicy::new(
        None,
        Some(AclFile::parse("topic readwrite public/#\ntopic write x/#\n").unwrap()),
        true,
    ));
    cl.shards[0].set_auth(rules);
    assert!(cl.shards[0].auth.acl_active);
    cl.publish(p, "x/secret", "2", Q0, false, 0);
    cl.expect_nothing(s);
    assert_eq!(stats(&cl).acl_denied_delivery, 1);
    cl.shards[0].set_auth(Arc::new(AuthPolicy::new(None, None, true)));
    assert!(!cl.shards[0].auth.acl_active);
    cl.publish(p, "x/secret", "3", Q0, false, 0);
    cl.expect(s, pubp("x/secret", "3", Q0, false, 0));
}

#[test]
fn will_needs_write_permission() {
    let mut cl = cluster(1, policy(ACL, false));
    let mut opts = login("alice", "wonderland");
    opts.will = Some(will("b/status", "gone", Q0, false, Properties::default()));
    let c = cl.connect(V5, "w", opts);
    cl.expect(
        c,
        connack(false, ReasonCode::NotAuthorized, Properties::default()),
    );
    cl.expect_closed(c);
    let mut opts = login("alice", "wonderland");
    opts.will = Some(will("a/status", "gone", Q0, false, Properties::default()));
    cl.connect_ok(V5, "w2", opts, false);
    // Patterns: client id `dev1` may write dev/dev1/out.
    let mut opts = login("bob", "builder");
    opts.will = Some(will("dev/x/out", "gone", Q0, false, Properties::default()));
    cl.connect_ok(V5, "dev1", opts, false);
}

#[test]
fn sys_topics_only_for_users_granted_them() {
    let mut cl = cluster(1, policy(ACL, true));
    let bob = cl.connect_ok(V5, "bob", login("bob", "builder"), false);
    cl.subscribe_with(
        bob,
        "$SYS/#",
        SubscriptionOptions::default(),
        Properties::default(),
    );
    cl.expect(bob, suback(1, &[ReasonCode::NotAuthorized]));
    let alice = cl.connect_ok(V5, "alice", login("alice", "wonderland"), false);
    cl.subscribe(alice, "$SYS/#", Q0);
    // Anonymous (allowed here): only the lines before the first `user`.
    let anon = cl.connect_ok(V5, "anon", ConnectOpts::default(), false);
    cl.subscribe(anon, "public/#", Q0);
    cl.subscribe_with(
        anon,
        "private/#",
        SubscriptionOptions::default(),
        Properties::default(),
    );
    cl.expect(anon, suback(1, &[ReasonCode::NotAuthorized]));
    // `#` overlaps `public/#`: granted, and delivery shows only what may be read.
    cl.subscribe(anon, "#", Q0);
    cl.publish(bob, "private/x", "no", Q0, false, 0);
    cl.publish(bob, "public/x", "yes", Q0, false, 0);
    cl.expect(anon, pubp("public/x", "yes", Q0, false, 0));
    cl.expect_nothing(anon);
}

#[test]
fn reload_applies_to_live_connections_without_closing_them() {
    let mut cl = cluster(2, policy(ACL, false));
    let a = cl.connect_ok(V5, "a-client", login("alice", "wonderland"), false);
    cl.publish(a, "a/x", "1", Q1, false, 1);
    cl.expect(a, puback(1));
    // The new file takes write on a/# away from alice.
    let p = policy("user alice\ntopic read a/#\n", false);
    for s in &mut cl.shards {
        s.set_auth(p.clone());
    }
    cl.pump();
    cl.publish(a, "a/x", "2", Q1, false, 2);
    cl.expect(
        a,
        Packet::PubAck(PubResp {
            packet_id: 2,
            code: ReasonCode::NotAuthorized,
            properties: Properties::default(),
        }),
    );
    cl.expect_open(a);
}

#[test]
fn certificate_username_stands_for_the_connect_username_and_its_acl() {
    // Anonymous refused: only the certificate's name lets these clients in.
    let mut cl = cluster(1, policy(ACL, false));
    // What the worker does when a TLS handshake ends, before any CONNECT.
    let cert = |cl: &mut Cluster, c: Cid| {
        let conn = cl.clients[c].conn;
        cl.shards[0].set_cert_username(conn, "alice".to_string());
    };
    let c = cl.open(0, V5);
    cert(&mut cl, c);
    // No username or password in the CONNECT, or another user's wrong one: the
    // certificate's name is the username and no password is asked.
    cl.send(c, connect_packet(V5, "dev1", &ConnectOpts::default()));
    assert!(matches!(cl.next(c), Some(Packet::ConnAck(a)) if a.code == ReasonCode::Success));
    let m = cl.open(0, V5);
    cert(&mut cl, m);
    cl.send(m, connect_packet(V5, "dev2", &login("mallory", "x")));
    assert!(matches!(cl.next(m), Some(Packet::ConnAck(a)) if a.code == ReasonCode::Success));
    // The ACL is alice's: a/# writable, b/# not.
    cl.publish(c, "a/x", "yes", Q1, false, 1);
    cl.expect(c, puback(1));
    cl.publish(c, "b/x", "no", Q1, false, 2);
    cl.expect(
        c,
        Packet::PubAck(PubResp {
            packet_id: 2,
            code: ReasonCode::NotAuthorized,
            properties: Properties::default(),
        }),
    );
    cl.expect_open(c);
    cl.expect_open(m);
    let st = stats(&cl);
    assert_eq!((st.auth_verified, st.auth_cache_hits), (0, 0));
    assert_eq!(st.acl_denied_publish, 1);
    // Without a certificate name the same anonymous CONNECT is refused.
    let a = cl.connect(V5, "dev3", ConnectOpts::default());
    cl.expect(
        a,
        connack(false, ReasonCode::NotAuthorized, Properties::default()),
    );
}

fn jwt_policy(acl: Option<&str>) -> Arc<AuthPolicy> {
    let jwt = crate::auth::JwtAuth::new(
        crate::auth::JwtSettings {
            username_claim: "username".into(),
            ..Default::default()
        },
        Some(b"fleet secret"),
        None,
    )
    .unwrap();
    Arc::new(
        AuthPolicy::new(None, acl.map(|a| AclFile::parse(a).unwrap()), false).with_jwt(Some(jwt)),
    )
}

fn token(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"fleet secret"),
    )
    .unwrap()
}

/// A JWT in the password field: its `acl` claim rules the connection (delivery of
/// a wildcard subscription included) and survives a reload of the ACL file; a
/// refused token gets 0x86 / rc 4 and is counted.
#[test]
fn jwt_password_with_acl_claim() {
    use crate::shard::testing::UNIX_NOW_S;
    let mut cl = cluster(1, jwt_policy(Some("user dev-7\ntopic readwrite #\n")));
    let t = token(serde_json::json!({
        "username": "dev-7", "exp": UNIX_NOW_S + 60,
        "acl": {"pub": ["up/%c"], "sub": ["down/#"]},
    }));
    let d = cl.connect_ok(V5, "d1", login("ignored", &t), false);
    cl.subscribe(d, "#", Q0);
    let w =
        token(serde_json::json!({"username": "w", "exp": UNIX_NOW_S + 60, "acl": {"pub": ["#"]}}));
    let writer = cl.connect_ok(V311, "w", login("w", &w), false);
    cl.publish(writer, "other/x", "no", Q0, false, 0);
    cl.publish(writer, "down/x", "yes", Q0, false, 0);
    cl.expect(d, pubp("down/x", "yes", Q0, false, 0));
    cl.expect_nothing(d);
    // A reload of the ACL file (which would grant dev-7 everything) keeps the
    // token's rules.
    for sh in &mut cl.shards {
        sh.set_auth(jwt_policy(Some("user dev-7\ntopic readwrite #\n")));
    }
    cl.publish(writer, "other/y", "no", Q0, false, 0);
    cl.expect_nothing(d);
    let st = stats(&cl);
    assert_eq!((st.auth_jwt_verified, st.acl_denied_delivery), (2, 2));
    // Expired, and signed with another secret: 3.x return code 4, counted.
    let old = token(serde_json::json!({"username": "dev-7", "exp": UNIX_NOW_S - 60}));
    let c = cl.connect(V311, "d2", login("dev-7", &old));
    assert_eq!(cl.clients[c].raw, vec![0x20, 0x02, 0x00, 0x04]);
    cl.expect_closed(c);
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"username": "dev-7", "exp": UNIX_NOW_S + 60}),
        &jsonwebtoken::EncodingKey::from_secret(b"guessed"),
    )
    .unwrap();
    let c = cl.connect(V5, "d3", login("dev-7", &forged));
    cl.expect(
        c,
        connack(
            false,
            ReasonCode::BadUserNameOrPassword,
            Properties::default(),
        ),
    );
    // A malformed acl claim: 0x87.
    let bad =
        token(serde_json::json!({"username": "u", "exp": UNIX_NOW_S + 60, "acl": {"pub": "x"}}));
    let c = cl.connect(V5, "d4", login("u", &bad));
    cl.expect(
        c,
        connack(false, ReasonCode::NotAuthorized, Properties::default()),
    );
    let st = stats(&cl);
    assert_eq!(st.auth_jwt_refused, 3);
    assert_eq!((st.auth_bad_credentials, st.auth_not_authorized), (2, 1));
}

/// A JWT bounds the connection it opened: when its `exp` (plus leeway) passes, an
/// MQTT 5 client gets DISCONNECT 0xA0 (Maximum connect time) and a 3.1.1
/// client is closed; both are counted. Traffic before then does not matter, and a
/// password client on the same shard is untouched.
#[test]
fn jwt_connection_ends_when_the_token_expires() {
    use crate::shard::testing::UNIX_NOW_S;
    use std::time::Duration;
    let mut cl = cluster(1, jwt_policy(None));
    let t = |exp: u64| token(serde_json::json!({"username": "dev", "exp": exp}));
    let v5 = cl.connect_ok(V5, "v5", login("dev", &t(UNIX_NOW_S + 30)), false);
    let v3 = cl.connect_ok(V311, "v3", login("dev", &t(UNIX_NOW_S + 90)), false);
    cl.advance(Duration::from_secs(29));
    cl.publish(v5, "t", "still valid", Q0, false, 0);
    cl.expect_open(v5);
    cl.advance(Duration::from_secs(2));
    cl.expect(v5, disconnect(ReasonCode::MaximumConnectTime));
    cl.expect_closed(v5);
    cl.expect_open(v3);
    cl.advance(Duration::from_secs(58));
    cl.expect_open(v3);
    cl.advance(Duration::from_secs(2));
    cl.expect_nothing(v3);
    cl.expect_closed(v3);
    assert_eq!(stats(&cl).auth_jwt_expired, 2);
}

/// A listener's own `allow_anonymous` replaces the policy's, on the accepting shard
/// and, travelling in the hand-off, on the owner.
#[test]
fn listener_anonymous_rule_applies_and_travels_with_the_handoff() {
    let now = std::time::Instant::now();
    let anon_connect = |client_id: &str| {
        let mut buf = BytesMut::new();
        encode_packet(
            &connect_packet(V311, client_id, &ConnectOpts::default()),
            ProtocolVersion::V311,
            &mut buf,
        );
        buf
    };
    // Open policy (no files), listener says no: rc 5.
    let mut shard = Shard::new(0, 1, Arc::new(cfg()));
    let conn = shard.accept(peer(), now);
    shard.set_listener_anonymous(conn, Some(false));
    shard.on_read(conn, &anon_connect("a1"), now);
    assert_eq!(&shard.take_tx(conn).unwrap()[..], &[0x20, 0x02, 0x00, 0x05]);
    // Closed policy (password file, anonymous refused), listener says yes: accepted.
    let mut shard = Shard::new(0, 1, Arc::new(cfg()));
    shard.set_auth(policy("topic readwrite #\n", false));
    let conn = shard.accept(peer(), now);
    shard.set_listener_anonymous(conn, Some(true));
    shard.on_read(conn, &anon_connect("a2"), now);
    assert_eq!(&shard.take_tx(conn).unwrap()[..], &[0x20, 0x02, 0x00, 0x00]);
    // Two shards: the CONNECT of a client id owned by the other shard migrates with
    // the rule, and the owner refuses it.
    let mut shards: Vec<Shard> = (0..2).map(|i| Shard::new(i, 2, Arc::new(cfg()))).collect();
    let id = (0..)
        .map(|n| format!("m{n}"))
        .find(|id| {
            crate::shard::owner_shard(cfg().placement_seed.unwrap_or(0), id.as_bytes(), 2) == 1
        })
        .unwrap();
    let conn = shards[0].accept(peer(), now);
    shards[0].set_listener_anonymous(conn, Some(false));
    shards[0].on_read(conn, &anon_connect(&id), now);
    let handoff = loop {
        match shards[0].poll_action() {
            Some(Action::Migrate { handoff, .. }) => break handoff,
            Some(_) => continue,
            None => panic!("expected a hand-off"),
        }
    };
    assert_eq!(handoff.listener_anonymous, Some(false));
    let owned = shards[1].adopt(*handoff, now);
    assert_eq!(
        &shards[1].take_tx(owned).unwrap()[..],
        &[0x20, 0x02, 0x00, 0x05]
    );
}
