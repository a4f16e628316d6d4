//! The store's figures in the Prometheus (OpenMetrics) text format, for `GET /metrics`.
//!
//! The loop keeps its counters as plain integers ([`ServerCounters`] in the server,
//! [`StoreCounters`] in the store); nothing is shared or atomic while the store runs. A scrape
//! reads them into a [`Snapshot`] and [`encode`] writes the page with the `prometheus-client`
//! crate's encoder (a registry built for that one scrape), so the format, escaping and
//! `_total` suffixes are the library's, not ours.
//!
//! Adding a figure: a field in [`Snapshot`] (filled in [`Snapshot::collect`], from a counter
//! the store or server keeps) and one `gauge`/`counter` line in [`encode`]; see the
//! "other features" marks in both.

use prometheus_client::encoding::text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::protocol::MessageType;
use crate::store::Store;

/// Content type of the page [`encode`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Number of message types: the original's and the extension's.
const TYPES: usize = MessageType::ALL.len() + MessageType::EXTENSIONS.len();

/// The index of `t` among all message types: the original's by wire value, then the
/// extension's (wire values from 1000).
fn slot(t: MessageType) -> usize {
    let v = t as usize;
    if t.is_gateway() {
        MessageType::ALL.len() + (v - MessageType::GatewayRegisterRequest as usize)
    } else {
        v
    }
}

/// Counters the server keeps (plain integers, updated by the loop).
#[derive(Debug, Clone)]
pub struct ServerCounters {
    /// Requests handled, by wire message type (index: see [`slot`]).
    pub requests: [u64; TYPES],
    /// Connections refused (connection limit, `--allow-uid`).
    pub refused_connections: u64,
}

impl Default for ServerCounters {
    fn default() -> ServerCounters {
        ServerCounters {
            requests: [0; TYPES],
            refused_connections: 0,
        }
    }
}

impl ServerCounters {
    /// Counts one request of type `t`.
    pub fn request(&mut self, t: MessageType) {
        if let Some(n) = self.requests.get_mut(slot(t)) {
            *n += 1;
        }
    }
}

/// Counters the store keeps (plain integers, updated by the loop).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounters {
    /// Objects evicted (deleted, or moved to the external store).
    pub evicted_objects: u64,
    /// Their bytes (data + metadata).
    pub evicted_bytes: u64,
    /// Bytes written to the external store (`-e`).
    pub spilled_bytes: u64,
    /// Bytes brought back from the external store.
    pub restored_bytes: u64,
}

/// Everything one scrape reports, read from the loop's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The store's capacity (`-m`).
    pub capacity_bytes: u64,
    /// Bytes of objects in memory.
    pub used_bytes: u64,
    /// Objects created and not sealed yet.
    pub created_objects: u64,
    /// Sealed objects (in memory or in the external store).
    pub sealed_objects: u64,
    /// Connected clients.
    pub clients: u64,
    /// Gets waiting for objects.
    pub waiting_gets: u64,
    /// Requests handled, by wire message type.
    pub requests: Vec<(MessageType, u64)>,
    /// Connections refused.
    pub refused_connections: u64,
    /// The store's counters.
    pub store: StoreCounters,
    /// Creates waiting for memory (`--create-wait`).
    pub waiting_creates: u64,
    /// Bytes of objects in the fallback tier (`--fallback-dir`).
    pub fallback_bytes: u64,
    /// Fallback segments (files) open.
    pub fallback_segments: u64,
    /// A gateway (`plasma_flight`) is registered.
    pub gateway_registered: bool,
    /// Objects the gateway was asked to pull and has not delivered or given up on yet.
    pub remote_pulls_outstanding: u64,
    /// Objects ever asked of the gateway.
    pub remote_pull_requests: u64,
    /// Pulls the gateway reported failed.
    pub remote_pull_failures: u64,
    // Other features add their figures here (waiting creates, fallback bytes, remote
    // pulls...), and one line each in `encode`.
}

