//! One call as it is read, and the answer it gets.

use std::time::Instant;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// What to answer, before rendering.
pub(crate) enum Answer {
    Http(StatusCode),
    Zego { code: i64, message: String, data: Option<serde_json::Value> },
    Trtc { error: Option<(&'static str, String)> },
}

/// The identity of a call, filled in as the request is read.
#[derive(Default)]
pub(crate) struct Call {
    pub(crate) vendor: &'static str,
    pub(crate) app_id: u32,
    pub(crate) action: String,
    pub(crate) quota: String,
    pub(crate) room_id: String,
    pub(crate) room_numeric: bool,
    pub(crate) user_ids: Vec<String>,
    pub(crate) reason: Option<String>,
    pub(crate) timestamp: Option<i64>,
    pub(crate) nonce: Option<String>,
    /// When the call arrived (counted against its quota); recorded times are this, not when the
    /// answer was ready.
    pub(crate) arrived: Option<Instant>,
    /// A ban-rule call (ZEGO), not a kick: the kick counters leave it out.
    pub(crate) rule: bool,
}

pub(crate) type Refusal = (Answer, &'static str);

pub(crate) fn zego_no(code: i64, message: impl Into<String>, why: &'static str) -> Refusal {
    (Answer::Zego { code, message: message.into(), data: None }, why)
}

pub(crate) fn trtc_no(code: &'static str, message: impl Into<String>, why: &'static str) -> Refusal {
    (Answer::Trtc { error: Some((code, message.into())) }, why)
}

pub(crate) fn render(answer: Answer) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    match answer {
        Answer::Http(status) => (status, "").into_response(),
        Answer::Zego { code, message, data } => {
            let mut body = json!({"Code": code, "Message": message, "RequestId": request_id});
            if let Some(d) = data {
                body["Data"] = d;
            }
            Json(body).into_response()
        }
        Answer::Trtc { error: None } => Json(json!({"Response": {"RequestId": request_id}})).into_response(),
        Answer::Trtc { error: Some((code, message)) } => Json(json!({
            "Response": {"Error": {"Code": code, "Message": message}, "RequestId": request_id}
        }))
        .into_response(),
    }
}
