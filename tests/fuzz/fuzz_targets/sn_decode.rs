//! The MQTT-SN 1.2 datagram decoder: any input decodes or errs without a panic, and
//! whatever decodes survives encode → decode unchanged. The check lives in
//! `ringmq::gateway::mqttsn::check_roundtrip` so `cargo test` replays the seeds too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringmq::gateway::mqttsn::check_roundtrip(data));
