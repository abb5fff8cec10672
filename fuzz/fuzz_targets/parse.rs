//! The parser and the rewrite helpers on arbitrary bytes: no panic, no
//! out-of-bounds access, and a successful parse names only in-bounds ranges.
#![no_main]
use edgeplane_packet::{parse, rewrite_icmp_error, rewrite_tuple, Tuple};
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = parse(data) else { return };
    assert!(p.l3_off as usize <= data.len());
    assert!(p.l4_off as usize <= p.l3_end as usize);
    assert!(p.l3_end as usize <= data.len());
    let mut frame = data.to_vec();
    let (a, b): (IpAddr, IpAddr) = if p.src.is_ipv4() {
        (Ipv4Addr::new(198, 18, 0, 1).into(), Ipv4Addr::new(198, 19, 0, 2).into())
    } else {
        (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(), Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).into())
    };
    let t = Tuple { src: a, dst: b, sport: 4242, dport: 80 };
    let _ = rewrite_tuple(&mut frame, &p, &t);
    let _ = rewrite_icmp_error(&mut frame, &p, Some(b), a, &t);
    // A rewritten frame still parses (addresses and ports changed only).
    if rewrite_tuple(&mut data.to_vec(), &p, &t).is_ok() {
        let mut f2 = data.to_vec();
        rewrite_tuple(&mut f2, &p, &t).unwrap();
        assert!(parse(&f2).is_ok(), "rewrite broke a parseable frame");
    }
});
