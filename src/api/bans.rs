//! `/v1/bans…`: the check token servers ask before issuing an entry ticket, the list, and lifting.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::ApiError;
use super::params::{self, BodyFields, QueryParams, RoomInput};
use super::{ApiState, Caller};
use crate::audit::bans::{self, ActiveBan, BanFilter, BanRow, CheckItem, Lift, RoomRef};
use crate::ban::BanState;
use crate::vendors::Vendor;
use crate::verdict::{MAX_REASON_BYTES, MAX_USERS};

/// Most bans one list page holds, and the default.
const MAX_PAGE: i64 = 1000;
const DEFAULT_PAGE: i64 = 100;

/// The room of a request, if it names one.
fn room_of(
    vendor: Vendor,
    input: Option<RoomInput<'_>>,
    room_id_type: Option<&str>,
) -> Result<Option<RoomRef>, ApiError> {
    match input {
        Some(r) => params::room(vendor, r, room_id_type).map(Some),
        None if room_id_type.is_some() => Err(ApiError::bad("room_id_type", "is only meaningful with room_id")),
        None => Ok(None),
    }
}

/// One user's answer: `{"banned": false}`, or the ban that keeps them out longest.
fn answer(user_id: Option<&str>, ban: Option<&ActiveBan>) -> Value {
    metrics::counter!("bouncer_ban_checks_total", "answer" => if ban.is_some() { "banned" } else { "not_banned" })
        .increment(1);
    let mut a = match ban {
        None => json!({"banned": false}),
        Some(b) => {
            let mut a = json!({"banned": true, "ban_id": b.id, "scope": b.scope, "expires_at": b.expires_at,
                               "verdict_id": b.verdict_id, "reason": b.reason});
            if let Some(room) = &b.room_id {
                a["room_id"] = room.clone().into();
                a["room_id_type"] = params::room_type(b.room_id_numeric).into();
            }
            a
        }
    };
    if let Some(u) = user_id {
        a["user_id"] = u.into();
    }
    a
}

/// `GET /v1/bans/check?vendor&app_id&user_id[&room_id][&room_id_type]`.
pub(super) async fn check_one(State(s): State<ApiState>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let q = QueryParams::parse(raw.as_deref(), &["vendor", "app_id", "user_id", "room_id", "room_id_type"])?;
    let vendor = params::vendor("vendor", q.required("vendor")?)?;
    let app_id = params::app_id("app_id", q.required("app_id")?)?;
    let user = params::id("user_id", q.required("user_id")?)?;
    let room = room_of(vendor, q.get("room_id").map(RoomInput::Query), q.get("room_id_type"))?;
    let items = vec![CheckItem { vendor, app_id, user_id: user, room }];
    let found = s.check(items).await?;
    Ok(axum::Json(answer(None, found.first().and_then(Option::as_ref))).into_response())
}

/// `POST /v1/bans/check` `{"vendor", "app_id", "room_id"?, "room_id_type"?, "user_ids": [≤ 100]}`:
/// one answer per user, in the order given.
pub(super) async fn check_many(State(s): State<ApiState>, body: Bytes) -> Result<Response, ApiError> {
    let b = BodyFields::parse(&body, &["vendor", "app_id", "room_id", "room_id_type", "user_ids"])?;
    let vendor = params::vendor_json("vendor", b.required("vendor")?)?;
    let app_id = params::app_id_json("app_id", b.required("app_id")?)?;
    let room = room_of(vendor, b.get("room_id").map(RoomInput::Json), b.string("room_id_type")?)?;
    let Value::Array(items) = b.required("user_ids")? else {
        return Err(ApiError::bad("user_ids", "must be an array of user id strings"));
    };
    if items.is_empty() || items.len() > MAX_USERS {
        return Err(ApiError::bad("user_ids", format!("must list 1 to {MAX_USERS} users, got {}", items.len())));
    }
    let users = items
        .iter()
        .enumerate()
        .map(|(i, v)| params::id_json(&format!("user_ids[{i}]"), v))
        .collect::<Result<Vec<String>, ApiError>>()?;
    let checked: Vec<CheckItem> =
        users.iter().map(|u| CheckItem { vendor, app_id, user_id: u.clone(), room: room.clone() }).collect();
    let found = s.check(checked).await?;
    let results: Vec<Value> = users.iter().zip(&found).map(|(u, b)| answer(Some(u), b.as_ref())).collect();
    Ok(axum::Json(json!({"results": results})).into_response())
}

