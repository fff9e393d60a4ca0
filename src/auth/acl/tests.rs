//! ACL tests: the parser, Mosquitto's evaluation order, substitution, and the compiled
//! form against a naive interpreter of the file (property tests).

use proptest::prelude::*;

use super::*;

/// Mosquitto's algorithm, read straight off the parsed file at check time.
fn naive(f: &AclFile, client: &str, user: Option<&str>, topic: &str, access: u8) -> bool {
    let decide = |filter: &str, a: u8| -> Option<bool> {
        if !matches(filter.as_bytes(), topic.as_bytes()) {
            return None;
        }
        if a == DENY {
            return Some(false);
        }
        (a & access != 0).then_some(true)
    };
    let own = match user {
        None => &f.anonymous,
        Some(u) => match f.users.get(u) {
            Some(v) => v,
            None => &Vec::new(),
        },
    };
    let denies_first = |v: &Vec<Rule>| -> Vec<Rule> {
        let mut d: Vec<Rule> = v.iter().filter(|r| r.access == DENY).cloned().collect();
        d.extend(v.iter().filter(|r| r.access != DENY).cloned());
        d
    };
    for r in denies_first(own) {
        if let Some(x) = decide(&r.filter, r.access) {
            return x;
        }
    }
    for p in denies_first(&f.patterns) {
        if user.is_none() && p.filter.contains("%u") {
            continue;
        }
        match substitute(&p.filter, client, user) {
            Some(s) => {
                if let Some(x) = decide(&s, p.access) {
                    return x;
                }
            }
            None if p.access == DENY => return false,
            None => {}
        }
    }
    false
}

fn acl(text: &str) -> AclFile {
    AclFile::parse(text).unwrap()
}

#[test]
fn parses_mosquitto_syntax() {
    let f = acl("# comment\n\
         topic read $SYS/#\n\
         \n\
         user alice\n\
         topic readwrite alice/#\n\
         topic deny alice/secret\n\
         topic shared/+\n\
         user bob smith\n\
         topic write in/#\n\
         pattern read dev/%c/in\n\
         pattern write dev/%u/out\n");
    assert_eq!(
        f.anonymous,
        vec![Rule {
            access: READ,
            filter: "$SYS/#".into()
        }]
    );
    assert_eq!(f.users["alice"].len(), 3);
    assert_eq!(f.users["alice"][2].access, READ | WRITE);
    assert_eq!(f.users["bob smith"][0].access, WRITE);
    assert_eq!(f.patterns.len(), 2);
}

