//! Handing a frame from the userspace path to the kernel.
//!
//! * [`KernelTx`]: raw IP sockets (`IPPROTO_RAW`, header included). Sending
//!   a routed frame's IP packet through them makes the *kernel* route it,
//!   resolve the neighbour (ARP/ND) and transmit it. We use this for a
//!   translated frame whose next hop has no known MAC (a miss resolves the
//!   neighbour, so later frames of the flow take the AF_XDP path), and for
//!   `Verdict::Pass` (a packet to a local address loops back into the local
//!   input path). One syscall per frame: the slow path by design.
//!
//! What a handed-over `Pass` frame loses: its ingress device becomes `lo`
//! for local delivery (so `SO_BINDTODEVICE` sockets and netfilter rules keyed
//! on the real interface see it differently) and a non-local one is routed
//! without the FORWARD chain. The XDP program redirects only what is the
//! dataplane's (frontends, SNAT replies, VIP ICMP), so `Pass` here is rare
//! and counted (`to_kernel_pass`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context, Result};

/// Offset of the IP header and the EtherType (after up to two VLAN tags).
pub fn l3(frame: &[u8]) -> Option<(usize, u16)> {
    let mut off = 12;
    for _ in 0..3 {
        let et = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
        if et == 0x8100 || et == 0x88a8 {
            off += 4;
            continue;
        }
        return Some((off + 2, et));
    }
    None
}

/// Destination IP of a frame.
pub fn dst_ip(frame: &[u8]) -> Option<IpAddr> {
    let (ip, et) = l3(frame)?;
    match et {
        0x0800 => {
            let b: [u8; 4] = frame.get(ip + 16..ip + 20)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        0x86dd => {
            let b: [u8; 16] = frame.get(ip + 24..ip + 40)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Raw IP sockets for handing packets to the kernel's IP stack.
#[derive(Debug)]
pub struct KernelTx {
    v4: i32,
    v6: i32,
    pub sent: u64,
    pub failed: u64,
}

impl KernelTx {
    pub fn new() -> Result<Self> {
        // SAFETY: plain socket(2) calls; fds are owned by KernelTx and
        // closed in Drop.
        let v4 = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        let v6 = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if v4 < 0 || v6 < 0 {
            bail!("raw socket: {}", std::io::Error::last_os_error());
        }
        Ok(KernelTx {
            v4,
            v6,
            sent: 0,
            failed: 0,
        })
    }

    /// Sends the IP packet inside `frame` through the kernel's IP output.
    /// Returns false (and counts it) when the kernel refused it.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        let ok = self.try_send(frame).is_ok();
        if ok {
            self.sent += 1;
        } else {
            self.failed += 1;
        }
        ok
    }

    fn try_send(&self, frame: &[u8]) -> Result<()> {
        let (ip, _) = l3(frame).context("no L3")?;
        let dst = dst_ip(frame).context("not IP")?;
        let pkt = &frame[ip..];
        // SAFETY: sockaddr structs are plain data, fully initialised; the
        // buffer pointers and lengths describe `pkt`.
        let rc = unsafe {
            match dst {
                IpAddr::V4(a) => {
                    let mut sa: libc::sockaddr_in = std::mem::zeroed();
                    sa.sin_family = libc::AF_INET as u16;
                    sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
                    libc::sendto(
                        self.v4,
                        pkt.as_ptr().cast(),
                        pkt.len(),
                        libc::MSG_DONTWAIT,
                        (&sa as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as u32,
                    )
                }
                IpAddr::V6(a) => {
                    let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
                    sa.sin6_family = libc::AF_INET6 as u16;
                    sa.sin6_addr.s6_addr = a.octets();
                    libc::sendto(
                        self.v6,
                        pkt.as_ptr().cast(),
                        pkt.len(),
                        libc::MSG_DONTWAIT,
                        (&sa as *const libc::sockaddr_in6).cast(),
                        std::mem::size_of::<libc::sockaddr_in6>() as u32,
                    )
                }
            }
        };
        if rc < 0 {
            bail!("{}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for KernelTx {
    fn drop(&mut self) {
        // SAFETY: our own fds, closed once.
        unsafe {
            libc::close(self.v4);
            libc::close(self.v6);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_dst_through_vlan_tags() {
        let mut f = vec![0u8; 14 + 4 + 20];
        f[12..14].copy_from_slice(&[0x81, 0x00]);
        f[16..18].copy_from_slice(&[0x08, 0x00]);
        f[18 + 16..18 + 20].copy_from_slice(&[198, 18, 2, 2]);
        assert_eq!(dst_ip(&f), Some("198.18.2.2".parse().unwrap()));
        assert_eq!(parse_mac("02:00:00:00:00:0a"), Some([2, 0, 0, 0, 0, 10]));
        assert_eq!(parse_mac("02:00"), None);
    }
}
