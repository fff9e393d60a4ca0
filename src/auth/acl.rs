//! The ACL file in Mosquitto's `acl_file` syntax, and its compiled form per
//! connection. `topic [read|write|readwrite|deny] <filter>` lines belong to the last
//! `user <name>` line above them (lines before the first `user` apply to anonymous
//! clients); `pattern` lines apply to every client, with `%c` (client id) and `%u`
//! (username) substituted.
//!
//! Evaluation follows Mosquitto 2: the client's own rules, then the patterns; within
//! each, `deny` rules first, then the others in file order. The first rule whose filter
//! matches decides if it denies or grants the access asked; otherwise the next is
//! tried; nothing decides → denied. The file is compiled once per connection at CONNECT
//! (patterns substituted, rules in evaluation order, shared per user when there are no
//! patterns), so a check is a short scan of that client's rules: no per-message lookup.
//! Each connection also remembers its last published topic's answer and whether its
//! subscriptions are readable in full ([`ConnAcl`]), so a device's steady stream of
//! PUBLISHes and deliveries walks no rules at all.

use std::collections::HashMap;
use std::sync::Arc;

use super::AuthError;
use crate::topic::{matches, validate_filter, TopicTrie};

pub const READ: u8 = 1;
pub const WRITE: u8 = 2;
/// `deny`: no access bits.
pub const DENY: u8 = 0;

/// One line of the file as written, before substitution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub access: u8,
    pub filter: String,
}

/// The parsed file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclFile {
    pub anonymous: Vec<Rule>,
    pub users: HashMap<String, Vec<Rule>>,
    pub patterns: Vec<Rule>,
}

/// Up to this many rules a check scans them in order; beyond, a filter trie finds
/// the matching ones in one walk of the topic's levels, whatever the rule count.
const LINEAR_MAX: usize = 8;

/// Filter → (evaluation position, access) of the rules with that filter.
type RuleIndex = TopicTrie<Vec<(u32, u8)>>;

/// A client's rules, substituted and in evaluation order.
#[derive(Default)]
pub struct CompiledAcl {
    rules: Box<[(u8, Box<[u8]>)]>,
    /// Over `LINEAR_MAX` rules: filter → (evaluation position, access) of each rule
    /// with that filter. The first deciding rule is the lowest position among the
    /// matches, so the answer is the linear scan's.
    index: Option<Box<RuleIndex>>,
    /// Position of the first "deny everything" stand-in (`$#`), if any.
    deny_all_at: Option<u32>,
}

impl std::fmt::Debug for CompiledAcl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledAcl")
            .field("rules", &self.rules.len())
            .field("indexed", &self.index.is_some())
            .finish()
    }
}

/// What a connection checks against: everything allowed (no ACL file), or its rules.
#[derive(Debug, Clone)]
pub enum Acl {
    AllowAll,
    Rules(Box<ConnAcl>),
}

/// Longest topic the publish memo keeps a copy of: a longer one is checked each time
/// rather than held per connection.
const WRITE_MEMO_MAX: usize = 128;

/// One connection's view of its compiled rules (shared per user), with what this
/// connection learnt about them, so the steady state of a device costs no rule walk:
/// - the last topic it published and the answer (a device publishes on one or a few
///   topics; a hit is one comparison of the topic's bytes);
/// - whether every subscription it holds is readable in full, which lets live
///   delivery skip the read check (the rules were walked once, at SUBSCRIBE).
#[derive(Debug)]
pub struct ConnAcl {
    pub rules: Arc<CompiledAcl>,
    last_write: Option<(Box<[u8]>, bool)>,
    /// Set only by [`Acl::refresh_reads`] from the session's whole subscription list;
    /// a new `ConnAcl` (CONNECT, reload, hand-off) starts without it.
    reads_granted: bool,
}

/// What a connection learnt stays with it: a copy starts afresh.
impl Clone for ConnAcl {
    fn clone(&self) -> ConnAcl {
        ConnAcl::new(self.rules.clone())
    }
}

impl ConnAcl {
    fn new(rules: Arc<CompiledAcl>) -> ConnAcl {
        ConnAcl {
            rules,
            last_write: None,
            reads_granted: false,
        }
    }

