//! `weft-bench compare`: one table of the figures each server reached in
//! the same run (JSON results in `DIR/<server>/<scenario>.json`), with the
//! ratio of each to the first server (weft). Every figure is
//! lower-is-better, so a ratio above 1 means the first server is ahead. A scenario a server could not run has
//! `DIR/<server>/<scenario>.skip` holding the reason, shown in its cells.

use std::path::{Path, PathBuf};

use clap::Args;
use comfy_table::Table;
use serde_json::Value;

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// The results directory.
    pub dir: PathBuf,
    /// Servers, the reference (weft) first: each is a subdirectory of DIR.
    #[arg(long, value_delimiter = ',', default_values_t = ["weft".to_string(), "y-websocket-server".into(), "y-sweet".into(), "hocuspocus".into()])]
    pub servers: Vec<String>,
}

/// Picks a figure out of a scenario's JSON result, or says why there is none.
type Finder = Box<dyn Fn(&Value) -> Result<f64, String>>;

fn at(v: &Value, pointer: &str) -> Result<f64, String> {
    v.pointer(pointer)
        .and_then(Value::as_f64)
        .ok_or_else(|| "no result".to_string())
}

/// One figure: which scenario file, how to find it, what it is, and what
/// the reference server (weft) aims for.
struct Figure {
    scenario: &'static str,
    label: String,
    find: Finder,
    unit: &'static str,
    target: Option<Target>,
}

/// What the reference server's figure should be at most, in this run.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// A fixed bound.
    AtMost(f64),
    /// This share of the best peer's figure in the same run.
    BestPeerTimes(f64),
    /// The best peer's figure plus the reference's own disk's fdatasync
    /// p99.9 in the same run (the durable write no peer makes).
    BestPeerPlusDisk,
}

impl Figure {
    fn aiming(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }
}

/// The scenario files of the traces other than the default one.
const INGEST_SCENARIOS: [&str; 4] = [
    "ingest-seph-blog1",
    "ingest-sveltecomponent",
    "ingest-clownschool_flat",
    "ingest-clownschool",
];

/// Every figure the comparison shows, in table order.
fn figures() -> Vec<Figure> {
    let mut all = idle_figures();
    all.extend(fanout_figures());
    all.extend(ingest_figures());
    all.extend(join_figures());
    all.extend(transport_figures());
    all.push(pointer_figure(
        "coldload",
        "coldload automerge-paper",
        "/cold_ms",
        "ms",
    ));
    for (what, field) in [("p99", "p99_ms"), ("p99.9", "p999_ms")] {
        all.push(pointer_figure(
            "disk",
            &format!("disk: append + fdatasync {what}"),
            &format!("/fdatasync/{field}"),
            "ms",
        ));
    }
    // What a bare sender reaches on this machine: no server is below it.
    all.push(pointer_figure(
        "sends",
        "floor, sends only to 1,000: CPU per send",
        "/cpu_us_per_send",
        "µs",
    ));
    all.push(pointer_figure(
        "sends",
        "floor, sends only to 1,000: p50",
        "/delay/p50_ms",
        "ms",
    ));
    all
}

/// Server memory per idle connection: 2,000 WebSockets and 2,000 SSE
/// viewers, then 15,000 viewers alone.
fn idle_figures() -> Vec<Figure> {
    vec![
        pointer_figure(
            "idle",
            "idle 2,000: RSS per SSE viewer",
            "/sse_bytes_per_viewer",
            "B",
        )
        .aiming(Target::AtMost(4096.0)),
        pointer_figure(
            "idle-15000",
            "idle 15,000: RSS per SSE viewer",
            "/sse_bytes_per_viewer",
            "B",
        )
        .aiming(Target::AtMost(4096.0)),
        pointer_figure(
            "idle",
            "idle 2,000: RSS per WebSocket",
            "/ws_bytes_per_connection",
            "B",
        )
        .aiming(Target::AtMost(3072.0)),
    ]
}

