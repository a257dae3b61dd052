//! Locates the eBPF object built by `cargo xtask build-ebpf` and tells the crate where it is.
//!
//! Without the object, ha-lb still builds (config checking, status, the IPVS fallback work),
//! and loading XDP programs fails with a message naming the command to run.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=HA_LB_EBPF_OBJECT");
    println!("cargo:rustc-check-cfg=cfg(ha_lb_ebpf)");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let obj = std::env::var_os("HA_LB_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/ebpf/ha-lb-ebpf.o"));
    println!("cargo:rerun-if-changed={}", obj.display());
    if obj.is_file() {
        println!("cargo:rustc-cfg=ha_lb_ebpf");
        println!("cargo:rustc-env=HA_LB_EBPF_OBJECT={}", obj.display());
    } else {
        println!(
            "cargo:warning=eBPF object not found at {}: XDP will be unavailable in this build. \
             Run `cargo xtask build-ebpf`, then build ha-lb again.",
            obj.display()
        );
    }
}
