//! The edges of a fleet beside the MQTT broker: the MQTT-SN 1.2 gateway (`mqttsn`).
//! Sans-IO like the shard: cores take datagrams and a `now`, and return what to send.
//! The MQTT bridge will live here too.

pub mod mqttsn;
