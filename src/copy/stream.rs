//! Stream adapters for blob transfer: a check of size and digest on the bytes that pass, and
//! a regrouping of stream frames into upload chunks of a fixed size.

use bytes::{Bytes, BytesMut};
use futures::Stream;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use super::Progress;
use super::digest::{self, Hasher};

/// The cause of a failure on the source side of a blob stream. The upload gets only an I/O
/// error, so the cause is kept here for the error report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceFailure {
    /// The bytes did not hash to the descriptor's digest.
    Digest { expected: String, actual: String },
    /// The source sent more or fewer bytes than the descriptor's size.
    Size { expected: u64, actual: u64 },
    /// The source connection broke.
    Interrupted(String),
}

/// The place where [`Verified`] stores the cause of a failure.
pub type FailureSlot = Arc<Mutex<Option<SourceFailure>>>;

/// Passes a blob stream through, counting bytes for progress and checking its size and
/// digest. On a mismatch the stream ends with an error before its last byte is delivered as
/// a clean end, so an upload fed from it is never committed.
pub struct Verified<S> {
    inner: S,
    hasher: Option<Hasher>,
    digest: String,
    size: u64,
    seen: u64,
    progress: Arc<Progress>,
    slot: FailureSlot,
    done: bool,
}

impl<S> Verified<S> {
    /// Fails with an error when `digest` is not a valid digest.
    pub fn new(
        inner: S,
        digest: &str,
        size: u64,
        progress: Arc<Progress>,
        slot: FailureSlot,
    ) -> Result<Verified<S>, String> {
        let algorithm = digest::parse(digest)?;
        Ok(Verified {
            inner,
            hasher: Some(Hasher::new(algorithm)),
            digest: digest.to_string(),
            size,
            seen: 0,
            progress,
            slot,
            done: false,
        })
    }

    fn fail(&mut self, failure: SourceFailure) -> io::Error {
        self.done = true;
        let message = match &failure {
            SourceFailure::Digest { expected, actual } => {
                format!("blob digest mismatch: expected {expected}, got {actual}")
            }
            SourceFailure::Size { expected, actual } => format!(
                "blob {} is {expected} bytes in its descriptor, but the source sent {actual}{}",
                self.digest,
                if actual > expected { " or more" } else { "" }
            ),
            SourceFailure::Interrupted(reason) => {
                format!(
                    "reading blob {} from the source failed: {reason}",
                    self.digest
                )
            }
        };
        *self.slot.lock().expect("failure slot poisoned") = Some(failure);
        io::Error::new(io::ErrorKind::InvalidData, message)
    }
}

impl<S> Stream for Verified<S>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                self.seen += chunk.len() as u64;
                self.progress
                    .bytes
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                if self.seen > self.size {
                    let failure = SourceFailure::Size {
                        expected: self.size,
                        actual: self.seen,
                    };
                    return Poll::Ready(Some(Err(self.fail(failure))));
                }
                if let Some(hasher) = self.hasher.as_mut() {
                    hasher.update(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(error))) => {
                let failure = SourceFailure::Interrupted(error.to_string());
                Poll::Ready(Some(Err(self.fail(failure))))
            }
            Poll::Ready(None) => {
                if self.seen != self.size {
                    let failure = SourceFailure::Size {
                        expected: self.size,
                        actual: self.seen,
                    };
                    return Poll::Ready(Some(Err(self.fail(failure))));
                }
                let actual = self.hasher.take().map(Hasher::finish).unwrap_or_default();
                if actual != self.digest {
                    let failure = SourceFailure::Digest {
                        expected: self.digest.clone(),
                        actual,
                    };
                    return Poll::Ready(Some(Err(self.fail(failure))));
                }
                self.done = true;
                Poll::Ready(None)
            }
        }
    }
}

/// Regroups a stream's frames into chunks of exactly `size` bytes (the last one may be
/// shorter). It keeps at most one chunk and one frame in memory.
pub struct Rechunk<S> {
    inner: S,
    size: usize,
    buffer: BytesMut,
    pending: Option<Bytes>,
    finished: bool,
}

impl<S> Rechunk<S> {
    pub fn new(inner: S, size: usize) -> Rechunk<S> {
        let size = size.max(1);
        Rechunk {
            inner,
            size,
            buffer: BytesMut::new(),
            pending: None,
            finished: false,
        }
    }

    fn take_buffer(&mut self) -> Bytes {
        std::mem::take(&mut self.buffer).freeze()
    }
}

