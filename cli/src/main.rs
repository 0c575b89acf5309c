fn main() {
    std::process::exit(llmgw::cli::main());
}
