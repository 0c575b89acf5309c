//! Runs one input through a target without libFuzzer (to debug a finding):
//! cargo run --example replay -- TARGET FILE...
#[global_allocator]
static ALLOC: llmgw_fuzz::alloc::Counting = llmgw_fuzz::alloc::Counting;

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().expect("TARGET FILE...");
    for file in args {
        let data = std::fs::read(&file).expect("read input");
        eprintln!("{file}: {} bytes", data.len());
        assert!(llmgw_fuzz::targets::run(&target, &data), "unknown target {target}");
    }
}
