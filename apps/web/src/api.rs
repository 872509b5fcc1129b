//! Calls to the backend's HTTP API, with its error body turned into a message.

use events::{
    Account, CreateAccountRequest, ErrorBody, Snapshot, StreamTicket, TokenRequest, TokenResponse,
};
use gloo_net::http::{Request, Response};
use serde::de::DeserializeOwned;

/// A failed call: the server's own message when it sent one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    /// 0 when the request did not reach the server.
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn unreachable(error: gloo_net::Error) -> ApiFailure {
    ApiFailure {
        status: 0,
        message: format!("the server could not be reached: {error}"),
    }
}

async fn read<T: DeserializeOwned>(response: Response) -> Result<T, ApiFailure> {
    let status = response.status();
    if response.ok() {
        return response.json::<T>().await.map_err(|e| ApiFailure {
            status,
            message: format!("unreadable response: {e}"),
        });
    }
    let message = match response.json::<ErrorBody>().await {
        Ok(body) => body.error.message,
        Err(_) => format!("the server answered {status}"),
    };
    Err(ApiFailure { status, message })
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A single-use ticket to open the caller's stream with: its handle in the body, its
/// secret in an HttpOnly cookie the browser keeps for the stream request.
pub async fn stream_ticket(url: &str, token: &str) -> Result<StreamTicket, ApiFailure> {
    let request = Request::post(url).header("Authorization", &bearer(token));
    read(request.send().await.map_err(unreachable)?).await
}

pub async fn request_token(user_id: &str) -> Result<TokenResponse, ApiFailure> {
    let body = TokenRequest {
        user_id: user_id.to_string(),
    };
    let request = Request::post("/api/auth/token")
        .json(&body)
        .map_err(unreachable)?;
    read(request.send().await.map_err(unreachable)?).await
}

/// Creates an account. `idempotency_key` names this creation: a retry with the same key
/// (after a failure that may have created it) creates nothing and answers with the account
/// the first attempt created.
pub async fn create_account(
    token: &str,
    body: &CreateAccountRequest,
    idempotency_key: &str,
) -> Result<Account, ApiFailure> {
    let request = Request::post("/api/accounts")
        .header("Authorization", &bearer(token))
        .header("Idempotency-Key", idempotency_key)
        .json(body)
        .map_err(unreachable)?;
    read(request.send().await.map_err(unreachable)?).await
}

pub async fn accounts(token: &str) -> Result<Vec<Account>, ApiFailure> {
    let request = Request::get("/api/accounts").header("Authorization", &bearer(token));
    read(request.send().await.map_err(unreachable)?).await
}

pub async fn snapshots(token: &str) -> Result<Vec<Snapshot>, ApiFailure> {
    let request = Request::get("/api/snapshots").header("Authorization", &bearer(token));
    read(request.send().await.map_err(unreachable)?).await
}
