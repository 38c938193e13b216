//! The supervisor thread's loop: hook reports and events, commands from the runtime
//! (container resources, stats, shutdown), and the records it keeps.

use super::*;

impl Worker {
    pub(super) fn new(
        placement: Placement,
        sandbox: Box<dyn Manager>,
        overhead: Option<Box<dyn Manager>>,
        child: Option<VcpuChild>,
        state: SandboxState,
        state_dir: Option<PathBuf>,
    ) -> Self {
        let state_pinning = state.enable_vcpus_pinning;
        Worker {
            placement,
            sandbox,
            overhead,
            child,
            state,
            state_dir,
            records: Vec::new(),
            started_at: BTreeMap::new(),
            pinned: false,
            pin: Arc::new(Mutex::new(PinState {
                enabled: state_pinning,
                ..Default::default()
            })),
        }
    }

    /// One queue: a command sees every hook report sent before it.
    pub(super) fn run(mut self, inputs: Receiver<Input>) {
        for input in inputs {
            match input {
                Input::Report(r) => self.on_report(r),
                Input::Hook(m) => self.on_event(m),
                Input::Cmd(c) => match *c {
                    Cmd::Shutdown(destroy, reply) => {
                        let _ = reply.send(self.teardown(destroy));
                        return;
                    }
                    c => self.on_command(c),
                },
            }
        }
    }

    /// Records what a vCPU thread did in its hook.
    pub(super) fn on_report(&mut self, r: HookReport) {
        match r {
            HookReport::Started(Report {
                index,
                tid,
                at,
                placed_at,
                placed_by,
                writes,
                outcome,
                pinned,
            }) => {
                let us = |t: Instant| t.saturating_duration_since(at).as_micros() as u64;
                let rec = VcpuRecord {
                    index,
                    tid,
                    placed_after_us: placed_at.filter(|_| outcome.is_ok()).map(us),
                    placed_by,
                    cgroup_writes: writes,
                    pinned_after_us: pinned.map(|(_, t)| us(t)),
                    exited_before_placement: false,
                    exited: false,
                    pinned_cpu: pinned.map(|(c, _)| c),
                    error: outcome.as_ref().err().map(|e| e.to_string()),
                };
                debug!(index, tid, placed_after_us = ?rec.placed_after_us, %placed_by, "vCPU placed");
                if rec.error.is_some() {
                    warn!(index, tid, error = ?rec.error, "vCPU refused");
                    METRICS.placement_failures.inc();
                } else if let Some(us) = rec.placed_after_us {
                    METRICS.vcpus_placed.inc();
                    METRICS.placement_latency.record(us);
                }
                self.keep_record(rec);
                self.started_at.insert(tid, at);
                self.repin();
            }
            HookReport::Exited { index, tid } => self.mark_exited(index, tid),
        }
    }

    /// Keeps the record of one vCPU start: a second start of the same vCPU on the same
    /// thread (a hook called twice) replaces the first, so `vcpus()` lists each thread once.
    pub(super) fn keep_record(&mut self, rec: VcpuRecord) {
        match self
            .records
            .iter_mut()
            .find(|r| r.index == rec.index && r.tid == rec.tid)
        {
            Some(r) => *r = rec,
            None => self.records.push(rec),
        }
    }

    pub(super) fn mark_exited(&mut self, index: u32, tid: i32) {
        self.started_at.remove(&tid);
        for r in self.records.iter_mut() {
            if r.index == index && r.tid == tid {
                r.exited = true;
            }
        }
        self.repin();
    }

    pub(super) fn on_event(&mut self, msg: HookMessage) {
        match msg.event {
            VcpuEvent::Started { index, tid, at } => {
                let before = crate::manager::fs::migration_writes();
                let outcome = self.place(tid);
                let writes = crate::manager::fs::migration_writes().saturating_sub(before);
                let mut rec = VcpuRecord {
                    index,
                    tid,
                    placed_after_us: None,
                    placed_by: match (self.placement, self.child.is_some()) {
                        (_, true) | (Placement::VcpuThreads, _) => PlacedBy::Supervisor,
                        (Placement::VmmProcess, false) => PlacedBy::Born,
                    },
                    cgroup_writes: writes as u32,
                    pinned_after_us: None,
                    exited_before_placement: false,
                    exited: false,
                    pinned_cpu: None,
                    error: None,
                };
                let reply = match outcome {
                    Ok(()) => {
                        let us = at.elapsed().as_micros() as u64;
                        rec.placed_after_us = Some(us);
                        METRICS.vcpus_placed.inc();
                        METRICS.placement_latency.record(us);
                        Ok(())
                    }
                    // Gone before we got to it: nothing ran outside, nothing to place.
                    Err(CgroupError::NoSuchTask { .. }) => {
                        rec.exited_before_placement = true;
                        Ok(())
                    }
                    Err(e) => {
                        rec.error = Some(e.to_string());
                        METRICS.placement_failures.inc();
                        Err(selfplace::placement_error(&e))
                    }
                };
                debug!(index, tid, placed_after_us = ?rec.placed_after_us, "vCPU placed");
                self.keep_record(rec);
                self.started_at.insert(tid, at);
                msg.confirm(reply);
                self.repin();
            }
            VcpuEvent::Exited { index, tid } => {
                msg.confirm(Ok(()));
                self.mark_exited(index, tid);
            }
            // An event a newer vcpu-hooks added: nothing to record, never leave a
            // vCPU waiting for an answer.
            _ => msg.confirm(Ok(())),
        }
    }

