//! The "image constraints" extension: labels and bitmaps written at checkpoint into the image
//! directory's `tags` file (`label:<name>=<value>`, `bitmap:<name>=<hex bytes>`, one a line),
//! and the requirements a restore checks against them.

/// Limits: names and values that fit a line of `tags`, and not too many of them.
const MAX_NAME: usize = 256;
const MAX_VALUE: usize = 4096;
const MAX_ENTRIES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap(pub Vec<u8>);

/// How a required bitmap compares with the image's (a shorter one is zero-extended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Equals,
    /// The image's bits are a subset of the required ones.
    Subset,
    /// The image's bits include the required ones.
    Superset,
}

impl Cmp {
    pub fn from_c(v: i32) -> Option<Cmp> {
        match v {
            0 => Some(Cmp::Equals),
            1 => Some(Cmp::Subset),
            2 => Some(Cmp::Superset),
            _ => None,
        }
    }

    fn holds(self, image: &[u8], required: &[u8]) -> bool {
        let n = image.len().max(required.len());
        (0..n).all(|i| {
            let a = image.get(i).copied().unwrap_or(0);
            let r = required.get(i).copied().unwrap_or(0);
            match self {
                Cmp::Equals => a == r,
                Cmp::Subset => a & !r == 0,
                Cmp::Superset => r & !a == 0,
            }
        })
    }
}

#[derive(Debug, Default)]
pub struct Constraints {
    labels: Vec<(String, String)>,
    bitmaps: Vec<(String, Vec<u8>)>,
    required_labels: Vec<(String, String)>,
    required_bitmaps: Vec<(String, Vec<u8>, Cmp)>,
    /// After a check: the names whose requirement did not hold, and the image's bitmaps.
    failed: Vec<String>,
    image_bitmaps: Vec<(String, Vec<u8>)>,
}

fn name_ok(n: &str) -> bool {
    !n.is_empty() && n.len() <= MAX_NAME && !n.contains(['=', '\n'])
}

fn value_ok(v: &str) -> bool {
    v.len() <= MAX_VALUE && !v.contains('\n')
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Constraints {
    fn taken(&self, n: &str) -> bool {
        self.labels.iter().any(|(k, _)| k == n) || self.bitmaps.iter().any(|(k, _)| k == n)
    }

    pub fn set_label(&mut self, n: &str, v: &str) -> bool {
        if !name_ok(n) || !value_ok(v) || self.taken(n) || self.labels.len() >= MAX_ENTRIES {
            return false;
        }
        self.labels.push((n.into(), v.into()));
        true
    }

    pub fn set_bitmap(&mut self, n: &str, v: &[u8]) -> bool {
        if !name_ok(n)
            || v.len() * 2 > MAX_VALUE
            || self.taken(n)
            || self.bitmaps.len() >= MAX_ENTRIES
        {
            return false;
        }
        self.bitmaps.push((n.into(), v.to_vec()));
        true
    }

    /// Several requirements on one name are allowed (all must hold).
    pub fn require_label(&mut self, n: &str, v: &str) -> bool {
        if !name_ok(n) || !value_ok(v) || self.required_labels.len() >= MAX_ENTRIES {
            return false;
        }
        self.required_labels.push((n.into(), v.into()));
        true
    }

    pub fn require_bitmap(&mut self, n: &str, v: &[u8], cmp: Cmp) -> bool {
        if !name_ok(n) || v.len() * 2 > MAX_VALUE || self.required_bitmaps.len() >= MAX_ENTRIES {
            return false;
        }
        self.required_bitmaps.push((n.into(), v.to_vec(), cmp));
        true
    }

    /// The `tags` file for the labels and bitmaps set.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.labels {
            s += &format!("label:{k}={v}\n");
        }
        for (k, v) in &self.bitmaps {
            s += &format!("bitmap:{k}={}\n", hex(v));
        }
        s
    }

    /// Checks the requirements against an image's `tags`; returns (and remembers) the names
    /// whose requirement does not hold (a label or bitmap the image lacks does not hold).
    pub fn check(&mut self, tags: &str) -> Vec<String> {
        let mut labels = Vec::new();
        let mut bitmaps = Vec::new();
        for line in tags.lines() {
            if let Some((k, v)) = line.strip_prefix("label:").and_then(|l| l.split_once('=')) {
                labels.push((k.to_string(), v.to_string()));
            } else if let Some((k, v)) =
                line.strip_prefix("bitmap:").and_then(|l| l.split_once('='))
            {
                if let Some(b) = unhex(v) {
                    bitmaps.push((k.to_string(), b));
                }
            }
        }
        let mut failed = Vec::new();
        let mut fail = |k: &String| {
            if !failed.contains(k) {
                failed.push(k.clone());
            }
        };
        for (k, v) in &self.required_labels {
            if !labels.iter().any(|(ik, iv)| ik == k && iv == v) {
                fail(k);
            }
        }
        for (k, v, cmp) in &self.required_bitmaps {
            match bitmaps.iter().find(|(ik, _)| ik == k) {
                Some((_, image)) if cmp.holds(image, v) => {}
                _ => fail(k),
            }
        }
        self.failed = failed.clone();
        self.image_bitmaps = bitmaps;
        failed
    }

    pub fn is_failed(&self, n: &str) -> bool {
        self.failed.iter().any(|k| k == n)
    }

    /// The image's value of bitmap `n`, as the last check read it.
    pub fn image_bitmap(&self, n: &str) -> Option<Bitmap> {
        self.image_bitmaps
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| Bitmap(v.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_requirements_hold_or_fail() {
        let mut c = Constraints::default();
        assert!(c.set_label("cpu.arch", "amd64"));
        assert!(!c.set_label("cpu.arch", "x"), "a name is set once");
        assert!(c.set_bitmap("cpu.features", &[0b0110, 0x80]));
        assert!(!c.set_label("bad=name", "x"));
        let tags = c.render();
        assert_eq!(tags, "label:cpu.arch=amd64\nbitmap:cpu.features=0680\n");

        let mut r = Constraints::default();
        assert!(r.require_label("cpu.arch", "amd64"));
        assert!(r.require_bitmap("cpu.features", &[0b0111, 0x80, 0], Cmp::Subset));
        assert!(r.check(&tags).is_empty());

        let mut r = Constraints::default();
        assert!(r.require_label("cpu.arch", "amd64"));
        assert!(
            r.require_label("cpu.arch", "aarch64"),
            "several on one name"
        );
        r.require_bitmap("cpu.features", &[0b0010], Cmp::Subset);
        r.require_label("missing", "x");
        assert_eq!(r.check(&tags), ["cpu.arch", "missing", "cpu.features"]);
        assert!(r.is_failed("cpu.features") && !r.is_failed("other"));
        assert_eq!(
            r.image_bitmap("cpu.features"),
            Some(Bitmap(vec![0x06, 0x80]))
        );
    }

    #[test]
    fn bitmap_comparisons_zero_extend() {
        assert!(Cmp::Equals.holds(&[1, 0], &[1]));
        assert!(!Cmp::Equals.holds(&[1, 2], &[1]));
        assert!(Cmp::Superset.holds(&[3], &[1]));
        assert!(!Cmp::Superset.holds(&[1], &[3]));
        assert!(Cmp::Subset.holds(&[1], &[3, 4]));
        assert!(Cmp::from_c(3).is_none());
    }
}
