//! Usage figures of the cgroup: CPU time and throttling, memory in use, tasks.

use std::path::PathBuf;

use super::io::{read_file, read_keyed};
use super::FsManager;
use crate::host::CgroupVersion;
use crate::manager::{CgroupError, Stats};

impl FsManager {
    /// [`crate::manager::Manager::stats`].
    pub(super) fn read_stats(&self) -> Result<Stats, CgroupError> {
        let mut s = Stats::default();
        let opt = |p: PathBuf| read_file(&p).ok().and_then(|v| v.parse().ok());
        match self.version {
            CgroupVersion::V1 => {
                let acct = self.dir_of("cpuacct")?;
                s.cpu_usage_ns = read_file(&acct.join("cpuacct.usage"))?.parse().unwrap_or(0);
                let st = read_keyed(&self.dir_of("cpu")?.join("cpu.stat"))?;
                s.nr_periods = st.get("nr_periods").copied().unwrap_or(0);
                s.nr_throttled = st.get("nr_throttled").copied().unwrap_or(0);
                s.throttled_ns = st.get("throttled_time").copied().unwrap_or(0);
                s.memory_bytes = self
                    .dir_of("memory")
                    .ok()
                    .and_then(|d| opt(d.join("memory.usage_in_bytes")));
            }
            CgroupVersion::V2 => {
                let d = self.first_dir()?;
                let st = read_keyed(&d.join("cpu.stat"))?;
                s.cpu_usage_ns = st.get("usage_usec").copied().unwrap_or(0) * 1000;
                s.nr_periods = st.get("nr_periods").copied().unwrap_or(0);
                s.nr_throttled = st.get("nr_throttled").copied().unwrap_or(0);
                s.throttled_ns = st.get("throttled_usec").copied().unwrap_or(0) * 1000;
                s.memory_bytes = opt(d.join("memory.current"));
            }
        }
        s.pids_current = self
            .dir_of("pids")
            .ok()
            .and_then(|d| opt(d.join("pids.current")));
        Ok(s)
    }
}