/// Every trace `compare.sh` replays, each against yrs in-process.
fn ingest_figures() -> Vec<Figure> {
    let mut all = vec![pointer_figure(
        "ingest",
        "ingest automerge-paper: total",
        "/server_ms",
        "ms",
    )];
    all.push(
        pointer_figure(
            "ingest",
            "ingest automerge-paper: × in-process yrs",
            "/ratio_to_in_process",
            "×",
        )
        .aiming(Target::AtMost(5.0)),
    );
    for scenario in INGEST_SCENARIOS {
        let trace = scenario.trim_start_matches("ingest-");
        all.push(
            pointer_figure(
                scenario,
                &format!("ingest {trace}: × in-process yrs"),
                "/ratio_to_in_process",
                "×",
            )
            .aiming(Target::AtMost(5.0)),
        );
    }
    all
}

/// A figure read at a JSON pointer of its scenario's result.
fn pointer_figure(
    scenario: &'static str,
    label: &str,
    pointer: &str,
    unit: &'static str,
) -> Figure {
    let pointer = pointer.to_owned();
    Figure {
        scenario,
        label: label.to_owned(),
        find: Box::new(move |v: &Value| at(v, &pointer)),
        unit,
        target: None,
    }
}

/// One writer at 50 changes/s to 1,000 and 5,000 WebSocket subscribers,
/// then to as many SSE viewers (weft only), then 200 writers.
fn fanout_figures() -> Vec<Figure> {
    let mut all = Vec::new();
    for (scenario, who, stream) in [("fanout", "subs", "ws"), ("fanout-sse", "viewers", "sse")] {
        for (i, n) in ["1,000", "5,000"].iter().enumerate() {
            let step = format!("/steps/{i}");
            // Peers have no SSE: viewers' latency has no peer to be held to.
            let peers = stream == "ws";
            for (what, target) in [
                ("p50", peers.then_some(Target::BestPeerTimes(2.0 / 3.0))),
                ("p99", peers.then_some(Target::BestPeerPlusDisk)),
            ] {
                let (step, field) = (step.clone(), format!("{stream}/{what}_ms"));
                all.push(Figure {
                    scenario,
                    label: format!("fanout {n} {who}: {what}"),
                    find: Box::new(move |v: &Value| delivered_all(v, &step, stream, &field)),
                    unit: "ms",
                    target,
                });
            }
            all.push(
                Figure {
                    scenario,
                    label: format!("fanout {n} {who}: server CPU per delivery"),
                    find: Box::new(move |v: &Value| cpu_per_delivery(v, &step)),
                    unit: "µs",
                    target: None,
                }
                .aiming(Target::AtMost(6.0)),
            );
        }
    }
    for what in ["p50", "p99"] {
        all.push(pointer_figure(
            "fanout-writers",
            &format!("fanout, 200 writers: {what}"),
            &format!("/steps/0/ws/{what}_ms"),
            "ms",
        ));
    }
    all
}

/// A fan-out step's latency figure, unless some deliveries never arrived
/// (the receivers were closed as too slow, or the step ended first):
/// percentiles of the ones that did would flatter the server.
fn delivered_all(v: &Value, step: &str, stream: &str, field: &str) -> Result<f64, String> {
    let missing = at(v, &format!("{step}/{stream}_deliveries_missing")).unwrap_or(0.0);
    if missing > 0.0 {
        let got = at(v, &format!("{step}/{stream}/samples")).unwrap_or(0.0);
        return Err(format!("{missing} of {} deliveries missing", missing + got));
    }
    at(v, &format!("{step}/{field}"))
}

/// The server's CPU time over the deliveries a fan-out step made, in µs.
fn cpu_per_delivery(v: &Value, step: &str) -> Result<f64, String> {
    let cpu = at(v, &format!("{step}/server_cpu_seconds"))?;
    let delivered = at(v, &format!("{step}/ws/samples")).unwrap_or(0.0)
        + at(v, &format!("{step}/sse/samples")).unwrap_or(0.0);
    if delivered == 0.0 {
        return Err("nothing delivered".into());
    }
    Ok(cpu * 1e6 / delivered)
}

