//! The multicast groups joined on the interfaces of crest's network namespace
//! (`/proc/net/igmp`, `/proc/net/igmp6`). Every group a socket joins is joined on its interface
//! too, so these lists hold every (interface, group) pair any socket may be a member of; the
//! dump asks each UDP socket about each pair.

/// One joined group: the interface index and the group address (4 or 16 bytes, network order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedGroup {
    pub ifindex: u32,
    pub device: String,
    pub group: Vec<u8>,
}

/// The IPv4 and IPv6 groups joined in crest's network namespace (a missing file: none).
pub fn joined_groups() -> Vec<JoinedGroup> {
    let mut out = parse_igmp(&std::fs::read_to_string("/proc/net/igmp").unwrap_or_default());
    out.extend(parse_igmp6(
        &std::fs::read_to_string("/proc/net/igmp6").unwrap_or_default(),
    ));
    out
}

/// `/proc/net/igmp`: a line per interface (`Idx Device : Count Querier`), then an indented line
/// per group whose first field is the address printed as a host-order hex u32.
pub fn parse_igmp(text: &str) -> Vec<JoinedGroup> {
    let mut out = Vec::new();
    let mut current: Option<(u32, String)> = None;
    for line in text.lines().skip(1) {
        if line.starts_with(char::is_whitespace) {
            let (Some((ifindex, device)), Some(hex)) = (&current, line.split_whitespace().next())
            else {
                continue;
            };
            if let Ok(v) = u32::from_str_radix(hex, 16) {
                out.push(JoinedGroup {
                    ifindex: *ifindex,
                    device: device.clone(),
                    group: v.to_ne_bytes().to_vec(),
                });
            }
        } else {
            let mut words = line.split_whitespace();
            current = match (words.next().map(str::parse), words.next()) {
                (Some(Ok(i)), Some(dev)) => Some((i, dev.to_string())),
                _ => None,
            };
        }
    }
    out
}

/// `/proc/net/igmp6`: `Idx Device Group(32 hex digits, network order) Users Flags Timer`.
pub fn parse_igmp6(text: &str) -> Vec<JoinedGroup> {
    let mut out = Vec::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() < 3 || w[2].len() != 32 {
            continue;
        }
        let Ok(ifindex) = w[0].parse() else { continue };
        let group: Option<Vec<u8>> = (0..16)
            .map(|i| u8::from_str_radix(&w[2][2 * i..2 * i + 2], 16).ok())
            .collect();
        if let Some(group) = group {
            out.push(JoinedGroup {
                ifindex,
                device: w[1].to_string(),
                group,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_lists_parse() {
        let v4 = "Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter\n\
                  1\tlo        :     2      V3\n\
                  \t\t\t\t010000E0     1 0:00000000\t\t0\n\
                  \t\t\t\t030201EF     1 0:00000000\t\t0\n\
                  4\teth0      :     1      V3\n\
                  \t\t\t\t010000E0     1 0:00000000\t\t0\n";
        let g = parse_igmp(v4);
        assert_eq!(g.len(), 3);
        let want = u32::from_str_radix("030201EF", 16).unwrap().to_ne_bytes();
        assert_eq!((g[1].ifindex, g[1].device.as_str()), (1, "lo"));
        assert_eq!(g[1].group, want.to_vec());
        assert_eq!(g[2].ifindex, 4);
        let v6 = "1    lo              ff020000000000000000000000000001     1 0000000C 0\n";
        let g = parse_igmp6(v6);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].group[0], 0xff);
        assert_eq!(g[0].group[15], 1);
    }
}
