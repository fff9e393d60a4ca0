//! Per-core event loop: reap IO completions, drive the shard, submit output, drain rings.