/// 150 clients joining a trace document and a 20 MB one.
fn join_figures() -> Vec<Figure> {
    let mut all = Vec::new();
    for (label, run, field, unit) in [
        ("join 150 × trace doc: p99", 0, "/latency/p99_ms", "ms"),
        ("join 150 × 20 MB doc: p50", 1, "/latency/p50_ms", "ms"),
        (
            "join 150 × 20 MB doc: all synced",
            1,
            "/latency/max_ms",
            "ms",
        ),
        (
            "join 150 × 20 MB doc: server CPU",
            1,
            "/server_cpu_seconds",
            "s",
        ),
    ] {
        all.push(Figure {
            scenario: "join",
            label: label.into(),
            // Percentiles of the clients that synced would flatter a server
            // that left others without the document.
            find: Box::new(move |v: &Value| {
                let run = format!("/runs/{run}");
                let failed = at(v, &format!("{run}/failed")).unwrap_or(0.0);
                if failed > 0.0 {
                    let clients = at(v, &format!("{run}/clients")).unwrap_or(0.0);
                    return Err(format!("{failed} of {clients} clients never synced"));
                }
                at(v, &format!("{run}{field}"))
            }),
            unit,
            target: None,
        });
    }
    all
}

/// WebSocket latency and wire bytes per message at three payload sizes.
fn transport_figures() -> Vec<Figure> {
    let mut all = Vec::new();
    for (payload, size) in [(10u64, "10 B"), (1024, "1 KB"), (102_400, "100 KB")] {
        for (what, field, unit) in [
            ("p50", "/latency/p50_ms", "ms"),
            ("wire bytes/msg", "/wire_bytes_per_message", "B"),
        ] {
            all.push(Figure {
                scenario: "transports",
                label: format!("websocket {size}: {what}"),
                find: Box::new(move |v: &Value| {
                    v.get("runs")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .find(|r| {
                            r["transport"] == "websocket"
                                && r["payload_bytes"].as_u64() == Some(payload)
                        })
                        .and_then(|r| r.pointer(field)?.as_f64())
                        .ok_or_else(|| "no result".to_string())
                }),
                unit,
                target: None,
            });
        }
    }
    all
}

pub fn run(args: CompareArgs) -> anyhow::Result<String> {
    let mut table = Table::new();
    table.load_preset(comfy_table::presets::ASCII_MARKDOWN);
    let reference = args.servers.first().cloned().unwrap_or_default();
    let mut header = vec!["figure".to_string()];
    for (i, s) in args.servers.iter().enumerate() {
        header.push(s.clone());
        if i > 0 {
            header.push(format!("{s} / {reference}"));
        }
    }
    header.push(format!("{reference} target (this run)"));
    table.set_header(header);
    for fig in figures() {
        let values: Vec<Result<f64, String>> = args
            .servers
            .iter()
            .map(|s| value(&args.dir.join(s), &fig))
            .collect();
        let mut row = vec![fig.label.clone()];
        for (i, v) in values.iter().enumerate() {
            row.push(match v {
                Ok(x) => format!("{} {}", pretty(*x), fig.unit),
                Err(why) => why.clone(),
            });
            if i > 0 {
                row.push(match (&values[0], v) {
                    (Ok(w), Ok(p)) if *w > 0.0 => format!("{:.2}×", p / w),
                    _ => "–".into(),
                });
            }
        }
        row.push(target_cell(&fig, &values, &args.dir.join(&reference)));
        table.add_row(row);
    }
    Ok(table.to_string())
}

/// The reference's target for `fig` in this run, and whether it met it.
fn target_cell(fig: &Figure, values: &[Result<f64, String>], reference: &Path) -> String {
    let Some(target) = fig.target else {
        return String::new();
    };
    let best_peer = values
        .iter()
        .skip(1)
        .filter_map(|v| v.as_ref().ok().copied())
        .fold(None, |best: Option<f64>, v| {
            Some(best.map_or(v, |b| b.min(v)))
        });
    let bound = match target {
        Target::AtMost(bound) => Some(bound),
        Target::BestPeerTimes(share) => best_peer.map(|b| b * share),
        Target::BestPeerPlusDisk => {
            let disk = value(
                reference,
                &pointer_figure("disk", "", "/fdatasync/p999_ms", ""),
            );
            best_peer.zip(disk.ok()).map(|(b, d)| b + d)
        }
    };
    let Some(bound) = bound else {
        return "no peer figure".into();
    };
    let verdict = match &values[0] {
        Ok(v) if *v <= bound => "met",
        Ok(_) => "not met",
        Err(_) => "–",
    };
    format!("≤ {} {}: {verdict}", pretty(bound), fig.unit)
}

