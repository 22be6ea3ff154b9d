//! The buffer pool: device buffers in power-of-two size classes, reused when the tensor
//! holding one drops, with the accounting [`GpuContext::memory`] reports.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

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
        let buffer = match reused {
            Some(b) => b,
            None => self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("blo tensor"),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        };
        let out = GpuBuffer {
            buffer: Some(buffer),
            bytes,
            ctx: self.clone(),
            pooled: true,
        };
        if self.poison.load(Ordering::Relaxed) {
            super::kernels::fill::fill_gpu_bits(&out, f32::NAN.to_bits())?;
        }
        Ok(out)
    }

    fn release(&self, buffer: wgpu::Buffer) {
        let size = buffer.size();
        let mut pool = self.lock_pool();
        pool.live_bytes -= size;
        pool.pooled_bytes += size;
        pool.free.entry(size).or_default().push(buffer);
    }
}

/// A device buffer owned by one tensor storage; it returns to the pool when dropped.
pub(crate) struct GpuBuffer {
    buffer: Option<wgpu::Buffer>,
    bytes: u64,
    pub(crate) ctx: Arc<GpuContext>,
    /// Whether dropping it returns the buffer to the pool (false for [`Self::borrowed`]).
    pooled: bool,
}

impl GpuBuffer {
    /// A binding of a buffer that lives outside the pool (a kernel's persistent scratch,
    /// kept by its owner): dropping it leaves the buffer alone.
    pub(crate) fn borrowed(ctx: Arc<GpuContext>, buffer: wgpu::Buffer) -> GpuBuffer {
        GpuBuffer {
            bytes: buffer.size(),
            buffer: Some(buffer),
            ctx,
            pooled: false,
        }
    }

    pub(crate) fn raw(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("buffer is present until drop")
    }

    /// Logical size in bytes.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Binding size: the logical size rounded up to whole `vec4<f32>`s (the allocation
    /// always has room for that), at least 16 bytes since empty bindings are invalid.
    pub(crate) fn binding_size(&self) -> u64 {
        (self.bytes.div_ceil(16) * 16).clamp(16, self.raw().size())
    }
}

impl Drop for GpuBuffer {
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
        write!(f, "GpuBuffer({} bytes)", self.bytes)
    }
}
