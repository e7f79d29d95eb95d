//! Hostile ZEGO room callbacks: any body, JSON or form, never panics; a body whose signature does
//! not verify is always refused; and a body re-signed with the right secret and a fresh timestamp
//! is never refused for its signature (so the parser behind the check is fuzzed too).
#![no_main]

use bouncer::callback::{Refusal, zego};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-callback-secret";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let now = chrono::Utc::now();
    let form = selector & 1 == 1;
    if let Ok(cb) = zego::verify(7, body, form, SECRET, now) {
        // Accepted as sent: it must carry the right signature for its own timestamp and nonce.
        let fields = zego::fields(body, form).expect("an accepted body parses");
        let signature = zego::signature(SECRET, &fields["timestamp"], &fields["nonce"]);
        assert_eq!(fields.get("signature"), Some(&signature));
        assert!(cb.nonce.is_some());
    }
    // The same fields, signed properly now: refused only as malformed or for the app id.
    let Ok(mut fields) = zego::fields(body, false) else { return };
    let timestamp = now.timestamp().to_string();
    let nonce = fields.get("nonce").cloned().filter(|n| !n.is_empty()).unwrap_or_else(|| "n".into());
    fields.insert("signature".into(), zego::signature(SECRET, &timestamp, &nonce));
    fields.insert("timestamp".into(), timestamp);
    fields.insert("nonce".into(), nonce);
    let signed = serde_json::to_vec(&fields).expect("a map of strings");
    match zego::verify(7, &signed, false, SECRET, now) {
        Ok(_) | Err(Refusal::Malformed { .. }) => {}
        Err(other) => panic!("a properly signed body was refused: {other:?}"),
    }
});
