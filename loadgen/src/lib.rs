//! loadgen's sans-IO parts, as a library so that benches and the callgrind budget
//! (perf/) drive the same code the binary runs: the payload header, sequence
//! accounting, the subscriber's receive path, and when a closed-loop publisher sends.

pub mod batch;
pub mod payload;
pub mod rx;
pub mod stats;
pub mod tx;
