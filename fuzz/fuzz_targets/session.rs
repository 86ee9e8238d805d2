#![no_main]

// Counts heap bytes so the session's memory bound is checked.
#[global_allocator]
static ALLOC: mailer_fuzz::memory::Counting = mailer_fuzz::memory::Counting;

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailer_fuzz::session::run(data));
