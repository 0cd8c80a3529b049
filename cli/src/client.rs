//! A client of the HTTP API, for `ferry submit/get/list/cancel/models` and the demo. It
//! returns the API's own types, and the API's error body when a call is refused.

use ferry_core::error::ErrorBody;
use ferry_core::view::{JobList, JobView, ModelList};
use http::StatusCode;
use serde::de::DeserializeOwned;

/// Why a call failed.
#[derive(Debug)]
pub enum ClientError {
    /// The API answered with an error.
    Api { status: StatusCode, body: ErrorBody },
    /// The API could not be reached, or answered something unreadable.
    Transport(String),
}

impl std::error::Error for ClientError {}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Api { status, body } => {
                let e = &body.error;
                write!(f, "{} {}: {}", status.as_u16(), e.kind, e.message)?;
                if let Some(field) = &e.field {
                    write!(f, " (field: {field})")?;
                }
                Ok(())
            }
            ClientError::Transport(m) => write!(f, "{m}"),
        }
    }
}

/// A response that was accepted, with its status (200 vs 202 matters for submit/cancel).
pub struct Answer<T> {
    pub status: StatusCode,
    pub body: T,
}

/// The API client.
#[derive(Clone)]
pub struct Client {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Client {
    /// The API's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn api_key(&self) -> &str {
        &self.key
    }

    pub fn new(base_url: &str, api_key: &str) -> Self {
        Client {
            base: base_url.trim_end_matches('/').to_string(),
            key: api_key.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// `POST /v1/jobs` with an optional `Idempotency-Key` and `Prefer: wait=N`.
    pub async fn submit(
        &self,
        body: &serde_json::Value,
        idempotency_key: Option<&str>,
        wait: Option<u64>,
    ) -> Result<Answer<JobView>, ClientError> {
        let mut req = self.http.post(format!("{}/v1/jobs", self.base)).json(body);
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(w) = wait {
            req = req.header("Prefer", format!("wait={w}"));
        }
        self.send(req).await
    }

    pub async fn get(&self, id: &str) -> Result<Answer<JobView>, ClientError> {
        self.send(self.http.get(format!("{}/v1/jobs/{}", self.base, enc(id)))).await
    }

    pub async fn list(
        &self,
        status: Option<&str>,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Answer<JobList>, ClientError> {
        let mut q: Vec<(&str, String)> = vec![];
        if let Some(s) = status {
            q.push(("status", s.to_string()));
        }
        if let Some(l) = limit {
            q.push(("limit", l.to_string()));
        }
        if let Some(c) = cursor {
            q.push(("cursor", c.to_string()));
        }
        self.send(self.http.get(format!("{}/v1/jobs", self.base)).query(&q)).await
    }

    /// `GET /v1/jobs/{id}/output`: the job's output, inline or stored (a redirect to a
    /// presigned URL is followed; the key is not sent to another host).
    pub async fn output(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        let answer: Answer<serde_json::Value> =
            self.send(self.http.get(format!("{}/v1/jobs/{}/output", self.base, enc(id)))).await?;
        Ok(answer.body)
    }

    pub async fn cancel(&self, id: &str) -> Result<Answer<JobView>, ClientError> {
        self.send(self.http.post(format!("{}/v1/jobs/{}/cancel", self.base, enc(id)))).await
    }

    pub async fn pools(&self) -> Result<Answer<ferry_core::dispatch::PoolList>, ClientError> {
        self.send(self.http.get(format!("{}/v1/pools", self.base))).await
    }

    /// `GET /v1/webhooks/secret`.
    pub async fn webhook_secrets(&self) -> Result<Answer<ferry_core::webhook_secrets::WebhookSecretList>, ClientError> {
        self.send(self.http.get(format!("{}/v1/webhooks/secret", self.base))).await
    }

    /// `POST /v1/webhooks/secret/rotate`.
    pub async fn rotate_webhook_secret(
        &self,
    ) -> Result<Answer<ferry_core::webhook_secrets::WebhookSecretList>, ClientError> {
        self.send(self.http.post(format!("{}/v1/webhooks/secret/rotate", self.base))).await
    }

    /// `GET /v1/jobs/{id}/webhooks`.
    pub async fn webhook_deliveries(&self, id: &str) -> Result<Answer<ferry_core::deliver::DeliveryList>, ClientError> {
        self.send(self.http.get(format!("{}/v1/jobs/{id}/webhooks", self.base))).await
    }

    /// `POST /v1/jobs/{id}/webhooks/redeliver`, of one delivery or (`None`) the undelivered ones.
    pub async fn redeliver_webhooks(
        &self,
        id: &str,
        delivery: Option<&str>,
    ) -> Result<Answer<ferry_core::deliver::DeliveryList>, ClientError> {
        let req = self.http.post(format!("{}/v1/jobs/{id}/webhooks/redeliver", self.base));
        let req = match delivery {
            Some(d) => req.json(&serde_json::json!({"id": d})),
            None => req,
        };
        self.send(req).await
    }

    pub async fn models(&self) -> Result<Answer<ModelList>, ClientError> {
        self.send(self.http.get(format!("{}/v1/models", self.base))).await
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<Answer<T>, ClientError> {
        let resp = req
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|e| ClientError::Transport(format!("cannot reach {}: {e}", self.base)))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Transport(e.to_string()))?;
        if status.is_success() {
            let body = serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::Transport(format!("unexpected response ({status}): {e}")))?;
            Ok(Answer { status, body })
        } else {
            match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => Err(ClientError::Api { status, body }),
                Err(_) => Err(ClientError::Transport(format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)))),
            }
        }
    }
}

/// Path segments from users are percent-encoded so they cannot change the route.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
