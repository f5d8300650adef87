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
    #[arg(long, value_delimiter = ',', default_values_t = ["weft".to_string(), "y-websocket-server".into(), "y-sweet".into()])]
    pub servers: Vec<String>,
}

/// Picks a figure out of a scenario's JSON result, or says why there is none.
type Finder = Box<dyn Fn(&Value) -> Result<f64, String>>;

fn at(v: &Value, pointer: &str) -> Result<f64, String> {
    v.pointer(pointer)
        .and_then(Value::as_f64)
        .ok_or_else(|| "no result".to_string())
}

/// One figure: which scenario file, how to find it, what it is.
struct Figure {
    scenario: &'static str,
    label: String,
    find: Finder,
    unit: &'static str,
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
    let mut all = fanout_figures();
    all.push(pointer_figure(
        "idle",
        "idle: RSS per WebSocket",
        "/ws_bytes_per_connection",
        "B",
    ));
    all.push(pointer_figure(
        "ingest",
        "ingest automerge-paper: total",
        "/server_ms",
        "ms",
    ));
    all.push(pointer_figure(
        "ingest",
        "ingest automerge-paper: × in-process yrs",
        "/ratio_to_in_process",
        "×",
    ));
    // The other traces `compare.sh` replays, each against yrs in-process.
    for scenario in INGEST_SCENARIOS {
        let trace = scenario.trim_start_matches("ingest-");
        all.push(pointer_figure(
            scenario,
            &format!("ingest {trace}: × in-process yrs"),
            "/ratio_to_in_process",
            "×",
        ));
    }
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
    }
}

/// One writer to 100, 1,000 and 5,000 subscribers, then 200 writers.
fn fanout_figures() -> Vec<Figure> {
    let mut all = Vec::new();
    for (i, n) in ["100", "1,000", "5,000"].iter().enumerate() {
        for (what, field, unit) in [
            ("p50", "ws/p50_ms", "ms"),
            ("p99", "ws/p99_ms", "ms"),
            ("server CPU", "server_cpu_seconds", "s"),
        ] {
            all.push(pointer_figure(
                "fanout",
                &format!("fanout, 1 writer, {n} subs: {what}"),
                &format!("/steps/{i}/{field}"),
                unit,
            ));
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
        table.add_row(row);
    }
    Ok(table.to_string())
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
        let line = |label: &str| {
            table
                .lines()
                .find(|l| l.contains(label))
                .unwrap_or_default()
                .to_owned()
        };
        assert!(line("coldload").contains("2.50×"), "{table}");
        assert!(line("idle").contains("n/a: needs /proc"), "{table}");
        assert!(line("ingest").contains("not run"), "{table}");
        assert!(line("fdatasync p99.9").contains("not run"), "{table}");
        std::fs::remove_dir_all(dir).ok();
    }

    fn tempfile_dir() -> PathBuf {
        std::env::temp_dir().join(format!("weft-bench-compare-{}", std::process::id()))
    }
}
