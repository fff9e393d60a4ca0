//! The MQTT-SN gateway state machine driven by a script of datagrams, broker
//! deliveries, ticks and output drains; its bounds and bookkeeping are checked after
//! every step. The check lives in `ringmq::gateway::mqttsn::check_gateway_ops`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringmq::gateway::mqttsn::check_gateway_ops(data));
