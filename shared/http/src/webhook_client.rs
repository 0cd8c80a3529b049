//! The webhook transport ([`WebhookTransport`]) over reqwest: what the deliverer posts with,
//! on AWS and under `ferry dev`.
//!
//! What is checked is what is connected to: host names are resolved by [`CheckedResolver`],
//! which hands reqwest only addresses the URL policy accepts (and refuses a name with any
//! other), and an IP-literal URL (which skips resolution) is checked by
//! [`webhook::parse_url`] before the request. Redirects are not followed, proxies from the
//! environment are not used (they would connect elsewhere), the timeout covers the whole
//! exchange, and at most [`webhook::MAX_RESPONSE_BYTES`] of the answer are read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::deliver::{TransportError, WebhookPost, WebhookResponse, WebhookTransport};
use ferry_core::ports::Resolver;
use ferry_core::webhook::{self, UrlPolicy};

/// How long connecting may take, within the request's timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Webhook POSTs over HTTP(S).
#[derive(Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    policy: UrlPolicy,
}

impl HttpTransport {
    /// A transport calling only what `policy` allows, resolving names through `resolver`.
    pub fn new(policy: UrlPolicy, resolver: Arc<dyn Resolver>) -> Result<HttpTransport, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .dns_resolver(Arc::new(CheckedResolver { resolver, policy }))
            .build()?;
        Ok(HttpTransport { client, policy })
    }
}

/// A name resolved to an address the policy refuses.
#[derive(Debug, thiserror::Error)]
#[error("{REFUSED}{0}")]
struct RefusedAddress(String);

/// How a [`RefusedAddress`] reads: hyper's connector keeps the resolver's error only as
/// text, so the transport finds the refusal by it.
const REFUSED: &str = "refused address: ";

/// Resolves through a [`Resolver`] and lets through only names whose every address
/// [`webhook::check_addresses`] accepts.
struct CheckedResolver {
    resolver: Arc<dyn Resolver>,
    policy: UrlPolicy,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (resolver, policy) = (self.resolver.clone(), self.policy);
        Box::pin(async move {
            let addrs = resolver.lookup(name.as_str(), 0).await?;
            if addrs.is_empty() {
                return Err(format!("{} has no address", name.as_str()).into());
            }
            webhook::check_addresses(&addrs, policy)
                .map_err(|e| Box::new(RefusedAddress(format!("{}: {}", name.as_str(), e.message))))?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// Whether `err` comes from [`CheckedResolver`] refusing an address: why, if so.
fn refused(err: &reqwest::Error) -> Option<String> {
    let text = describe(err);
    text.find(REFUSED).map(|at| text[at + REFUSED.len()..].to_string())
}

/// `err` with its causes, for the delivery record.
fn describe(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[async_trait]
impl WebhookTransport for HttpTransport {
    async fn post(&self, post: WebhookPost) -> Result<WebhookResponse, TransportError> {
        let target = webhook::parse_url(&post.url, self.policy).map_err(|e| TransportError::Refused(e.message))?;
        let mut request = self.client.post(target.url).timeout(post.timeout).body(post.body);
        for (name, value) in &post.headers {
            request = request.header(name, value);
        }
        let failed = |e: reqwest::Error| match refused(&e) {
            Some(why) => TransportError::Refused(why),
            None if e.is_timeout() => TransportError::Timeout(post.timeout),
            None => TransportError::Network(describe(&e)),
        };
        let mut response = request.send().await.map_err(failed)?;
        let status = response.status().as_u16();
        let retry_after =
            response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
        // Read (and drop) at most MAX_RESPONSE_BYTES of the body: the answer is the status.
        let mut read = 0;
        while read < webhook::MAX_RESPONSE_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        Ok(WebhookResponse { status, retry_after })
    }
}
