//! Rate limits on `/api`: one per client address, and one per customer Account after
//! authentication, answering 429 with `Retry-After` when spent. Both are keyed `governor` limiters
//! (GCRA, equivalent to a token bucket of `burst` refilled at `per_sec`).
//!
//! Invariants:
//! - The client is the TCP peer, unless the peer is one of `http_trusted_proxies`; then
//!   `X-Forwarded-For` is walked from the right, skipping trusted proxies, and the first other
//!   entry is the client. A header sent by any other peer changes nothing, and entries left of
//!   the first untrusted one (client-controlled) are never used.
//! - IPv6 clients are keyed by their /64 (one host usually owns a whole /64).
//! - A request with a valid token is charged to its Account first: a request the Account limit
//!   refuses costs the address nothing, so one customer behind a shared address (proxy, NAT)
//!   cannot spend the address's budget beyond its own limit. Other requests are charged to the
//!   address only.
//! - Memory is bounded: every [`PRUNE_EVERY`] checks, keys whose bucket has refilled (and so
//!   carry no information) are dropped; the table holds at most the keys seen within one refill
//!   period plus [`PRUNE_EVERY`].

use std::{
    hash::Hash,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, StatusCode},
    middleware::Next,
    response::Response,
};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};
use ipnet::IpNet;

use super::{Http, orders, retry_later};
use crate::{config::RateLimit, ids::SalesforceId};

/// Checks between two prunings of a keyed limiter.
const PRUNE_EVERY: u64 = 4096;

/// The `governor` quota of a token bucket: `burst` at once, one more every `1 / per_sec`.
pub(super) fn quota(rate: RateLimit) -> Quota {
    let period = Duration::try_from_secs_f64(1.0 / rate.per_sec)
        .unwrap_or(Duration::MAX)
        .clamp(
            Duration::from_nanos(1),
            Duration::from_secs(365 * 24 * 3600),
        );
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst)
}

/// A rate limiter with one bucket per key, pruned as it goes.
pub(super) struct Keyed<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    pub(super) fn new(quota: Quota) -> Self {
        Self {
            limiter: RateLimiter::keyed(quota),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one cell for `key`; `Err(wait)` until the next one is available.
    pub(super) fn check(&self, key: &K) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.limiter.len()
    }
}

/// The limits on `/api` and how clients are told apart.
pub(super) struct Limits {
    per_client: Option<Keyed<IpAddr>>,
    per_account: Option<Keyed<SalesforceId>>,
    trusted_proxies: Vec<IpNet>,
}

impl Limits {
    /// Whether any limit is on.
    pub(super) fn any(&self) -> bool {
        self.per_client.is_some() || self.per_account.is_some()
    }

    pub(super) fn new(
        per_client: Option<RateLimit>,
        per_account: Option<RateLimit>,
        trusted_proxies: Vec<IpNet>,
    ) -> Self {
        Self {
            per_client: per_client.map(|r| Keyed::new(quota(r))),
            per_account: per_account.map(|r| Keyed::new(quota(r))),
            trusted_proxies,
        }
    }
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(canonical)
}

/// The address a request is attributed to (see the module invariants).
pub(super) fn client_ip(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut client = peer.map(canonical);
    if client.as_ref().is_some_and(is_trusted) {
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        for entry in entries.iter().rev() {
            // An unreadable entry vouches for nothing: the last trusted hop is the client.
            let Some(ip) = parse_entry(entry) else { break };
            client = Some(ip);
            if !is_trusted(&ip) {
                break;
            }
        }
    }
    client.map(|ip| match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    })
}

fn limited(wait: Duration) -> Response {
    retry_later(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "Too many requests; retry after the number of seconds in Retry-After",
        wait,
    )
}

