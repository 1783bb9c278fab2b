//! The same services as kube-proxy would program them, for the side-by-side runs.
//!
//! iptables mode (nat table): `KUBE-SERVICES` matches (address, protocol, port) one rule per
//! service port and jumps to a `KUBE-SVC-…` chain, which picks an endpoint with
//! `statistic --mode random --probability 1/(n-i)` rules and jumps to a per-endpoint
//! `KUBE-SEP-…` chain that marks hairpin traffic for masquerade and DNATs. Loaded with one
//! `iptables-restore --noflush`.
//!
//! nftables mode (`table ip kube-proxy`): a verdict map from address . protocol . port to
//! per-service chains that pick with `numgen random mod N vmap`, then per-endpoint chains
//! that DNAT. Loaded with one `nft -f` transaction.
//!
//! External services ([`ServiceSet::external`]: reached at external IPs, endpoints on
//! another node, `externalTrafficPolicy: Cluster`) get kube-proxy's masquerade shape on top:
//! the external IP goes to `KUBE-EXT-…` (nftables: `external-…`), which jumps to
//! `KUBE-MARK-MASQ` (`mark-for-masquerade`) before the service chain, and the postrouting
//! chain masquerades marked packets; the ClusterIP keeps its plain rule.
//!
//! Both are IPv4 only (kube-proxy writes IPv6 into a separate ip6tables / `ip6` table of the
//! same shape). Chain names use a hash of the service port name, as kube-proxy's do (ours is
//! FNV-1a, not SHA-256: only the shape and the length matter here).

use std::fmt::Write as _;

use super::services::{BenchEndpoint, BenchService, Proto, ServiceSet, external_cluster_ip};

/// kube-proxy's masquerade mark bit.
const MASQ_MARK: &str = "0x4000";

