#![no_main]

#[global_allocator]
static ALLOC: llmgw_fuzz::alloc::Counting = llmgw_fuzz::alloc::Counting;

libfuzzer_sys::fuzz_target!(init: llmgw_fuzz::init(), |data: &[u8]| llmgw_fuzz::targets::multipart(data));