/// Middleware on the `/api` routes.
pub(super) async fn enforce(State(s): State<Http>, mut req: Request, next: Next) -> Response {
    let limits = &*s.limits;
    if limits.per_client.is_none() && limits.per_account.is_none() {
        return next.run(req).await;
    }
    let caller = orders::authorize(&s, req.headers()).ok();
    if let (Some(Some(c)), Some(per_account)) = (&caller, &limits.per_account) {
        let account = &c.account;
        if let Err(wait) = per_account.check(account) {
            tracing::debug!(account.id = %account, "rate limited (account)");
            return limited(wait);
        }
    }
    if let Some(per_client) = &limits.per_client {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let client = client_ip(peer, req.headers(), &limits.trusted_proxies)
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        if let Err(wait) = per_client.check(&client) {
            tracing::debug!(client.ip = %client, "rate limited");
            return limited(wait);
        }
    }
    if let Some(account) = caller {
        // The handler need not verify the token again.
        req.extensions_mut().insert(orders::Verified(account));
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().expect("header"));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("net")).collect()
    }

    #[test]
    fn forwarded_for_is_read_only_from_trusted_proxies() {
        let proxy = Some(ip("10.0.0.1"));
        let trusted = nets(&["10.0.0.0/24"]);
        // An untrusted peer: the header changes nothing.
        assert_eq!(
            client_ip(Some(ip("192.0.2.50")), &headers(&["203.0.113.9"]), &trusted),
            Some(ip("192.0.2.50"))
        );
        assert_eq!(
            client_ip(proxy, &headers(&["203.0.113.9"]), &[]),
            Some(ip("10.0.0.1"))
        );
        // A trusted peer: the rightmost untrusted entry; spoofed entries further left are not used.
        assert_eq!(
            client_ip(proxy, &headers(&["198.51.100.1, 203.0.113.9"]), &trusted),
            Some(ip("203.0.113.9"))
        );
        // Two trusted proxies in a row are skipped, across several header lines.
        assert_eq!(
            client_ip(
                proxy,
                &headers(&["6.6.6.6, 198.51.100.1", "10.0.0.7"]),
                &trusted
            ),
            Some(ip("198.51.100.1"))
        );
        // Every entry trusted: the leftmost.
        assert_eq!(
            client_ip(proxy, &headers(&["10.0.0.9, 10.0.0.8"]), &trusted),
            Some(ip("10.0.0.9"))
        );
        // Garbage stops the walk at the last trusted hop; no header: the peer.
        assert_eq!(
            client_ip(proxy, &headers(&["203.0.113.9, nonsense"]), &trusted),
            proxy
        );
        assert_eq!(
            client_ip(proxy, &headers(&["10.0.0.5, unknown"]), &trusted),
            proxy
        );
        assert_eq!(client_ip(proxy, &headers(&[]), &trusted), proxy);
        assert_eq!(
            client_ip(proxy, &headers(&["198.51.100.1:4711"]), &trusted),
            Some(ip("198.51.100.1"))
        );
        // A trusted proxy connecting over IPv6 as an IPv4-mapped address.
        assert_eq!(
            client_ip(
                Some(ip("::ffff:10.0.0.1")),
                &headers(&["203.0.113.9"]),
                &trusted
            ),
            Some(ip("203.0.113.9"))
        );
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let a = client_ip(Some(ip("2001:db8:1:2:aaaa::1")), &HeaderMap::new(), &[]);
        let b = client_ip(Some(ip("2001:db8:1:2:bbbb::2")), &HeaderMap::new(), &[]);
        let c = client_ip(Some(ip("2001:db8:1:3::1")), &HeaderMap::new(), &[]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            client_ip(Some(ip("::ffff:192.0.2.7")), &HeaderMap::new(), &[]),
            Some(ip("192.0.2.7"))
        );
    }

    #[test]
    fn bucket_allows_the_burst_then_refuses_with_the_wait() {
        let l = Keyed::new(quota(RateLimit {
            per_sec: 2.0,
            burst: 3,
        }));
        let me = ip("192.0.2.1");
        for _ in 0..3 {
            assert!(l.check(&me).is_ok());
        }
        let wait = l.check(&me).expect_err("empty");
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Another client has its own bucket.
        assert!(l.check(&ip("192.0.2.2")).is_ok());
    }

    #[test]
    fn refilled_buckets_are_pruned() {
        // Refills in a microsecond: every bucket is back to full long before the next prune.
        let l = Keyed::new(quota(RateLimit {
            per_sec: 1e6,
            burst: 1,
        }));
        for i in 0..(3 * PRUNE_EVERY as u32) {
            let _ = l.check(&IpAddr::V4(i.into()));
        }
        let n = l.len();
        assert!(n <= PRUNE_EVERY as usize, "{n}");
    }

    #[test]
    fn extreme_rates_make_valid_quotas() {
        for per_sec in [1e-300, 1e-6, 0.5, 1e12, f64::MAX] {
            let q = quota(RateLimit { per_sec, burst: 2 });
            assert_eq!(q.burst_size().get(), 2);
        }
    }
}