/// A ban as the API shows it.
pub(crate) fn ban_json(b: &BanRow) -> Value {
    json!({
        "ban_id": b.id, "vendor": b.vendor, "app_id": b.app_id, "user_id": b.user_id, "scope": b.scope,
        "room_id": b.room_id, "room_id_type": params::room_type(b.room_id_numeric), "state": b.state,
        "verdict_id": b.verdict_id, "verdict_ids": b.verdict_ids, "reason": b.reason,
        "created_at": b.created_at, "expires_at": b.expires_at, "ended_at": b.ended_at,
        "lifted_at": b.lifted_at, "lifted_by": b.lifted_by, "lift_reason": b.lift_reason,
        "vendor_rule": {"state": b.rule_state, "expires_at": b.rule_expires_at, "error": b.rule_error},
    })
}

/// `GET /v1/bans?vendor&app_id&user_id&room_id&room_id_type&state&limit&before`: newest first,
/// in keyset pages (`next_before` is the `before` of the next page, null on the last).
pub(super) async fn list(State(s): State<ApiState>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let known = ["vendor", "app_id", "user_id", "room_id", "room_id_type", "state", "limit", "before"];
    let q = QueryParams::parse(raw.as_deref(), &known)?;
    let vendor = q.get("vendor").map(|v| params::vendor("vendor", v)).transpose()?;
    let room = match (vendor, q.get("room_id")) {
        (None, Some(_)) => {
            return Err(ApiError::bad("vendor", "is required with room_id (room kinds are the vendor's)"));
        }
        (Some(v), r) => room_of(v, r.map(RoomInput::Query), q.get("room_id_type"))?,
        (None, None) => room_of(Vendor::Zego, None, q.get("room_id_type"))?,
    };
    let filter = BanFilter {
        vendor,
        app_id: q.get("app_id").map(|a| params::app_id("app_id", a)).transpose()?,
        user_id: q.get("user_id").map(|u| params::id("user_id", u)).transpose()?,
        room,
        state: q
            .get("state")
            .map(|st| {
                st.parse::<BanState>().ok().ok_or_else(|| ApiError::bad("state", "must be active, expired or lifted"))
            })
            .transpose()?,
        before_id: q
            .get("before")
            .map(|b| {
                b.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| ApiError::bad("before", "must be a ban_id"))
            })
            .transpose()?,
        limit: q
            .get("limit")
            .map(|l| {
                l.parse::<i64>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| ApiError::bad("limit", format!("must be an integer in 1..={MAX_PAGE}")))
            })
            .transpose()?
            .unwrap_or(DEFAULT_PAGE),
    };
    let rows = s.within(bans::list(&s.db, &filter)).await?;
    let next = (rows.len() as i64 == filter.limit).then(|| rows.last().map(|r| r.id)).flatten();
    Ok(axum::Json(json!({"bans": rows.iter().map(ban_json).collect::<Vec<_>>(), "next_before": next})).into_response())
}

/// `POST /v1/bans/lift` `{"vendor", "app_id", "user_id", "room_id"?, "room_id_type"?, "reason"}`:
/// with a room, that room's ban ends now; without, every active ban of the user in the app
/// (app scope and every room). The caller's token name is recorded as who lifted it.
pub(super) async fn lift(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b = BodyFields::parse(&body, &["vendor", "app_id", "user_id", "room_id", "room_id_type", "reason"])?;
    let vendor = params::vendor_json("vendor", b.required("vendor")?)?;
    let app_id = params::app_id_json("app_id", b.required("app_id")?)?;
    let user_id = params::id_json("user_id", b.required("user_id")?)?;
    let room = room_of(vendor, b.get("room_id").map(RoomInput::Json), b.string("room_id_type")?)?;
    let reason =
        b.string("reason")?.ok_or_else(|| ApiError::bad("reason", "is required: say why the ban ends early"))?;
    if reason.trim().is_empty() || reason.len() > MAX_REASON_BYTES || reason.contains('\0') {
        return Err(ApiError::bad("reason", format!("must be 1 to {MAX_REASON_BYTES} bytes of text without U+0000")));
    }
    let lift =
        Lift { vendor, app_id, user_id: &user_id, room: room.as_ref(), actor: &caller.0, reason, events: s.events };
    let lifted = s.within(bans::lift(&s.db, &lift)).await?;
    tracing::info!(actor = %caller.0, vendor = vendor.as_str(), app_id, lifted = lifted.len(), "bans lifted through the API");
    Ok(axum::Json(json!({"lifted": lifted.len(), "bans": lifted.iter().map(ban_json).collect::<Vec<_>>()}))
        .into_response())
}
