//! Any message body: the parser never panics, and what it accepts serialises to a body that
//! parses equal.
#![no_main]

use bouncer::verdict::Verdict;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(v) = Verdict::parse(body) {
        let again = Verdict::parse(v.to_json().to_string().as_bytes()).expect("a parsed verdict re-serialised parses");
        assert_eq!(again, v);
    }
});
