//! Vendor apps for a stack: random ids and secrets, so parallel tests and runs never share a
//! vendor quota, as typed `[[zego]]` / `[[trtc]]` sections.

use std::collections::HashMap;

use bouncer::config::{Config, FileConfig, FileTrtc, FileZego};

/// Random app ids and secrets.
pub struct Apps {
    pub zego: Vec<(u32, String)>,
    /// (sdk_app_id, secret_id, secret_key)
    pub trtc: Vec<(u32, String, String)>,
    /// `[[zego]] forbid_rules` for every ZEGO app (worker and simulator alike).
    pub forbid_rules: bool,
}

/// Tests give up on a silent vendor after 2 s (the default is 5 s).
const TEST_TIMEOUT_MS: u64 = 2_000;

impl Apps {
    pub fn random(zego: usize, trtc: usize) -> Apps {
        let id = || rand::random_range(1_000_000..u32::MAX);
        let secret = || uuid::Uuid::new_v4().simple().to_string();
        Apps {
            zego: (0..zego).map(|_| (id(), secret())).collect(),
            trtc: (0..trtc).map(|_| (id(), format!("AKID{}", secret()), secret())).collect(),
            forbid_rules: false,
        }
    }

    /// The same apps with ZEGO ban rules switched on (in the simulator too).
    pub fn with_forbid_rules(mut self) -> Apps {
        self.forbid_rules = true;
        self
    }

    /// A configuration of only these apps' sections, pointing at `endpoint`.
    pub fn file_config(&self, endpoint: &str) -> FileConfig {
        let mut file = FileConfig {
            zego: self
                .zego
                .iter()
                .map(|(app, secret)| FileZego {
                    forbid_rules: self.forbid_rules,
                    ..FileZego::new(*app, secret, endpoint)
                })
                .collect(),
            trtc: self
                .trtc
                .iter()
                .map(|(app, id, key)| FileTrtc::new(*app, id, key, "ap-guangzhou", endpoint))
                .collect(),
            ..FileConfig::default()
        };
        set_vendor_timeouts(&mut file, TEST_TIMEOUT_MS);
        file
    }

    /// The `[[zego]]` and `[[trtc]]` sections as TOML text.
    pub fn toml(&self, endpoint: &str) -> String {
        self.file_config(endpoint).to_toml()
    }

    pub fn config(&self, endpoint: &str) -> Config {
        Config::from_toml_with_env(&self.toml(endpoint), &HashMap::new()).expect("test config is valid")
    }
}

/// Points every vendor section at `endpoint` (a simulator's address, known once it listens).
pub fn point_vendors_at(file: &mut FileConfig, endpoint: &str) {
    file.zego.iter_mut().for_each(|z| z.endpoint = endpoint.to_owned());
    file.trtc.iter_mut().for_each(|t| t.endpoint = endpoint.to_owned());
}

/// Sets every vendor section's `timeout_ms`.
pub fn set_vendor_timeouts(file: &mut FileConfig, timeout_ms: u64) {
    file.zego.iter_mut().for_each(|z| z.timeout_ms = timeout_ms);
    file.trtc.iter_mut().for_each(|t| t.timeout_ms = timeout_ms);
}
