//! Error bodies: every refusal is `{"error": "<message>"}` with its status, including
//! warp's own rejections (unknown path, wrong method), turned into JSON in one `recover`.

use std::convert::Infallible;

use serde_json::json;
use warp::http::StatusCode;
use warp::{Rejection, Reply};

/// A JSON error body with `status`.
pub fn error_reply(status: StatusCode, message: &str) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(&json!({ "error": message })), status)
        .into_response()
}

/// The single `recover` for rejections warp raises before a handler runs.
pub async fn handle_rejection(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    let (status, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "not found")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
    } else if rejection.find::<warp::reject::InvalidHeader>().is_some() {
        (StatusCode::BAD_REQUEST, "invalid header")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (StatusCode::PAYLOAD_TOO_LARGE, "body too large")
    } else {
        (StatusCode::BAD_REQUEST, "bad request")
    };
    Ok(error_reply(status, message))
}
