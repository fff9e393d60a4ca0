//! The predefined-topics file (spec 3, "pre-defined topic ids"): one `ID TOPIC` pair a
//! line, `#` comments and blank lines ignored. Parsed once at start-up into the map
//! every loop's gateway shares; errors name the line, as config errors do.

use ahash::AHashMap;
use bytes::Bytes;

/// Why a predefined-topics file was refused, with the 1-based line it happened on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PredefinedError {
    /// Not `ID TOPIC`, or an id outside 1..=65534 (0x0000 and 0xFFFF are reserved,
    /// spec 5.3.11).
    BadLine {
        line: usize,
        text: String,
    },
    /// A topic name with a wildcard: predefined ids name concrete topics.
    Wildcard {
        line: usize,
        topic: String,
    },
    DuplicateId {
        line: usize,
        id: u16,
    },
}

impl std::fmt::Display for PredefinedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PredefinedError::BadLine { line, text } => write!(
                f,
                "line {line}: expected `ID TOPIC` with ID in 1..=65534, got {text:?}"
            ),
            PredefinedError::Wildcard { line, topic } => {
                write!(f, "line {line}: topic {topic:?} has a wildcard")
            }
            PredefinedError::DuplicateId { line, id } => {
                write!(f, "line {line}: id {id} is already defined")
            }
        }
    }
}

/// Parses the file's text. The topic is the rest of the line after the id and its
/// separating whitespace, trailing whitespace removed (topics may contain spaces).
pub fn parse_predefined(text: &str) -> Result<AHashMap<u16, Bytes>, PredefinedError> {
    let mut map = AHashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let bad = || PredefinedError::BadLine {
            line,
            text: raw.to_string(),
        };
        let (id, topic) = l.split_once(char::is_whitespace).ok_or_else(bad)?;
        let id: u16 = id.parse().map_err(|_| bad())?;
        let topic = topic.trim();
        if id == 0 || id == u16::MAX || topic.is_empty() {
            return Err(bad());
        }
        if topic.contains(['+', '#']) {
            return Err(PredefinedError::Wildcard {
                line,
                topic: topic.to_string(),
            });
        }
        if map
            .insert(id, Bytes::copy_from_slice(topic.as_bytes()))
            .is_some()
        {
            return Err(PredefinedError::DuplicateId { line, id });
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids_topics_comments_and_blank_lines() {
        let m = parse_predefined("# sensors\n\n1 plant/temp\n  2\tplant/with space  \n").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[&1], Bytes::from_static(b"plant/temp"));
        assert_eq!(m[&2], Bytes::from_static(b"plant/with space"));
    }

    #[test]
    fn errors_name_the_line() {
        for (text, want) in [
            ("x a/b", "line 1"),
            ("\n0 a", "line 2"),
            ("65535 a", "line 1"),
            ("70000 a", "line 1"),
            ("5", "line 1"),
        ] {
            let e = parse_predefined(text).unwrap_err();
            assert!(
                matches!(e, PredefinedError::BadLine { .. }),
                "{text:?}: {e:?}"
            );
            assert!(e.to_string().starts_with(want), "{e}");
        }
        assert_eq!(
            parse_predefined("1 a/+").unwrap_err(),
            PredefinedError::Wildcard {
                line: 1,
                topic: "a/+".into()
            }
        );
        assert_eq!(
            parse_predefined("1 a\n1 b").unwrap_err(),
            PredefinedError::DuplicateId { line: 2, id: 1 }
        );
    }
}
