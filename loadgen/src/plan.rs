//! Scenario -> who connects, who subscribes to what, who publishes what.
//! Pure data; the engine runs it.

use crate::cli::{Config, Scenario};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Plain,
    /// Fleet device `id`: echoes commands on dev/<id>/reply.
    Device(u32),
    /// Fleet controller: sends commands, receives replies.
    Controller,
}

#[derive(Debug, Clone)]
pub struct PubSpec {
    pub topic: String,
    pub stream: u32,
    /// Messages/s; 0 = unpaced (closed loop).
    pub rate: f64,
    /// Delay of the first message after the run starts, spreading paced publishers.
    pub phase_offset_ns: u64,
}

#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub index: u64,
    pub subscribe: Option<String>,
    pub publish: Option<PubSpec>,
    /// Streams this subscriber should receive: `lo..hi`.
    pub expect: (u32, u32),
    pub role: Role,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub clients: Vec<ClientSpec>,
    /// Receivers per stream: how many copies of each message must arrive.
    pub multiplicity: Vec<u32>,
    /// fleet: number of devices (command streams are `devices + id`).
    pub devices: u32,
}

fn plain(index: u64) -> ClientSpec {
    ClientSpec {
        index,
        subscribe: None,
        publish: None,
        expect: (0, 0),
        role: Role::Plain,
    }
}

pub fn build(cfg: &Config) -> Plan {
    let mut clients = Vec::new();
    let mut multiplicity = Vec::new();
    let mut devices = 0;
    let offset = |i: u64, n: u64, rate: f64| -> u64 {
        if rate <= 0.0 {
            0
        } else {
            ((1e9 / rate) * i as f64 / n.max(1) as f64) as u64
        }
    };
    match cfg.scenario {
        // A storm's measured round only reconnects: the subscriptions are the
        // session's, made by `storm_prime`.
        Scenario::Connect | Scenario::Storm => clients.extend((0..cfg.clients).map(plain)),
        Scenario::Fanin => {
            let (p, s) = (cfg.publishers, cfg.subscribers);
            for i in 0..s {
                let mut c = plain(i);
                c.subscribe = Some("lg/fanin/+".to_string());
                c.expect = (0, p as u32);
                clients.push(c);
            }
            for i in 0..p {
                let mut c = plain(s + i);
                c.publish = Some(PubSpec {
                    topic: format!("lg/fanin/{i}"),
                    stream: i as u32,
                    rate: cfg.msg_rate,
                    phase_offset_ns: offset(i, p, cfg.msg_rate),
                });
                clients.push(c);
                multiplicity.push(s as u32);
            }
        }
        Scenario::Fanout => {
            for i in 0..cfg.clients {
                let mut c = plain(i);
                c.subscribe = Some("lg/fanout".to_string());
                c.expect = (0, 1);
                clients.push(c);
            }
            let mut c = plain(cfg.clients);
            c.publish = Some(PubSpec {
                topic: "lg/fanout".into(),
                stream: 0,
                rate: cfg.msg_rate,
                phase_offset_ns: 0,
            });
            clients.push(c);
            multiplicity.push(cfg.clients as u32);
        }
        Scenario::Pairs => {
            let n = cfg.clients;
            for i in 0..n {
                let mut c = plain(i);
                c.subscribe = Some(format!("lg/pairs/{i}"));
                c.expect = (i as u32, i as u32 + 1);
                clients.push(c);
            }
            for i in 0..n {
                let mut c = plain(n + i);
                c.publish = Some(PubSpec {
                    topic: format!("lg/pairs/{i}"),
                    stream: i as u32,
                    rate: cfg.msg_rate,
                    phase_offset_ns: offset(i, n, cfg.msg_rate),
                });
                clients.push(c);
                multiplicity.push(1);
            }
        }
        // Runs in sn.rs, outside the TCP engine: no plan.
        Scenario::Sn => {}
        Scenario::Fleet => {
            let n = cfg.clients as u32;
            devices = n;
            for i in 0..n {
                let mut c = plain(u64::from(i));
                c.subscribe = Some(format!("dev/{i}/cmd"));
                c.publish = Some(PubSpec {
                    topic: format!("dev/{i}/telemetry"),
                    stream: i,
                    rate: cfg.msg_rate,
                    phase_offset_ns: offset(u64::from(i), u64::from(n), cfg.msg_rate),
                });
                c.expect = (n + i, n + i + 1);
                c.role = Role::Device(i);
                clients.push(c);
            }
            let mut collector = plain(u64::from(n));
            collector.subscribe = Some("dev/+/telemetry".into());
            collector.expect = (0, n);
            clients.push(collector);
            let mut controller = plain(u64::from(n) + 1);
            controller.subscribe = Some("dev/+/reply".into());
            controller.expect = (n, 2 * n);
            controller.role = Role::Controller;
            clients.push(controller);
            // Telemetry reaches the collector; a command reaches its device and its
            // echo reaches the controller.
            multiplicity.extend(std::iter::repeat_n(1, n as usize));
            multiplicity.extend(std::iter::repeat_n(2, n as usize));
        }
    }
    Plan {
        clients,
        multiplicity,
        devices,
    }
}

