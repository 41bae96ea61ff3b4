//! A TCP proxy between workers and ZooKeeper that can lose the reply to a multi-op: it forwards
//! the request, lets ZooKeeper apply it and answer, then drops the answer and closes the
//! connection. That is what a connection cut between a commit's request and its reply does,
//! at an exact step instead of by chance. The client reconnects (through the proxy again) within
//! its session timeout, so the session survives; only the outcome of that request is unknown.
//!
//! ZooKeeper's framing: every message is a 4-byte big-endian length and a body. The first
//! message each way is the session handshake; after it a request body starts with its `xid` and
//! operation type (14 is a multi-op), a reply body with the `xid` it answers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const OP_MULTI: i32 = 14;
/// No reply is being dropped.
const NONE: i64 = i64::MIN;

#[derive(Default)]
struct Shared {
    /// Multi-op replies still to drop.
    armed: AtomicU64,
    /// Replies dropped so far.
    lost: AtomicU64,
}

pub struct ZkProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl ZkProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: &str) -> Result<ZkProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let upstream = upstream.to_string();
        let accept = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (shared, upstream) = (Arc::clone(&shared), upstream.clone());
                    tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(&upstream).await {
                            relay(client, server, &shared).await;
                        }
                    });
                }
            })
        };
        Ok(ZkProxy {
            address,
            shared,
            accept,
        })
    }

    /// The connect string to give workers.
    pub fn connect(&self) -> String {
        self.address.to_string()
    }

    /// Drops the replies to the next `n` multi-ops (and each one's connection).
    pub fn lose_next_multi_replies(&self, n: u64) {
        self.shared.armed.fetch_add(n, Ordering::SeqCst);
    }

    /// Replies dropped so far.
    pub fn replies_lost(&self) -> u64 {
        self.shared.lost.load(Ordering::SeqCst)
    }
}

impl Drop for ZkProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Relays one connection until either side closes it or a reply is dropped.
async fn relay(client: TcpStream, server: TcpStream, shared: &Shared) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // The xid whose reply to drop, set by the request direction for the reply direction.
    let dropping = AtomicI64::new(NONE);
    tokio::select! {
        _ = requests(client_read, server_write, shared, &dropping) => {}
        _ = replies(server_read, client_write, shared, &dropping) => {}
    }
}

async fn requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
    dropping: &AtomicI64,
) -> Result<()> {
    let mut handshake = true;
    loop {
        let frame = read_frame(&mut from).await?;
        if !handshake && frame.len() >= 12 {
            let xid = i32::from_be_bytes(frame[4..8].try_into()?);
            let op = i32::from_be_bytes(frame[8..12].try_into()?);
            let arm = op == OP_MULTI
                && shared
                    .armed
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            if arm {
                dropping.store(i64::from(xid), Ordering::SeqCst);
            }
        }
        handshake = false;
        to.write_all(&frame).await?;
    }
}

async fn replies(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
    dropping: &AtomicI64,
) -> Result<()> {
    let mut handshake = true;
    loop {
        let frame = read_frame(&mut from).await?;
        if !handshake && frame.len() >= 8 {
            let xid = i32::from_be_bytes(frame[4..8].try_into()?);
            if i64::from(xid) == dropping.load(Ordering::SeqCst) {
                // ZooKeeper applied the request and answered; the client never hears of it.
                shared.lost.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            }
        }
        handshake = false;
        to.write_all(&frame).await?;
    }
}

/// One message, its length prefix included.
async fn read_frame(from: &mut OwnedReadHalf) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    from.read_exact(&mut len).await?;
    let n = usize::try_from(i32::from_be_bytes(len)).context("negative frame length")?;
    let mut frame = Vec::with_capacity(4 + n);
    frame.extend_from_slice(&len);
    frame.resize(4 + n, 0);
    from.read_exact(&mut frame[4..]).await?;
    Ok(frame)
}
