//! The filter's per-request work, natively: the bench's requests through the gateway logic
//! (`llmgw_filter::exchange::Exchange`) with an in-memory `Host` that counts host calls (each one a
//! VM boundary crossing in Envoy), timed natively or counted in instructions under callgrind.
//!
//! The plugin configurations, request bodies and mock answers are those of `make bench`
//! (host-tests/bench/bench.py, bench_mock.rs); see host-tests/bench/PERFORMANCE.md and `USAGE`.

const USAGE: &str = "\
usage: llmgw-bench-profile COMMAND
  list                                      the scenarios
  run [--json] [--iters N] [SCENARIO...]    µs per request (native) and host calls per request
  callgrind [OPTIONS] [SCENARIO...]         instructions per request inside the filter (callgrind)
  check BASELINE [OPTIONS] [SCENARIO...]    the same against BASELINE (baseline.json): exits 1
                                            naming each scenario more than 10% above its figure
  update BASELINE [OPTIONS]                 measures every scenario and rewrites BASELINE
  loop SCENARIO N [all|downstream|upstream] a warm-up request, then N (what runs under callgrind)
OPTIONS:
  --json             the report as JSON on stdout (the table goes to stderr)
  --json-out FILE    the report as JSON into FILE as well
  --out DIR          callgrind output files (default: $TMPDIR/llmgw-bench-profile)
  --repeat N         callgrind runs per scenario, which must agree to 1% (default 2)
  --iters N          requests per run (default: 200; 50 for 100 KB bodies)
  --no-split         fallback scenarios: skip the runs that measure each filter instance alone
  --tolerance PCT    check: allowed growth over the baseline (default 10)";

mod callgrind;
mod host;
mod scenario;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use serde_json::{json, Map, Value};

use host::{Call, Counts};
use scenario::{Collect, Prepared, Scenario, SCENARIOS};

/// Host calls of one request (after a warm-up one), per filter instance.
struct HostCalls {
    downstream: Counts,
    upstream: Option<Counts>,
    /// Requests these are the sum of.
    requests: u64,
}

impl HostCalls {
    fn total(&self) -> Counts {
        let mut t = self.downstream;
        if let Some(up) = &self.upstream {
            t.add(up);
        }
        t
    }

    fn per(&self, n: u64) -> f64 {
        n as f64 / self.requests as f64
    }

    fn instance_json(&self, c: &Counts) -> Value {
        let calls: Map<String, Value> = Call::ALL
            .iter()
            .filter(|k| c.calls[**k as usize] > 0)
            .map(|k| (k.name().to_string(), json!(self.per(c.calls[*k as usize]))))
            .collect();
        json!({
            "total": self.per(c.total()),
            "calls": calls,
            "bytes_in": self.per(c.bytes_in),
            "bytes_out": self.per(c.bytes_out),
        })
    }

    fn json(&self) -> Value {
        let total = self.total();
        let mut v = json!({
            "total": self.per(total.total()),
            "bytes_in": self.per(total.bytes_in),
            "bytes_out": self.per(total.bytes_out),
            "downstream": self.instance_json(&self.downstream),
        });
        if let Some(up) = &self.upstream {
            v["upstream"] = self.instance_json(up);
        }
        v
    }

    /// "31" or "12 + 35 = 47" (downstream + upstream).
    fn short(&self) -> String {
        match &self.upstream {
            None => num(self.per(self.downstream.total())),
            Some(up) => format!(
                "{} + {} = {}",
                num(self.per(self.downstream.total())),
                num(self.per(up.total())),
                num(self.per(self.total().total()))
            ),
        }
    }

