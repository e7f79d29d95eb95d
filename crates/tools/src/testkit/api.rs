//! The public API (`[api]`) of a test's workers: switching it on with tokens of the test's own,
//! and a client that speaks it as a token server would.

use std::time::Duration;

use bouncer::config::FileApiToken;
use reqwest::StatusCode;
use serde_json::Value;

use crate::testkit::{TestEnv, WorkerProcess};

/// The name of the token [`TestEnv::enable_api`] gives a token server, recorded as actor of lifts.
pub const TOKEN_SERVER: &str = "token-server";

impl TestEnv {
    /// Serves the public API on a free port with one token, named [`TOKEN_SERVER`]; returns it.
    pub fn enable_api(&mut self) -> String {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let t = token.clone();
        self.edit_config(|f| {
            f.api.listen = Some("127.0.0.1:0".into());
            f.api.tokens = vec![FileApiToken {
                name: TOKEN_SERVER.into(),
                token: Some(t.into()),
                token_env: None,
                token_file: None,
            }];
        });
        token
    }
}

/// A caller of one worker's API.
pub struct ApiClient {
    pub base: String,
    pub token: Option<String>,
    http: reqwest::Client,
}

/// An answer: status, `Retry-After` if any, and the JSON body (`Value::Null` if it was not JSON).
#[derive(Debug)]
pub struct ApiAnswer {
    pub status: StatusCode,
    pub retry_after: Option<String>,
    pub body: Value,
}

impl ApiClient {
    pub fn new(worker: &WorkerProcess, token: Option<&str>) -> ApiClient {
        ApiClient {
            base: format!("http://{}", worker.api_addr()),
            token: token.map(str::to_owned),
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("http client"),
        }
    }

    /// The same listener with another token (or none).
    pub fn with_token(&self, token: Option<&str>) -> ApiClient {
        ApiClient { base: self.base.clone(), token: token.map(str::to_owned), http: self.http.clone() }
    }

    pub async fn get(&self, path_and_query: &str) -> ApiAnswer {
        self.send(self.http.get(format!("{}{path_and_query}", self.base))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> ApiAnswer {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body)).await
    }

    pub async fn post_raw(&self, path: &str, body: &str) -> ApiAnswer {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .body(body.to_owned()),
        )
        .await
    }

    async fn send(&self, mut request: reqwest::RequestBuilder) -> ApiAnswer {
        if let Some(t) = &self.token {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status();
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = response.json().await.unwrap_or(Value::Null);
        ApiAnswer { status, retry_after, body }
    }

    /// `GET /v1/bans/check` for one user (percent-encoded), in a room or app-wide; the 200 answer.
    pub async fn check(&self, vendor: &str, app: u32, user: &str, room: Option<(&str, Option<&str>)>) -> Value {
        let mut q: Vec<(&str, String)> =
            vec![("vendor", vendor.into()), ("app_id", app.to_string()), ("user_id", user.into())];
        if let Some((r, t)) = room {
            q.push(("room_id", r.into()));
            if let Some(t) = t {
                q.push(("room_id_type", t.into()));
            }
        }
        let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(q).finish();
        let a = self.get(&format!("/v1/bans/check?{query}")).await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        a.body
    }

    /// Whether `user` is banned where asked.
    pub async fn banned(&self, vendor: &str, app: u32, user: &str, room: Option<(&str, Option<&str>)>) -> bool {
        self.check(vendor, app, user, room).await["banned"].as_bool().expect("banned is a boolean")
    }
}
