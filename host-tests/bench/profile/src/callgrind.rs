//! Instructions per request under callgrind, the committed baseline and the regression check.
//!
//! Each scenario runs in a child process (`llmgw-bench-profile loop NAME N`) under
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect=<in_filter>`: only what runs
//! inside the filter's callbacks is counted (not the warm-up request, the setup, or the harness
//! copying bodies between hosts), so the count is deterministic and independent of other load.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Map, Value};

use crate::scenario::{Collect, Scenario};

/// The function whose calls callgrind collects (scenario::in_filter, demangled).
pub const TOGGLE: &str = "llmgw_bench_profile::scenario::in_filter*";
/// A scenario fails the check when it needs more than this many times its baseline.
pub const DEFAULT_TOLERANCE: f64 = 0.10;
/// Two runs of one scenario must agree this closely.
const STABLE: f64 = 0.01;

pub struct Options {
    pub out_dir: PathBuf,
    pub repeat: u32,
    /// For the fallback scenarios, also measure each filter instance alone.
    pub split: bool,
    pub iterations: Option<u64>,
}

/// One scenario's callgrind figures.
pub struct Measured {
    pub per_request: u64,
    pub runs: Vec<u64>,
    pub iterations: u64,
    /// (downstream, upstream) for the two-filter scenarios, when split.
    pub by_filter: Option<(u64, u64)>,
}

pub fn valgrind_version() -> Option<String> {
    let out = Command::new("valgrind").arg("--version").output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn rustc_version() -> &'static str {
    env!("LLMGW_PROFILE_RUSTC")
}

/// The C library (its memcpy and malloc are part of the counts).
pub fn libc_version() -> String {
    Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// What the counts depend on besides the code: the baseline records it, the check compares it.
pub fn platform() -> Vec<(&'static str, String)> {
    vec![
        ("rustc", rustc_version().to_string()),
        ("libc", libc_version()),
        ("valgrind", valgrind_version().unwrap_or_default()),
    ]
}

/// Total instructions collected in one callgrind run of `iterations` requests.
fn run_once(bin: &Path, s: &Scenario, collect: Collect, iterations: u64, out: &Path) -> Result<u64, String> {
    let collect_arg = match collect {
        Collect::All => "all",
        Collect::Downstream => "downstream",
        Collect::Upstream => "upstream",
        Collect::None => "none",
    };
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--collect-atstart=no")
        .arg(format!("--toggle-collect={TOGGLE}"))
        .arg(bin)
        .args(["loop", s.name, &iterations.to_string(), collect_arg])
        .output()
        .map_err(|e| format!("valgrind: {e} (install it: apt-get install valgrind)"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("==")).collect();
        return Err(format!("{}: callgrind run failed ({}): {}", s.name, output.status, tail.join("\n")));
    }
    let text = std::fs::read_to_string(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| format!("{}: no totals in {}", s.name, out.display()))?;
    if total == 0 {
        return Err(format!(
            "{}: callgrind collected nothing: --toggle-collect={TOGGLE} matched no function (renamed?)",
            s.name
        ));
    }
    Ok(total)
}

fn per_request(total: u64, iterations: u64) -> u64 {
    (total as f64 / iterations as f64).round() as u64
}

pub fn measure(bin: &Path, s: &Scenario, opts: &Options) -> Result<Measured, String> {
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| format!("{}: {e}", opts.out_dir.display()))?;
    let iterations = opts.iterations.unwrap_or_else(|| s.callgrind_iterations());
    let mut runs = Vec::new();
    for k in 0..opts.repeat.max(1) {
        let out = opts.out_dir.join(format!("callgrind.{}.{k}.out", s.name));
        runs.push(per_request(run_once(bin, s, Collect::All, iterations, &out)?, iterations));
    }
    let (lo, hi) = (*runs.iter().min().unwrap_or(&0), *runs.iter().max().unwrap_or(&0));
    if lo == 0 || (hi - lo) as f64 / lo as f64 > STABLE {
        return Err(format!("{}: callgrind runs disagree by more than {:.0}%: {runs:?}", s.name, STABLE * 100.0));
    }
    let by_filter = if s.fallback && opts.split {
        let part = |collect, tag| {
            let out = opts.out_dir.join(format!("callgrind.{}.{tag}.out", s.name));
            run_once(bin, s, collect, iterations, &out).map(|t| per_request(t, iterations))
        };
        Some((part(Collect::Downstream, "downstream")?, part(Collect::Upstream, "upstream")?))
    } else {
        None
    };
    Ok(Measured { per_request: runs[0], runs, iterations, by_filter })
}

pub fn measured_json(m: &Measured) -> Value {
    let mut v = json!({
        "instructions_per_request": m.per_request,
        "runs": m.runs,
        "iterations": m.iterations,
    });
    if let Some((dn, up)) = m.by_filter {
        v["instructions_by_filter"] = json!({"downstream": dn, "upstream": up});
    }
    v
}

pub struct Baseline {
    pub per_request: Map<String, Value>,
    /// The baseline's platform figures that differ from this one's: (what, baseline's, this one's).
    pub platform_differs: Vec<(&'static str, String, String)>,
}

pub fn read_baseline(path: &Path) -> Result<Baseline, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let per_request = v
        .get("instructions_per_request")
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| format!("{}: no `instructions_per_request` object", path.display()))?;
    let platform_differs = platform()
        .into_iter()
        .filter_map(|(k, now)| {
            let then = v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            (then != now).then_some((k, then, now))
        })
        .collect();
    Ok(Baseline { per_request, platform_differs })
}

/// The baseline file: one line per scenario, in the tool's order, so updates diff cleanly.
pub fn write_baseline(path: &Path, figures: &[(&str, u64)], iterations: &[(&str, u64)]) -> Result<(), String> {
    let lines =
        |items: &[(&str, u64)]| items.iter().map(|(n, v)| format!("    \"{n}\": {v}")).collect::<Vec<_>>().join(",\n");
    let platform: String = platform().iter().map(|(k, v)| format!("  \"{k}\": {},\n", json!(v))).collect();
    let text = format!(
        "{{\n  \"about\": \"callgrind instructions per request inside the filter's callbacks, per scenario of \
         host-tests/bench/profile (native build, opt-level s). Regenerate with `host-tests/bench/profile/profile.sh \
         update`; `make bench-check` fails when a scenario exceeds its figure by more than {:.0}%.\",\n\
         {platform}  \"iterations\": {{\n{}\n  }},\n  \"instructions_per_request\": {{\n{}\n  }}\n}}\n",
        DEFAULT_TOLERANCE * 100.0,
        lines(iterations),
        lines(figures),
    );
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// What the check says of one scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// More than the tolerance above the baseline: the check fails.
    Regression,
    /// Well below the baseline: fine, but the baseline could be lowered.
    Improved,
    /// No baseline figure: the check fails (run `update`).
    NoBaseline,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Regression => "REGRESSION",
            Verdict::Improved => "improved (update the baseline)",
            Verdict::NoBaseline => "NO BASELINE",
        }
    }

    pub fn fails(self) -> bool {
        matches!(self, Verdict::Regression | Verdict::NoBaseline)
    }
}

pub fn verdict(now: u64, baseline: Option<u64>, tolerance: f64) -> (Verdict, Option<f64>) {
    match baseline {
        None | Some(0) => (Verdict::NoBaseline, None),
        Some(b) => {
            let ratio = now as f64 / b as f64;
            let v = if ratio > 1.0 + tolerance {
                Verdict::Regression
            } else if ratio < 1.0 - tolerance {
                Verdict::Improved
            } else {
                Verdict::Ok
            };
            (v, Some(ratio))
        }
    }
}