    fn print(&self) {
        let mut instances = vec![("downstream filter", &self.downstream)];
        if let Some(up) = &self.upstream {
            instances.push(("upstream filter", up));
        }
        for (label, c) in instances {
            if self.upstream.is_some() {
                println!("  {label}: {} host calls per request", num(self.per(c.total())));
            } else {
                println!("  host calls per request: {}", num(self.per(c.total())));
            }
            for k in Call::ALL {
                if c.calls[k as usize] > 0 {
                    println!("    {:>6}  {}", num(self.per(c.calls[k as usize])), k.name());
                }
            }
            println!(
                "    bytes copied from the host {}, to the host {}",
                num(self.per(c.bytes_in)),
                num(self.per(c.bytes_out))
            );
        }
        if self.upstream.is_some() {
            println!("  host calls per request, both filters: {}", num(self.per(self.total().total())));
        }
    }
}

/// Per-request figures are whole numbers but for bytes of a time-dependent body (digits of a
/// timestamp): one decimal then.
fn num(x: f64) -> String {
    if x.fract() == 0.0 {
        group(x as u64)
    } else {
        let text = format!("{x:.1}");
        let (whole, fraction) = text.split_once('.').unwrap_or((&text, "0"));
        format!("{}.{fraction}", whole.parse().map_or_else(|_| whole.to_string(), group))
    }
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A warm-up request (checked: it must do what the bench's request does), then `n` requests.
fn run_requests(p: &Prepared, n: u64) -> Result<(HostCalls, f64), String> {
    p.request(0, Collect::None, true).map_err(|e| format!("{}: {e}", p.scenario.name))?;
    let mut calls = HostCalls { downstream: Counts::default(), upstream: None, requests: n };
    let t0 = Instant::now();
    for i in 1..=n {
        let o = p.request(i, Collect::None, false).map_err(|e| format!("{}: {e}", p.scenario.name))?;
        calls.downstream.add(&o.downstream);
        if let Some(up) = o.upstream {
            calls.upstream.get_or_insert_with(Counts::default).add(&up);
        }
    }
    Ok((calls, t0.elapsed().as_secs_f64() * 1e6 / n as f64))
}

fn scenario_json(s: &Scenario, p: &Prepared) -> Value {
    json!({"name": s.name, "about": s.about, "request_bytes": p.body_len(), "fallback": s.fallback})
}

fn select(names: &[String]) -> Result<Vec<&'static Scenario>, String> {
    if names.is_empty() {
        return Ok(SCENARIOS.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            scenario::find(n).ok_or_else(|| {
                let known: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
                format!("unknown scenario {n:?}; known: {}", known.join(", "))
            })
        })
        .collect()
}

#[derive(Default)]
struct Args {
    positional: Vec<String>,
    /// JSON on stdout (the callgrind commands' table goes to stderr).
    json: bool,
    json_out: Option<String>,
    out: Option<PathBuf>,
    repeat: Option<u32>,
    iters: Option<u64>,
    no_split: bool,
    tolerance: Option<f64>,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--json" => a.json = true,
            "--json-out" => a.json_out = Some(value("--json-out")?),
            "--out" => a.out = Some(PathBuf::from(value("--out")?)),
            "--repeat" => a.repeat = Some(value("--repeat")?.parse().map_err(|_| "--repeat: a number")?),
            "--iters" => a.iters = Some(value("--iters")?.parse().map_err(|_| "--iters: a number")?),
            "--tolerance" => {
                a.tolerance =
                    Some(value("--tolerance")?.parse::<f64>().map_err(|_| "--tolerance: a percentage")? / 100.0)
            }
            "--no-split" => a.no_split = true,
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            _ => a.positional.push(arg.clone()),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match argv.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => ("help", &[][..]),
    };
    let result = match cmd {
        "list" => {
            for s in SCENARIOS {
                println!("{:<28} {}", s.name, s.about);
            }
            Ok(ExitCode::SUCCESS)
        }
        "loop" => cmd_loop(rest),
        "run" => parse_args(rest).and_then(|a| cmd_run(&a)),
        "callgrind" | "check" | "update" => parse_args(rest).and_then(|a| cmd_callgrind(cmd, &a)),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("{USAGE}");
            Ok(ExitCode::from(2))
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("llmgw-bench-profile: {e}");
        ExitCode::from(2)
    })
}

