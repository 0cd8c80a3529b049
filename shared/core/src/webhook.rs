//! Webhooks (issue 15): what a submit's `webhook` asks for, which URLs Ferry will call, how a
//! delivery is signed (the Standard Webhooks spec, standardwebhooks.com) and when a failed one
//! is tried again. Pure rules: the deliverer (a Lambda on AWS, a task in `ferry dev`) does the
//! I/O over them.
//!
//! - [`WebhookRequest`]: `{"url", "events"?}`, events `completed` (default), `started`,
//!   `output`.
//! - [`UrlPolicy`]: https only on AWS, http for loopback under `ferry dev`; never link-local or
//!   cloud metadata addresses, and on AWS no private or loopback ones either. Checked on the
//!   URL at submit and on every resolved address when connecting.
//! - [`WebhookSecret`]: `whsec_<base64>`; [`signature_header`] signs
//!   `"{id}.{timestamp}.{body}"` with HMAC-SHA256 under each current secret.
//! - A tenant's secrets over the store are [`crate::webhook_secrets`]'s (created on first
//!   use; a rotated-out secret signs beside the new one for [`ROTATION_OVERLAP`]).
//! - [`RETRY_DELAYS`] and [`verdict`]: network errors, 408, 429 (its `Retry-After` honoured)
//!   and 5xx are tried again after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h; 410 disables
//!   the endpoint; other answers end the delivery.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;

/// What a job's webhook is called for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookEvent {
    /// The job ended: succeeded, failed, cancelled or timed out.
    Completed,
    /// An executor started it.
    Started,
    /// New output (coalesced: at most one delivery a second per job).
    Output,
}

impl WebhookEvent {
    /// The body's `type`.
    pub fn type_name(self) -> &'static str {
        match self {
            WebhookEvent::Completed => "job.completed",
            WebhookEvent::Started => "job.started",
            WebhookEvent::Output => "job.output",
        }
    }
}

/// A submit's `webhook`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// Where to POST: `https://...` (`http://` to a loopback address under `ferry dev`).
    pub url: String,
    /// The events to deliver; `["completed"]` when absent.
    #[serde(default = "default_events")]
    pub events: Vec<WebhookEvent>,
}

fn default_events() -> Vec<WebhookEvent> {
    vec![WebhookEvent::Completed]
}

/// The longest webhook URL accepted.
pub const MAX_URL_LEN: usize = 2048;

impl WebhookRequest {
    /// Checks the URL's shape against `policy` (not its addresses: see [`check_addresses`]) and
    /// the events; returns the request with its events sorted and distinct. Errors name
    /// `webhook.url` or `webhook.events`.
    pub fn checked(mut self, policy: UrlPolicy) -> Result<WebhookRequest, ApiError> {
        if self.events.is_empty() {
            return Err(ApiError::invalid("webhook.events", "name at least one of completed, started, output"));
        }
        self.events.sort_unstable();
        self.events.dedup();
        parse_url(&self.url, policy)?;
        Ok(self)
    }
}

/// Where webhooks may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrlPolicy {
    /// `ferry dev`: http to loopback, and private addresses, are allowed.
    pub local: bool,
}

impl UrlPolicy {
    /// A deployment: https only, public addresses only.
    pub const AWS: UrlPolicy = UrlPolicy { local: false };
    /// `ferry dev`.
    pub const LOCAL: UrlPolicy = UrlPolicy { local: true };
}

/// A URL Ferry may call: its host and port, and the host's address when it is an IP literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: url::Url,
    pub host: String,
    pub port: u16,
}

fn bad_url(message: impl Into<String>) -> ApiError {
    ApiError::invalid("webhook.url", message)
}

