//! The BPF edge: loading ha-lb's eBPF object, attaching XDP programs, and the map writers.
//!
//! Only this module (and the data-plane implementations built on it) touch aya. The rest of
//! the daemon talks to it through plain types.

pub mod bench;
pub mod lb;
pub mod testrun;
pub mod vrrp_filter;

use std::os::fd::AsRawFd;

use aya::{
    programs::{
        tc::{NlOptions, SchedClassifierLinkId, TcAttachOptions, TcHandle},
        xdp::XdpLinkId,
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use tracing::{info, warn};

/// Name of the VRRP fast-path filter program in the object.
pub const PROG_VRRP_FILTER: &str = "ha_lb_vrrp";
/// Name of the L4 forwarding program (NAT/DR) in the object.
pub const PROG_LB: &str = "ha_lb_xdp";
/// The same forwarding program for the TC ingress hook (`dataplane = "tc"`).
pub const PROG_LB_TC: &str = "ha_lb_tc";

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error(
        "ha-lb was built without its eBPF object, so XDP is unavailable: \
         run `cargo xtask build-ebpf`, then build ha-lb again \
         (or set HA_LB_EBPF_OBJECT to an object built elsewhere)"
    )]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] Box<aya::EbpfError>),
    #[error("program `{name}` is not in the eBPF object")]
    MissingProgram { name: String },
    #[error("map `{name}` is not in the eBPF object")]
    MissingMap { name: &'static str },
    #[error("program `{name}`: {source}")]
    Program {
        name: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "attaching `{name}` to {iface}: native XDP failed ({native}); generic XDP failed too: {generic}"
    )]
    Attach { name: String, iface: String, native: Box<ProgramError>, generic: Box<ProgramError> },
}

/// The index of interface `name` in the calling thread's network namespace.
pub fn ifindex_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: if_nametoindex takes a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The bytes of the eBPF object compiled into this binary.
pub fn object() -> Result<&'static [u8], BpfError> {
    #[cfg(ha_lb_ebpf)]
    {
        static OBJ: &[u8] = aya::include_bytes_aligned!(env!("HA_LB_EBPF_OBJECT"));
        Ok(OBJ)
    }
    #[cfg(not(ha_lb_ebpf))]
    {
        Err(BpfError::NoObject)
    }
}

/// How a program ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// XDP in the driver.
    Native,
    /// XDP emulated on socket buffers (no driver support).
    Generic,
    /// TC ingress (TCX, or a clsact qdisc on kernels without it).
    Tc,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
            AttachMode::Tc => "tc",
        }
    }
}

/// ha-lb's loaded eBPF object: programs, maps, and the aya-log reader.
pub struct Bpf {
    ebpf: Ebpf,
}

/// CPUs with a block in the flow cache (512 KiB each).
const FLOW_CACHE_MAX_CPUS: u32 = 512;

/// The highest CPU id in a kernel CPU list ("0-3,8,10-11").
fn highest_cpu(list: &str) -> Option<u32> {
    list.trim().split(',').filter_map(|r| r.rsplit('-').next()?.trim().parse::<u32>().ok()).max()
}

impl Bpf {
    /// Loads the object compiled into this binary. `log_level` bounds what the programs emit
    /// through aya-log (per-packet debug logs cost nothing unless enabled).
    pub fn load(log_level: tracing::Level) -> Result<Self, BpfError> {
        Self::load_bytes(object()?, log_level)
    }

