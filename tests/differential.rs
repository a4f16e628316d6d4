//! Differential tests of the memory policy: the same sequence of operations on our daemon and
//! on the C++ reference (pyarrow 11's plasma-store-server) must give the same observable
//! results: which objects survive, what Evict returns, what create and SetOptions answer,
//! which deletions subscribers see, and the policy's debug report.
//!
//! The reference is found by `common::reference_bin`; without it these tests only note that
//! they were skipped, unless PLASMA_REQUIRE_REFERENCE is set (the test script sets it).

mod common;

use std::time::Duration;

use common::{Store, oid, reference_bin};
use plasma_store::client::{Client, Error, Subscription};

/// Runs `scenario` against both daemons and compares the transcripts.
fn same_on_both(capacity: u64, scenario: fn(&Store) -> Vec<String>) {
    let Some(reference) = reference_bin() else {
        return;
    };
    let ours_store = Store::start_with(&common::store_bin(), capacity, &[]);
    let ours = scenario(&ours_store);
    ours_store.stop();
    let ref_store = Store::start_with(&reference, capacity, &[]);
    let theirs = scenario(&ref_store);
    ref_store.stop();
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(
            canonical(a),
            canonical(b),
            "step {i} differs (ours, reference)"
        );
    }
    assert_eq!(ours.len(), theirs.len());
}

/// A debug report with its per-client blocks (5 lines each, after the 11 global lines) in a
/// fixed order: the original prints them in its hash map's order. Other steps are unchanged.
fn canonical(step: &str) -> String {
    let lines: Vec<&str> = step.lines().collect();
    if !step.starts_with("num clients with quota:") || lines.len() <= 11 {
        return step.to_string();
    }
    let mut blocks: Vec<String> = lines[11..].chunks(5).map(|b| b.join("\n")).collect();
    blocks.sort();
    format!("{}\n{}", lines[..11].join("\n"), blocks.join("\n"))
}

/// Ids in the store with their reference counts, sorted.
fn present(c: &Client) -> String {
    let mut v: Vec<(u32, i32)> = c
        .list()
        .expect("list")
        .iter()
        .map(|o| {
            (
                u32::from_be_bytes(o.object_id.0[..4].try_into().expect("4")),
                o.ref_count,
            )
        })
        .collect();
    v.sort();
    format!("{v:?}")
}

fn put(c: &Client, n: u32, size: usize) -> String {
    format!(
        "put {n}: {:?}",
        c.create_and_seal(oid(n), &vec![n as u8; size], b"")
            .err()
            .map(|e| kind(&e))
    )
}

fn kind(e: &Error) -> &'static str {
    match e {
        Error::ObjectExists(_) => "exists",
        Error::OutOfMemory(_) => "out of memory",
        Error::QuotaRefused { .. } => "quota refused",
        _ => "other",
    }
}

/// Deletions seen by a subscriber so far, in order.
fn deletions(sub: &mut Subscription) -> String {
    let mut out = Vec::new();
    sub.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    while let Ok(Some(n)) = sub.next_notification() {
        if n.is_deletion {
            out.push(u32::from_be_bytes(
                n.object_id.0[..4].try_into().expect("4"),
            ));
        }
    }
    format!("deleted {out:?}")
}

#[test]
fn eviction_order_evict_and_refresh() {
    same_on_both(100_000, |store| {
        let c = store.client();
        let mut sub = c.subscribe().expect("subscribe");
        let mut t = Vec::new();
        for n in 1..=9 {
            t.push(put(&c, n, 10_000));
        }
        // A get and release makes 1 the most recently used.
        drop(c.get(&[oid(1)], 0).expect("get"));
        c.list().expect("sync");
        // 15000 more bytes: the policy frees max(5000, capacity / 5) from the old end.
        let b = c
            .create(oid(20), 15_000, b"")
            .map(|_| ())
            .map_err(|e| kind(&e));
        t.push(format!("create 15000: {b:?}"));
        t.push(present(&c));
        t.push(deletions(&mut sub));
        t.push(format!("evict 15000 -> {:?}", c.evict(15_000).ok()));
        c.refresh(&[oid(6), oid(5), oid(99)]).expect("refresh");
        t.push(format!("evict 1 -> {:?}", c.evict(1).ok()));
        t.push(present(&c));
        t.push(deletions(&mut sub));
        t.push(c.debug_string().expect("debug"));
        t
    });
}

