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
        tc::SchedClassifierLinkId, xdp::XdpLinkId, ProgramError, SchedClassifier, TcAttachType,
        Xdp, XdpMode,
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
/// namespace; TCX where the kernel has it, else a clsact qdisc, which is added if missing).
pub fn attach_tc_ingress(
    bpf: &mut Bpf,
    name: &str,
    iface: &str,
) -> Result<SchedClassifierLinkId, BpfError> {
    let err = |e: aya::programs::ProgramError| BpfError::Program {
        name: name.to_string(),
        source: Box::new(e),
    };
    let prog = bpf.classifier(name)?;
    match prog.attach(iface, TcAttachType::Ingress) {
        Ok(id) => Ok(id),
        Err(_) => {
            // Older kernels (no TCX): through a clsact qdisc. Such a filter outlives the
            // process that added it (it is no file descriptor's), so one left by a crashed
            // run — with its own, stale maps — is removed first.
            let _ = aya::programs::tc::qdisc_detach_program(iface, TcAttachType::Ingress, name);
            let _ = aya::programs::tc::qdisc_add_clsact(iface);
            prog.attach(iface, TcAttachType::Ingress).map_err(err)
        }
    }
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
    fn highest_cpu_of_kernel_cpu_lists() {
        assert_eq!(highest_cpu("0-1\n"), Some(1));
        assert_eq!(highest_cpu("0"), Some(0));
        assert_eq!(highest_cpu("0-3,8,10-11\n"), Some(11));
        assert_eq!(highest_cpu(""), None);
    }
}
