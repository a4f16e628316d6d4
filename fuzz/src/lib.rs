//! Structure-aware generation of protocol messages for the `roundtrip` fuzz target.
//!
//! [`AnyMessage`] builds, from the fuzzer's bytes, any *valid* [`Message`]: a request, a reply
//! or a notification, of every variant, with every field drawn from its whole range. Valid
//! means what the owned message types promise: parallel vectors of a Get or Delete reply have
//! equal lengths, and a present object in a Get reply never has the all-ones `data_size` that
//! marks a missing one on the wire.

use arbitrary::{Arbitrary, Result, Unstructured};
use plasma_store::fuzzing::Message;
use plasma_store::protocol::{
    BatchObject, ObjectId, ObjectInfo, ObjectSpec, PlasmaError, Reply, Request,
};

/// Any valid message; `AnyMessage::arbitrary` is the generator.
#[derive(Debug)]
pub struct AnyMessage(pub Message);

const ERRORS: [PlasmaError; 6] = [
    PlasmaError::Ok,
    PlasmaError::ObjectExists,
    PlasmaError::ObjectNotFound,
    PlasmaError::OutOfMemory,
    PlasmaError::ObjectNotSealed,
    PlasmaError::ObjectInUse,
];

fn id(u: &mut Unstructured) -> Result<ObjectId> {
    Ok(ObjectId(u.arbitrary()?))
}

/// A vector of items, each preceded by a "one more" flag (false once the input runs out).
fn many<T>(
    u: &mut Unstructured,
    mut item: impl FnMut(&mut Unstructured) -> Result<T>,
) -> Result<Vec<T>> {
    let mut v = Vec::new();
    while u.arbitrary()? {
        v.push(item(u)?);
    }
    Ok(v)
}

fn ids(u: &mut Unstructured) -> Result<Vec<ObjectId>> {
    many(u, id)
}

fn error(u: &mut Unstructured) -> Result<PlasmaError> {
    u.choose(&ERRORS).copied()
}

fn spec(u: &mut Unstructured) -> Result<ObjectSpec> {
    Ok(ObjectSpec {
        segment_index: u.arbitrary()?,
        data_offset: u.arbitrary()?,
        data_size: u.arbitrary()?,
        metadata_offset: u.arbitrary()?,
        metadata_size: u.arbitrary()?,
        device_num: u.arbitrary()?,
    })
}

/// An entry of a Get reply: `None`, or a spec that is not the missing marker.
fn get_entry(u: &mut Unstructured) -> Result<Option<ObjectSpec>> {
    if u.arbitrary()? {
        let s = spec(u)?;
        Ok(Some(s).filter(|s| s.data_size != ObjectSpec::MISSING.data_size))
    } else {
        Ok(None)
    }
}

fn info(u: &mut Unstructured) -> Result<ObjectInfo> {
    Ok(ObjectInfo {
        object_id: id(u)?,
        data_size: u.arbitrary()?,
        metadata_size: u.arbitrary()?,
        ref_count: u.arbitrary()?,
        create_time: u.arbitrary()?,
        construct_duration: u.arbitrary()?,
        digest: u.arbitrary()?,
        is_deletion: u.arbitrary()?,
    })
}