impl<S> Stream for Rechunk<S>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(mut pending) = self.pending.take() {
                if self.buffer.is_empty() && pending.len() >= self.size {
                    // A whole chunk inside one frame goes out without a copy.
                    let chunk = pending.split_to(self.size);
                    if !pending.is_empty() {
                        self.pending = Some(pending);
                    }
                    return Poll::Ready(Some(Ok(chunk)));
                }
                let room = self.size - self.buffer.len();
                if self.buffer.capacity() < self.size {
                    let additional = self.size - self.buffer.len();
                    self.buffer.reserve(additional);
                }
                let take = room.min(pending.len());
                self.buffer.extend_from_slice(&pending[..take]);
                if take < pending.len() {
                    self.pending = Some(pending.slice(take..));
                }
            }
            if self.buffer.len() == self.size {
                return Poll::Ready(Some(Ok(self.take_buffer())));
            }
            if self.finished {
                if self.buffer.is_empty() {
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Ok(self.take_buffer())));
            }
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => self.finished = true,
                Poll::Ready(Some(Err(error))) => {
                    // The chunk in progress is dropped: an upload must not commit it.
                    self.finished = true;
                    self.buffer.clear();
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if !frame.is_empty() {
                        self.pending = Some(frame);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{StreamExt, executor::block_on, stream};

    fn frames(sizes: &[usize]) -> Vec<io::Result<Bytes>> {
        let mut next = 0u8;
        sizes
            .iter()
            .map(|size| {
                let bytes: Vec<u8> = (0..*size)
                    .map(|_| {
                        next = next.wrapping_add(1);
                        next
                    })
                    .collect();
                Ok(Bytes::from(bytes))
            })
            .collect()
    }

    fn rechunk(sizes: &[usize], chunk: usize) -> Vec<Bytes> {
        let input = stream::iter(frames(sizes));
        block_on(Rechunk::new(input, chunk).map(Result::unwrap).collect())
    }

    #[test]
    fn rechunk_groups_small_frames() {
        let chunks = rechunk(&[3, 3, 3, 3, 1], 4);
        let lengths: Vec<usize> = chunks.iter().map(Bytes::len).collect();
        assert_eq!(lengths, [4, 4, 4, 1]);
        let joined: Vec<u8> = chunks.concat();
        let expected: Vec<u8> = frames(&[3, 3, 3, 3, 1])
            .into_iter()
            .flat_map(|f| f.unwrap().to_vec())
            .collect();
        assert_eq!(joined, expected);
    }

    #[test]
    fn rechunk_splits_large_frames() {
        let lengths: Vec<usize> = rechunk(&[10, 1], 4).iter().map(Bytes::len).collect();
        assert_eq!(lengths, [4, 4, 3]);
        let lengths: Vec<usize> = rechunk(&[8], 4).iter().map(Bytes::len).collect();
        assert_eq!(lengths, [4, 4]);
        assert!(rechunk(&[], 4).is_empty());
        assert!(rechunk(&[0, 0], 4).is_empty());
    }

    #[test]
    fn rechunk_drops_partial_chunk_on_error() {
        let input = stream::iter(vec![
            Ok(Bytes::from_static(b"abcdef")),
            Err(io::Error::other("broken")),
        ]);
        let items: Vec<io::Result<Bytes>> = block_on(Rechunk::new(input, 4).collect());
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].as_ref().unwrap().as_ref(), b"abcd");
        assert!(items[1].is_err());
    }

    fn verify(data: &[u8], digest: &str, size: u64) -> (bool, Option<SourceFailure>) {
        let slot = FailureSlot::default();
        let input = stream::iter(vec![Ok(Bytes::copy_from_slice(data))]);
        let verified = Verified::new(
            input,
            digest,
            size,
            Arc::new(Progress::default()),
            slot.clone(),
        )
        .unwrap();
        let items: Vec<io::Result<Bytes>> = block_on(verified.collect());
        let ok = items.iter().all(Result::is_ok);
        let failure = slot.lock().unwrap().clone();
        (ok, failure)
    }

    #[test]
    fn verified_checks_digest_and_size() {
        let data = b"layer bytes";
        let sha512 = digest::compute(digest::Algorithm::Sha512, data);
        assert_eq!(verify(data, &sha512, data.len() as u64), (true, None));

        let sha256 = digest::compute(digest::Algorithm::Sha256, b"other");
        let (ok, failure) = verify(data, &sha256, data.len() as u64);
        assert!(!ok);
        assert!(matches!(failure, Some(SourceFailure::Digest { .. })));

        let (ok, failure) = verify(data, &sha512, 3);
        assert!(!ok);
        assert!(matches!(failure, Some(SourceFailure::Size { .. })));
    }
}
