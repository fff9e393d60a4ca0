//! loadgen: sizes MQTT brokers. See `loadgen --help` and README.md.

mod cli;
mod engine;
mod plan;
mod report;
mod run;
mod scrape;
mod sn;
mod ws;

// The library's modules, under the paths the binary's own modules use.
use loadgen::{batch, payload, rx, stats, tx};

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let scenario = cli.scenario.unwrap_or(cli::Scenario::Connect);
    if scenario == cli::Scenario::Sn {
        std::process::exit(sn::main(&cli.opts));
    }
    let cfg = match cli.opts.validate(scenario) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    // Before any worker starts: threads inherit the slice.
    if !cfg.sched_slice.is_zero() {
        let us = cfg.sched_slice.as_micros() as u32;
        match ringmq::worker::set_fair_slice(us) {
            Ok(true) => {}
            Ok(false) => eprintln!(
                "loadgen: --sched-slice {us}us: this kernel keeps its default time slice (per-task slices need Linux 6.12+)"
            ),
            Err(e) => eprintln!("loadgen: --sched-slice {us}us: sched_setattr refused ({e})"),
        }
    }
    let json = cfg.json;
    let hgrm_path = cfg.hgrm.clone();
    let plot_path = cfg.plot.clone();
    let scrape_url = cli.opts.scrape.clone();
    let before = match scrape_url.as_deref().map(scrape::fetch) {
        Some(Err(e)) => {
            eprintln!("loadgen: {e}");
            std::process::exit(1);
        }
        Some(Ok(s)) => Some(s),
        None => None,
    };
    let (report, hists) = match run::run(cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(1);
        }
    };
    let table = report::table(&report);
    if json {
        eprint!("{table}");
        match serde_json::to_string(&report) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("loadgen: JSON encoding failed: {e}"),
        }
    } else {
        print!("{table}");
    }
    if let (Some(url), Some(before)) = (scrape_url.as_deref(), before.as_ref()) {
        match scrape::fetch(url) {
            // Beside the table: stderr under --json, so stdout stays one JSON line.
            Ok(after) if json => eprint!("{}", scrape::deltas(before, &after)),
            Ok(after) => print!("{}", scrape::deltas(before, &after)),
            Err(e) => eprintln!("loadgen: {e}"),
        }
    }
    let storm = report.scenario == "connect" || report.scenario == "storm";
    let main_hist = if storm {
        &hists.connect
    } else {
        &hists.latency
    };
    if let Some(p) = hgrm_path {
        if let Err(e) = std::fs::write(&p, report::hgrm(main_hist)) {
            eprintln!("loadgen: writing --hgrm {}: {e}", p.display());
            std::process::exit(1);
        }
    }
    if let Some(p) = plot_path {
        let title = format!(
            "loadgen {} qos {} size {} B",
            report.scenario, report.qos, report.size_bytes
        );
        let mut series: Vec<(&str, &hdrhistogram::Histogram<u64>)> = Vec::new();
        if storm {
            series.push(("connect + CONNACK", &hists.connect));
        } else {
            series.push(("one-way latency", &hists.latency));
            if report.scenario == "fleet" {
                series.push(("command round trip", &hists.rtt));
            }
        }
        if let Err(e) = std::fs::write(&p, report::svg(&title, &series)) {
            eprintln!("loadgen: writing --plot {}: {e}", p.display());
            std::process::exit(1);
        }
    }
    std::process::exit(report.exit_code);
}
