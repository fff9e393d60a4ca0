//! Topic names and filters as the spec defines them: length, levels, wildcard placement,
//! `$share/{group}/{filter}` parsing, and the naive matcher the trie is tested against.

/// Why a topic name or filter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    TooLong {
        len: usize,
        max: usize,
    },
    TooManyLevels {
        levels: usize,
        max: usize,
    },
    /// `+` or `#` in a topic name.
    WildcardInName,
    /// `#` not last or not a whole level, `+` not a whole level.
    MisplacedWildcard,
    /// `$share/` without a group, group containing a wildcard, or without a filter.
    InvalidShare,
    /// U+0000 (the codec already rejects it; kept for direct callers).
    NullCharacter,
}

/// A parsed `$share/{group}/{filter}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    pub group: &'a [u8],
    pub filter: &'a [u8],
}

const SHARE_PREFIX: &[u8] = b"$share/";

fn level_count(s: &[u8]) -> usize {
    s.iter().filter(|&&b| b == b'/').count() + 1
}

/// The checks shared by names and filters, in the order callers see them:
/// empty, length, NUL.
fn check_common(s: &[u8], max_len: usize) -> Result<(), TopicError> {
    check_len(s, max_len)?;
    if s.contains(&0) {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

fn check_len(s: &[u8], max_len: usize) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > max_len {
        return Err(TopicError::TooLong {
            len: s.len(),
            max: max_len,
        });
    }
    Ok(())
}

fn check_levels(s: &[u8], max_levels: usize) -> Result<(), TopicError> {
    check_level_count(level_count(s), max_levels)
}

fn check_level_count(levels: usize, max_levels: usize) -> Result<(), TopicError> {
    if levels > max_levels {
        return Err(TopicError::TooManyLevels {
            levels,
            max: max_levels,
        });
    }
    Ok(())
}

/// A topic name as in PUBLISH: non-empty, no wildcards, within the limits.
///
/// Errors are reported in this order: `Empty`, `TooLong`, `NullCharacter`,
/// `WildcardInName`, `TooManyLevels`.
pub fn validate_name(name: &[u8], max_len: usize, max_levels: usize) -> Result<(), TopicError> {
    check_len(name, max_len)?;
    // One pass for all three byte classes; the error order is decided afterwards.
    let (mut nul, mut wild, mut slashes) = (false, false, 0usize);
    for &b in name {
        nul |= b == 0;
        wild |= b == b'+' || b == b'#';
        slashes += usize::from(b == b'/');
    }
    if nul {
        return Err(TopicError::NullCharacter);
    }
    if wild {
        return Err(TopicError::WildcardInName);
    }
    check_level_count(slashes + 1, max_levels)
}

/// A topic name the codec has already checked, i.e. a decoded PUBLISH topic
/// (well-formed UTF-8 without U+0000, `+` or `#`): only the broker's limits remain,
/// so this skips the byte scans `validate_name` repeats. Same errors, same order,
/// as `validate_name` for such a name: `Empty`, `TooLong`, `TooManyLevels`.
#[inline]
pub fn validate_decoded_name(
    name: &[u8],
    max_len: usize,
    max_levels: usize,
) -> Result<(), TopicError> {
    check_len(name, max_len)?;
    // `n` bytes hold at most `n + 1` levels: short names need no count.
    if name.len() < max_levels {
        return Ok(());
    }
    check_levels(name, max_levels)
}

/// A topic filter as in SUBSCRIBE (shared filters included).
///
/// `max_len` bounds the whole string (it is what travels on the wire);
/// `max_levels` bounds the inner filter only, so `$share/{group}/` costs no levels.
/// Errors are reported in this order: `Empty`, `TooLong`, `NullCharacter`,
/// `InvalidShare`, `MisplacedWildcard`, `TooManyLevels`.
pub fn validate_filter(filter: &[u8], max_len: usize, max_levels: usize) -> Result<(), TopicError> {
    check_common(filter, max_len)?;
    let inner = match parse_shared(filter)? {
        Some(shared) => shared.filter,
        None => filter,
    };
    let mut levels = inner.split(|&b| b == b'/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains(&b'#') && !(level == b"#" && is_last) {
            return Err(TopicError::MisplacedWildcard);
        }
        if level.contains(&b'+') && level != b"+" {
            return Err(TopicError::MisplacedWildcard);
        }
    }
    check_levels(inner, max_levels)
}

