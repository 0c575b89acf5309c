//! Replays saved inputs through the fuzz targets' code as plain unit tests (no libFuzzer):
//! - fuzz/regressions/<target>/*: minimized crashes found by fuzzing (each must now pass);
//! - fuzz/seeds/<target>/*: the seed corpora (the golden fixtures and mock answers must satisfy
//!   every invariant the targets check).
//!
//! One test per directory, run serially: the allocation counter is process-wide.

use std::path::Path;

#[global_allocator]
static ALLOC: llmgw_fuzz::alloc::Counting = llmgw_fuzz::alloc::Counting;

/// Replays every input under `dir`; returns how many ran and the failures (file: message).
fn replay(dir: &str) -> (usize, Vec<String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut count = 0;
    let mut failures = Vec::new();
    let Ok(targets) = std::fs::read_dir(&root) else { return (0, failures) };
    let mut targets: Vec<_> = targets.flatten().filter(|e| e.path().is_dir()).collect();
    targets.sort_by_key(|e| e.file_name());
    for t in targets {
        let name = t.file_name().to_string_lossy().to_string();
        let mut files: Vec<_> = std::fs::read_dir(t.path()).expect("read dir").flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files.iter().filter(|f| f.is_file() && f.extension().is_none_or(|e| e != "md")) {
            let data = std::fs::read(f).expect("read input");
            let result = std::panic::catch_unwind(|| llmgw_fuzz::targets::run(&name, &data));
            match result {
                Ok(true) => {}
                Ok(false) => failures.push(format!("{}: no fuzz target named {name}", f.display())),
                Err(e) => {
                    let message = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failures.push(format!("{}: {}", f.display(), message.chars().take(300).collect::<String>()));
                }
            }
            count += 1;
        }
    }
    (count, failures)
}

#[test]
fn seeds_and_regressions() {
    let (seeds, mut failures) = replay("seeds");
    let (regressions, more) = replay("regressions");
    failures.extend(more);
    eprintln!("{seeds} seeds, {regressions} regressions replayed");
    assert!(seeds > 0);
    assert!(failures.is_empty(), "{} failing input(s):\n{}", failures.len(), failures.join("\n"));
}
