//! Runs the test hold/forward server by hand: `cargo run --release -p loadgen --example
//! holdserver -- RINGS` prints its port and serves until killed. Used to measure loadgen
//! itself against a server that costs almost nothing per message.

#[path = "../tests/support/holdserver.rs"]
#[allow(dead_code)]
mod holdserver;

fn main() {
    let rings: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let server = holdserver::HoldServer::start(rings, 18_000);
    println!("{}", server.port);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
