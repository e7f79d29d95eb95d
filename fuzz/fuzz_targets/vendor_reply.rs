//! Any vendor reply body, for either vendor, any TRTC action and ZEGO's ban-rule calls:
//! interpreting it never panics and always yields an outcome.
#![no_main]

use std::time::Duration;

use bouncer::vendor_api::{trtc, zego, zego_rules};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let latency = Duration::from_millis(u64::from(selector));
    match selector % 5 {
        0 => drop(zego::interpret(body, latency)),
        1 => drop(trtc::interpret(trtc::ACTION_NUMERIC, body, latency)),
        2 => drop(trtc::interpret(trtc::ACTION_STRING, body, latency)),
        3 => drop(zego_rules::interpret(body, true)),
        _ => drop(zego_rules::interpret(body, false)),
    }
});
