//! Software prefetch: the one hint the batch path uses to overlap the cache
//! misses of many frames (conntrack buckets and records, Maglev slots).
//!
//! A prefetch never changes what a program computes: it only asks the CPU to
//! start loading a cache line. It cannot fault, even for an address that is
//! not mapped. Here it is only ever given a reference, so the address is
//! always a valid one anyway. On targets without an intrinsic it is a no-op.

/// Starts loading the cache line that holds `*r` into all cache levels.
#[inline(always)]
pub fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = (r as *const T).cast::<i8>();
        // SAFETY: `prefetcht0` is an architectural hint: it does not read the
        // value into a register, cannot fault and has no effect on program
        // semantics (Intel SDM vol. 2B, PREFETCHh). `p` comes from a reference
        // and is therefore a valid address in any case.
        unsafe { core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = r;
    }
}
