//! The JSON of `/api/stats`, which the status page polls: node totals and per-loop
//! figures, and every labelled counter family (`families.rs`) under `reasons`,
//! written by hand (names are fixed identifiers, values numbers: nothing to escape).

use std::fmt::Write;

use super::families::{families, total as total_of, DROPPED, REFUSED};
use super::prometheus::Context;
use super::NodeSnapshot;

/// `{"uptime_s":..,"connections":..,...,"loops":[{"shard":0,...}]}`.
pub fn render(node: &NodeSnapshot, ctx: &Context) -> String {
    let total = node.total();
    let c = &total.core;
    let families = families(&total);
    let dropped = total_of(&families, DROPPED);
    let refused = total_of(&families, REFUSED);
    let memory: usize = node.loops.iter().map(|l| l.core.memory_bytes()).sum();
    let mut s = String::with_capacity(512 + 128 * node.loops.len());
    let _ = write!(
        s,
        "{{\"version\":\"{}\",\"io_backend\":\"{}\",\"uptime_s\":{:.3},\"connections\":{},\
         \"sessions\":{},\"subscriptions\":{},\"retained\":{},\"messages_in\":{},\
         \"messages_out\":{},\"bytes_in\":{},\"bytes_out\":{},\"dropped\":{},\"refused\":{},\
         \"memory_bytes\":{},\"rss_bytes\":{},\"missing_loops\":{},\"loops\":[",
        ctx.version,
        ctx.io_backend,
        ctx.uptime_seconds,
        c.connections,
        c.sessions,
        c.subscriptions,
        c.retained,
        c.messages_in,
        c.messages_out,
        c.bytes_in,
        c.bytes_out,
        dropped,
        refused,
        memory,
        ctx.process.map_or(0, |p| p.resident_bytes),
        node.missing_loops.len(),
    );
    for (i, l) in node.loops.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{{\"shard\":{},\"busy_ratio\":{:.4},\"busy_s\":{:.6},\"wall_s\":{:.6},\
             \"connections\":{},\"memory_bytes\":{},\"messages_in\":{},\"messages_out\":{}}}",
            l.shard,
            l.busy_ratio(),
            l.busy_ns as f64 / 1e9,
            l.wall_ns as f64 / 1e9,
            l.core.connections,
            l.core.memory_bytes(),
            l.core.messages_in,
            l.core.messages_out,
        );
    }
    // Every labelled counter family, from the table `/metrics` renders.
    s.push_str("],\"reasons\":{");
    for (i, f) in families.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "\"{}\":{{", f.short);
        for (j, (label, v)) in f.samples.iter().enumerate() {
            if j > 0 {
                s.push(',');
            }
            let _ = write!(s, "\"{label}\":{v}");
        }
        s.push('}');
    }
    s.push_str("}}");
    s
}
