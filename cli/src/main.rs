fn main() { eprintln!("llmgw: the CLI arrives with issue 4; use `make run` for now"); std::process::exit(2); }
