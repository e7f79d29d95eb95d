//! Any configuration text: parsing and validation never panic, and an error names a key.
#![no_main]

use std::collections::HashMap;

use bouncer::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = Config::from_toml_with_env(text, &HashMap::new()) {
        assert!(!e.to_string().is_empty());
    }
});
