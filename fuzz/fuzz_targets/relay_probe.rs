#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailer_fuzz::relay_probe::run(data));