/// Parses and checks a webhook URL's shape under `policy`: scheme, no credentials, a host; an
/// IP literal host is checked as [`forbidden`] would check a resolved address.
pub fn parse_url(raw: &str, policy: UrlPolicy) -> Result<Target, ApiError> {
    if raw.len() > MAX_URL_LEN {
        return Err(bad_url(format!("at most {MAX_URL_LEN} characters")));
    }
    let url = url::Url::parse(raw).map_err(|e| bad_url(format!("not a URL: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad_url("must not carry credentials"));
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.trim_end_matches('.').to_ascii_lowercase(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(bad_url("has no host")),
    };
    let ip: Option<IpAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(ip.into()),
        Some(url::Host::Ipv6(ip)) => Some(ip.into()),
        _ => None,
    };
    let loopback =
        ip.map(|ip| canonical(ip).is_loopback()).unwrap_or(host == "localhost" || host.ends_with(".localhost"));
    if let Some(ip) = ip
        && let Some(why) = forbidden(ip, policy)
    {
        return Err(bad_url(format!("{ip} is {why}")));
    }
    match url.scheme() {
        "https" => {}
        "http" if policy.local && loopback => {}
        "http" if policy.local => return Err(bad_url("http is allowed only to loopback addresses; use https")),
        "http" => return Err(bad_url("must be https")),
        other => return Err(bad_url(format!("scheme {other} is not https"))),
    }
    if !policy.local && loopback {
        return Err(bad_url("localhost is not reachable from a deployment"));
    }
    let port = url.port_or_known_default().ok_or_else(|| bad_url("has no port"))?;
    Ok(Target { url, host, port })
}

/// Every address a name resolved to must be allowed: the first refused one is the error.
pub fn check_addresses(addrs: &[IpAddr], policy: UrlPolicy) -> Result<(), ApiError> {
    if addrs.is_empty() {
        return Err(bad_url("its host does not resolve"));
    }
    for &ip in addrs {
        if let Some(why) = forbidden(ip, policy) {
            return Err(bad_url(format!("its host resolves to {ip}, which is {why}")));
        }
    }
    Ok(())
}

/// An IPv4-mapped or IPv4-compatible IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The EC2 instance metadata service's IPv6 address.
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// Why Ferry will not connect to `ip` under `policy` (`None`: it may).
pub fn forbidden(ip: IpAddr, policy: UrlPolicy) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => forbidden_v4(v4, policy),
        IpAddr::V6(v6) => forbidden_v6(v6, policy),
    }
}

fn forbidden_v4(ip: Ipv4Addr, policy: UrlPolicy) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_link_local() {
        // 169.254.0.0/16 holds the instance and task metadata endpoints (169.254.169.254,
        // 169.254.170.2): never, anywhere.
        return Some("a link-local (metadata) address");
    }
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || a == 0 || a >= 240 {
        return Some("not a unicast address");
    }
    if policy.local {
        return None;
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    if ip.is_private() || (a == 100 && (64..128).contains(&b)) || (a == 192 && b == 0 && ip.octets()[2] == 0) {
        return Some("a private address");
    }
    if ip.is_documentation() || (a == 198 && (18..20).contains(&b)) {
        return Some("a reserved address");
    }
    None
}

fn forbidden_v6(ip: Ipv6Addr, policy: UrlPolicy) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip == METADATA_V6 {
        return Some("the instance metadata address");
    }
    if (first & 0xffc0) == 0xfe80 {
        return Some("a link-local address");
    }
    if ip.is_unspecified() || ip.is_multicast() {
        return Some("not a unicast address");
    }
    if policy.local {
        return None;
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    if (first & 0xfe00) == 0xfc00 {
        return Some("a private (unique local) address");
    }
    if first == 0x2001 && ip.segments()[1] == 0x0db8 {
        return Some("a reserved address");
    }
    None
}

/// A tenant's signing secret: `whsec_` and the base64 of its bytes (the HMAC key is the bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

/// Why a secret string is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a webhook secret is whsec_ and the base64 of 24 to 64 bytes")]
pub struct BadSecret;

