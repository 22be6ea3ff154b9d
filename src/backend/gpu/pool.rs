//! The buffer pool: device buffers in power-of-two size classes, reused when the tensor
//! holding one drops, with the accounting [`GpuContext::memory`] reports.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::context::GpuContext;
use crate::error::Result;

/// Smallest pooled allocation (and the alignment of every binding), so that kernels
/// may read and write whole `vec4<f32>`s past a tensor's end without leaving its buffer.
const MIN_ALLOC: u64 = 256;

/// Device-memory accounting of the buffer pool, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes of buffers held by live tensors.
    pub live_bytes: u64,
    /// Bytes of free buffers kept in the pool for reuse.
    pub pooled_bytes: u64,
    /// Largest `live_bytes` seen since the context was created (or the last reset).
    pub peak_live_bytes: u64,
}

#[derive(Default)]
pub(super) struct Pool {
    pub(super) free: HashMap<u64, Vec<wgpu::Buffer>>,
    pub(super) live_bytes: u64,
    pub(super) pooled_bytes: u64,
    pub(super) peak_live_bytes: u64,
}

impl GpuContext {
    /// Buffer-pool accounting.
    pub fn memory(&self) -> MemoryStats {
        let pool = self.lock_pool();
        MemoryStats {
            live_bytes: pool.live_bytes,
            pooled_bytes: pool.pooled_bytes,
            peak_live_bytes: pool.peak_live_bytes,
        }
    }

    /// Resets the peak of live bytes to the current live bytes.
    pub fn reset_peak_memory(&self) {
        let mut pool = self.lock_pool();
        pool.peak_live_bytes = pool.live_bytes;
    }

    /// Frees every buffer kept in the pool (buffers held by tensors are unaffected).
    pub fn release_pooled(&self) {
        // Cached bind groups hold their buffers: drop them too, or nothing is freed.
        self.bind_groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let mut pool = self.lock_pool();
        pool.free.clear();
        pool.pooled_bytes = 0;
    }

    pub(super) fn lock_pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Size class of an allocation: powers of two (bounded waste, many reuses), capped at
    /// the binding limit so a tensor that fits the limit always gets a buffer.
    fn bucket(&self, bytes: u64) -> u64 {
        let b = bytes.max(MIN_ALLOC).next_power_of_two();
        let cap = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        if b > cap {
            bytes.div_ceil(MIN_ALLOC) * MIN_ALLOC
        } else {
            b
        }
    }

    /// A buffer for `bytes` bytes from the pool (or new). Its contents are undefined
    /// (NaN when poisoning is on).
    pub(crate) fn alloc(self: &Arc<Self>, bytes: u64) -> Result<GpuBuffer> {
        self.check_size("tensor", bytes)?;
        let out = GpuBuffer::ready(self.clone(), self.alloc_raw(bytes), bytes, true);
        if self.poison.load(Ordering::Relaxed) {
            super::kernels::fill::fill_gpu_bits(&out, f32::NAN.to_bits())?;
        }
        Ok(out)
    }

    /// The pooled device buffer behind [`Self::alloc`], without a tensor around it.
    fn alloc_raw(&self, bytes: u64) -> wgpu::Buffer {
        let size = self.bucket(bytes);
        let reused = {
            let mut pool = self.lock_pool();
            let buffer = pool.free.get_mut(&size).and_then(Vec::pop);
            if buffer.is_some() {
                pool.pooled_bytes -= size;
            }
            pool.live_bytes += size;
            pool.peak_live_bytes = pool.peak_live_bytes.max(pool.live_bytes);
            buffer
        };
        match reused {
            Some(b) => b,
            None => self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("blo tensor"),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        }
    }

    pub(super) fn release(&self, buffer: wgpu::Buffer) {
        let size = buffer.size();
        let mut pool = self.lock_pool();
        pool.live_bytes -= size;
        pool.pooled_bytes += size;
        pool.free.entry(size).or_default().push(buffer);
    }
}

/// A tensor's device buffer; the buffer returns to the pool when the last holder drops.
///
/// With elementwise fusion on (`fusion.rs`), a buffer may be *deferred*: it holds the
/// elementwise op that will compute it and no device memory yet. It is computed, with
/// the deferred ops it depends on, by one generated kernel when something needs its
/// contents: a dispatch that binds it, a copy, a readback or a sync. Holders other than
/// the tensor that owns it are deferred ops that read it, hence the shared inner part.
pub(crate) struct GpuBuffer {
    pub(super) inner: Arc<BufferCell>,
    pub(crate) ctx: Arc<GpuContext>,
}

