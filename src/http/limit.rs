//! Per-client rate limit on `/api`: a token bucket per client address, answering 429 with
//! `Retry-After` when empty.
//!
//! Invariants:
//! - The client is the TCP peer, unless `http_trusted_proxy_hops` says that many reverse
//!   proxies append to `X-Forwarded-For`; then it is the entry those proxies vouch for (the
//!   n-th from the right). Entries further left are client-controlled and never used.
//! - IPv6 clients are keyed by their /64 (one host usually owns a whole /64).
//! - Memory is bounded: the table is pruned of refilled buckets, and never exceeds
//!   [`MAX_CLIENTS`] entries.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, StatusCode},
    middleware::Next,
    response::Response,
};

use super::{Http, retry_later};
use crate::config::RateLimit;

/// Most clients tracked at once.
const MAX_CLIENTS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by client.
pub(super) struct Limiter {
    rate: RateLimit,
    hops: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl Limiter {
    pub(super) fn new(rate: RateLimit, trusted_proxy_hops: usize) -> Self {
        Self {
            rate,
            hops: trusted_proxy_hops,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `client`; `Err(wait)` when none is left.
    fn take(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let burst = f64::from(self.rate.burst);
        let per_sec = self.rate.per_sec;
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_CLIENTS && !map.contains_key(&client) {
            // Refilled buckets carry no information; drop them first.
            let full_after = Duration::from_secs_f64(burst / per_sec);
            map.retain(|_, b| now.duration_since(b.at) < full_after);
            if map.len() >= MAX_CLIENTS {
                // Still full: forget the longest-idle half.
                let mut ages: Vec<Instant> = map.values().map(|b| b.at).collect();
                ages.sort_unstable();
                let cutoff = ages[ages.len() / 2];
                map.retain(|_, b| b.at > cutoff);
            }
        }
        let b = map.entry(client).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * per_sec;
        b.tokens = (b.tokens + refill).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / per_sec))
        }
    }
}

/// The address a request is attributed to (see the module invariants).
pub(super) fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, hops: usize) -> Option<IpAddr> {
    let ip = if hops == 0 {
        peer
    } else {
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        match entries.len() {
            0 => peer,
            n => {
                let entry = entries[n.saturating_sub(hops)];
                entry
                    .parse::<IpAddr>()
                    .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
                    .ok()
                    .or(peer)
            }
        }
    };
    ip.map(|ip| match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    })
}

/// Middleware on the `/api` routes.
pub(super) async fn enforce(State(s): State<Http>, req: Request, next: Next) -> Response {
    let Some(limiter) = &s.limiter else {
        return next.run(req).await;
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let client = client_ip(peer, req.headers(), limiter.hops)
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    match limiter.take(client, Instant::now()) {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            tracing::debug!(client.ip = %client, "rate limited");
            retry_later(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests; retry after the number of seconds in Retry-After",
                wait,
            )
        }
    }
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

    #[test]
    fn forwarded_for_is_ignored_unless_trusted() {
        let peer = Some(ip("10.0.0.1"));
        assert_eq!(
            client_ip(peer, &headers(&["203.0.113.9"]), 0),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(
            client_ip(peer, &headers(&["198.51.100.1, 203.0.113.9"]), 1),
            Some(ip("203.0.113.9"))
        );
        // Two proxies: the second-to-last entry; spoofed entries further left are ignored.
        assert_eq!(
            client_ip(peer, &headers(&["6.6.6.6, 198.51.100.1", "203.0.113.9"]), 2),
            Some(ip("198.51.100.1"))
        );
        // Fewer entries than hops: the leftmost one.
        assert_eq!(
            client_ip(peer, &headers(&["198.51.100.1"]), 3),
            Some(ip("198.51.100.1"))
        );
        // Garbage or no header: the peer.
        assert_eq!(client_ip(peer, &headers(&["nonsense"]), 1), peer);
        assert_eq!(client_ip(peer, &headers(&[]), 1), peer);
        assert_eq!(
            client_ip(peer, &headers(&["198.51.100.1:4711"]), 1),
            Some(ip("198.51.100.1"))
        );
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let a = client_ip(Some(ip("2001:db8:1:2:aaaa::1")), &HeaderMap::new(), 0);
        let b = client_ip(Some(ip("2001:db8:1:2:bbbb::2")), &HeaderMap::new(), 0);
        let c = client_ip(Some(ip("2001:db8:1:3::1")), &HeaderMap::new(), 0);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            client_ip(Some(ip("::ffff:192.0.2.7")), &HeaderMap::new(), 0),
            Some(ip("192.0.2.7"))
        );
    }

    #[test]
    fn bucket_allows_the_burst_then_refills_at_the_rate() {
        let l = Limiter::new(
            RateLimit {
                per_sec: 2.0,
                burst: 3,
            },
            0,
        );
        let t0 = Instant::now();
        let me = ip("192.0.2.1");
        for _ in 0..3 {
            assert!(l.take(me, t0).is_ok());
        }
        let wait = l.take(me, t0).expect_err("empty");
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        // Another client has its own bucket.
        assert!(l.take(ip("192.0.2.2"), t0).is_ok());
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.take(me, t1).is_ok());
        assert!(l.take(me, t1).is_err());
        // Long idle: back to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(l.take(me, t2).is_ok());
        }
        assert!(l.take(me, t2).is_err());
    }

    #[test]
    fn table_size_is_bounded() {
        let l = Limiter::new(
            RateLimit {
                per_sec: 0.001,
                burst: 1,
            },
            0,
        );
        let t0 = Instant::now();
        for i in 0..(MAX_CLIENTS as u32 + 10) {
            let _ = l.take(
                IpAddr::V4(i.into()),
                t0 + Duration::from_micros(u64::from(i)),
            );
        }
        let n = l.buckets.lock().expect("lock").len();
        assert!(n <= MAX_CLIENTS, "{n}");
    }
}