/// `Ok(Some(..))` for `$share/{group}/{filter}`, `Ok(None)` for an ordinary filter.
///
/// Only the share syntax is checked here (group non-empty and free of `+`, `#`;
/// inner filter non-empty); `validate_filter` checks the inner filter itself.
/// A bare `$share` (no slash) is an ordinary one-level filter.
pub fn parse_shared(filter: &[u8]) -> Result<Option<SharedFilter<'_>>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        return Ok(None);
    };
    let Some(slash) = rest.iter().position(|&b| b == b'/') else {
        return Err(TopicError::InvalidShare);
    };
    let (group, filter) = (&rest[..slash], &rest[slash + 1..]);
    if group.is_empty() || filter.is_empty() || group.iter().any(|&b| b == b'+' || b == b'#') {
        return Err(TopicError::InvalidShare);
    }
    Ok(Some(SharedFilter { group, filter }))
}

/// The naive reference matcher: does `filter` match `topic`? `$`-topics are not
/// matched by a leading `+` or `#`; `a/#` matches `a`.
///
/// `filter` is a plain filter (pass the inner filter of a shared one). Only whole
/// levels are wildcards: `+` anywhere, `#` as the last level; any other level,
/// including a `#` that is not last, compares literally. `TopicTrie` follows the
/// same rules, so both agree even on inputs the validators would refuse.
pub fn matches(filter: &[u8], topic: &[u8]) -> bool {
    let mut f = filter.split(|&b| b == b'/').peekable();
    let mut t = topic.split(|&b| b == b'/');
    let mut first = true;
    while let Some(fl) = f.next() {
        let is_multi = fl == b"#" && f.peek().is_none();
        let is_wild = is_multi || fl == b"+";
        // MQTT 3.1.1/5.0 §4.7.2: a leading wildcard does not match `$` topics.
        if first && is_wild && topic.first() == Some(&b'$') {
            return false;
        }
        first = false;
        if is_multi {
            // Zero or more remaining levels, so `a/#` matches `a`.
            return true;
        }
        match t.next() {
            Some(tl) if fl == b"+" || fl == tl => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const LEN: usize = 65_535;
    const LEVELS: usize = 128;

    fn name(s: &str) -> Result<(), TopicError> {
        validate_name(s.as_bytes(), LEN, LEVELS)
    }

    fn filter(s: &str) -> Result<(), TopicError> {
        validate_filter(s.as_bytes(), LEN, LEVELS)
    }

    fn m(f: &str, t: &str) -> bool {
        matches(f.as_bytes(), t.as_bytes())
    }

    #[test]
    fn names_accepted() {
        for s in [
            "a",
            "/",
            "a/b",
            "/finance",
            "a//b",
            "$SYS/x",
            " ",
            "sport/tennis/player1",
            "é/ü",
        ] {
            assert_eq!(name(s), Ok(()), "{s:?}");
        }
    }

    #[test]
    fn names_refused() {
        assert_eq!(name(""), Err(TopicError::Empty));
        assert_eq!(name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(name("a+b"), Err(TopicError::WildcardInName));
        assert_eq!(name("#"), Err(TopicError::WildcardInName));
        assert_eq!(
            validate_name(b"a\0b", LEN, LEVELS),
            Err(TopicError::NullCharacter)
        );
        assert_eq!(
            validate_name(b"abcd", 3, LEVELS),
            Err(TopicError::TooLong { len: 4, max: 3 })
        );
        assert_eq!(validate_name(b"abc", 3, LEVELS), Ok(()));
        assert_eq!(
            validate_name(b"a/b/c", LEN, 2),
            Err(TopicError::TooManyLevels { levels: 3, max: 2 })
        );
        assert_eq!(validate_name(b"a/b", LEN, 2), Ok(()));
        assert_eq!(
            validate_name(b"//", LEN, 2),
            Err(TopicError::TooManyLevels { levels: 3, max: 2 })
        );
    }

    #[test]
    fn name_errors_keep_their_order() {
        // NUL is reported before a wildcard wherever each one sits.
        assert_eq!(
            validate_name(b"+/a\0", LEN, LEVELS),
            Err(TopicError::NullCharacter)
        );
        assert_eq!(
            validate_name(b"a/+/b/c", LEN, 2),
            Err(TopicError::WildcardInName)
        );
        assert_eq!(
            validate_name(b"abcd/+", 3, 1),
            Err(TopicError::TooLong { len: 6, max: 3 })
        );
    }

    #[test]
    fn decoded_name_equals_validate_name() {
        // Every wildcard- and NUL-free name over {a, /} up to 9 bytes, against
        // length and level limits on both sides of each boundary.
        for len in 0..=9usize {
            for bits in 0..(1u32 << len) {
                let s: Vec<u8> = (0..len)
                    .map(|i| if bits & (1 << i) != 0 { b'/' } else { b'a' })
                    .collect();
                for max_len in [0, 1, 4, 8, 9, LEN] {
                    for max_levels in 1..=11 {
                        assert_eq!(
                            validate_decoded_name(&s, max_len, max_levels),
                            validate_name(&s, max_len, max_levels),
                            "{s:?} max_len {max_len} max_levels {max_levels}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn filters_accepted() {
        for s in [
            "#",
            "+",
            "+/+",
            "/+",
            "a/#",
            "a/+/b",
            "sport/tennis/player1/#",
            "sport/+/player1",
            "+/tennis/#",
            "/finance",
            "a//b",
            "$SYS/#",
            "$share",
            "$sharex/a",
            "$share/g/#",
            "$share/g/+/a",
            "$share/g/$SYS/x",
            "$share/g//",
        ] {
            assert_eq!(filter(s), Ok(()), "{s:?}");
        }
    }

    #[test]
    fn filters_refused() {
        assert_eq!(filter(""), Err(TopicError::Empty));
        for s in [
            "a/#/b",
            "#/a",
            "a+",
            "+a",
            "#a",
            "a#",
            "a/b#",
            "a/#b",
            "a/++",
            "##",
            "sport/tennis#",
        ] {
            assert_eq!(filter(s), Err(TopicError::MisplacedWildcard), "{s:?}");
        }
        for s in [
            "$share/",
            "$share/g",
            "$share//a",
            "$share/g+/x",
            "$share/g#/x",
            "$share/+/x",
            "$share/g/",
        ] {
            assert_eq!(filter(s), Err(TopicError::InvalidShare), "{s:?}");
        }
        assert_eq!(filter("$share/g/a+"), Err(TopicError::MisplacedWildcard));
        assert_eq!(filter("$share/g/#/a"), Err(TopicError::MisplacedWildcard));
        assert_eq!(
            validate_filter(b"a/\0", LEN, LEVELS),
            Err(TopicError::NullCharacter)
        );
        assert_eq!(
            validate_filter(b"a/b/#", 4, LEVELS),
            Err(TopicError::TooLong { len: 5, max: 4 })
        );
        assert_eq!(
            validate_filter(b"a/+/#", LEN, 2),
            Err(TopicError::TooManyLevels { levels: 3, max: 2 })
        );
        assert_eq!(validate_filter(b"a/+", LEN, 2), Ok(()));
        // The share prefix is not counted as levels, but it is counted as length.
        assert_eq!(validate_filter(b"$share/g/a/b", LEN, 2), Ok(()));
        assert_eq!(
            validate_filter(b"$share/g/a/b/c", LEN, 2),
            Err(TopicError::TooManyLevels { levels: 3, max: 2 })
        );
        assert_eq!(
            validate_filter(b"$share/g/a", 9, LEVELS),
            Err(TopicError::TooLong { len: 10, max: 9 })
        );
    }

    #[test]
    fn parse_shared_slices() {
        assert_eq!(parse_shared(b"a/b"), Ok(None));
        assert_eq!(parse_shared(b"$share"), Ok(None));
        assert_eq!(
            parse_shared(b"$share/grp/a/+/#"),
            Ok(Some(SharedFilter {
                group: b"grp",
                filter: b"a/+/#"
            }))
        );
        assert_eq!(
            parse_shared(b"$share/g//"),
            Ok(Some(SharedFilter {
                group: b"g",
                filter: b"/"
            }))
        );
        assert_eq!(parse_shared(b"$share/"), Err(TopicError::InvalidShare));
        assert_eq!(parse_shared(b"$share/g"), Err(TopicError::InvalidShare));
        assert_eq!(parse_shared(b"$share/g/"), Err(TopicError::InvalidShare));
        assert_eq!(parse_shared(b"$share//x"), Err(TopicError::InvalidShare));
        assert_eq!(parse_shared(b"$share/g+/x"), Err(TopicError::InvalidShare));
    }

    /// MQTT 3.1.1 §4.7.1.2, §4.7.1.3, §4.7.2, §4.7.3 and 5.0 §4.7 examples.
    pub(crate) const SPEC_CASES: &[(&str, &str, bool)] = &[
        ("sport/tennis/player1/#", "sport/tennis/player1", true),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking",
            true,
        ),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon",
            true,
        ),
        ("sport/#", "sport", true),
        ("#", "sport/tennis/player1", true),
        ("#", "/", true),
        ("sport/tennis/#", "sport/tennis", true),
        ("sport/tennis/#", "sport/tennisx", false),
        ("sport/tennis/+", "sport/tennis/player1", true),
        ("sport/tennis/+", "sport/tennis/player2", true),
        ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ("sport/+", "sport", false),
        ("sport/+", "sport/", true),
        ("+/+", "/finance", true),
        ("/+", "/finance", true),
        ("+", "/finance", false),
        ("+/tennis/#", "sport/tennis", true),
        ("+/tennis/#", "sport/tennis/player1", true),
        ("sport/+/player1", "sport/tennis/player1", true),
        ("sport/+/player1", "sport/tennis/player2", false),
        ("/finance", "/finance", true),
        ("/finance", "finance", false),
        ("finance", "/finance", false),
        ("ACCOUNTS", "Accounts", false),
        ("a//b", "a//b", true),
        ("a/+/b", "a//b", true),
        ("a/#", "a/", true),
        ("a/#", "a", true),
        ("a/#", "a/b/c", true),
        ("a/#", "ab", false),
        ("#", "$SYS", false),
        ("#", "$SYS/monitor/Clients", false),
        ("+/monitor/Clients", "$SYS/monitor/Clients", false),
        ("+", "$SYS", false),
        ("+/#", "$SYS/x", false),
        ("$SYS/#", "$SYS/monitor/Clients", true),
        ("$SYS/#", "$SYS/x", true),
        ("$SYS/#", "$SYS", true),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
        ("$SYS/+", "$SYS/x", true),
        ("+/#", "a", true),
        ("+", "", true),
        ("#", "", true),
        ("a", "a/b", false),
        ("a/b", "a", false),
    ];

    #[test]
    fn spec_examples_naive() {
        for &(f, t, want) in SPEC_CASES {
            assert_eq!(m(f, t), want, "{f:?} vs {t:?}");
        }
    }

    #[test]
    fn literal_levels_outside_wildcard_positions() {
        // A `#` that is not last, and partial wildcards, compare literally.
        assert!(m("#/a", "#/a"));
        assert!(!m("#/a", "x/a"));
        assert!(m("a+", "a+"));
        assert!(!m("a+", "ab"));
        assert!(m("a/#/#", "a/#"));
    }
}