/// Under callgrind: a checked warm-up request, then N collected ones.
fn cmd_loop(rest: &[String]) -> Result<ExitCode, String> {
    let [name, n, more @ ..] = rest else { return Err("usage: loop SCENARIO N [all|downstream|upstream]".into()) };
    let s = select(std::slice::from_ref(name))?[0];
    let n: u64 = n.parse().map_err(|_| "N: a number")?;
    let collect = match more.first() {
        None => Collect::All,
        Some(c) => Collect::parse(c).ok_or_else(|| format!("unknown filter instance {c:?}"))?,
    };
    // A thread of its own: glibc gives it a fresh malloc arena and stack, so the heap layout (and
    // with it malloc's and memcpy's instruction counts) does not depend on what the process did
    // before, such as the length of its own path in argv.
    let measure = move || -> Result<(), String> {
        let p = Prepared::new(s)?;
        p.request(0, Collect::None, true).map_err(|e| format!("{}: {e}", s.name))?;
        for i in 1..=n {
            p.request(i, collect, false).map_err(|e| format!("{}: {e}", s.name))?;
        }
        Ok(())
    };
    std::thread::Builder::new()
        .name("measure".into())
        .stack_size(64 << 20)
        .spawn(measure)
        .map_err(|e| format!("thread: {e}"))?
        .join()
        .map_err(|_| "the measured thread panicked".to_string())??;
    Ok(ExitCode::SUCCESS)
}

