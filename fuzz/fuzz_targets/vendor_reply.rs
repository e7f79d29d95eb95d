//! Any vendor reply body, for either vendor and any TRTC action: interpreting it never panics and
//! always yields an outcome.
#![no_main]

use std::time::Duration;

use bouncer::vendor_api::{trtc, zego};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let latency = Duration::from_millis(u64::from(selector));
    match selector % 3 {
        0 => drop(zego::interpret(body, latency)),
        1 => drop(trtc::interpret(trtc::ACTION_NUMERIC, body, latency)),
        _ => drop(trtc::interpret(trtc::ACTION_STRING, body, latency)),
    }
});
