//! Topic names and filters: validation, shared-subscription parsing, and a trie
//! that answers "which filters match this topic" and "which topics match this filter".
//! Imports no other broker module.

mod trie;
mod validate;

pub use trie::{Pack, TopicTrie, Unpacked, ValueRef, PACKED_MAX};
pub use validate::{
    matches, parse_shared, validate_decoded_name, validate_filter, validate_name, SharedFilter,
    TopicError,
};