fn cmd_run(a: &Args) -> Result<ExitCode, String> {
    let mut out = Vec::new();
    for s in select(&a.positional)? {
        let p = Prepared::new(s)?;
        let n = a.iters.unwrap_or_else(|| s.native_iterations());
        let (calls, us) = run_requests(&p, n)?;
        if a.json {
            let mut v = scenario_json(s, &p);
            v["native_us_per_request"] = json!((us * 100.0).round() / 100.0);
            v["native_iterations"] = json!(n);
            v["host_calls"] = calls.json();
            out.push(v);
        } else {
            println!("{}: {} (request body {} B)", s.name, s.about, p.body_len());
            println!("  {us:.2} µs per request (native, {n} iterations)");
            calls.print();
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json!({"scenarios": out})).unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_callgrind(cmd: &str, a: &Args) -> Result<ExitCode, String> {
    let mut positional = a.positional.clone();
    let baseline_path = if cmd == "callgrind" {
        None
    } else {
        if positional.is_empty() {
            return Err(format!("usage: {cmd} BASELINE_JSON [SCENARIO...]"));
        }
        Some(PathBuf::from(positional.remove(0)))
    };
    if cmd == "update" && !positional.is_empty() {
        return Err("update measures every scenario; it takes no scenario names".into());
    }
    let scenarios = select(&positional)?;
    let valgrind = callgrind::valgrind_version().ok_or("valgrind not found (apt-get install valgrind)")?;
    let bin = std::env::current_exe().map_err(|e| format!("this executable: {e}"))?;
    let opts = callgrind::Options {
        out_dir: a.out.clone().unwrap_or_else(|| std::env::temp_dir().join("llmgw-bench-profile")),
        repeat: a.repeat.unwrap_or(2),
        split: !a.no_split,
        iterations: a.iters,
    };
    let tolerance = a.tolerance.unwrap_or(callgrind::DEFAULT_TOLERANCE);
    let baseline = match (&baseline_path, cmd) {
        (Some(path), "check") => Some(callgrind::read_baseline(path)?),
        _ => None,
    };
    for (what, then, now) in baseline.iter().flat_map(|b| &b.platform_differs) {
        eprintln!(
            "note: the baseline was measured with {what} {then:?}, this is {now:?}: the counts may differ by a few % \
             for that alone"
        );
    }
    // The table goes to stderr when the JSON goes to stdout.
    let to_stdout = a.json;
    let say = |line: String| {
        if to_stdout {
            eprintln!("{line}")
        } else {
            println!("{line}")
        }
    };
    say(format!(
        "callgrind: instructions per request inside the filter's callbacks ({valgrind}, {}; {} run(s) per scenario)",
        callgrind::rustc_version(),
        opts.repeat
    ));
    say(format!(
        "{:<28} {:>11} {:>11} {:>7}  {:<12} host calls per request",
        "scenario", "baseline", "now", "ratio", "verdict"
    ));
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for s in &scenarios {
        let p = Prepared::new(s)?;
        let (calls, _) = run_requests(&p, 1)?;
        let m = callgrind::measure(&bin, s, &opts)?;
        let base = baseline.as_ref().and_then(|b| b.per_request.get(s.name)).and_then(Value::as_u64);
        let mut v = scenario_json(s, &p);
        if let Value::Object(extra) = callgrind::measured_json(&m) {
            v.as_object_mut().expect("an object").extend(extra);
        }
        v["host_calls"] = calls.json();
        let mut verdict_text = String::new();
        let mut ratio_text = String::new();
        if baseline.is_some() {
            let (verdict, ratio) = callgrind::verdict(m.per_request, base, tolerance);
            v["baseline"] = json!(base);
            v["ratio"] = json!(ratio.map(|r| (r * 1000.0).round() / 1000.0));
            v["verdict"] = json!(verdict.label());
            verdict_text = verdict.label().split(' ').next().unwrap_or_default().to_string();
            ratio_text = ratio.map_or_else(|| "—".into(), |r| format!("{r:.3}"));
            if verdict.fails() {
                failed.push(s.name);
            }
        }
        say(format!(
            "{:<28} {:>11} {:>11} {:>7}  {:<12} {}",
            s.name,
            base.map_or_else(|| "—".into(), group),
            group(m.per_request),
            ratio_text,
            verdict_text,
            calls.short()
        ));
        if let Some((dn, up)) = m.by_filter {
            say(format!("{:<28} {:>11} {:>11}  (downstream {}, upstream {})", "", "", "", group(dn), group(up)));
        }
        rows.push((s.name, m, v));
    }
    if let Some(b) = &baseline {
        if positional.is_empty() {
            for name in b.per_request.keys() {
                if scenario::find(name).is_none() {
                    say(format!("note: the baseline names {name:?}, which is no scenario any more (run update)"));
                }
            }
        }
    }
    let report = json!({
        "tool": "llmgw-bench-profile",
        "what": "callgrind instructions per request inside the filter's callbacks (native build, opt-level s)",
        "valgrind": valgrind,
        "rustc": callgrind::rustc_version(),
        "tolerance": tolerance,
        "baseline_file": baseline_path.as_ref().map(|p| p.display().to_string()),
        "ok": failed.is_empty(),
        "failed": failed,
        "scenarios": rows.iter().map(|(_, _, v)| v.clone()).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    if a.json {
        println!("{text}");
    }
    if let Some(path) = &a.json_out {
        std::fs::write(path, text + "\n").map_err(|e| format!("{path}: {e}"))?;
    }
    match cmd {
        "update" => {
            let path = baseline_path.as_deref().unwrap_or(Path::new("baseline.json"));
            let figures: Vec<(&str, u64)> = rows.iter().map(|(n, m, _)| (*n, m.per_request)).collect();
            let iterations: Vec<(&str, u64)> = rows.iter().map(|(n, m, _)| (*n, m.iterations)).collect();
            callgrind::write_baseline(path, &figures, &iterations)?;
            say(format!("baseline written: {}", path.display()));
            Ok(ExitCode::SUCCESS)
        }
        "check" if !failed.is_empty() => {
            for name in &failed {
                say(format!(
                    "FAIL {name}: more than {:.0}% above its baseline (or none): see the table; if intended, \
                     host-tests/bench/profile/profile.sh update",
                    tolerance * 100.0
                ));
            }
            Ok(ExitCode::from(1))
        }
        "check" => {
            say(format!("bench-check: every scenario within {:.0}% of its baseline", tolerance * 100.0));
            Ok(ExitCode::SUCCESS)
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}
