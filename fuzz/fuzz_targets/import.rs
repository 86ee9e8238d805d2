#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailer_fuzz::import::run(data));
