//! QoS 0 fan-in through the test forwarding server (no broker logic, lossless on one
//! ring): checks the closed loop, sequence accounting and the pipelined send path end to end.

mod support;

#[test]
fn fanin_qos0_through_forwarder_is_complete() {
    let server = support::holdserver::HoldServer::start(1, 1000);
    let port = server.port.to_string();
    let (code, j, stderr) = support::loadgen(&[
        "fanin",
        "--port",
        &port,
        "--publishers",
        "3",
        "--subscribers",
        "2",
        "--qos",
        "0",
        "--window",
        "64",
        "--warmup",
        "200ms",
        "--duration",
        "1s",
        "--src-ips",
        "none",
    ]);
    server.stop();
    assert_eq!(code, 0, "{j} {stderr}");
    assert_eq!(j["errors_total"], 0, "{j}");
    assert_eq!(j["connections_established"], 5, "{j}");
    assert_eq!(j["lost"], 0, "{j}");
    assert_eq!(j["duplicates"], 0, "{j}");
    assert_eq!(j["out_of_order"], 0, "{j}");
    assert_eq!(j["qos0_written_off"], 0, "{j}");
    assert_eq!(j["delivered"], j["expected"], "{j}");
    assert!(j["expected"].as_u64().unwrap_or(0) > 0, "{j}");
}
