//! `/proc/tty/drivers`: which character devices are terminals, and of what kind.
//!
//! Each line names a tty driver, its device node, its major number, the range of minor numbers
//! it serves and its type (`pty:master`, `pty:slave`, `serial`, `console`, `system`,
//! `system:/dev/tty`, `system:console`, ...): see Documentation/filesystems/proc.rst.

use super::ProcError;

const DRIVERS: &str = "/proc/tty/drivers";

/// One line of `/proc/tty/drivers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TtyDriver {
    /// Driver name (`pty_slave`, `serial`, `/dev/tty`, ...).
    pub name: String,
    /// Device node or node prefix (`/dev/pts`, `/dev/ttyS`, ...).
    pub node: String,
    pub major: u32,
    pub minor_first: u32,
    pub minor_last: u32,
    /// `pty:master`, `pty:slave`, `serial`, `console`, `system`, `system:/dev/tty`, ...
    pub kind: String,
}

impl TtyDriver {
    /// Whether device `major:minor` belongs to this driver.
    pub fn serves(&self, major: u32, minor: u32) -> bool {
        self.major == major && (self.minor_first..=self.minor_last).contains(&minor)
    }
}

/// Every tty driver the kernel has registered.
pub fn tty_drivers() -> Result<Vec<TtyDriver>, ProcError> {
    let text = std::fs::read_to_string(DRIVERS).map_err(|err| ProcError::Io {
        path: DRIVERS.into(),
        err,
    })?;
    parse_drivers(&text).map_err(|detail| ProcError::Parse {
        path: DRIVERS.into(),
        detail,
    })
}

/// Parses the text of `/proc/tty/drivers`.
fn parse_drivers(text: &str) -> Result<Vec<TtyDriver>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // The name may be padded but holds no spaces; so do the node and the type.
        let words: Vec<&str> = line.split_whitespace().collect();
        let [name, node, major, minors, kind] = words.as_slice() else {
            return Err(format!("line {line:?} does not have 5 fields"));
        };
        let number = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| format!("line {line:?}: {s:?} is not a number"))
        };
        let (first, last) = match minors.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => (number(minors)?, number(minors)?),
        };
        out.push(TtyDriver {
            name: name.to_string(),
            node: node.to_string(),
            major: number(major)?,
            minor_first: first,
            minor_last: last,
            kind: kind.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_parse() {
        let text = "/dev/tty             /dev/tty        5       0 system:/dev/tty\n\
                    /dev/ptmx            /dev/ptmx       5       2 system\n\
                    serial               /dev/ttyS       4 64-111 serial\n\
                    pty_slave            /dev/pts      136 0-1048575 pty:slave\n";
        let d = parse_drivers(text).unwrap();
        assert_eq!(d.len(), 4);
        assert_eq!(d[0].kind, "system:/dev/tty");
        assert!(d[0].serves(5, 0) && !d[0].serves(5, 1));
        assert!(d[2].serves(4, 64) && d[2].serves(4, 111) && !d[2].serves(4, 1));
        assert!(d[3].serves(136, 4000));
        assert!(parse_drivers("x y 5\n").is_err());
        assert!(parse_drivers("x y z 0 system\n").is_err());
        // The running kernel's table parses and lists the pty slaves.
        let own = tty_drivers().unwrap();
        assert!(own.iter().any(|d| d.kind == "pty:slave"), "{own:?}");
    }
}