pub(crate) struct BufferCell {
    /// Set once: at allocation, or when a deferred buffer is computed.
    pub(super) buffer: OnceLock<wgpu::Buffer>,
    /// The deferred op that computes this buffer; `None` once it is computed.
    pub(super) deferred: Mutex<Option<super::fusion::Deferred>>,
    bytes: u64,
    ctx: Arc<GpuContext>,
    /// Whether dropping it returns the buffer to the pool (false for [`GpuBuffer::borrowed`]).
    pooled: bool,
}

impl GpuBuffer {
    fn ready(ctx: Arc<GpuContext>, buffer: wgpu::Buffer, bytes: u64, pooled: bool) -> GpuBuffer {
        GpuBuffer {
            inner: Arc::new(BufferCell {
                buffer: OnceLock::from(buffer),
                deferred: Mutex::new(None),
                bytes,
                ctx: ctx.clone(),
                pooled,
            }),
            ctx,
        }
    }

    /// A buffer of `bytes` bytes that `op` computes when it is first needed.
    pub(super) fn deferred(ctx: Arc<GpuContext>, bytes: u64, op: super::fusion::Deferred) -> Self {
        GpuBuffer {
            inner: Arc::new(BufferCell {
                buffer: OnceLock::new(),
                deferred: Mutex::new(Some(op)),
                bytes,
                ctx: ctx.clone(),
                pooled: true,
            }),
            ctx,
        }
    }

    /// A binding of a buffer that lives outside the pool (a kernel's persistent scratch,
    /// kept by its owner): dropping it leaves the buffer alone.
    pub(crate) fn borrowed(ctx: Arc<GpuContext>, buffer: wgpu::Buffer) -> GpuBuffer {
        let bytes = buffer.size();
        GpuBuffer::ready(ctx, buffer, bytes, false)
    }

    pub(super) fn from_cell(inner: Arc<BufferCell>) -> GpuBuffer {
        GpuBuffer {
            ctx: inner.ctx.clone(),
            inner,
        }
    }

    /// Another handle on the same buffer (a deferred op's operand).
    pub(super) fn share(&self) -> GpuBuffer {
        GpuBuffer {
            inner: self.inner.clone(),
            ctx: self.ctx.clone(),
        }
    }

    /// The device buffer. Only for a buffer that is computed: [`GpuContext::dispatch`],
    /// copies and readbacks compute their deferred buffers first.
    pub(crate) fn raw(&self) -> &wgpu::Buffer {
        self.inner
            .buffer
            .get()
            .expect("a deferred buffer is computed before it is bound (backend/gpu/fusion.rs)")
    }

    /// Whether the contents are still to be computed by a deferred op.
    pub(crate) fn is_deferred(&self) -> bool {
        self.inner.buffer.get().is_none()
    }

    /// Computes the buffer if it is deferred (one fused dispatch), so it can be bound.
    pub(crate) fn compute(&self) -> Result<()> {
        if self.is_deferred() {
            super::fusion::compute(self)?;
        }
        Ok(())
    }

    /// The device buffer taken out of a handle no one else holds, for a deferred buffer
    /// to adopt: its pool accounting moves with it.
    pub(super) fn into_raw(self) -> wgpu::Buffer {
        let GpuBuffer { inner, .. } = self;
        match Arc::try_unwrap(inner) {
            Ok(mut cell) => cell.buffer.take().expect("an allocated buffer"),
            Err(_) => unreachable!("a fresh allocation has one holder"),
        }
    }

    /// Logical size in bytes.
    pub(crate) fn bytes(&self) -> u64 {
        self.inner.bytes
    }

    /// Number of f32 elements.
    pub(crate) fn numel(&self) -> usize {
        (self.inner.bytes / 4) as usize
    }

    /// Binding size: the logical size rounded up to whole `vec4<f32>`s (the allocation
    /// always has room for that), at least 16 bytes since empty bindings are invalid.
    pub(crate) fn binding_size(&self) -> u64 {
        let whole = (self.bytes().div_ceil(16) * 16).max(16);
        // A deferred buffer will be a pooled allocation, which always has that room.
        match self.inner.buffer.get() {
            Some(b) => whole.min(b.size()),
            None => whole,
        }
    }
}

impl Drop for BufferCell {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take()
            && self.pooled
        {
            self.ctx.release(b);
        }
    }
}

impl std::fmt::Debug for GpuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuBuffer({} bytes)", self.bytes())
    }
}