#[test]
fn parse_errors_name_the_line() {
    for (text, line) in [
        ("user a\ntopic\n", 2),
        ("user a\nfoo bar\n", 2),
        ("user\n", 1),
        ("topic read a/#/b\n", 1),
        ("\n\npattern read a/#/b\n", 3),
    ] {
        match AclFile::parse(text) {
            Err(AuthError::AclFile { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

#[test]
fn deny_overrides_and_order() {
    let f = acl("user u\ntopic readwrite a/#\ntopic deny a/secret/#\ntopic read r/#\n");
    let c = f.compile("c1", Some("u"));
    assert!(c.check(b"a/x", WRITE));
    assert!(c.check(b"a/x", READ));
    assert!(!c.check(b"a/secret/x", READ));
    assert!(!c.check(b"a/secret", WRITE));
    assert!(c.check(b"r/x", READ));
    assert!(!c.check(b"r/x", WRITE));
    assert!(!c.check(b"other", READ));
    // Unknown users and anonymous clients have no rules here: denied.
    assert!(!f.compile("c", Some("v")).check(b"a/x", READ));
    assert!(!f.compile("c", None).check(b"a/x", READ));
}

#[test]
fn sys_topics_need_an_explicit_grant() {
    let f = acl("user u\ntopic readwrite #\nuser admin\ntopic read $SYS/#\ntopic readwrite #\n");
    let u = Acl::rules(Arc::new(f.compile("c", Some("u"))));
    let admin = Acl::rules(Arc::new(f.compile("c", Some("admin"))));
    assert!(u.can_read(b"x/y"));
    assert!(!u.can_read(b"$SYS/broker/uptime"));
    assert!(!u.can_subscribe(b"$SYS/#"));
    assert!(admin.can_read(b"$SYS/broker/uptime"));
    assert!(admin.can_subscribe(b"$SYS/#"));
}

#[test]
fn patterns_substitute_and_refuse_unsafe_values() {
    let f = acl("pattern readwrite dev/%c/#\npattern read users/%u\npattern deny dev/%c/locked\n");
    let c = f.compile("sensor1", Some("bob"));
    assert!(c.check(b"dev/sensor1/t", WRITE));
    assert!(!c.check(b"dev/sensor2/t", WRITE));
    assert!(!c.check(b"dev/sensor1/locked", WRITE));
    assert!(c.check(b"users/bob", READ));
    // Anonymous: `%u` patterns do not apply, `%c` ones do.
    let anon = f.compile("sensor1", None);
    assert!(anon.check(b"dev/sensor1/t", READ));
    assert!(!anon.check(b"users/bob", READ));
    // A client id that would widen a rule gets nothing from it, and an unsafe
    // deny pattern denies everything.
    let evil = f.compile("+", Some("bob"));
    assert!(!evil.check(b"dev/x/t", WRITE));
    assert!(!evil.check(b"users/bob", READ));
    let f2 = acl("pattern readwrite #\npattern deny x/%u\n");
    assert!(!f2.compile("c", Some("a/b")).check(b"q", READ));
    assert!(f2.compile("c", None).check(b"q", READ));
}

#[test]
fn subscribe_checks() {
    let f = acl("user u\ntopic read a/#\ntopic deny a/secret/#\ntopic write w/#\n");
    let c = f.compile("c", Some("u"));
    assert!(c.check_subscribe(b"a/x"));
    assert!(c.check_subscribe(b"a/#"), "partly denied: delivery filters");
    assert!(c.check_subscribe(b"#"), "overlaps a/#: delivery filters");
    assert!(!c.check_subscribe(b"a/secret/#"));
    assert!(!c.check_subscribe(b"a/secret/x"));
    assert!(!c.check_subscribe(b"w/x"), "write-only");
    assert!(!c.check_subscribe(b"b/+"));
    assert!(!c.check_subscribe(b"$SYS/#"));
}

#[test]
fn large_rule_lists_use_the_index_and_agree_with_the_scan() {
    let mut text = String::from("user u\ntopic deny x/secret/#\n");
    for i in 0..50 {
        text.push_str(&format!("topic read site-{i}/+/t\n"));
    }
    text.push_str("topic readwrite x/#\ntopic write w/+\n");
    let f = acl(&text);
    let c = f.compile("c", Some("u"));
    assert!(c.index.is_some());
    for (topic, access, want) in [
        ("x/a", READ, true),
        ("x/secret/a", READ, false),
        ("x/secret", WRITE, false), // `x/secret/#` matches `x/secret` too
        ("site-7/q/t", READ, true),
        ("site-7/q/t", WRITE, false),
        ("w/1", WRITE, true),
        ("w/1", READ, false),
        ("$SYS/x", READ, false),
        ("nothing", READ, false),
    ] {
        assert_eq!(c.check(topic.as_bytes(), access), want, "{topic} {access}");
        assert_eq!(
            naive(&f, "c", Some("u"), topic, access),
            want,
            "{topic} {access}"
        );
    }
}

/// What a connection learnt (the memo, the read grant) is not copied with it.
#[test]
fn a_copy_starts_with_the_read_check_on() {
    let f = acl("user u\ntopic readwrite a/#\ntopic deny a/secret/#\n");
    let mut x = Acl::rules(Arc::new(f.compile("c", Some("u"))));
    x.refresh_reads([&b"a/open/#"[..]]);
    assert!(
        x.can_read(b"a/secret/1"),
        "granted in full: the check is skipped"
    );
    assert!(!x.can_read_queued(b"a/secret/1"));
    let y = x.clone();
    assert!(!y.can_read(b"a/secret/1"));
    x.refresh_reads([&b"a/open/#"[..], &b"a/#"[..]]);
    assert!(
        !x.can_read(b"a/secret/1"),
        "a/# overlaps the deny: checked again"
    );
}

#[test]
fn allow_all_without_a_file() {
    let mut a = Acl::AllowAll;
    assert!(a.can_publish(b"$SYS/x") && a.can_read(b"x") && a.can_subscribe(b"#"));
    a.refresh_reads([&b"#"[..]]);
    assert!(a.can_read_queued(b"$SYS/x"));
}

// ---- property tests ----

const FILTER_LEVELS: &[&str] = &["a", "b", "$s", "+", "#", "%c", "%u"];
const TOPIC_LEVELS: &[&str] = &["a", "b", "z", "$s", "c1", "u1"];

fn filter_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FILTER_LEVELS), 1..=3).prop_filter_map(
        "valid filter",
        |v| {
            let s = v.join("/");
            validate_filter(s.as_bytes(), MAX_TOPIC, MAX_LEVELS)
                .ok()
                .map(|_| s)
        },
    )
}

fn plain_filter_strategy() -> impl Strategy<Value = String> {
    filter_strategy().prop_filter("no substitution", |s| !s.contains('%'))
}

fn topic_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOPIC_LEVELS), 1..=4).prop_map(|v| v.join("/"))
}

