//! MQTT over WebSocket: the upgrade and the framing path (`transport::ws`) fed any
//! bytes in any read sizes, without a panic and within their bounds. The check lives
//! in `ringmq::transport::ws::check_session` so `cargo test` replays the seeds too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringmq::transport::ws::check_session(data));