    pub fn load_bytes(bytes: &[u8], log_level: tracing::Level) -> Result<Self, BpfError> {
        // aya-log-ebpf's level numbering: Error=1 .. Trace=5.
        let level: u8 = match log_level {
            tracing::Level::ERROR => 1,
            tracing::Level::WARN => 2,
            tracing::Level::INFO => 3,
            tracing::Level::DEBUG => 4,
            tracing::Level::TRACE => 5,
        };
        // The flow cache holds one block of slots per CPU id (see `ha_lb_common::lb`): as many
        // blocks as the highest possible CPU id + 1 (the possible set may be sparse), at most
        // `FLOW_CACHE_MAX_CPUS`; CPUs beyond have no block and take the full path.
        let cpus = std::fs::read_to_string("/sys/devices/system/cpu/possible")
            .ok()
            .and_then(|s| highest_cpu(&s))
            .map_or(1, |m| m + 1)
            .clamp(1, FLOW_CACHE_MAX_CPUS);
        let ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &level, false)
            .map_max_entries(
                ha_lb_common::lb::LB_FLOW_CACHE,
                cpus * ha_lb_common::lb::LB_FLOW_CACHE_SLOTS,
            )
            .load(bytes)
            .map_err(Box::new)?;
        Ok(Self { ebpf })
    }

    /// Starts forwarding the programs' aya-log records into `tracing` (via the `log` bridge).
    /// Needs a tokio runtime. A missing log map (no program logs) is not an error.
    pub fn spawn_log_forwarder(&mut self) {
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(logger) => {
                let fd = logger.as_raw_fd();
                // SAFETY: the logger owns its ring-buffer fd and moves into the AsyncFd, so the
                // fd stays open for as long as it is registered.
                let registered = unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        logger,
                        tokio::io::Interest::READABLE,
                    )
                };
                match registered {
                    Ok(mut afd) => {
                        tokio::spawn(async move {
                            loop {
                                let Ok(mut guard) = afd.readable_mut().await else { break };
                                guard.get_inner_mut().flush();
                                guard.clear_ready();
                            }
                        });
                    }
                    Err(e) => warn!(fd, error = %e, "eBPF log forwarding unavailable"),
                }
            }
            Err(e) => info!(error = %e, "eBPF programs emit no logs"),
        }
    }

    /// The XDP program `name`, loaded into the kernel on first use (this is where the
    /// verifier runs).
    pub fn xdp(&mut self, name: &str) -> Result<&mut Xdp, BpfError> {
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| BpfError::MissingProgram { name: name.to_string() })?;
        let xdp: &mut Xdp = prog.try_into().map_err(|source| BpfError::Program {
            name: name.to_string(),
            source: Box::new(source),
        })?;
        if xdp.fd().is_err() {
            xdp.load().map_err(|source| BpfError::Program {
                name: name.to_string(),
                source: Box::new(source),
            })?;
        }
        Ok(xdp)
    }

    /// TC (sched_cls) program `name`, loaded (verified) on first use.
    pub fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier, BpfError> {
        let err = |e: aya::programs::ProgramError| BpfError::Program {
            name: name.to_string(),
            source: Box::new(e),
        };
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| BpfError::MissingProgram { name: name.to_string() })?;
        let prog: &mut SchedClassifier = prog.try_into().map_err(err)?;
        if prog.fd().is_err() {
            prog.load().map_err(err)?;
        }
        Ok(prog)
    }

    /// Attaches XDP program `name` to `iface` in native mode, falling back to generic mode
    /// (with a log line) where the driver has no native XDP. The attachment lasts until
    /// [`Bpf::detach_xdp`] or until this `Bpf` is dropped.
    pub fn attach_xdp(
        &mut self,
        name: &str,
        iface: &str,
    ) -> Result<(XdpLinkId, AttachMode), BpfError> {
        let xdp = self.xdp(name)?;
        match xdp.attach(iface, XdpMode::Driver) {
            Ok(id) => {
                info!(program = name, interface = iface, mode = "native", "XDP attached");
                Ok((id, AttachMode::Native))
            }
            Err(native) => match xdp.attach(iface, XdpMode::Skb) {
                Ok(id) => {
                    warn!(
                        program = name,
                        interface = iface,
                        mode = "generic",
                        native_error = %native,
                        "native XDP unavailable on this interface; attached in generic mode"
                    );
                    Ok((id, AttachMode::Generic))
                }
                Err(generic) => Err(BpfError::Attach {
                    name: name.to_string(),
                    iface: iface.to_string(),
                    native: Box::new(native),
                    generic: Box::new(generic),
                }),
            },
        }
    }

    pub fn detach_xdp(&mut self, name: &str, link: XdpLinkId) -> Result<(), BpfError> {
        self.xdp(name)?.detach(link).map_err(|source| BpfError::Program {
            name: name.to_string(),
            source: Box::new(source),
        })
    }

    pub fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, BpfError> {
        self.ebpf.map_mut(name).ok_or(BpfError::MissingMap { name })
    }

    pub fn map(&self, name: &'static str) -> Result<&aya::maps::Map, BpfError> {
        self.ebpf.map(name).ok_or(BpfError::MissingMap { name })
    }
}

/// Attaches TC program `name` to the ingress of `iface` (in the calling thread's network
/// namespace; TCX where the kernel has it, else a netlink filter of a clsact qdisc, which is
/// added if missing). A filter an earlier run left there is removed first
/// ([`remove_stale_tc_ingress`]).
pub fn attach_tc_ingress(
    bpf: &mut Bpf,
    name: &str,
    iface: &str,
) -> Result<SchedClassifierLinkId, BpfError> {
    let err = |e: aya::programs::ProgramError| BpfError::Program {
        name: name.to_string(),
        source: Box::new(e),
    };
    remove_stale_tc_ingress(name, iface);
    let prog = bpf.classifier(name)?;
    let netlink = || {
        TcAttachOptions::Netlink(NlOptions {
            priority: TC_NL_PRIORITY,
            handle: tc_nl_handle(name),
            classid: None,
        })
    };
    if has_tcx() {
        if let Ok(id) = prog.attach(iface, TcAttachType::Ingress) {
            return Ok(id);
        }
    }
    let _ = aya::programs::tc::qdisc_add_clsact(iface);
    prog.attach_with_options(iface, TcAttachType::Ingress, netlink()).map_err(err)
}