    #[inline(never)]
    fn can_publish(&mut self, topic: &[u8]) -> bool {
        if let Some((t, ok)) = &self.last_write {
            if **t == *topic {
                return *ok;
            }
        }
        let ok = self.rules.check(topic, WRITE);
        if topic.len() <= WRITE_MEMO_MAX {
            match &mut self.last_write {
                // Same length (a device's topics often are): no allocation.
                Some((t, v)) if t.len() == topic.len() => {
                    t.copy_from_slice(topic);
                    *v = ok;
                }
                slot => *slot = Some((topic.into(), ok)),
            }
        }
        ok
    }
}

// The `AllowAll` arm is inlined into the hot paths (one compare); the rule scan stays
// out of line so it does not bloat `deliver` and stop it being inlined itself.
impl Acl {
    /// A connection's ACL from its compiled rules.
    pub fn rules(rules: Arc<CompiledAcl>) -> Acl {
        Acl::Rules(Box::new(ConnAcl::new(rules)))
    }

    /// The compiled rules, `None` for `AllowAll`.
    pub fn compiled(&self) -> Option<&Arc<CompiledAcl>> {
        match self {
            Acl::AllowAll => None,
            Acl::Rules(r) => Some(&r.rules),
        }
    }

    /// PUBLISH (and will) check. Remembers the last topic and its answer.
    #[inline(always)]
    pub fn can_publish(&mut self, topic: &[u8]) -> bool {
        match self {
            Acl::AllowAll => true,
            Acl::Rules(r) => r.can_publish(topic),
        }
    }

    /// Read check of a message matched against the session's current subscriptions
    /// right now (live delivery): skipped when every subscription is readable in full.
    #[inline(always)]
    pub fn can_read(&self, topic: &[u8]) -> bool {
        match self {
            Acl::AllowAll => true,
            Acl::Rules(r) => r.reads_granted || r.rules.check(topic, READ),
        }
    }

    /// Read check of a message matched earlier (queued while offline or behind a full
    /// window): the subscription that matched it may be gone, so the rules decide.
    #[inline(always)]
    pub fn can_read_queued(&self, topic: &[u8]) -> bool {
        match self {
            Acl::AllowAll => true,
            Acl::Rules(r) => r.rules.check(topic, READ),
        }
    }

    /// Whether live delivery skips the read check (every subscription readable).
    pub fn skips_read_check(&self) -> bool {
        matches!(self, Acl::Rules(r) if r.reads_granted)
    }

    pub fn can_subscribe(&self, filter: &[u8]) -> bool {
        match self {
            Acl::AllowAll => true,
            Acl::Rules(r) => r.rules.check_subscribe(filter),
        }
    }

    /// Recomputes, from every filter the session holds (shared ones without their
    /// `$share/<group>/`), whether live delivery may skip the read check. Call it
    /// after the session's subscriptions grew; without a call the check stays on.
    pub fn refresh_reads<'a>(&mut self, filters: impl IntoIterator<Item = &'a [u8]>) {
        if let Acl::Rules(r) = self {
            let rules = &r.rules;
            r.reads_granted = filters.into_iter().all(|f| rules.grants_read_of(f));
        }
    }
}

pub(super) const MAX_TOPIC: usize = 65_535;
pub(super) const MAX_LEVELS: usize = 128;

fn parse_rule(rest: &str) -> Result<Rule, String> {
    let rest = rest.trim_start();
    let (access, filter) = match rest.split_once([' ', '\t']) {
        Some(("read", f)) => (READ, f),
        Some(("write", f)) => (WRITE, f),
        Some(("readwrite", f)) => (READ | WRITE, f),
        Some(("deny", f)) => (DENY, f),
        // No access word: the whole rest is the filter, read and write (Mosquitto).
        _ => (READ | WRITE, rest),
    };
    let filter = filter.trim();
    if filter.is_empty() {
        return Err("missing topic".into());
    }
    validate_filter(filter.as_bytes(), MAX_TOPIC, MAX_LEVELS)
        .map_err(|e| format!("invalid topic filter {filter:?}: {e:?}"))?;
    Ok(Rule {
        access,
        filter: filter.to_owned(),
    })
}

