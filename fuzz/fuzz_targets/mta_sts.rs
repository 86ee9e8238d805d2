#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailer_fuzz::mta_sts::run(data));