/// The priority of ha-lb's netlink TC filters (kernels without TCX): a fixed one, so that a
/// filter an earlier run left is found in its slot even where the kernel keeps no program
/// names (see [`remove_stale_tc_ingress`]). Lower runs first; filters added later with a
/// kernel-chosen priority go in front, as they would have before.
pub const TC_NL_PRIORITY: u16 = 0x4842;

/// The handle of program `name`'s netlink filter at [`TC_NL_PRIORITY`]: one per program name.
pub fn tc_nl_handle(name: &str) -> TcHandle {
    // FNV-1a, folded to a non-zero 16-bit minor.
    let h = name.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    TcHandle::new(0, ((h ^ (h >> 16)) as u16).max(1))
}

fn has_tcx() -> bool {
    use aya::util::KernelVersion;
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// Removes the TC ingress filters of program `name` on `iface` that an earlier run left,
/// before a new one is attached; returns how many it removed.
///
/// Below 6.6 (no TCX) a TC program is attached as a netlink filter of the clsact qdisc, which
/// outlives the process that added it (it is no file descriptor's). After a crash the old
/// filter is still there, with its maps frozen as the dead run left them, and a new filter
/// would go in front of it: the new program passes what it does not handle (TC_ACT_UNSPEC)
/// on to the old one, which forwards for services since removed and drops adverts of VRIDs
/// it never heard of. So, whichever kernel this is (a netlink filter can be there on 6.6 too):
/// - the filter in ha-lb's own slot ([`TC_NL_PRIORITY`], [`tc_nl_handle`]) is removed: it
///   is an earlier run's, named or not (kernels where BPF programs cannot be named, such as
///   one without tracepoints, give the filter an empty name);
/// - every netlink filter named `name` is removed (one an older ha-lb attached elsewhere).
///
/// A TCX program is held by its link's file descriptor and goes with the process that
/// attached it (ha-lb pins none): one of that name still attached belongs to a live process,
/// and is only reported.
pub fn remove_stale_tc_ingress(name: &str, iface: &str) -> usize {
    use aya::programs::{
        links::Link,
        tc::{qdisc_detach_program, SchedClassifierLink, TcError},
    };
    let mut removed = 0;
    let slot = SchedClassifierLink::attached(
        iface,
        TcAttachType::Ingress,
        TC_NL_PRIORITY,
        tc_nl_handle(name),
        None,
    );
    // Fails when the slot is empty, or there is no clsact qdisc: nothing to remove.
    if let Ok(l) = slot {
        if l.detach().is_ok() {
            removed += 1;
        }
    }
    match qdisc_detach_program(iface, TcAttachType::Ingress, name) {
        Ok(()) => removed += 1,
        Err(TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::debug!(program = name, interface = iface, error = %e, "no named TC filter removed")
        }
    }
    if removed > 0 {
        warn!(
            program = name,
            interface = iface,
            "removed a TC ingress filter an earlier run left (its maps were stale)"
        );
    }
    if has_tcx() {
        if let Ok((_, progs)) = SchedClassifier::query_tcx(iface, TcAttachType::Ingress) {
            let same = progs.iter().filter(|p| p.name_as_str() == Some(name)).count();
            if same > 0 {
                warn!(program = name, interface = iface, count = same, "a TCX program of this name is already attached (another process's, or pinned): left alone");
            }
        }
    }
    removed
}

pub fn detach_tc(bpf: &mut Bpf, name: &str, link: SchedClassifierLinkId) -> Result<(), BpfError> {
    bpf.classifier(name)?
        .detach(link)
        .map_err(|e| BpfError::Program { name: name.to_string(), source: Box::new(e) })
}

#[cfg(test)]
mod tests {
    use super::highest_cpu;

    #[test]
    fn tc_netlink_handles_are_fixed_non_zero_and_per_program() {
        use super::{tc_nl_handle, PROG_LB_TC};
        let h = u32::from(tc_nl_handle(PROG_LB_TC));
        assert!(h != 0 && h <= 0xffff, "{h:#x}");
        assert_eq!(tc_nl_handle(PROG_LB_TC), tc_nl_handle(PROG_LB_TC));
        assert_ne!(tc_nl_handle(PROG_LB_TC), tc_nl_handle("ha_lb_bench_tc"));
        assert_eq!(u32::from(tc_nl_handle("")), 0x0000_ffff & u32::from(tc_nl_handle("")));
    }

    #[test]
    fn highest_cpu_of_kernel_cpu_lists() {
        assert_eq!(highest_cpu("0-1\n"), Some(1));
        assert_eq!(highest_cpu("0"), Some(0));
        assert_eq!(highest_cpu("0-3,8,10-11\n"), Some(11));
        assert_eq!(highest_cpu(""), None);
    }
}
