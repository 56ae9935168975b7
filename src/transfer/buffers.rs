//! A fixed pool of chunk buffers: the engine's memory budget made literal.
//!
//! Exactly `count` buffers of `size` bytes exist at most; a fetch waits for a free one
//! before it starts, and a buffer goes back to the pool when the writer drops it. Reusing
//! buffers (rather than allocating one per chunk) also keeps the allocator from spreading
//! freed 8 MiB blocks over per-thread arenas, which measurably pushed peak RSS past the
//! budget on dense disks.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
struct Inner {
    free: Mutex<Vec<Vec<u8>>>,
    permits: Arc<Semaphore>,
    size: usize,
}

/// A bounded set of reusable buffers.
#[derive(Debug, Clone)]
pub struct BufferPool {
    inner: Arc<Inner>,
}

impl BufferPool {
    pub fn new(count: usize, size: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                free: Mutex::new(Vec::with_capacity(count)),
                permits: Arc::new(Semaphore::new(count.max(1))),
                size,
            }),
        }
    }

    /// A buffer of `len` (≤ the pool's size) bytes, waiting until one is free. Its
    /// content is unspecified: the caller overwrites all of it.
    pub async fn get(&self, len: usize) -> PooledBuf {
        assert!(
            len <= self.inner.size,
            "chunk larger than the pool's buffers"
        );
        let permit = Arc::clone(&self.inner.permits)
            .acquire_owned()
            .await
            .expect("the pool's semaphore is never closed");
        let mut buf = self
            .inner
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        if buf.len() < self.inner.size {
            // First use of this slot: allocate it once, at full size.
            buf = vec![0u8; self.inner.size];
        }
        PooledBuf {
            buf,
            len,
            pool: Arc::clone(&self.inner),
            _permit: permit,
        }
    }
}

/// A buffer on loan from a [`BufferPool`]; returned to it on drop.
#[derive(Debug)]
pub struct PooledBuf {
    buf: Vec<u8>,
    len: usize,
    pool: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::ops::DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.pool
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(buf);
        // The permit is released after the buffer is back in the free list.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_count_buffers_are_out_and_they_are_reused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let pool = BufferPool::new(2, 16);
            let mut a = pool.get(16).await;
            a[0] = 7;
            let b = pool.get(8).await;
            assert_eq!(b.len(), 8);
            let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), pool.get(4));
            assert!(waiting.await.is_err(), "a third buffer must wait");
            let ptr = a.as_ptr();
            drop(a);
            let c = pool.get(4).await;
            assert_eq!(c.as_ptr(), ptr, "the freed buffer is reused");
        });
    }
}
