//! Map keys, values and constants shared by the kernel side (`ha-lb-ebpf`) and user side (`ha-lb`).
//!
//! Every type here is `#[repr(C)]`, has no implicit padding (padding is spelled out as `_pad`
//! fields so `bytemuck::Pod` can be derived), and has the same layout on both sides.
//! No logic lives here beyond tiny constructors.
#![no_std]

pub mod bench;
pub mod lb;
pub mod vrrp;

/// Implements `aya::Pod` for the listed types when the `user` feature is on.
#[macro_export]
macro_rules! impl_user_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is `#[repr(C)]`, `bytemuck::Pod` (no padding, any bit pattern valid).
            unsafe impl aya::Pod for $t {}
        )*
    };
}