/// Deny rules first, the rest in file order (Mosquitto puts `deny` at the list head).
fn evaluation_order(rules: &[Rule]) -> impl Iterator<Item = &Rule> {
    rules
        .iter()
        .filter(|r| r.access == DENY)
        .chain(rules.iter().filter(|r| r.access != DENY))
}

/// `%c`/`%u` substituted, or `None` when the value cannot stand for one level (it
/// contains `/`, `+`, `#`, or is missing): a client id of `+` must not widen a rule.
pub(crate) fn substitute(filter: &str, client_id: &str, user: Option<&str>) -> Option<String> {
    let unsafe_level = |s: &str| s.is_empty() || s.contains(['/', '+', '#']);
    let mut out = filter.to_owned();
    if out.contains("%c") {
        if unsafe_level(client_id) {
            return None;
        }
        out = out.replace("%c", client_id);
    }
    if out.contains("%u") {
        let u = user?;
        if unsafe_level(u) {
            return None;
        }
        out = out.replace("%u", u);
    }
    Some(out)
}

impl AclFile {
    pub fn parse(text: &str) -> Result<AclFile, AuthError> {
        let mut f = AclFile::default();
        let mut current: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: String| AuthError::AclFile {
                line: i + 1,
                reason,
            };
            let (word, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
            match word {
                "user" => {
                    let name = rest.trim();
                    if name.is_empty() {
                        return Err(bad("user without a name".into()));
                    }
                    f.users.entry(name.to_owned()).or_default();
                    current = Some(name.to_owned());
                }
                "topic" => {
                    let r = parse_rule(rest).map_err(bad)?;
                    match &current {
                        Some(u) => f.users.get_mut(u).expect("added at its user line").push(r),
                        None => f.anonymous.push(r),
                    }
                }
                "pattern" => f.patterns.push(parse_rule(rest).map_err(bad)?),
                other => return Err(bad(format!("unknown keyword {other:?}"))),
            }
        }
        Ok(f)
    }

    fn own_rules(&self, user: Option<&str>) -> &[Rule] {
        match user {
            None => &self.anonymous,
            Some(u) => self.users.get(u).map_or(&[][..], |v| &v[..]),
        }
    }

    /// The client's rules in evaluation order with patterns substituted.
    pub fn compile(&self, client_id: &str, user: Option<&str>) -> CompiledAcl {
        let mut rules: Vec<(u8, Box<[u8]>)> = evaluation_order(self.own_rules(user))
            .map(|r| (r.access, r.filter.as_bytes().into()))
            .collect();
        for p in evaluation_order(&self.patterns) {
            match substitute(&p.filter, client_id, user) {
                Some(f) => rules.push((p.access, f.into_bytes().into())),
                // A deny that cannot be substituted denies everything rather than
                // nothing; an allow that cannot be substituted grants nothing.
                // (Patterns naming `%u` do not apply to anonymous clients, as in Mosquitto.)
                None if p.access == DENY && !(user.is_none() && p.filter.contains("%u")) => {
                    rules.push((DENY, b"#".as_slice().into()));
                    rules.push((DENY, b"$#".as_slice().into()));
                }
                None => {}
            }
        }
        CompiledAcl::new(rules)
    }
}

impl CompiledAcl {
    fn new(rules: Vec<(u8, Box<[u8]>)>) -> CompiledAcl {
        let deny_all_at = rules
            .iter()
            .position(|(_, f)| is_deny_all(f))
            .map(|i| i as u32);
        let index = (rules.len() > LINEAR_MAX).then(|| {
            let mut t = RuleIndex::new();
            for (i, (a, f)) in rules.iter().enumerate() {
                if !is_deny_all(f) {
                    t.entry_or_insert_with(f, Vec::new).push((i as u32, *a));
                }
            }
            Box::new(t)
        });
        CompiledAcl {
            rules: rules.into_boxed_slice(),
            index,
            deny_all_at,
        }
    }

