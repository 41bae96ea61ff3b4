//! Batches of messages as a reader hands them over: one allocation per batch instead of one per
//! message.

use std::sync::Arc;

/// One message, borrowed from its [`SourceBatch`].
#[derive(Debug, Clone, Copy)]
pub struct SourceMessage<'a> {
    pub topic: &'a Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (create or log-append time), in ms since the epoch.
    pub timestamp_ms: Option<i64>,
    pub payload: Option<&'a [u8]>,
}

#[derive(Debug, Clone)]
struct MessageMeta {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    /// Where the payload sits in the batch's arena, if the message has one.
    payload: Option<(u32, u32)>,
}

/// Messages handed over together, their payloads copied into one buffer.
#[derive(Debug, Clone, Default)]
pub struct SourceBatch {
    messages: Vec<MessageMeta>,
    arena: Vec<u8>,
}

impl SourceBatch {
    /// An empty batch with room for `messages` messages of `bytes` payload bytes in all.
    pub fn with_capacity(messages: usize, bytes: usize) -> SourceBatch {
        SourceBatch {
            messages: Vec::with_capacity(messages),
            arena: Vec::with_capacity(bytes),
        }
    }

    /// Appends a message, copying its payload. Topics are shared: pass clones of one `Arc` for
    /// every message of a topic, so consumers can compare topics by pointer.
    pub fn push(
        &mut self,
        topic: Arc<str>,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        payload: Option<&[u8]>,
    ) {
        let payload = payload.map(|p| {
            let start = self.arena.len() as u32;
            self.arena.extend_from_slice(p);
            (start, p.len() as u32)
        });
        self.messages.push(MessageMeta {
            topic,
            partition,
            offset,
            timestamp_ms,
            payload,
        });
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Payload bytes held.
    pub fn payload_bytes(&self) -> usize {
        self.arena.len()
    }

    /// The messages in the order they were read (offset order per partition).
    pub fn iter(&self) -> impl Iterator<Item = SourceMessage<'_>> {
        self.messages.iter().map(|m| SourceMessage {
            topic: &m.topic,
            partition: m.partition,
            offset: m.offset,
            timestamp_ms: m.timestamp_ms,
            payload: m
                .payload
                .map(|(start, len)| &self.arena[start as usize..(start + len) as usize]),
        })
    }
}