fn value(dir: &Path, fig: &Figure) -> Result<f64, String> {
    let skip = dir.join(format!("{}.skip", fig.scenario));
    if let Ok(why) = std::fs::read_to_string(&skip) {
        return Err(format!("n/a: {}", why.trim()));
    }
    let path = dir.join(format!("{}.json", fig.scenario));
    let text = std::fs::read_to_string(&path).map_err(|_| "not run".to_string())?;
    let json: Value = serde_json::from_str(&text).map_err(|e| format!("bad JSON: {e}"))?;
    (fig.find)(&json)
}

fn pretty(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_skipped_and_present_figures_each_show_for_what_they_are() {
        let dir = tempfile_dir();
        std::fs::create_dir_all(dir.join("weft")).expect("dir");
        std::fs::create_dir_all(dir.join("peer")).expect("dir");
        std::fs::write(dir.join("weft/coldload.json"), r#"{"cold_ms": 20.0}"#).expect("write");
        std::fs::write(dir.join("peer/coldload.json"), r#"{"cold_ms": 50.0}"#).expect("write");
        std::fs::write(dir.join("peer/idle.skip"), "needs /proc of the server").expect("write");
        let table = run(CompareArgs {
            dir: dir.clone(),
            servers: vec!["weft".into(), "peer".into()],
        })
        .expect("table");
        let line = |label: &str| line_of(&table, label);
        assert!(line("coldload").contains("2.50×"), "{table}");
        assert!(line("idle").contains("n/a: needs /proc"), "{table}");
        assert!(line("ingest").contains("not run"), "{table}");
        assert!(line("fdatasync p99.9").contains("not run"), "{table}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn targets_are_worked_out_from_the_same_run() {
        let dir = tempfile_dir().join("targets");
        for (server, p50, p99, cpu) in [("weft", 4.0, 30.0, 0.4), ("peer", 9.0, 20.0, 0.9)] {
            std::fs::create_dir_all(dir.join(server)).expect("dir");
            let step = format!(
                r#"{{"ws": {{"p50_ms": {p50}, "p99_ms": {p99}, "samples": 100000}}, "server_cpu_seconds": {cpu}}}"#
            );
            std::fs::write(
                dir.join(server).join("fanout.json"),
                format!(r#"{{"steps": [{step}]}}"#),
            )
            .expect("write");
        }
        std::fs::write(
            dir.join("weft/disk.json"),
            r#"{"fdatasync": {"p999_ms": 5.0}}"#,
        )
        .expect("write");
        let table = run(CompareArgs {
            dir: dir.clone(),
            servers: vec!["weft".into(), "peer".into()],
        })
        .expect("table");
        let line = |label: &str| line_of(&table, label);
        // 2/3 of the peer's 9 ms; the peer's 20 ms plus the disk's 5 ms;
        // 0.4 s over 100,000 deliveries is 4 µs.
        assert!(
            line("fanout 1,000 subs: p50").contains("≤ 6.00 ms: met"),
            "{table}"
        );
        assert!(
            line("fanout 1,000 subs: p99").contains("≤ 25.0 ms: not met"),
            "{table}"
        );
        let cpu = line("fanout 1,000 subs: server CPU per delivery");
        assert!(
            cpu.contains("4.00 µs") && cpu.contains("≤ 6.00 µs: met"),
            "{table}"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    /// The table's row for `label`, or an empty string.
    fn line_of(table: &str, label: &str) -> String {
        table
            .lines()
            .find(|l| l.contains(label))
            .unwrap_or_default()
            .to_owned()
    }

    fn tempfile_dir() -> PathBuf {
        std::env::temp_dir().join(format!("weft-bench-compare-{}", std::process::id()))
    }
}
