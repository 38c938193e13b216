//! [`CpuList`]: a set of CPUs or memory nodes in the kernel's list format, as
//! `cpuset.cpus`, `/sys/devices/system/cpu/online` and the OCI `cpus`/`mems`
//! fields write it.

use std::collections::BTreeSet;
use std::fmt;

use thiserror::Error;

/// Highest CPU or memory node number accepted in a list (the kernel's NR_CPUS ceiling).
const MAX_CPU_INDEX: u32 = 8191;

/// A list that does not parse, or names members that are not available.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum CpuListError {
    /// A cpu or memory node list that does not parse.
    #[error("invalid {field} list {value:?}: {reason}")]
    BadList {
        /// `cpus` or `mems`.
        field: &'static str,
        /// The list as given.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// CPUs or nodes the host (or the parent cgroup) does not offer.
    #[error("{field} {value:?} names {missing} which the host does not offer (available: {available:?})")]
    Unavailable {
        /// `cpus` or `mems`.
        field: &'static str,
        /// The list as given.
        value: String,
        /// The missing members, as a list.
        missing: String,
        /// What is available.
        available: String,
    },
}

/// A set of CPUs or memory nodes, in the kernel's list format (`0-3,8`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuList(pub BTreeSet<u32>);

impl CpuList {
    /// Parses a list the way the kernel's `bitmap_parselist` does (cpuset files):
    /// entries `N`, `N-M` and `N-M:used/group`, separated by commas; blanks and
    /// empty entries between them are skipped (`",0,1,"` is `0-1`), so an empty or
    /// blank string is the empty set. Refused as the kernel refuses them: a missing
    /// or non-decimal number, a range running backwards, a bad group, a blank inside
    /// an entry, a member above 8191. The kernel's `N` (last CPU) shorthand is refused:
    /// its value depends on the host's `nr_cpu_ids`.
    pub fn parse(field: &'static str, value: &str) -> Result<Self, CpuListError> {
        let bad = |reason| CpuListError::BadList {
            field,
            value: value.into(),
            reason,
        };
        let num = |s: &str| -> Result<u32, CpuListError> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(
                    "each entry must be N, N-M or N-M:used/group with decimal numbers",
                ));
            }
            let n: u32 = s.parse().map_err(|_| bad("number too large"))?;
            if n > MAX_CPU_INDEX {
                return Err(bad("number above 8191"));
            }
            Ok(n)
        };
        let mut set = BTreeSet::new();
        for part in value.split(|c: char| c == ',' || c.is_ascii_whitespace()) {
            if part.is_empty() {
                continue;
            }
            let (range, group) = match part.split_once(':') {
                Some((r, g)) => (r, Some(g)),
                None => (part, None),
            };
            let (lo, hi) = match range.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                // As in the kernel, a group needs a range: `1:1/2` is refused.
                None if group.is_some() => {
                    return Err(bad("a used/group pattern needs a range N-M"))
                }
                None => {
                    let n = num(range)?;
                    (n, n)
                }
            };
            if lo > hi {
                return Err(bad("a range runs backwards"));
            }
            let (used, len) = match group {
                None => (1, 1),
                Some(g) => {
                    let (u, l) = g
                        .split_once('/')
                        .ok_or_else(|| bad("a group must be written used/group"))?;
                    let (u, l) = (num(u)?, num(l)?);
                    if l == 0 || u > l {
                        return Err(bad("a group needs 0 < group and used <= group"));
                    }
                    (u, l)
                }
            };
            for c in lo..=hi {
                if (c - lo) % len < used {
                    set.insert(c);
                }
            }
        }
        Ok(CpuList(set))
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Members in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    /// Members of `self` not in `other`.
    pub fn difference(&self, other: &CpuList) -> CpuList {
        CpuList(self.0.difference(&other.0).copied().collect())
    }

    /// Union of two sets.
    pub fn union(&self, other: &CpuList) -> CpuList {
        CpuList(self.0.union(&other.0).copied().collect())
    }

    /// Checks that every member is in `available` (host online CPUs or the parent's cpuset).
    pub fn check_within(
        &self,
        field: &'static str,
        value: &str,
        available: &CpuList,
    ) -> Result<(), CpuListError> {
        let missing = self.difference(available);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(CpuListError::Unavailable {
                field,
                value: value.into(),
                missing: missing.to_string(),
                available: available.to_string(),
            })
        }
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut it = self.0.iter().copied().peekable();
        while let Some(lo) = it.next() {
            let mut hi = lo;
            while it.peek() == Some(&(hi + 1)) {
                hi += 1;
                it.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}
