//! Hostile TRTC room callbacks: any body never panics; verified with the `Sign` computed over
//! its exact bytes it is never refused for its signature; with any other `Sign` it always is.
#![no_main]

use bouncer::callback::{Refusal, trtc};
use libfuzzer_sys::fuzz_target;

const KEY: &str = "fuzzkey123";

fuzz_target!(|data: &[u8]| {
    let now = chrono::Utc::now();
    let sign = trtc::sign(KEY, data);
    match trtc::verify(9, data, Some(&sign), KEY, now) {
        Err(Refusal::BadSignature | Refusal::MissingSignature) => panic!("the right Sign was refused"),
        _ => {}
    }
    let forged = trtc::sign("otherkey", data);
    assert_eq!(trtc::verify(9, data, Some(&forged), KEY, now), Err(Refusal::BadSignature));
    // The body itself as the Sign (garbage, or base64 of something else): refused.
    let as_sign = String::from_utf8_lossy(data);
    if as_sign != sign {
        assert!(trtc::verify(9, data, Some(&as_sign), KEY, now).is_err());
    }
});
