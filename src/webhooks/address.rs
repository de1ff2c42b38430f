//! Which addresses a webhook may be delivered to. By default only public
//! ones: a tenant's webhook URL must not reach loopback services, the
//! private network or cloud metadata endpoints (SSRF). The check runs on
//! every resolved address, just before each delivery.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    !(v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_multicast()
        || v4.is_documentation()
        // 0.0.0.0/8, "this network": Linux connects 0.x.y.z to the local host
        || a == 0
        // 100.64.0.0/10, carrier-grade NAT
        || (a == 100 && (b & 0xC0) == 64)
        // 192.0.0.0/24, IETF protocol assignments (NAT64 and DS-Lite helpers)
        || (a == 192 && b == 0 && c == 0)
        // 198.18.0.0/15, benchmarking networks
        || (a == 198 && (b & 0xFE) == 18)
        // 240.0.0.0/4, reserved, and 255.255.255.255, broadcast
        || a >= 240)
}

fn is_public_v6(v6: Ipv6Addr) -> bool {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = v6.segments();
    let embedded_v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        // ::/96: unspecified, loopback and the deprecated IPv4-compatible
        // ::a.b.c.d, which no public host uses.
        [0, 0, 0, 0, 0, 0, _, _] => false,
        // 64:ff9b::/96, NAT64: the gateway connects to the embedded IPv4.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => is_public_v4(embedded_v4(hi, lo)),
        // 64:ff9b:1::/48, NAT64 for local use.
        [0x64, 0xff9b, 1, ..] => false,
        // 2002::/16, 6to4: the relay connects to the IPv4 in bits 16..48.
        [0x2002, hi, lo, ..] => is_public_v4(embedded_v4(hi, lo)),
        // 2001:db8::/32, documentation.
        [0x2001, 0xdb8, ..] => false,
        [first, ..] => {
            !(v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link local fe80::/10
                || (first & 0xffc0) == 0xfec0) // site local fec0::/10 (deprecated, still routed privately)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_blocked(addresses: &[&str]) {
        for blocked in addresses {
            assert!(!is_public(blocked.parse().unwrap()), "{blocked} must not be public");
        }
    }

    #[test]
    fn private_loopback_and_metadata_addresses_are_not_public() {
        assert_blocked(&[
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
        ]);
        for allowed in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(allowed.parse().unwrap()), "{allowed}");
        }
    }

    #[test]
    fn reserved_ipv4_ranges_are_not_public() {
        assert_blocked(&[
            "0.1.2.3",         // 0.0.0.0/8
            "0.255.255.255",   // 0.0.0.0/8
            "192.0.0.8",       // 192.0.0.0/24
            "198.18.0.1",      // 198.18.0.0/15
            "198.19.255.254",  // 198.18.0.0/15
            "240.0.0.1",       // 240.0.0.0/4
            "255.255.255.254", // 240.0.0.0/4
            "255.255.255.255", // broadcast
        ]);
        // Just outside those ranges.
        for allowed in ["1.0.0.1", "192.0.1.1", "198.17.255.255", "198.20.0.1"] {
            assert!(is_public(allowed.parse().unwrap()), "{allowed}");
        }
    }

    #[test]
    fn ipv6_forms_that_embed_an_ipv4_address_are_checked_by_that_address() {
        assert_blocked(&[
            "::127.0.0.1",        // IPv4-compatible, deprecated
            "::8.8.8.8",          // IPv4-compatible: blocked whatever it embeds
            "64:ff9b::7f00:1",    // NAT64 of 127.0.0.1
            "64:ff9b::a9fe:a9fe", // NAT64 of 169.254.169.254
            "64:ff9b::10.0.0.1",  // NAT64 of 10.0.0.1
            "64:ff9b:1::808:808", // local-use NAT64
            "2002:7f00:1::",      // 6to4 of 127.0.0.1
            "2002:a9fe:a9fe::1",  // 6to4 of 169.254.169.254
            "2002:c0a8:101::",    // 6to4 of 192.168.1.1
            "fec0::1",            // site local
            "feff::1",            // site local, top of fec0::/10
            "2001:db8::1",        // documentation
        ]);
        for allowed in ["64:ff9b::808:808", "2002:808:808::1"] {
            assert!(is_public(allowed.parse().unwrap()), "{allowed} embeds 8.8.8.8");
        }
    }
}