impl Snapshot {
    /// Reads the figures of `store`, `clients` connections and the server's `counters`.
    pub fn collect(store: &Store, clients: usize, counters: &ServerCounters) -> Snapshot {
        // Every figure here is O(1): a scrape must not walk the object table.
        let (created, sealed) = store.objects_by_state();
        Snapshot {
            capacity_bytes: store.capacity(),
            used_bytes: store.used_bytes(),
            created_objects: created as u64,
            sealed_objects: sealed as u64,
            clients: clients as u64,
            waiting_gets: store.waiting_gets() as u64,
            requests: MessageType::ALL
                .iter()
                .chain(&MessageType::EXTENSIONS)
                .filter(|t| is_request(**t))
                .map(|t| (*t, counters.requests.get(slot(*t)).copied().unwrap_or(0)))
                .collect(),
            refused_connections: counters.refused_connections,
            store: store.counters(),
            waiting_creates: store.waiting_creates() as u64,
            fallback_bytes: store.fallback_usage().0,
            fallback_segments: store.fallback_usage().1 as u64,
            gateway_registered: store.pulls().registered(),
            remote_pulls_outstanding: store.pulls().outstanding() as u64,
            remote_pull_requests: store.pulls().requested_total(),
            remote_pull_failures: store.pulls().failed_total(),
        }
    }
}

/// Whether clients send messages of this type (replies and notifications are not requests).
fn is_request(t: MessageType) -> bool {
    use MessageType::*;
    matches!(
        t,
        DisconnectClient
            | CreateRequest
            | CreateAndSealRequest
            | AbortRequest
            | SealRequest
            | GetRequest
            | ReleaseRequest
            | DeleteRequest
            | ContainsRequest
            | ListRequest
            | ConnectRequest
            | EvictRequest
            | SubscribeRequest
            | UnsubscribeRequest
            | DataRequest
            | SetOptionsRequest
            | GetDebugStringRequest
            | CreateAndSealBatchRequest
            | RefreshLruRequest
            | GatewayRegisterRequest
            | GatewayPullFailed
            | GatewayInfoRequest
    )
}

/// The label value of a request type: its wire name without `Request`, in snake case
/// (`CreateAndSealRequest` is `create_and_seal`, `DisconnectClient` is `disconnect`).
pub fn request_label(t: MessageType) -> String {
    let name = format!("{t:?}");
    let name = name
        .strip_suffix("Request")
        .or_else(|| name.strip_suffix("Client"))
        .unwrap_or(&name);
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let g = Gauge::<u64, AtomicU64>::default();
    g.set(value);
    registry.register(name, help, g);
}

/// A counter: the encoder appends `_total` to `name`.
fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

