//! Writing an object to its placement until the write quorum holds it.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};

use super::{Storage, PUT_ATTEMPTS};
use crate::SinkError;

/// Why a write did not reach its quorum: what each endpoint answered.
#[derive(Debug)]
pub struct QuorumShort {
    pub path: String,
    pub stored: Vec<String>,
    pub quorum: usize,
    pub failures: Vec<(String, SinkError)>,
}

impl QuorumShort {
    /// Whether one of the failures needs an operator (credentials, a missing bucket).
    pub fn needs_operator(&self) -> bool {
        self.failures.iter().any(|(_, e)| e.needs_operator())
    }

    /// The endpoints that failed, with their errors, as one text.
    pub fn describe(&self) -> String {
        let failed: Vec<String> = self
            .failures
            .iter()
            .map(|(name, e)| format!("{name}: {}", crate::chain_text(e)))
            .collect();
        format!(
            "{} of {} copies stored (need {}); {}",
            self.stored.len(),
            self.stored.len() + self.failures.len(),
            self.quorum,
            failed.join("; ")
        )
    }
}

impl Storage {
    /// Stores `bytes` on the placement endpoints not in `stored` (one attempt each, in
    /// parallel), adding each that now holds it at full size to `stored`. Returns once the
    /// write quorum holds it and the others have succeeded, failed, or had the straggler wait
    /// to finish; short of the quorum, says what each endpoint answered.
    pub async fn put_quorum(
        &self,
        rel: &str,
        bytes: Bytes,
        stored: &mut BTreeSet<String>,
    ) -> Result<(), QuorumShort> {
        let quorum = self.inner.replication.quorum;
        let location = self.object_path(rel);
        let mut pending: FuturesUnordered<_> = self
            .placement(rel)
            .into_iter()
            .map(|i| &self.inner.endpoints[i])
            .filter(|e| !stored.contains(&e.name))
            .map(|e| {
                let bytes = bytes.clone();
                let location = &location;
                async move { (e.name.clone(), e.put(location, bytes).await) }
            })
            .collect();
        let mut failures = Vec::new();
        let straggle = tokio::time::sleep(self.inner.straggler_wait);
        tokio::pin!(straggle);
        loop {
            let next = if stored.len() >= quorum {
                tokio::select! {
                    next = pending.next() => next,
                    () = &mut straggle => None,
                }
            } else {
                pending.next().await
            };
            match next {
                Some((name, Ok(()))) => {
                    stored.insert(name);
                    if stored.len() == quorum {
                        straggle
                            .as_mut()
                            .reset(tokio::time::Instant::now() + self.inner.straggler_wait);
                    }
                }
                Some((name, Err(e))) => failures.push((name, e)),
                None => break,
            }
        }
        if stored.len() >= quorum {
            for (name, e) in &failures {
                tracing::warn!(path = rel, endpoint = %name, error = %crate::chain_text(e), "a copy was not stored; the repair will store it");
            }
            return Ok(());
        }
        Err(QuorumShort {
            path: rel.to_string(),
            stored: stored.iter().cloned().collect(),
            quorum,
            failures,
        })
    }

    /// Writes an object whole, retrying transient failures with backoff, until the write
    /// quorum holds it; returns the endpoints that do.
    pub async fn put(&self, rel: &str, bytes: Bytes) -> Result<Vec<String>, SinkError> {
        let mut stored = BTreeSet::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.put_quorum(rel, bytes.clone(), &mut stored).await {
                Ok(()) => return Ok(stored.into_iter().collect()),
                Err(short) if attempt < PUT_ATTEMPTS => {
                    tracing::warn!(path = rel, attempt, error = %short.describe(), "upload failed, retrying");
                    tokio::time::sleep(Duration::from_millis(100 * 2u64.pow(attempt))).await;
                }
                Err(short) => return Err(SinkError::from(short)),
            }
        }
    }
}

impl From<QuorumShort> for SinkError {
    fn from(short: QuorumShort) -> SinkError {
        SinkError::Quorum {
            path: short.path.clone(),
            problem: short.describe(),
        }
    }
}