/// A storm's first round: every client subscribes lg/storm/<i> (QoS --qos), so the
/// session the reconnect resumes holds a subscription.
pub fn storm_prime(cfg: &Config) -> Plan {
    let clients = (0..cfg.clients)
        .map(|i| {
            let mut c = plain(i);
            c.subscribe = Some(format!("lg/storm/{i}"));
            c
        })
        .collect();
    Plan {
        clients,
        multiplicity: Vec::new(),
        devices: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Scenario};
    use clap::Parser;

    fn cfg(args: &[&str]) -> Config {
        let cli = Cli::try_parse_from(args).unwrap();
        cli.opts
            .validate(cli.scenario.unwrap_or(Scenario::Connect))
            .unwrap()
    }

    #[test]
    fn fanin_shape() {
        let p = build(&cfg(&[
            "lg",
            "fanin",
            "--publishers",
            "3",
            "--subscribers",
            "2",
        ]));
        assert_eq!(p.clients.len(), 5);
        assert_eq!(p.multiplicity, vec![2, 2, 2]);
        assert_eq!(p.clients[0].subscribe.as_deref(), Some("lg/fanin/+"));
        assert_eq!(p.clients[0].expect, (0, 3));
        assert_eq!(p.clients[4].publish.as_ref().unwrap().topic, "lg/fanin/2");
    }

    #[test]
    fn fleet_shape() {
        let p = build(&cfg(&[
            "lg",
            "fleet",
            "--clients",
            "3",
            "--interval",
            "500ms",
        ]));
        assert_eq!(p.clients.len(), 5);
        assert_eq!(p.multiplicity, vec![1, 1, 1, 2, 2, 2]);
        assert_eq!(p.clients[1].role, Role::Device(1));
        assert_eq!(p.clients[1].expect, (4, 5));
        assert_eq!(p.clients[1].publish.as_ref().unwrap().rate, 2.0);
        assert_eq!(p.clients[4].role, Role::Controller);
        assert_eq!(p.clients[4].expect, (3, 6));
    }

    #[test]
    fn pairs_and_fanout_shape() {
        let p = build(&cfg(&["lg", "pairs", "--clients", "2"]));
        assert_eq!(p.clients.len(), 4);
        assert_eq!(p.clients[1].subscribe.as_deref(), Some("lg/pairs/1"));
        assert_eq!(p.clients[3].publish.as_ref().unwrap().stream, 1);
        let p = build(&cfg(&["lg", "fanout", "--clients", "7"]));
        assert_eq!(p.multiplicity, vec![7]);
        assert_eq!(p.clients.len(), 8);
    }

    #[test]
    fn storm_shape() {
        let c = cfg(&["lg", "storm", "--clients", "3"]);
        assert!(c.persistent, "a storm resumes persistent sessions");
        let prime = storm_prime(&c);
        assert_eq!(prime.clients.len(), 3);
        assert_eq!(prime.clients[2].subscribe.as_deref(), Some("lg/storm/2"));
        let p = build(&c);
        assert_eq!(p.clients.len(), 3);
        assert!(p.clients.iter().all(|c| c.subscribe.is_none()));
        assert!(p.multiplicity.is_empty());
    }
}