#[test]
fn referenced_objects_are_never_evicted() {
    same_on_both(100_000, |store| {
        let c = store.client();
        let holder = store.client();
        let mut t = Vec::new();
        for n in 1..=5 {
            t.push(put(&c, n, 20_000));
        }
        let held = holder.get(&[oid(1), oid(2)], 0).expect("get");
        t.push(format!("evict 1000000 -> {:?}", c.evict(1_000_000).ok()));
        t.push(present(&c));
        t.push(put(&c, 6, 70_000));
        t.push(put(&c, 7, 40_000));
        t.push(present(&c));
        drop(held);
        // Releases have no reply: a round trip on the same connection orders them.
        holder.list().expect("sync");
        t.push(present(&c));
        t.push(format!("evict 1 -> {:?}", c.evict(1).ok()));
        t.push(present(&c));
        t.push(c.debug_string().expect("debug"));
        t
    });
}

#[test]
fn quotas_isolate_and_protect_clients() {
    same_on_both(10_000, |store| {
        let a = store.client();
        let b = store.client();
        let g = store.client();
        let mut t = Vec::new();
        t.push(format!(
            "a quota: {:?}",
            a.set_options("client_a", 3000).err().map(|e| kind(&e))
        ));
        t.push(format!(
            "b quota: {:?}",
            b.set_options("client_b", 3000).err().map(|e| kind(&e))
        ));
        // Quotas may take at most 70 % of the capacity.
        t.push(format!(
            "g quota: {:?}",
            g.set_options("client_g", 2000).err().map(|e| kind(&e))
        ));
        t.push(format!(
            "a again: {:?}",
            a.set_options("client_a", 100).err().map(|e| kind(&e))
        ));
        for n in 1..=3 {
            t.push(put(&a, n, 1000));
        }
        let b_held: Vec<_> = (11..=13)
            .map(|n| {
                let mut buf = b.create(oid(n), 1000, b"").expect("create");
                buf.data_mut().fill(n as u8);
                buf.seal().expect("seal")
            })
            .collect();
        t.push(present(&g));
        t.push(g.debug_string().expect("debug"));
        // A's quota is full: its own oldest object goes.
        t.push(put(&a, 4, 1000));
        t.push(present(&g));
        // B's objects are all held: the oldest is demoted to the global list, not evicted.
        t.push(put(&b, 14, 1000));
        t.push(present(&g));
        t.push(g.debug_string().expect("debug"));
        // Larger than the quota.
        t.push(put(&a, 5, 3001));
        // Pressure from a client without quota evicts only global objects.
        for n in 21..=26 {
            t.push(put(&g, n, 1000));
        }
        t.push(present(&g));
        drop(b_held);
        b.list().expect("sync");
        t.push(present(&g));
        t.push(format!("evict 2500 -> {:?}", g.evict(2500).ok()));
        t.push(present(&g));
        t.push(g.debug_string().expect("debug"));
        t
    });
}

#[test]
fn a_quota_clients_objects_join_the_global_list_when_it_disconnects() {
    same_on_both(10_000, |store| {
        let a = store.client();
        let g = store.client();
        let mut t = Vec::new();
        t.push(put(&g, 100, 500));
        a.set_options("client_a", 5000).expect("quota");
        for n in 1..=4 {
            t.push(put(&a, n, 500));
        }
        let held = a.get(&[oid(2)], 0).expect("get");
        a.refresh(&[oid(1)]).expect("refresh");
        t.push(g.debug_string().expect("debug"));
        t.push(format!(
            "evict 1 (quota objects are not global) -> {:?}",
            g.evict(1).ok()
        ));
        drop(held);
        a.list().expect("sync");
        a.disconnect();
        drop(a);
        common::eventually("the quota to come back", || {
            g.debug_string()
                .expect("debug")
                .starts_with("num clients with quota: 0")
        });
        t.push(g.debug_string().expect("debug"));
        // The order in which they now leave the global list.
        for _ in 0..4 {
            t.push(format!("evict 1 -> {:?}", g.evict(1).ok()));
            t.push(present(&g));
        }
        t
    });
}

#[test]
fn an_impossible_create_evicts_nothing_unlike_the_reference() {
    // A deliberate difference (PROTOCOL.md §13 #27): the reference evicts every evictable
    // object before it refuses an object larger than the whole store; we refuse at once.
    let run = |bin: &std::path::Path| {
        let store = Store::start_with(bin, 100_000, &[]);
        let c = store.client();
        for n in 1..=5 {
            put(&c, n, 10_000);
        }
        let r = put(&c, 30, 100_001);
        let left = c.list().expect("list").len();
        store.stop();
        (r, left)
    };
    let ours = run(&common::store_bin());
    assert_eq!(ours, ("put 30: Some(\"out of memory\")".to_string(), 5));
    if let Some(reference) = reference_bin() {
        assert_eq!(
            run(&reference),
            (ours.0, 0),
            "the reference no longer evicts everything?"
        );
    }
}
