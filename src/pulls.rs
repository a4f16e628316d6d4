//! The store's side of remote pulls (the gateway extension, `schema/EXTENSIONS.md`): which
//! object ids the gateway has been asked to fetch from other machines.
//!
//! When a get that waits names objects the store does not hold at all, and a gateway is
//! registered, the store tells the gateway once per object: an id stays outstanding, and is not
//! named again, until the object is created here (by the gateway's pull or by anyone), the
//! gateway reports the pull failed, or the gateway goes away. So however many gets wait for an
//! object, one transfer is asked for, and a miss no peer can serve costs one lookup per get
//! that finds it missing again afterwards.

use std::collections::HashSet;

use log::warn;

use crate::protocol::ObjectId;

/// Most ids outstanding at once: beyond it misses are not sent (the gets wait or time out as
/// without a gateway), so clients naming random ids cannot grow the set without bound.
pub const MAX_OUTSTANDING: usize = 1 << 16;

/// Outstanding pulls.
#[derive(Debug, Default)]
pub struct Pulls {
    registered: bool,
    outstanding: HashSet<ObjectId>,
    /// The limit was hit and not yet logged since it last had room.
    full_logged: bool,
    /// Ids sent to a gateway as misses, ever.
    requested_total: u64,
    /// Ids a gateway reported as failed, ever.
    failed_total: u64,
}

impl Pulls {
    /// Whether a gateway is registered.
    pub fn registered(&self) -> bool {
        self.registered
    }

    /// A gateway registered (`true`) or went away (`false`: every pull is forgotten).
    pub fn set_registered(&mut self, registered: bool) {
        self.registered = registered;
        self.outstanding.clear();
        self.full_logged = false;
    }

    /// Of `missing` (ids a waiting get needs and the store does not hold), those to send to
    /// the gateway now; they become outstanding.
    pub fn take_misses(&mut self, missing: impl IntoIterator<Item = ObjectId>) -> Vec<ObjectId> {
        if !self.registered {
            return Vec::new();
        }
        let mut out = Vec::new();
        for id in missing {
            if self.outstanding.len() >= MAX_OUTSTANDING {
                if !self.full_logged {
                    warn!(
                        "{MAX_OUTSTANDING} remote pulls outstanding; further misses are not sent"
                    );
                    self.full_logged = true;
                }
                break;
            }
            if self.outstanding.insert(id) {
                out.push(id);
            }
        }
        self.requested_total += out.len() as u64;
        out
    }

    /// The object now exists here: nothing to pull any more.
    pub fn created(&mut self, id: &ObjectId) {
        if !self.outstanding.is_empty() && self.outstanding.remove(id) {
            self.full_logged = false;
        }
    }

    /// The gateway could not pull these; a later get asks again.
    pub fn failed(&mut self, ids: &[ObjectId]) {
        self.failed_total += ids.len() as u64;
        for id in ids {
            self.created(id);
        }
    }

    /// Ids sent to a gateway as misses since start-up.
    pub fn requested_total(&self) -> u64 {
        self.requested_total
    }

    /// Ids a gateway reported it could not pull since start-up.
    pub fn failed_total(&self) -> u64 {
        self.failed_total
    }

    /// Number of pulls outstanding.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> ObjectId {
        ObjectId([n; 20])
    }

    #[test]
    fn each_id_is_asked_for_once_until_created_failed_or_unregistered() {
        let mut p = Pulls::default();
        assert!(p.take_misses([oid(1)]).is_empty(), "no gateway, no misses");
        p.set_registered(true);
        assert_eq!(
            p.take_misses([oid(1), oid(2), oid(1)]),
            vec![oid(1), oid(2)]
        );
        assert!(p.take_misses([oid(1), oid(2)]).is_empty());
        p.created(&oid(1));
        p.failed(&[oid(2)]);
        assert_eq!(p.take_misses([oid(1), oid(2)]), vec![oid(1), oid(2)]);
        assert_eq!((p.requested_total(), p.failed_total()), (4, 1));
        p.set_registered(false);
        assert_eq!(p.outstanding(), 0);
        p.set_registered(true);
        assert_eq!(p.take_misses([oid(2)]), vec![oid(2)]);
    }

    #[test]
    fn outstanding_pulls_are_bounded() {
        let mut p = Pulls::default();
        p.set_registered(true);
        let ids = (0..MAX_OUTSTANDING as u32 + 10).map(|i| {
            let mut b = [0u8; 20];
            b[..4].copy_from_slice(&i.to_le_bytes());
            ObjectId(b)
        });
        assert_eq!(p.take_misses(ids).len(), MAX_OUTSTANDING);
        assert_eq!(p.outstanding(), MAX_OUTSTANDING);
        p.created(&ObjectId([0; 20]));
        assert_eq!(p.take_misses([oid(9)]), vec![oid(9)]);
    }
}
