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
    /// Room callbacks signed and verified for every app ([`Apps::callback_secret`]).
    pub callbacks: bool,
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
            callbacks: false,
        }
    }

    /// The same apps with room callbacks: `[[zego]] callback_secret` and `[[trtc]] callback_key`
    /// (worker and simulator alike).
    pub fn with_callbacks(mut self) -> Apps {
        self.callbacks = true;
        self
    }

    /// An app's callback signing secret (ZEGO's CallbackSecret, TRTC's key: up to 32 letters
    /// and digits), derived from its API secret.
    pub fn callback_secret(&self, app_id: u32) -> String {
        let api_secret = self
            .zego
            .iter()
            .map(|(a, s)| (*a, s))
            .chain(self.trtc.iter().map(|(a, _, k)| (*a, k)))
            .find(|(a, _)| *a == app_id)
            .map(|(_, s)| s.clone())
            .unwrap_or_default();
        format!("cb{}", &api_secret[..api_secret.len().min(30)]).chars().rev().collect()
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
                    callback_secret: self.callbacks.then(|| self.callback_secret(*app).into()),
                    ..FileZego::new(*app, secret, endpoint)
                })
                .collect(),
            trtc: self
                .trtc
                .iter()
                .map(|(app, id, key)| FileTrtc {
                    callback_key: self.callbacks.then(|| self.callback_secret(*app).into()),
                    ..FileTrtc::new(*app, id, key, "ap-guangzhou", endpoint)
                })
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
