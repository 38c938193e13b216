//! Starting the supervisor: the cgroups made and the VMM placed, the state persisted,
//! the supervisor thread spawned; rolled back on any failure. Restoring one after a
//! runtime restart.

use super::*;

impl Supervisor {
    /// Creates the sandbox (and overhead) cgroups, places this process per the
    /// policy, persists state, and starts the supervisor thread.
    pub fn start(plan: SandboxPlan, opts: SupervisorOptions) -> Result<Self, SupervisorError> {
        if let Some(r) = &opts.sandbox_resources {
            plan.check_sandbox_resources(r.resources())?;
        }
        let layout = plan.layout.clone();
        let mut sandbox = manager::build(&plan.sandbox.parsed, &layout, Vec::new())?;
        let mut overhead = match &plan.overhead {
            Some(o) => Some(manager::build(&o.parsed, &layout, Vec::new())?),
            None => None,
        };
        if let Some(r) = &opts.sandbox_resources {
            sandbox.check(r)?;
        }
        let mut child = plan
            .vcpus_child
            .as_ref()
            .map(|_| VcpuChild::adopt(&layout, &plan.sandbox.path, Vec::new()));
        // Before anything is created: a host that cannot hold the child fails here.
        if let Some(c) = &child {
            c.preflight()?;
        }
        let me = std::process::id() as i32;
        let mut state = SandboxState {
            format: crate::state::STATE_FORMAT,
            sandbox_id: plan.sandbox_id.clone(),
            driver: plan.driver,
            cgroup_version: plan.version(),
            placement: plan.placement,
            sandbox_cgroup_only: plan.sandbox_cgroup_only,
            enable_vcpus_pinning: opts.enable_vcpus_pinning,
            vmm_pid: me,
            sandbox: CgroupState {
                path: plan.sandbox.parsed.clone(),
                created: sandbox.missing(),
            },
            overhead: plan.overhead.as_ref().map(|o| CgroupState {
                path: o.parsed.clone(),
                created: overhead.as_ref().map(|m| m.missing()).unwrap_or_default(),
            }),
            vcpu_layout: Some(plan.vcpu_layout),
            vcpus: child.as_ref().map(|c| ChildState {
                dirs: c.dirs().to_vec(),
                created: c.missing(),
            }),
            containers: BTreeMap::new(),
            sandbox_resources: opts
                .sandbox_resources
                .as_ref()
                .map(|r| r.resources().clone()),
        };
        // Record what we are about to create before creating it: a crash in between
        // still leaves `cleanup` a complete list.
        if let Some(dir) = &opts.state_dir {
            state.save(dir)?;
        }
        let mut target = None;
        let setup = (|| -> Result<(), SupervisorError> {
            sandbox.create()?;
            failpoint_hit(Point::CreateSandbox)?;
            if let Some(o) = overhead.as_mut() {
                o.create()?;
                failpoint_hit(Point::CreateOverhead)?;
            }
            if let Some(r) = &opts.sandbox_resources {
                sandbox.set(r)?;
                failpoint_hit(Point::SetResources)?;
            }
            // Threads born later inherit the cgroup of the thread that creates them,
            // so one move of the whole process covers every non-vCPU thread.
            match (overhead.as_mut(), plan.placement, plan.sandbox_cgroup_only) {
                (Some(o), _, _) => o.add_proc(me)?,
                (None, Placement::VmmProcess, _) | (None, _, true) => sandbox.add_proc(me)?,
                (None, Placement::VcpuThreads, false) => {}
            }
            failpoint_hit(Point::AddProc)?;
            // Nested: the child is made once the process is in the sandbox cgroup (with
            // systemd the scope exists only from then on).
            if let Some(c) = child.as_mut() {
                c.create()?;
                failpoint_hit(Point::CreateVcpus)?;
            }
            METRICS.cgroups_created.add(
                sandbox.created().len()
                    + overhead.as_ref().map_or(0, |o| o.created().len())
                    + child.as_ref().map_or(0, |c| c.created().len()),
            );
            state.sandbox.created = merge(&state.sandbox.created, &sandbox.created());
            if let (Some(os), Some(o)) = (state.overhead.as_mut(), overhead.as_ref()) {
                os.created = merge(&os.created, &o.created());
            }
            if let (Some(cs), Some(c)) = (state.vcpus.as_mut(), child.as_ref()) {
                cs.created = merge(&cs.created, &c.created());
            }
            if let Some(dir) = &opts.state_dir {
                state.save(dir)?;
            }
            target = Some(prepare_target(
                &state,
                sandbox.as_ref(),
                child.as_ref(),
                &layout,
            )?);
            Ok(())
        })();
        let target = match (setup, target) {
            (Ok(()), Some(t)) => t,
            (Err(e), _) => {
                return Err(Self::roll_back(
                    e, &plan, sandbox, overhead, child, state, opts,
                ))
            }
            (Ok(()), None) => {
                let e = SupervisorError::Cgroup(CgroupError::NoController {
                    controller: "any".into(),
                    path: PathBuf::from(&plan.sandbox.path),
                });
                return Err(Self::roll_back(
                    e, &plan, sandbox, overhead, child, state, opts,
                ));
            }
        };
        if !plan.configured_sandbox_cgroup_only
            && plan.placement == Placement::VmmProcess
            && plan.vcpus_child.is_none()
        {
            info!(
                driver = %plan.driver,
                version = %plan.version(),
                "sandbox_cgroup_only = false has no effect here: the whole VMM process is in the sandbox cgroup"
            );
        }
        Self::spawn(plan, opts, sandbox, overhead, child, state, target)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn roll_back(
        e: SupervisorError,
        plan: &SandboxPlan,
        sandbox: Box<dyn Manager>,
        overhead: Option<Box<dyn Manager>>,
        child: Option<VcpuChild>,
        state: SandboxState,
        opts: SupervisorOptions,
    ) -> SupervisorError {
        {
            // The error is returned (and reported by the caller): logging it here too
            // would show it twice.
            debug!(error = %e, "sandbox setup failed; rolling back");
            let mut w = Worker::new(
                plan.placement,
                sandbox,
                overhead,
                child,
                state,
                opts.state_dir,
            );
            let report = w.teardown(true);
            for err in report.errors {
                warn!(error = %err, "rollback");
            }
        }
        e
    }

    /// Restores a sandbox from its persisted state (after a restart of the process).
    pub fn restore(
        state_dir: PathBuf,
        sandbox_id: &str,
        layout: &CgroupLayout,
        plan: SandboxPlan,
        opts: SupervisorOptions,
    ) -> Result<Self, SupervisorError> {
        let state = SandboxState::load(&state_dir, sandbox_id, &layout.mount_points())?;
        let sandbox = manager::build(&state.sandbox.path, layout, state.sandbox.created.clone())?;
        let overhead = match &state.overhead {
            Some(o) => Some(manager::build(&o.path, layout, o.created.clone())?),
            None => None,
        };
        let child = state
            .vcpus
            .as_ref()
            .map(|c| VcpuChild::adopt(layout, &state.sandbox.path.relative(), c.created.clone()));
        let opts = SupervisorOptions {
            state_dir: Some(state_dir),
            ..opts
        };
        let target = prepare_target(&state, sandbox.as_ref(), child.as_ref(), layout)?;
        Self::spawn(plan, opts, sandbox, overhead, child, state, target)
    }

    pub(super) fn spawn(
        plan: SandboxPlan,
        opts: SupervisorOptions,
        sandbox: Box<dyn Manager>,
        overhead: Option<Box<dyn Manager>>,
        child: Option<VcpuChild>,
        state: SandboxState,
        target: Target,
    ) -> Result<Self, SupervisorError> {
        let paths = sandbox.paths();
        let overhead_paths = overhead.as_ref().map(|o| o.paths());
        let child_paths = child.as_ref().map(|c| c.paths());
        let (cmd, inputs) = unbounded();
        let mut worker = Worker::new(
            plan.placement,
            sandbox,
            overhead,
            child,
            state,
            opts.state_dir.clone(),
        );
        let pin = Arc::clone(&worker.pin);
        worker.publish_pin_cpus();
        let tx = cmd.clone();
        let hooks = Arc::new(InThreadHooks {
            target: Arc::new(target),
            pin: Arc::clone(&pin),
            sink: Arc::new(move |r| tx.send(Input::Report(r)).is_ok()),
            relative: PathBuf::from(&plan.sandbox.path),
        });
        let tx = cmd.clone();
        let channel_hooks = ChannelReporter::with_sink(
            Arc::new(move |m| match tx.send(Input::Hook(m)) {
                Ok(()) => Ok(()),
                Err(e) => match e.into_inner() {
                    Input::Hook(m) => Err(m),
                    _ => Ok(()),
                },
            }),
            opts.placement_timeout,
        );
        // The worker goes to the thread only once the thread exists: when it cannot be
        // created (a pids limit the process has already reached, for one) the worker is
        // still ours, and what was set up is rolled back instead of left behind.
        let (handoff, worker_rx) = bounded::<Worker>(1);
        let thread = match std::thread::Builder::new()
            .name("hcg-supervisor".into())
            .spawn(move || {
                if let Ok(w) = worker_rx.recv() {
                    w.run(inputs)
                }
            }) {
            Ok(t) => t,
            Err(source) => {
                let report = worker.teardown(true);
                for err in report.errors {
                    warn!(error = %err, "rollback");
                }
                return Err(SupervisorError::Thread { source });
            }
        };
        if handoff.send(worker).is_err() {
            return Err(SupervisorError::Stopped);
        }
        let thread = Some(thread);
        let supervisor = Supervisor {
            hooks,
            channel_hooks,
            pin,
            cmd,
            thread,
            plan,
            paths,
            overhead_paths,
            child_paths,
        };
        // The actor is up and owns the set-up; an injected error here is undone by its
        // own teardown, as a failure of the caller right after `start` would be.
        if let Err(e) = failpoint_hit(Point::SupervisorStarted) {
            let _ = supervisor.shutdown(true);
            return Err(e);
        }
        Ok(supervisor)
    }
}

/// What a vCPU thread does in its hook: born placed (checked) wherever the whole
/// process was moved into the sandbox cgroup; otherwise it moves itself there (the
/// sibling layout) or into the vCPU child (the nested layout).
pub(super) fn prepare_target(
    state: &SandboxState,
    sandbox: &dyn Manager,
    child: Option<&VcpuChild>,
    layout: &CgroupLayout,
) -> Result<Target, SupervisorError> {
    if let Some(c) = child {
        return Ok(Target::open_move(c.dirs(), state.cgroup_version)?);
    }
    let paths = sandbox.paths();
    let moves = state.placement == Placement::VcpuThreads && !state.sandbox_cgroup_only;
    Ok(if moves {
        Target::open_move(&selfplace::distinct_dirs(&paths), state.cgroup_version)?
    } else {
        Target::Born(Target::expect(&paths, layout)?)
    })
}

pub(super) fn merge(a: &[PathBuf], b: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = a.to_vec();
    for p in b {
        if !out.contains(p) {
            out.push(p.clone());
        }
    }
    out
}

/// A failpoint on the set-up path (no-op without the `failpoints` feature).
pub(super) fn failpoint_hit(name: Point) -> Result<(), SupervisorError> {
    failpoint::hit(name).map_err(|source| {
        SupervisorError::Cgroup(CgroupError::Io {
            op: format!("set-up step {name}"),
            path: PathBuf::new(),
            source,
        })
    })
}
