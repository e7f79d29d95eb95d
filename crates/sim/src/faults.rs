//! Faults the simulator can inject, set at run time through `PUT /_sim/faults`. A rule applies to
//! one app (`vendor` + `app_id`), one vendor, or everything; the most specific rule wins.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// `"zego"` or `"trtc"`; absent means both.
    pub vendor: Option<String>,
    /// ZEGO AppId or TRTC SdkAppId; absent means every app (of `vendor`).
    pub app_id: Option<u32>,
    /// Added to every answer.
    pub latency_ms: u64,
    /// Network jitter on the way in: each call arrives (and is counted against its quota) after a
    /// delay drawn uniformly from 0 to this many milliseconds.
    pub arrival_jitter_ms: u64,
    /// Share of calls answered with HTTP 502 and no body (0.0 to 1.0).
    pub http_502_rate: f64,
    /// Share of calls answered with the vendor's internal-error code.
    pub internal_error_rate: f64,
    /// Share of calls answered with the vendor's rate-limit code, whatever the real rate.
    pub throttle_rate: f64,
    /// Hold calls open without answering until the faults change (clients must time out).
    pub hang: bool,
    /// Rooms that do not exist (string form; numeric TRTC rooms as their digits).
    pub gone_rooms: Vec<String>,
    /// User ids the vendor refuses as invalid parameters; the whole call fails.
    pub bad_users: Vec<String>,
    /// Answer this many calls with the vendor's signature-expired code.
    pub expire_next: u32,
    /// ZEGO ban-rule calls are answered 9 (not enabled), whatever the configuration says.
    pub rules_not_enabled: bool,
}

/// Where a rule applies.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Scope {
    pub vendor: Option<String>,
    pub app_id: Option<u32>,
}

impl Faults {
    pub fn scope(&self) -> Scope {
        Scope { vendor: self.vendor.clone(), app_id: self.app_id }
    }

    /// The scopes to look up for a call, most specific first.
    pub fn lookup_order(vendor: &str, app_id: u32) -> [Scope; 4] {
        [
            Scope { vendor: Some(vendor.into()), app_id: Some(app_id) },
            Scope { vendor: None, app_id: Some(app_id) },
            Scope { vendor: Some(vendor.into()), app_id: None },
            Scope { vendor: None, app_id: None },
        ]
    }

    pub fn validate(&self) -> Result<(), String> {
        if let Some(v) = &self.vendor
            && bouncer::vendors::Vendor::parse(v).is_none()
        {
            return Err(format!("vendor must be one of {}, got {v:?}", bouncer::vendors::NAMES.join(", ")));
        }
        for (name, rate) in [
            ("http_502_rate", self.http_502_rate),
            ("internal_error_rate", self.internal_error_rate),
            ("throttle_rate", self.throttle_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be within 0.0..=1.0, got {rate}"));
            }
        }
        Ok(())
    }
}

/// Draws true with probability `rate`.
pub fn chance(rate: f64) -> bool {
    rate > 0.0 && rand::random::<f64>() < rate
}
