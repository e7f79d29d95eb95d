//! The API's one error type: every refusal is JSON `{"code", "parameter"?, "message"}` with the
//! status it deserves. Messages name what was wrong; they never carry SQL, a stack trace or a
//! token.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why a request was refused.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    parameter: Option<String>,
    message: String,
}

/// Seconds a caller is told to wait when PostgreSQL cannot answer.
pub(crate) const RETRY_AFTER_SECS: u32 = 1;

impl ApiError {
    /// 401: no bearer token, or not one of `[[api.tokens]]`.
    pub(crate) fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            parameter: None,
            message: "send Authorization: Bearer <token> with a token configured in [[api.tokens]]".into(),
        }
    }

    /// 401 for a vendor callback that cannot be trusted; `reason` is one of
    /// [`crate::callback::Refusal::reason`]'s labels (never anything from the request).
    pub(crate) fn callback_refused(reason: &'static str) -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "callback_refused",
            parameter: None,
            message: format!("callback refused: {reason}"),
        }
    }

    /// 400 naming the parameter (query parameter or JSON field) at fault.
    pub(crate) fn bad(parameter: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_parameter",
            // Parameter names may come from the caller (an unknown one): kept to one line.
            parameter: Some(crate::text::single_line(parameter).into_owned()),
            message: message.into(),
        }
    }

    /// 400 for a body that is not the JSON object the endpoint takes.
    pub(crate) fn bad_body(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, code: "bad_body", parameter: None, message: message.into() }
    }

    /// 413: the body is over the endpoint's limit.
    pub(crate) fn too_large(limit: usize) -> ApiError {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "body_too_large",
            parameter: None,
            message: format!("the body must be at most {limit} bytes"),
        }
    }

    /// 503 with `Retry-After`: PostgreSQL did not answer in time.
    pub(crate) fn unavailable() -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "database_unavailable",
            parameter: None,
            message: "the ban store cannot answer right now; try again shortly".into(),
        }
    }

    pub(crate) fn not_found() -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            parameter: None,
            message: "no such endpoint; GET /v1/openapi.json lists them".into(),
        }
    }

    pub(crate) fn method_not_allowed() -> ApiError {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "method_not_allowed",
            parameter: None,
            message: "this endpoint does not take that method; GET /v1/openapi.json lists them".into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"code": self.code, "message": self.message});
        if let Some(p) = self.parameter {
            body["parameter"] = p.into();
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match self.status {
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            StatusCode::UNAUTHORIZED if self.code == "unauthorized" => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}