fn rule_strategy() -> impl Strategy<Value = Rule> {
    (
        prop::sample::select(&[DENY, READ, WRITE, READ | WRITE][..]),
        filter_strategy(),
    )
        .prop_map(|(access, filter)| Rule { access, filter })
}

fn file_strategy() -> impl Strategy<Value = AclFile> {
    (
        // Up to 20 rules a client: both the scan (≤ 8) and the trie index are hit.
        prop::collection::vec(rule_strategy(), 0..6),
        prop::collection::vec(rule_strategy(), 0..12),
        prop::collection::vec(rule_strategy(), 0..8),
    )
        .prop_map(|(anonymous, u1, patterns)| {
            // `%` only means something in patterns.
            let plain = |v: Vec<Rule>| -> Vec<Rule> {
                v.into_iter().filter(|r| !r.filter.contains('%')).collect()
            };
            let mut users = HashMap::new();
            users.insert("u1".to_owned(), plain(u1));
            AclFile {
                anonymous: plain(anonymous),
                users,
                patterns,
            }
        })
}

/// Every topic of 1..=4 levels over the topic alphabet.
fn universe() -> Vec<String> {
    let mut out: Vec<String> = TOPIC_LEVELS.iter().map(|s| s.to_string()).collect();
    let mut last = out.clone();
    for _ in 1..4 {
        let mut next = Vec::new();
        for t in &last {
            for l in TOPIC_LEVELS {
                next.push(format!("{t}/{l}"));
            }
        }
        out.extend(next.iter().cloned());
        last = next;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn compiled_matches_naive(
        f in file_strategy(),
        client in prop::sample::select(&["c1", "a", "+", "x/y"][..]),
        user in prop::sample::select(&[None, Some("u1"), Some("u2"), Some("#")][..]),
        topics in prop::collection::vec(topic_strategy(), 1..16),
    ) {
        let c = f.compile(client, user);
        for t in &topics {
            for access in [READ, WRITE] {
                prop_assert_eq!(
                    c.check(t.as_bytes(), access),
                    naive(&f, client, user, t, access),
                    "topic {} access {}", t, access
                );
            }
        }
    }

    /// The publish memo answers as the rules do, whatever the order of topics.
    #[test]
    fn the_publish_memo_answers_as_the_rules(
        f in file_strategy(),
        topics in prop::collection::vec(topic_strategy(), 1..24),
    ) {
        let c = Arc::new(f.compile("c1", Some("u1")));
        let mut acl = Acl::rules(c.clone());
        for t in &topics {
            prop_assert_eq!(acl.can_publish(t.as_bytes()), c.check(t.as_bytes(), WRITE), "topic {}", t);
        }
    }

    #[test]
    fn covers_and_overlaps_match_brute_force(p in plain_filter_strategy(), q in plain_filter_strategy()) {
        let u = universe();
        let by_q: Vec<&String> = u.iter().filter(|t| matches(q.as_bytes(), t.as_bytes())).collect();
        let covered = by_q.iter().all(|t| matches(p.as_bytes(), t.as_bytes()));
        let overlapping = by_q.iter().any(|t| matches(p.as_bytes(), t.as_bytes()));
        prop_assert_eq!(covers(p.as_bytes(), q.as_bytes()), covered, "covers({}, {})", p, q);
        prop_assert_eq!(overlaps(p.as_bytes(), q.as_bytes()), overlapping, "overlaps({}, {})", p, q);
    }
}

proptest! {
    // Each case walks the whole topic universe (1,554 topics) per filter: fewer
    // cases keep it near a second in a debug build.
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A filter `grants_read_of` says is readable in full has no topic the check
    /// refuses: live delivery skips the check on that promise.
    #[test]
    fn a_filter_granted_in_full_has_no_unreadable_topic(
        f in file_strategy(),
        client in prop::sample::select(&["c1", "a", "+"][..]),
        user in prop::sample::select(&[None, Some("u1"), Some("u2")][..]),
        filters in prop::collection::vec(plain_filter_strategy(), 1..6),
    ) {
        let c = f.compile(client, user);
        let u = universe();
        for q in &filters {
            if c.grants_read_of(q.as_bytes()) {
                for t in u.iter().filter(|t| matches(q.as_bytes(), t.as_bytes())) {
                    prop_assert!(c.check(t.as_bytes(), READ), "{} granted but {} refused", q, t);
                }
            }
        }
        let mut acl = Acl::rules(Arc::new(c));
        acl.refresh_reads(filters.iter().map(|q| q.as_bytes()));
        for t in &u {
            if filters.iter().any(|q| matches(q.as_bytes(), t.as_bytes())) {
                prop_assert_eq!(acl.can_read(t.as_bytes()), acl.can_read_queued(t.as_bytes()), "topic {}", t);
            }
        }
    }
}