/// 16 base32 characters from a name, like kube-proxy's chain-name hash.
fn chain_hash(name: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let fnv = |seed: u64| {
        name.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let bits = (u128::from(fnv(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(fnv(0x84222325cbf2));
    (0..16)
        .map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char)
        .collect()
}

fn svc_chain(service: &BenchService, proto: Proto) -> String {
    format!("KUBE-SVC-{}", chain_hash(&service.port_name(proto)))
}

/// `KUBE-EXT-…`: the same hash as the service chain, as kube-proxy names it.
fn ext_chain(service: &BenchService, proto: Proto) -> String {
    format!("KUBE-EXT-{}", chain_hash(&service.port_name(proto)))
}

fn sep_chain(service: &BenchService, proto: Proto, endpoint: &BenchEndpoint) -> String {
    format!(
        "KUBE-SEP-{}",
        chain_hash(&format!(
            "{}{}:{}",
            service.port_name(proto),
            endpoint.ipv4,
            service.target_port
        ))
    )
}

/// The `iptables-restore --noflush` input for `set` (nat table).
pub fn iptables_restore_input(set: &ServiceSet) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    for chain in ["KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"] {
        let _ = writeln!(chains, ":{chain} - [0:0]");
    }
    let _ = writeln!(
        rules,
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    );
    let _ = writeln!(
        rules,
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    );
    let _ = writeln!(
        rules,
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
    );
    let _ = writeln!(rules, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    );
    let _ = writeln!(rules, "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}");
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
    );
    for service in &set.services {
        for &proto in &service.protocols {
            let port_name = service.port_name(proto);
            let svc = svc_chain(service, proto);
            let p = proto.netfilter();
            let _ = writeln!(chains, ":{svc} - [0:0]");
            if set.external {
                let ext = ext_chain(service, proto);
                let _ = writeln!(chains, ":{ext} - [0:0]");
                let _ = writeln!(
                    rules,
                    "-A KUBE-SERVICES -m comment --comment \"{port_name} cluster IP\" -m {p} -p {p} -d {}/32 --dport {} -j {svc}",
                    external_cluster_ip(service.index),
                    service.port
                );
                let _ = writeln!(
                    rules,
                    "-A KUBE-SERVICES -m comment --comment \"{port_name} external IP\" -m {p} -p {p} -d {}/32 --dport {} -j {ext}",
                    service.vip_v4, service.port
                );
                let _ = writeln!(
                    rules,
                    "-A {ext} -m comment --comment \"masquerade traffic for {port_name} external destinations\" -j KUBE-MARK-MASQ"
                );
                let _ = writeln!(rules, "-A {ext} -j {svc}");
            } else {
                let _ = writeln!(
                    rules,
                    "-A KUBE-SERVICES -m comment --comment \"{port_name} cluster IP\" -m {p} -p {p} -d {}/32 --dport {} -j {svc}",
                    service.vip_v4, service.port
                );
            }
            let count = service.endpoints.len();
            for (i, endpoint) in service.endpoints.iter().enumerate() {
                let sep = sep_chain(service, proto, endpoint);
                let _ = writeln!(chains, ":{sep} - [0:0]");
                let comment = format!(
                    "\"{port_name} -> {}:{}\"",
                    endpoint.ipv4, service.target_port
                );
                if i + 1 < count {
                    // kube-proxy: probability 1/(n-i) so that every endpoint gets 1/n.
                    let probability = 1.0 / (count - i) as f64;
                    let _ = writeln!(
                        rules,
                        "-A {svc} -m comment --comment {comment} -m statistic --mode random --probability {probability:.10} -j {sep}"
                    );
                } else {
                    let _ = writeln!(rules, "-A {svc} -m comment --comment {comment} -j {sep}");
                }
                let _ = writeln!(
                    rules,
                    "-A {sep} -m comment --comment {port_name} -s {}/32 -j KUBE-MARK-MASQ",
                    endpoint.ipv4
                );
                let _ = writeln!(
                    rules,
                    "-A {sep} -m comment --comment {port_name} -m {p} -p {p} -j DNAT --to-destination {}:{}",
                    endpoint.ipv4, service.target_port
                );
            }
        }
    }
    format!("*nat\n{chains}{rules}COMMIT\n")
}

/// nftables chain names, in kube-proxy's style: `service-HASH-ns/name/proto/pPORT`.
fn nft_service_chain(service: &BenchService, proto: Proto) -> String {
    format!(
        "service-{}-{}/{}/{}/p{}",
        &chain_hash(&service.port_name(proto))[..8],
        super::services::NAMESPACE,
        service.name,
        proto.netfilter(),
        service.port
    )
}

fn nft_external_chain(service: &BenchService, proto: Proto) -> String {
    nft_service_chain(service, proto).replacen("service-", "external-", 1)
}

fn nft_endpoint_chain(service: &BenchService, proto: Proto, endpoint: &BenchEndpoint) -> String {
    format!(
        "endpoint-{}-{}/{}/{}/p{}__{}/{}",
        &chain_hash(&format!("{}{}", service.port_name(proto), endpoint.ipv4))[..8],
        super::services::NAMESPACE,
        service.name,
        proto.netfilter(),
        service.port,
        endpoint.ipv4,
        service.target_port
    )
}

pub const NFT_TABLE: &str = "kube-proxy";

/// The `nft -f` input for `set`: one transaction that creates the whole table.
pub fn nft_input(set: &ServiceSet) -> String {
    let t = format!("ip {NFT_TABLE}");
    let mut out = String::new();
    let _ = writeln!(out, "add table {t}");
    let _ = writeln!(
        out,
        "add chain {t} nat-prerouting {{ type nat hook prerouting priority dstnat ; }}"
    );
    let _ = writeln!(
        out,
        "add chain {t} nat-output {{ type nat hook output priority -100 ; }}"
    );
    let _ = writeln!(
        out,
        "add chain {t} nat-postrouting {{ type nat hook postrouting priority srcnat ; }}"
    );
    for chain in ["services", "masquerading", "mark-for-masquerade"] {
        let _ = writeln!(out, "add chain {t} {chain}");
    }
    let _ = writeln!(
        out,
        "add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}"
    );
    let _ = writeln!(out, "add rule {t} nat-prerouting jump services");
    let _ = writeln!(out, "add rule {t} nat-output jump services");
    let _ = writeln!(out, "add rule {t} nat-postrouting jump masquerading");
    let _ = writeln!(
        out,
        "add rule {t} masquerading meta mark & {MASQ_MARK} == 0 return"
    );
    let _ = writeln!(
        out,
        "add rule {t} masquerading meta mark set meta mark ^ {MASQ_MARK}"
    );
    let _ = writeln!(out, "add rule {t} masquerading masquerade fully-random");
    let _ = writeln!(
        out,
        "add rule {t} mark-for-masquerade meta mark set meta mark | {MASQ_MARK}"
    );
    let _ = writeln!(
        out,
        "add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips"
    );
    let mut elements = Vec::new();
    for service in &set.services {
        for &proto in &service.protocols {
            let svc = nft_service_chain(service, proto);
            let _ = writeln!(out, "add chain {t} {svc}");
            let mut picks = Vec::new();
            for (i, endpoint) in service.endpoints.iter().enumerate() {
                let ep = nft_endpoint_chain(service, proto, endpoint);
                let _ = writeln!(out, "add chain {t} {ep}");
                let _ = writeln!(
                    out,
                    "add rule {t} {ep} ip saddr {} jump mark-for-masquerade",
                    endpoint.ipv4
                );
                let _ = writeln!(
                    out,
                    "add rule {t} {ep} meta l4proto {} dnat to {}:{}",
                    proto.netfilter(),
                    endpoint.ipv4,
                    service.target_port
                );
                picks.push(format!("{i} : goto {ep}"));
            }
            if !picks.is_empty() {
                let _ = writeln!(
                    out,
                    "add rule {t} {svc} numgen random mod {} vmap {{ {} }}",
                    picks.len(),
                    picks.join(" , ")
                );
            }
            if set.external {
                let ext = nft_external_chain(service, proto);
                let _ = writeln!(out, "add chain {t} {ext}");
                let _ = writeln!(out, "add rule {t} {ext} jump mark-for-masquerade");
                let _ = writeln!(out, "add rule {t} {ext} goto {svc}");
                elements.push(format!(
                    "{} . {} . {} : goto {svc}",
                    external_cluster_ip(service.index),
                    proto.netfilter(),
                    service.port
                ));
                elements.push(format!(
                    "{} . {} . {} : goto {ext}",
                    service.vip_v4,
                    proto.netfilter(),
                    service.port
                ));
            } else {
                elements.push(format!(
                    "{} . {} . {} : goto {svc}",
                    service.vip_v4,
                    proto.netfilter(),
                    service.port
                ));
            }
        }
    }
    // Elements in batches: one line per thousand keeps nft's parser memory modest.
    for chunk in elements.chunks(1000) {
        let _ = writeln!(
            out,
            "add element {t} service-ips {{ {} }}",
            chunk.join(" , ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::services::{ServiceSet, synthetic_endpoint};

    fn set() -> ServiceSet {
        let hosts = [
            synthetic_endpoint(0),
            synthetic_endpoint(1),
            synthetic_endpoint(2),
        ];
        ServiceSet::on_hosts(2, &hosts, &[Proto::Tcp, Proto::Udp])
    }

    #[test]
    fn iptables_has_kube_proxy_shape() {
        let text = iptables_restore_input(&set());
        assert!(text.starts_with("*nat\n") && text.ends_with("COMMIT\n"));
        let services_rules = text
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES"))
            .count();
        assert_eq!(services_rules, 4, "one KUBE-SERVICES rule per service port");
        let svc0 = svc_chain(&set().services[0], Proto::Tcp);
        let picks: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {svc0} ")))
            .collect();
        assert_eq!(picks.len(), 3, "one pick per endpoint: {picks:#?}");
        assert!(
            picks[0].contains("--probability 0.3333333333"),
            "{}",
            picks[0]
        );
        assert!(
            picks[1].contains("--probability 0.5000000000"),
            "{}",
            picks[1]
        );
        assert!(
            !picks[2].contains("statistic"),
            "the last pick is unconditional"
        );
        assert!(
            text.contains("-j DNAT --to-destination 198.18.128.1:8080"),
            "DNAT to the endpoint"
        );
        let declared: std::collections::HashSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split(' ').next())
            .collect();
        for line in text.lines().filter(|l| l.starts_with("-A KUBE")) {
            let chain = line.split(' ').nth(1).expect("chain");
            assert!(declared.contains(chain), "{chain} used but not declared");
        }
        assert!(
            svc0.len() <= 28,
            "iptables chain names are at most 28 bytes"
        );
    }

    #[test]
    fn nft_has_kube_proxy_shape() {
        let text = nft_input(&set());
        assert!(text.contains("vmap @service-ips"));
        assert!(text.contains("numgen random mod 3 vmap { 0 : goto endpoint-"));
        assert!(text.contains("198.19.0.1 . tcp . 80 : goto service-"));
        assert!(text.contains("198.19.0.2 . udp . 80 : goto service-"));
        assert!(text.contains("dnat to 198.18.128.3:8080"));
        assert_eq!(
            text.lines()
                .filter(|l| l.contains("numgen random mod"))
                .count(),
            4,
            "one pick rule per service port"
        );
    }

    #[test]
    fn external_services_are_marked_for_masquerade_in_both_shapes() {
        let external = set().external_on_remote_node();
        let text = iptables_restore_input(&external);
        let ext0 = ext_chain(&external.services[0], Proto::Tcp);
        let svc0 = svc_chain(&external.services[0], Proto::Tcp);
        assert!(
            text.contains(&format!("-d 198.19.0.1/32 --dport 80 -j {ext0}")),
            "the external IP goes to KUBE-EXT:\n{text}"
        );
        assert!(
            text.contains(&format!("-d 198.18.128.1/32 --dport 80 -j {svc0}")),
            "the ClusterIP goes straight to KUBE-SVC:\n{text}"
        );
        let ext_rules: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {ext0} ")))
            .collect();
        assert_eq!(ext_rules.len(), 2, "{ext_rules:#?}");
        assert!(ext_rules[0].ends_with("-j KUBE-MARK-MASQ"), "marked first");
        assert!(
            ext_rules[1].ends_with(&format!("-j {svc0}")),
            "then balanced"
        );
        assert!(text.contains(&format!(":{ext0} - [0:0]")), "declared");
        assert!(
            !iptables_restore_input(&set()).contains("KUBE-EXT-"),
            "ClusterIP services have no external chain"
        );

        let nft = nft_input(&external);
        let ext = nft_external_chain(&external.services[0], Proto::Tcp);
        assert!(nft.contains(&format!(
            "add rule ip kube-proxy {ext} jump mark-for-masquerade"
        )));
        assert!(nft.contains(&format!(
            "add rule ip kube-proxy {ext} goto {}",
            nft_service_chain(&external.services[0], Proto::Tcp)
        )));
        assert!(nft.contains(&format!("198.19.0.1 . tcp . 80 : goto {ext}")));
        assert!(nft.contains("198.18.128.1 . tcp . 80 : goto service-"));
        assert!(nft.contains("masquerade fully-random"));
    }

    #[test]
    fn chain_hashes_differ_per_name() {
        assert_ne!(chain_hash("a/b:tcp"), chain_hash("a/b:udp"));
        assert_eq!(chain_hash("x").len(), 16);
    }
}