/// The page for `s`, in the OpenMetrics text format ([`CONTENT_TYPE`]).
pub fn encode(s: &Snapshot) -> String {
    let mut r = Registry::default();
    gauge(
        &mut r,
        "plasma_capacity_bytes",
        "Most bytes objects may take (-m)",
        s.capacity_bytes,
    );
    gauge(
        &mut r,
        "plasma_used_bytes",
        "Bytes (data and metadata) of the objects in memory",
        s.used_bytes,
    );
    let objects = Family::<[(&'static str, &'static str); 1], Gauge<u64, AtomicU64>>::default();
    objects
        .get_or_create(&[("state", "created")])
        .set(s.created_objects);
    objects
        .get_or_create(&[("state", "sealed")])
        .set(s.sealed_objects);
    r.register("plasma_objects", "Objects in the store, by state", objects);
    gauge(&mut r, "plasma_clients", "Connected clients", s.clients);
    gauge(
        &mut r,
        "plasma_waiting_gets",
        "Get requests waiting for objects to be sealed",
        s.waiting_gets,
    );
    let requests = Family::<[(&'static str, String); 1], Counter<u64>>::default();
    for (t, n) in &s.requests {
        requests
            .get_or_create(&[("type", request_label(*t))])
            .inc_by(*n);
    }
    r.register("plasma_requests", "Requests handled, by type", requests);
    counter(
        &mut r,
        "plasma_evicted_objects",
        "Objects evicted to make room (deleted, or moved to the external store)",
        s.store.evicted_objects,
    );
    counter(
        &mut r,
        "plasma_evicted_bytes",
        "Bytes of the objects evicted",
        s.store.evicted_bytes,
    );
    counter(
        &mut r,
        "plasma_spilled_bytes",
        "Bytes written to the external store (-e)",
        s.store.spilled_bytes,
    );
    counter(
        &mut r,
        "plasma_restored_bytes",
        "Bytes brought back from the external store",
        s.store.restored_bytes,
    );
    counter(
        &mut r,
        "plasma_refused_connections",
        "Client connections refused (--max-connections, --allow-uid)",
        s.refused_connections,
    );
    gauge(
        &mut r,
        "plasma_waiting_creates",
        "Creates waiting for memory to free (--create-wait)",
        s.waiting_creates,
    );
    gauge(
        &mut r,
        "plasma_fallback_bytes",
        "Bytes reserved for objects in the disk-backed fallback tier (--fallback-dir)",
        s.fallback_bytes,
    );
    gauge(
        &mut r,
        "plasma_fallback_segments",
        "Files of the fallback tier",
        s.fallback_segments,
    );
    gauge(
        &mut r,
        "plasma_gateway_registered",
        "1 while a Flight gateway (plasma_flight) is registered with the store",
        u64::from(s.gateway_registered),
    );
    gauge(
        &mut r,
        "plasma_remote_pulls_outstanding",
        "Objects the gateway was asked to pull from other machines and has not delivered yet",
        s.remote_pulls_outstanding,
    );
    counter(
        &mut r,
        "plasma_remote_pull_requests",
        "Objects asked of the gateway because waiting gets named them and the store had none",
        s.remote_pull_requests,
    );
    counter(
        &mut r,
        "plasma_remote_pull_failures",
        "Pulls the gateway reported it could not do (no peer had the object, or the transfer failed)",
        s.remote_pull_failures,
    );
    // Other features: one gauge/counter line per figure here.
    let mut page = String::new();
    // Writing to a String cannot fail.
    let _ = text::encode(&mut page, &r);
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_labels() {
        assert_eq!(
            request_label(MessageType::CreateAndSealRequest),
            "create_and_seal"
        );
        assert_eq!(
            request_label(MessageType::GetDebugStringRequest),
            "get_debug_string"
        );
        assert_eq!(request_label(MessageType::DisconnectClient), "disconnect");
        assert_eq!(request_label(MessageType::GetRequest), "get");
        assert_eq!(
            request_label(MessageType::GatewayInfoRequest),
            "gateway_info"
        );
        assert_eq!(
            request_label(MessageType::GatewayPullFailed),
            "gateway_pull_failed"
        );
        let mut c = ServerCounters::default();
        c.request(MessageType::GatewayPullFailed);
        c.request(MessageType::RefreshLruRequest);
        assert_eq!(c.requests.iter().sum::<u64>(), 2);
        assert_eq!(c.requests[slot(MessageType::GatewayPullFailed)], 1);
    }

    #[test]
    fn the_page_has_every_figure() {
        let s = Snapshot {
            capacity_bytes: 1000,
            used_bytes: 10,
            created_objects: 1,
            sealed_objects: 2,
            clients: 3,
            waiting_gets: 4,
            requests: vec![(MessageType::GetRequest, 5)],
            refused_connections: 6,
            store: StoreCounters {
                evicted_objects: 7,
                evicted_bytes: 8,
                spilled_bytes: 9,
                restored_bytes: 11,
            },
            waiting_creates: 15,
            fallback_bytes: 16,
            fallback_segments: 17,
            gateway_registered: true,
            remote_pulls_outstanding: 12,
            remote_pull_requests: 13,
            remote_pull_failures: 14,
        };
        let page = encode(&s);
        for line in [
            "plasma_capacity_bytes 1000",
            "plasma_used_bytes 10",
            "plasma_objects{state=\"created\"} 1",
            "plasma_objects{state=\"sealed\"} 2",
            "plasma_clients 3",
            "plasma_waiting_gets 4",
            "plasma_requests_total{type=\"get\"} 5",
            "plasma_refused_connections_total 6",
            "plasma_evicted_objects_total 7",
            "plasma_evicted_bytes_total 8",
            "plasma_spilled_bytes_total 9",
            "plasma_restored_bytes_total 11",
            "plasma_waiting_creates 15",
            "plasma_fallback_bytes 16",
            "plasma_fallback_segments 17",
            "plasma_gateway_registered 1",
            "plasma_remote_pulls_outstanding 12",
            "plasma_remote_pull_requests_total 13",
            "plasma_remote_pull_failures_total 14",
        ] {
            assert!(
                page.lines().any(|l| l == line),
                "{line} missing from\n{page}"
            );
        }
        assert!(page.ends_with("# EOF\n"));
    }
}