    /// Publish (`WRITE`) or delivery (`READ`) check of a topic name.
    #[inline(never)]
    pub fn check(&self, topic: &[u8], access: u8) -> bool {
        if let Some(t) = &self.index {
            // The deciding rule with the lowest position wins, as in the scan.
            let mut best = (self.deny_all_at.unwrap_or(u32::MAX), false);
            t.for_each_match(topic, |v| {
                for &(i, a) in v {
                    if i < best.0 && (a == DENY || a & access != 0) {
                        best = (i, a != DENY);
                    }
                }
            });
            return best.1;
        }
        for (a, f) in self.rules.iter() {
            if matches_any(f, topic) {
                if *a == DENY {
                    return false;
                }
                if a & access != 0 {
                    return true;
                }
            }
        }
        false
    }

    /// SUBSCRIBE check of a filter: refused when, in evaluation order, a deny rule
    /// covering the whole filter comes before any read rule that covers or overlaps
    /// it. A filter only partly denied is accepted: delivery checks each topic.
    pub fn check_subscribe(&self, filter: &[u8]) -> bool {
        for (a, f) in self.rules.iter() {
            if is_deny_all(f) || covers(f, filter) {
                if *a == DENY {
                    return false;
                }
                if a & READ != 0 {
                    return true;
                }
            } else if a & READ != 0 && overlaps(f, filter) {
                return true;
            }
        }
        false
    }

    /// Whether every topic `filter` matches is readable: a read rule covers the
    /// whole filter and no deny rule before it overlaps the filter. Conservative (a
    /// filter readable only through several partial rules answers `false`, and its
    /// messages are then checked one by one), never wrong in the other direction.
    pub fn grants_read_of(&self, filter: &[u8]) -> bool {
        for (a, f) in self.rules.iter() {
            if is_deny_all(f) {
                return false;
            }
            if *a == DENY {
                if overlaps(f, filter) {
                    return false;
                }
            } else if a & READ != 0 && covers(f, filter) {
                return true;
            }
        }
        false
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// `$#` is the compiled stand-in for "every `$` topic too" (see `compile`).
#[inline]
fn is_deny_all(f: &[u8]) -> bool {
    f == b"$#"
}

#[inline]
fn matches_any(f: &[u8], topic: &[u8]) -> bool {
    if is_deny_all(f) {
        return true;
    }
    matches(f, topic)
}

fn levels(s: &[u8]) -> Vec<&[u8]> {
    s.split(|&b| b == b'/').collect()
}

fn is_wild(l: &[u8]) -> bool {
    l == b"+" || l == b"#"
}

/// Does rule filter `p` match every topic that filter `f` matches?
pub(crate) fn covers(p: &[u8], f: &[u8]) -> bool {
    let (p, f) = (levels(p), levels(f));
    // A leading wildcard of `p` does not match `$` topics; `f` may name one.
    if is_wild(p[0]) && f[0].first() == Some(&b'$') {
        return false;
    }
    // A filter `#` alone matches one level or more, and so does `+/#`.
    if f == [b"#"] && p == [b"+", b"#"] {
        return true;
    }
    let mut i = 0;
    loop {
        match (p.get(i), f.get(i)) {
            (Some(&b"#"), _) if i + 1 == p.len() => return true,
            (None, None) => return true,
            (Some(&b"+"), Some(fl)) if *fl != b"#" => {}
            (Some(pl), Some(fl)) if pl == fl && !is_wild(pl) => {}
            _ => return false,
        }
        i += 1;
    }
}

/// Is there a topic both filters match?
pub(crate) fn overlaps(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (levels(a), levels(b));
    let dollar = |l: &[u8]| l.first() == Some(&b'$');
    if (is_wild(a[0]) && dollar(b[0]) && !is_wild(b[0]))
        || (is_wild(b[0]) && dollar(a[0]) && !is_wild(a[0]))
    {
        return false;
    }
    let mut i = 0;
    loop {
        let al = a.get(i).copied();
        let bl = b.get(i).copied();
        let last_a = i + 1 == a.len();
        let last_b = i + 1 == b.len();
        match (al, bl) {
            (Some(b"#"), _) if last_a => return true,
            (_, Some(b"#")) if last_b => return true,
            (None, None) => return true,
            (Some(x), Some(y)) if x == b"+" || y == b"+" || x == y => {}
            _ => return false,
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests;
