#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailer_fuzz::dot_stuff_stream::run(data));
