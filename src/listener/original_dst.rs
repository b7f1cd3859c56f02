//! SO_ORIGINAL_DST: the address a connection was sent to before iptables redirected it.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

const SO_ORIGINAL_DST: libc::c_int = 80;
const IP6T_SO_ORIGINAL_DST: libc::c_int = 80;

pub fn get(stream: &tokio::net::TcpStream) -> Option<SocketAddr> {
    let fd = stream.as_raw_fd();
    let local = stream.local_addr().ok()?;
    // SAFETY: getsockopt writes at most `len` bytes into a zeroed sockaddr_storage we own.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let (level, opt) =
            if local.is_ipv4() { (libc::SOL_IP, SO_ORIGINAL_DST) } else { (libc::SOL_IPV6, IP6T_SO_ORIGINAL_DST) };
        if libc::getsockopt(fd, level, opt, &mut storage as *mut _ as *mut libc::c_void, &mut len) != 0 {
            return None;
        }
        match storage.ss_family as libc::c_int {
            libc::AF_INET => {
                let a = &*(&storage as *const _ as *const libc::sockaddr_in);
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let a = &*(&storage as *const _ as *const libc::sockaddr_in6);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}