fn request(u: &mut Unstructured) -> Result<Request> {
    Ok(match u.int_in_range(0..=21u8)? {
        0 => Request::Disconnect,
        1 => Request::Connect,
        2 => Request::Create {
            object_id: id(u)?,
            evict_if_full: u.arbitrary()?,
            data_size: u.arbitrary()?,
            metadata_size: u.arbitrary()?,
            device_num: u.arbitrary()?,
        },
        3 => Request::CreateAndSeal {
            object_id: id(u)?,
            evict_if_full: u.arbitrary()?,
            data: u.arbitrary()?,
            metadata: u.arbitrary()?,
            digest: u.arbitrary()?,
        },
        4 => Request::CreateAndSealBatch {
            evict_if_full: u.arbitrary()?,
            objects: many(u, |u| {
                Ok(BatchObject {
                    object_id: id(u)?,
                    data: u.arbitrary()?,
                    metadata: u.arbitrary()?,
                    digest: u.arbitrary()?,
                })
            })?,
        },
        5 => Request::Abort { object_id: id(u)? },
        6 => Request::Seal {
            object_id: id(u)?,
            digest: u.arbitrary()?,
        },
        7 => Request::Get {
            object_ids: ids(u)?,
            timeout_ms: u.arbitrary()?,
        },
        8 => Request::Release { object_id: id(u)? },
        9 => Request::Delete {
            object_ids: ids(u)?,
        },
        10 => Request::Contains { object_id: id(u)? },
        11 => Request::List,
        12 => Request::Evict {
            num_bytes: u.arbitrary()?,
        },
        13 => Request::Subscribe,
        14 => Request::Unsubscribe,
        15 => Request::SetOptions {
            client_name: u.arbitrary()?,
            output_memory_quota: u.arbitrary()?,
        },
        16 => Request::GetDebugString,
        17 => Request::RefreshLru {
            object_ids: ids(u)?,
        },
        18 => Request::GatewayRegister,
        19 => Request::GatewayPullFailed {
            object_ids: ids(u)?,
        },
        20 => Request::GatewayInfo {
            object_ids: ids(u)?,
        },
        _ => Request::Data {
            object_id: id(u)?,
            address: u.arbitrary()?,
            port: u.arbitrary()?,
        },
    })
}

fn reply(u: &mut Unstructured) -> Result<Reply> {
    Ok(match u.int_in_range(0..=17u8)? {
        0 => Reply::Connect {
            memory_capacity: u.arbitrary()?,
        },
        1 => Reply::Create {
            object_id: id(u)?,
            spec: spec(u)?,
            error: error(u)?,
            store_fd: u.arbitrary()?,
            mmap_size: u.arbitrary()?,
        },
        2 => Reply::CreateAndSeal { error: error(u)? },
        3 => Reply::CreateAndSealBatch { error: error(u)? },
        4 => Reply::Abort { object_id: id(u)? },
        5 => Reply::Seal {
            object_id: id(u)?,
            error: error(u)?,
        },
        6 => {
            let entries = many(u, |u| Ok((id(u)?, get_entry(u)?)))?;
            let segments: Vec<(i32, i64)> = u.arbitrary()?;
            Reply::Get {
                object_ids: entries.iter().map(|e| e.0).collect(),
                objects: entries.iter().map(|e| e.1).collect(),
                store_fds: segments.iter().map(|s| s.0).collect(),
                mmap_sizes: segments.iter().map(|s| s.1).collect(),
            }
        }
        7 => Reply::Release {
            object_id: id(u)?,
            error: error(u)?,
        },
        8 => {
            let entries = many(u, |u| Ok((id(u)?, error(u)?)))?;
            Reply::Delete {
                object_ids: entries.iter().map(|e| e.0).collect(),
                errors: entries.iter().map(|e| e.1).collect(),
            }
        }
        9 => Reply::Contains {
            object_id: id(u)?,
            has_object: u.arbitrary()?,
        },
        10 => Reply::List {
            objects: many(u, info)?,
        },
        11 => Reply::Evict {
            num_bytes: u.arbitrary()?,
        },
        12 => Reply::SetOptions { error: error(u)? },
        13 => Reply::DebugString {
            debug_string: u.arbitrary()?,
        },
        14 => Reply::RefreshLru,
        15 => Reply::GatewayRegister { error: error(u)? },
        16 => Reply::GatewayInfo {
            objects: many(u, info)?,
        },
        _ => Reply::Data {
            object_id: id(u)?,
            object_size: u.arbitrary()?,
            metadata_size: u.arbitrary()?,
        },
    })
}

impl<'a> Arbitrary<'a> for AnyMessage {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(AnyMessage(match u.int_in_range(0..=2u8)? {
            0 => Message::Request(request(u)?),
            1 => Message::Reply(reply(u)?),
            _ => Message::Notification(many(u, info)?),
        }))
    }
}
