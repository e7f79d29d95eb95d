//! `POST /v1/callbacks/zego/{app_id}` and `POST /v1/callbacks/trtc/{sdk_app_id}`: the vendors'
//! room callbacks. No bearer token (the vendors cannot send one): each is verified with its app's
//! signing secret ([`crate::callback`]) before anything in it is believed, recorded in one
//! transaction ([`crate::audit::reentries::record`]), and answered. The re-kick happens after the
//! answer, on the quota owner (woken through PostgreSQL).
//!
//! Refusals (401, or 400 for a signed body Bouncer cannot read) are counted by reason in
//! `bouncer_callbacks_refused_total` and logged with the reason and app only, at most once a
//! second: never the body, the signature or the secret.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};

use super::{ApiState, Throttle};
use crate::audit::reentries::{self, Recorded};
use crate::callback::{self, Refusal, RoomCallback};
use crate::config::Config;
use crate::vendors::Vendor;

/// Each app's callback signing secret, by vendor and app id (apps without one refuse callbacks).
pub(crate) struct CallbackKeys {
    zego: HashMap<u32, SecretString>,
    trtc: HashMap<u32, SecretString>,
    /// This replica's worker id, recorded as `received_by`.
    me: String,
    /// Refusals since the last one logged.
    refusals: Throttle,
}

impl CallbackKeys {
    pub(crate) fn from_config(config: &Config, me: String) -> CallbackKeys {
        CallbackKeys {
            zego: config.zego.iter().filter_map(|z| Some((z.app_id, z.callback_secret.clone()?))).collect(),
            trtc: config.trtc.iter().filter_map(|t| Some((t.sdk_app_id, t.callback_key.clone()?))).collect(),
            me,
            refusals: Throttle::default(),
        }
    }

    pub(crate) fn any_zego(&self) -> bool {
        !self.zego.is_empty()
    }

    fn secret(&self, vendor: Vendor, app_id: &str) -> Option<(u32, &SecretString)> {
        let id: u32 = app_id.parse().ok()?;
        let keys = match vendor {
            Vendor::Zego => &self.zego,
            Vendor::Trtc => &self.trtc,
        };
        keys.get(&id).map(|s| (id, s))
    }
}

/// The answer both vendors take as success (TRTC suggests this body; ZEGO takes any 2xx).
fn accepted() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], r#"{"code":0}"#).into_response()
}

pub(crate) async fn zego(
    State(s): State<ApiState>,
    Path(app_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received_at = Utc::now();
    let verified = match s.callbacks.secret(Vendor::Zego, &app_id) {
        None => Err(Refusal::UnknownApp),
        Some((id, secret)) => {
            let form = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
            callback::zego::verify(id, &body, form, secret.expose_secret(), received_at)
        }
    };
    act(&s, Vendor::Zego, verified, received_at).await
}

pub(crate) async fn trtc(
    State(s): State<ApiState>,
    Path(app_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received_at = Utc::now();
    let verified = match s.callbacks.secret(Vendor::Trtc, &app_id) {
        None => Err(Refusal::UnknownApp),
        Some((id, key)) => {
            let sign = headers.get("sign").and_then(|v| v.to_str().ok());
            let stated = headers.get("sdkappid").and_then(|v| v.to_str().ok());
            match callback::trtc::verify(id, &body, sign, key.expose_secret(), received_at) {
                // Signed for this app's key, but the header names another app: not ours to read.
                Ok(_) if stated.is_some_and(|a| a.trim() != id.to_string()) => {
                    Err(Refusal::Malformed { field: "SdkAppId", why: "does not match the app id in the URL".into() })
                }
                verified => verified,
            }
        }
    };
    act(&s, Vendor::Trtc, verified, received_at).await
}

/// Records a verified callback and answers; answers a refusal.
async fn act(
    s: &ApiState,
    vendor: Vendor,
    verified: Result<RoomCallback, Refusal>,
    received_at: chrono::DateTime<Utc>,
) -> Response {
    let cb = match verified {
        Ok(cb) => cb,
        Err(refusal) => return refuse(s, vendor, refusal),
    };
    let recorded = match s.within(reentries::record(&s.db, &cb, received_at, &s.callbacks.me)).await {
        Ok(r) => r,
        // 503: the vendor delivers again (ZEGO up to 5 times, TRTC for a minute).
        Err(e) => return e.into_response(),
    };
    metrics::counter!("bouncer_callbacks_total", "vendor" => vendor.as_str(), "event" => cb.event.as_str(),
        "outcome" => recorded.as_str())
    .increment(1);
    match &recorded {
        Recorded::Replayed => return refuse(s, vendor, Refusal::Replayed),
        Recorded::Reentry { id, verdict_id } => {
            metrics::counter!("bouncer_reentries_total", "vendor" => vendor.as_str()).increment(1);
            tracing::info!(vendor = %vendor, app_id = cb.app_id, reentry_id = id,
                verdict_id = %crate::text::single_line(verdict_id), user_id = %crate::text::single_line(&cb.user_id),
                room_id = %crate::text::single_line(&cb.room.to_string()), "a banned user came back; re-kick queued");
        }
        Recorded::Removal => {
            // Linked once the kick's result is surely written (the housekeeping sweeper links it
            // too, should this process stop first).
            tokio::spawn(link_later(s.db.clone()));
        }
        _ => {}
    }
    accepted()
}

/// Links due removals once this one is due.
async fn link_later(db: crate::audit::Db) {
    tokio::time::sleep(reentries::LINK_AFTER + Duration::from_millis(100)).await;
    if let Err(e) = reentries::link_due(&db).await {
        tracing::debug!(error = %e, "cannot link kick confirmations now; the sweeper tries again");
    }
}

fn refuse(s: &ApiState, vendor: Vendor, refusal: Refusal) -> Response {
    let reason = refusal.reason();
    metrics::counter!("bouncer_callbacks_refused_total", "vendor" => vendor.as_str(), "reason" => reason).increment(1);
    if let Some(held_back) = s.callbacks.refusals.suppressed() {
        let field = match &refusal {
            Refusal::Malformed { field, .. } => *field,
            _ => "",
        };
        tracing::warn!(vendor = %vendor, reason, field, more_since_last_log = held_back, "vendor callback refused");
    }
    match refusal {
        Refusal::Malformed { field, why } => super::ApiError::bad(field, why).into_response(),
        other => super::ApiError::callback_refused(other.reason()).into_response(),
    }
}

/// While callbacks are configured: links removals every 5 s (those a stopped process left
/// unlinked) and forgets used ZEGO nonces once their timestamps can no longer be accepted, every
/// minute. Any replica may run both.
pub(crate) async fn housekeeping(
    db: crate::audit::Db,
    keys: Arc<CallbackKeys>,
    stop: tokio_util::sync::CancellationToken,
) {
    if keys.zego.is_empty() && keys.trtc.is_empty() {
        return;
    }
    let mut every = tokio::time::interval(Duration::from_secs(5));
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {
                ticks += 1;
                if let Err(e) = reentries::link_due(&db).await {
                    tracing::debug!(error = %e, "cannot link kick confirmations now; trying again in 5 s");
                }
                if keys.any_zego() && ticks % 12 == 1
                    && let Err(e) = reentries::forget_old_nonces(&db).await
                {
                    tracing::debug!(error = %e, "cannot forget old callback nonces; trying again in a minute");
                }
            }
        }
    }
}