    pub(super) fn place(&mut self, tid: i32) -> Result<(), CgroupError> {
        if let Err(e) = failpoint::hit(Point::VcpuPlaced) {
            return Err(CgroupError::Io {
                op: "place".into(),
                path: PathBuf::from(self.sandbox.relative()),
                source: e,
            });
        }
        if let Some(c) = self.child.as_mut() {
            return c.add_thread(tid);
        }
        match self.placement {
            Placement::VcpuThreads => self.sandbox.add_thread(tid),
            // The whole process moved at setup, and threads are born where their creator is.
            Placement::VmmProcess => Ok(()),
        }
    }

    pub(super) fn on_command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Container(id, res, reply) => {
                let _ = reply.send(self.update_container(id, res));
            }
            Cmd::Sandbox(res, reply) => {
                let r = self.sandbox.set(&res).map_err(SupervisorError::from);
                if r.is_ok() {
                    self.state.sandbox_resources = Some(res.into_resources());
                    self.persist();
                }
                let _ = reply.send(r);
                self.repin();
            }
            Cmd::Stats(reply) => {
                let _ = reply.send(self.sandbox.stats().map_err(SupervisorError::from));
            }
            Cmd::Vcpus(reply) => {
                let _ = reply.send(self.records.clone());
            }
            Cmd::Shutdown(..) => {}
        }
    }

    /// The union of the containers' cpusets: (cpus, mems).
    pub(super) fn cpuset_union(
        containers: &BTreeMap<String, LinuxResources>,
    ) -> Result<(CpuList, CpuList), ResourceError> {
        let (mut cpus, mut mems) = (CpuList::default(), CpuList::default());
        for r in containers.values() {
            let (c, m) = resources::cpuset_of(r)?;
            if let Some(c) = c {
                cpus = cpus.union(&c);
            }
            if let Some(m) = m {
                mems = mems.union(&m);
            }
        }
        Ok((cpus, mems))
    }

    pub(super) fn cpuset_resources(
        cpus: &CpuList,
        mems: &CpuList,
    ) -> Result<Checked, ResourceError> {
        let mut cpu = serde_json::Map::new();
        if !cpus.is_empty() {
            cpu.insert("cpus".into(), cpus.to_string().into());
        }
        if !mems.is_empty() {
            cpu.insert("mems".into(), mems.to_string().into());
        }
        Checked::new(resources::from_json(
            &serde_json::json!({ "cpu": cpu }).to_string(),
        )?)
    }

    pub(super) fn update_container(
        &mut self,
        id: String,
        res: Option<LinuxResources>,
    ) -> Result<(), SupervisorError> {
        // Validated once here, where the container's resources enter.
        let res = res
            .map(Checked::new)
            .transpose()?
            .map(Checked::into_resources);
        let previous = self.state.containers.clone();
        match res {
            Some(r) => {
                self.state.containers.insert(id, r);
            }
            None => {
                self.state.containers.remove(&id);
            }
        }
        let apply = (|| -> Result<(), SupervisorError> {
            // Nested: the containers' CPU part goes to the vCPU child (see
            // `resources::vcpu_child_resources`); the sandbox cgroup keeps its own limits.
            if let Some(c) = self.child.as_mut() {
                let r = resources::vcpu_child_resources(self.state.containers.values())?;
                c.set(&Checked::new(r)?)?;
                return Ok(());
            }
            let (cpus, mems) = Self::cpuset_union(&self.state.containers)?;
            if cpus.is_empty() && mems.is_empty() {
                return Ok(());
            }
            self.sandbox.set(&Self::cpuset_resources(&cpus, &mems)?)?;
            Ok(())
        })();
        if let Err(e) = apply {
            // The manager restored the files it had written; restore our bookkeeping too.
            self.state.containers = previous;
            return Err(e);
        }
        self.persist();
        self.repin();
        Ok(())
    }

    pub(super) fn persist(&self) {
        if let Some(dir) = &self.state_dir {
            if let Err(e) = self.state.save(dir) {
                warn!(error = %e, "could not persist sandbox state");
            }
        }
    }
}