impl WebhookSecret {
    /// A new random secret of 32 bytes.
    pub fn generate() -> WebhookSecret {
        use rand::RngCore;
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        WebhookSecret(key)
    }

    pub fn parse(text: &str) -> Result<WebhookSecret, BadSecret> {
        let key = B64.decode(text.strip_prefix("whsec_").ok_or(BadSecret)?).map_err(|_| BadSecret)?;
        if !(24..=64).contains(&key.len()) {
            return Err(BadSecret);
        }
        Ok(WebhookSecret(key))
    }

    /// `whsec_<base64>`.
    pub fn encode(&self) -> String {
        format!("whsec_{}", B64.encode(&self.0))
    }

    /// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut signed = Vec::with_capacity(id.len() + 24 + body.len());
        signed.extend_from_slice(format!("{id}.{timestamp}.").as_bytes());
        signed.extend_from_slice(body);
        format!("v1,{}", B64.encode(crate::auth::hmac_sha256(&self.0, &signed)))
    }
}

/// The `webhook-signature` header: one signature per secret, space-separated (during a
/// rotation, the old secret's beside the new one's, so receivers on either verify).
pub fn signature_header(secrets: &[WebhookSecret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().map(|s| s.sign(id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

/// How long a rotated-out secret still signs deliveries.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// How long to wait before each retry: attempt 2 comes 5 s after attempt 1, ..., attempt 8
/// 10 h after attempt 7 (about 28 h in all); then the delivery is dead-lettered.
pub const RETRY_DELAYS: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// The longest a delivery may wait: also the cap on a `Retry-After`.
pub const MAX_DELAY: Duration = Duration::from_secs(10 * 3600);

/// A delivery's request timeout.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// The most of a receiver's response body read (for the delivery record).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// What an attempt's outcome means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx.
    Delivered,
    /// Try again after the schedule's delay, or the receiver's `Retry-After` when longer.
    Retry { retry_after: Option<Duration> },
    /// 410 Gone: the endpoint is disabled for the tenant.
    Disable,
    /// Any other answer (a 3xx, which is not followed, or a 4xx): not tried again.
    Failed,
}

/// The verdict on one attempt: `status` is `None` for a network error or a timeout.
pub fn verdict(status: Option<u16>, retry_after: Option<&str>, now_unix: i64) -> Verdict {
    match status {
        Some(200..=299) => Verdict::Delivered,
        None | Some(408) | Some(500..=599) => Verdict::Retry { retry_after: None },
        Some(429) => Verdict::Retry { retry_after: retry_after.and_then(|v| parse_retry_after(v, now_unix)) },
        Some(410) => Verdict::Disable,
        Some(_) => Verdict::Failed,
    }
}

/// `Retry-After` as seconds or an HTTP date, capped at [`MAX_DELAY`].
fn parse_retry_after(value: &str, now_unix: i64) -> Option<Duration> {
    let value = value.trim();
    let secs = match value.parse::<u64>() {
        Ok(s) => s,
        Err(_) => {
            let format = time::format_description::well_known::Rfc2822;
            let at = time::OffsetDateTime::parse(value, &format).ok()?.unix_timestamp();
            u64::try_from(at - now_unix).unwrap_or(0)
        }
    };
    Some(Duration::from_secs(secs).min(MAX_DELAY))
}

/// When to try a failed delivery again, after `attempts` attempts, on [`RETRY_DELAYS`]
/// (`None`: dead-letter it).
pub fn next_delay(attempts: u32, retry_after: Option<Duration>) -> Option<Duration> {
    next_delay_on(&RETRY_DELAYS, attempts, retry_after)
}

/// [`next_delay`] on another schedule (`delays[i]` after attempt `i + 1`): the schedule's delay,
/// or the receiver's `Retry-After` when longer, capped at [`MAX_DELAY`].
pub fn next_delay_on(delays: &[Duration], attempts: u32, retry_after: Option<Duration>) -> Option<Duration> {
    let scheduled = *delays.get(usize::try_from(attempts).ok()?.checked_sub(1)?)?;
    Some(retry_after.map_or(scheduled, |r| r.max(scheduled)).min(MAX_DELAY))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str, policy: UrlPolicy) -> String {
        let e = parse_url(url, policy).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("webhook.url"), "{url}");
        e.message
    }

    #[test]
    fn urls_by_policy() {
        assert!(parse_url("https://hooks.example.com/ferry?x=1", UrlPolicy::AWS).is_ok());
        assert!(refused("http://hooks.example.com/", UrlPolicy::AWS).contains("https"));
        assert!(refused("http://127.0.0.1:9/", UrlPolicy::AWS).contains("loopback"));
        assert!(refused("https://127.0.0.1/", UrlPolicy::AWS).contains("loopback"));
        assert!(refused("https://localhost/", UrlPolicy::AWS).contains("localhost"));
        assert!(refused("https://10.1.2.3/", UrlPolicy::AWS).contains("private"));
        assert!(refused("https://[fd12::1]/", UrlPolicy::AWS).contains("private"));
        assert!(refused("https://[::ffff:192.168.1.1]/", UrlPolicy::AWS).contains("private"));
        assert!(refused("https://user:pw@hooks.example.com/", UrlPolicy::AWS).contains("credentials"));
        assert!(refused("ftp://hooks.example.com/", UrlPolicy::AWS).contains("scheme"));
        assert!(refused("not a url", UrlPolicy::AWS).contains("not a URL"));
        // ferry dev: http to loopback, private addresses; never metadata or link-local.
        assert!(parse_url("http://127.0.0.1:8080/hook", UrlPolicy::LOCAL).is_ok());
        assert!(parse_url("http://localhost:8080/hook", UrlPolicy::LOCAL).is_ok());
        assert!(parse_url("https://10.1.2.3/", UrlPolicy::LOCAL).is_ok());
        assert!(refused("http://10.1.2.3/", UrlPolicy::LOCAL).contains("loopback"));
        for metadata in
            ["http://169.254.169.254/latest/meta-data/", "https://169.254.170.2/", "https://[fd00:ec2::254]/"]
        {
            assert!(refused(metadata, UrlPolicy::LOCAL).contains("metadata"), "{metadata}");
            assert!(refused(metadata, UrlPolicy::AWS).contains("metadata"), "{metadata}");
        }
        assert!(refused("https://[fe80::1]/", UrlPolicy::LOCAL).contains("link-local"));
        assert!(refused("https://0.0.0.0/", UrlPolicy::LOCAL).contains("unicast"));
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(refused(&long, UrlPolicy::AWS).contains("2048"));
    }

    #[test]
    fn resolved_addresses_are_checked_too() {
        let meta: IpAddr = "169.254.169.254".parse().unwrap();
        let public: IpAddr = "93.184.215.14".parse().unwrap();
        assert!(check_addresses(&[public], UrlPolicy::AWS).is_ok());
        let e = check_addresses(&[public, meta], UrlPolicy::LOCAL).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("webhook.url"));
        assert!(e.message.contains("169.254.169.254"), "{}", e.message);
        assert!(check_addresses(&["127.0.0.1".parse().unwrap()], UrlPolicy::AWS).is_err());
        assert!(check_addresses(&[], UrlPolicy::LOCAL).unwrap_err().message.contains("resolve"));
    }

    #[test]
    fn requests_default_to_completed_and_refuse_unknown_events() {
        let r: WebhookRequest = serde_json::from_str(r#"{"url": "https://x.example/h"}"#).unwrap();
        assert_eq!(r.events, vec![WebhookEvent::Completed]);
        let r: WebhookRequest =
            serde_json::from_str(r#"{"url": "https://x.example/h", "events": ["output", "started", "output"]}"#)
                .unwrap();
        assert_eq!(r.checked(UrlPolicy::AWS).unwrap().events, vec![WebhookEvent::Started, WebhookEvent::Output]);
        assert!(serde_json::from_str::<WebhookRequest>(r#"{"url": "https://x/", "events": ["done"]}"#).is_err());
        assert!(serde_json::from_str::<WebhookRequest>(r#"{"url": "https://x/", "secret": "s"}"#).is_err());
        let empty: WebhookRequest = serde_json::from_str(r#"{"url": "https://x.example/", "events": []}"#).unwrap();
        assert_eq!(empty.checked(UrlPolicy::AWS).unwrap_err().field.as_deref(), Some("webhook.events"));
    }

    #[test]
    fn secrets_round_trip_and_sign_as_the_spec_says() {
        let s = WebhookSecret::generate();
        assert_eq!(WebhookSecret::parse(&s.encode()).unwrap(), s);
        assert!(s.encode().starts_with("whsec_"));
        assert_eq!(WebhookSecret::parse("whsec_c2hvcnQ="), Err(BadSecret), "too short");
        assert_eq!(WebhookSecret::parse("sk_abc"), Err(BadSecret));
        // A fixed key; the reference library checks the signatures themselves (tests/tests/webhooks.rs).
        let key = WebhookSecret(b"Jefe".repeat(6));
        let one = key.sign("msg_1", 1700000000, b"{}");
        assert!(one.starts_with("v1,") && one.len() == 3 + 44, "{one}");
        assert_ne!(one, key.sign("msg_1", 1700000001, b"{}"), "the timestamp is signed");
        assert_ne!(one, key.sign("msg_2", 1700000000, b"{}"), "the id is signed");
        let two = signature_header(&[key.clone(), WebhookSecret::generate()], "msg_1", 1700000000, b"{}");
        assert_eq!(two.split(' ').count(), 2);
        assert!(two.starts_with(&one));
    }

    #[test]
    fn retries_follow_the_schedule_and_the_receiver() {
        assert_eq!(verdict(Some(204), None, 0), Verdict::Delivered);
        assert_eq!(verdict(None, None, 0), Verdict::Retry { retry_after: None });
        assert_eq!(verdict(Some(503), None, 0), Verdict::Retry { retry_after: None });
        assert_eq!(verdict(Some(408), None, 0), Verdict::Retry { retry_after: None });
        assert_eq!(verdict(Some(429), Some("120"), 0), Verdict::Retry { retry_after: Some(Duration::from_secs(120)) });
        let date = "Tue, 14 Nov 2023 22:15:20 GMT"; // 1700000120
        assert_eq!(
            verdict(Some(429), Some(date), 1700000000),
            Verdict::Retry { retry_after: Some(Duration::from_secs(120)) }
        );
        assert_eq!(verdict(Some(410), None, 0), Verdict::Disable);
        assert_eq!(verdict(Some(404), None, 0), Verdict::Failed);
        assert_eq!(verdict(Some(301), None, 0), Verdict::Failed, "redirects are not followed");
        assert_eq!(next_delay(1, None), Some(Duration::from_secs(5)));
        assert_eq!(next_delay(1, Some(Duration::from_secs(120))), Some(Duration::from_secs(120)));
        assert_eq!(next_delay(2, Some(Duration::from_secs(1))), Some(Duration::from_secs(300)));
        assert_eq!(next_delay(7, None), Some(Duration::from_secs(36000)));
        assert_eq!(next_delay(8, None), None, "eight attempts, then the dead-letter queue");
        let total: Duration = RETRY_DELAYS.iter().sum();
        assert!(total > Duration::from_secs(24 * 3600) && total < Duration::from_secs(30 * 3600));
        assert_eq!(verdict(Some(429), Some("999999"), 0), Verdict::Retry { retry_after: Some(MAX_DELAY) });
    }
}
