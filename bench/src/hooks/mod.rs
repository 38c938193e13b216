//! `bench hooks`: what the placement hook adds to the vCPU spawn path, in
//! nanoseconds: `NoHooks` vs a `ChannelReporter` whose messages are confirmed
//! at once by a responder thread (so the figure is the mechanism: one channel
//! send, one wake-up of the responder, one wake-up of the vCPU thread).
//!
//! Two views: the hook call alone, timed on the calling thread; and
//! `Vmm::start` of one vCPU (thread backend), the real spawn path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use vcpu_hooks::{NoHooks, VcpuHooks};

use crate::machine::{self, Machine};
use crate::report::{self, cdf_svg, Series};
use crate::stats::{round3, Summary};
use crate::{BenchError, Common, Context};
use demo_vmm::{BackendChoice, Vmm, VmmConfig};

mod result;

pub use result::{HookCost, HooksResult, NsFigures};

/// Arguments of `bench hooks`.
#[derive(Debug, Args)]
pub struct HooksArgs {
    /// Output options.
    #[command(flatten)]
    pub common: Common,
    /// Hook calls timed per variant.
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    pub calls: u32,
    /// `Vmm::start` runs timed per variant.
    #[arg(long, value_name = "N", default_value_t = 400)]
    pub spawns: u32,
}

/// A reporter whose every `Started` is confirmed at once by a responder thread.
struct Immediate {
    hooks: vcpu_hooks::ChannelReporter,
    responder: Option<std::thread::JoinHandle<()>>,
}

impl Immediate {
    fn new() -> Result<Self, BenchError> {
        let (hooks, rx) = vcpu_hooks::channel(vcpu_hooks::DEFAULT_PLACEMENT_TIMEOUT);
        let responder = std::thread::Builder::new()
            .name("hcg-responder".into())
            .spawn(move || {
                while let Some(m) = rx.recv() {
                    m.confirm(Ok(()));
                }
            })
            .map_err(|e| BenchError::step("spawn responder", e))?;
        Ok(Immediate {
            hooks,
            responder: Some(responder),
        })
    }

    fn hooks(&self) -> Arc<dyn VcpuHooks> {
        Arc::new(self.hooks.clone())
    }
}

impl Drop for Immediate {
    fn drop(&mut self) {
        // The responder ends when the last sender is gone: ours here, the VMM's clones earlier.
        let (dead, _) = vcpu_hooks::channel(Duration::from_millis(1));
        self.hooks = dead;
        if let Some(t) = self.responder.take() {
            let _ = t.join();
        }
    }
}

fn time_calls(hooks: &dyn VcpuHooks, n: u32) -> Result<Vec<f64>, BenchError> {
    let mut v = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        let r = hooks.vcpu_started(0);
        let ns = t.elapsed().as_nanos() as f64;
        r.map_err(|e| BenchError::step("hook call", e))?;
        v.push(ns);
    }
    Ok(v)
}

fn time_start(hooks: Arc<dyn VcpuHooks>) -> Result<f64, BenchError> {
    let cfg = VmmConfig {
        vcpus: 1,
        max_vcpus: 1,
        backend: BackendChoice::Thread,
    };
    let mut vmm = Vmm::new(cfg, hooks).map_err(|e| BenchError::step("VMM new", e))?;
    let t = Instant::now();
    vmm.start().map_err(|e| BenchError::step("VMM start", e))?;
    let ns = t.elapsed().as_nanos() as f64;
    vmm.stop().map_err(|e| BenchError::step("VMM stop", e))?;
    Ok(ns)
}

/// Runs `bench hooks`.
pub fn run(args: &HooksArgs, ctx: &Context) -> Result<(), BenchError> {
    let load_start = machine::loadavg();
    let machine = Machine::now();
    let t0 = Instant::now();
    let imm = Immediate::new()?;
    // The timer's own cost, to read the call figures against.
    let timer: Vec<f64> = (0..args.calls.max(1))
        .map(|_| {
            let t = Instant::now();
            t.elapsed().as_nanos() as f64
        })
        .collect();
    let ch_hooks = imm.hooks();
    // Warm up both paths (page faults, first futex wake-ups).
    time_calls(&NoHooks, 1000)?;
    time_calls(ch_hooks.as_ref(), 1000)?;
    let no_calls = time_calls(&NoHooks, args.calls.max(1))?;
    let ch_calls = time_calls(ch_hooks.as_ref(), args.calls.max(1))?;
    let (mut no_spawn, mut ch_spawn) = (Vec::new(), Vec::new());
    for i in 0..(args.spawns.max(1) + 10) {
        let (a, b) = if i % 2 == 0 {
            let a = time_start(Arc::new(NoHooks))?;
            (a, time_start(imm.hooks())?)
        } else {
            let b = time_start(imm.hooks())?;
            (time_start(Arc::new(NoHooks))?, b)
        };
        if i >= 10 {
            no_spawn.push(a);
            ch_spawn.push(b);
        }
    }
    drop(ch_hooks);
    drop(imm);
    let elapsed = t0.elapsed().as_secs_f64();
    let load_end = machine::loadavg();
    let result = HooksResult {
        bench: "hooks",
        command: "host-cgroups bench hooks",
        machine,
        loadavg_end: load_end,
        loadavg_start: load_start,
        elapsed_s: round3(elapsed),
        timer_overhead: NsFigures::of(&Summary::of(&timer)),
        hook_call: HookCost::new(&Summary::of(&no_calls), &Summary::of(&ch_calls)),
        spawn: HookCost::new(&Summary::of(&no_spawn), &Summary::of(&ch_spawn)),
    };
    let svg = cdf_svg(
        "Hook cost: NoHooks vs ChannelReporter (answered at once)",
        "ns, log scale",
        &[
            Series {
                label: "call, NoHooks".into(),
                values: no_calls,
            },
            Series {
                label: "call, ChannelReporter".into(),
                values: ch_calls,
            },
            Series {
                label: "Vmm::start, NoHooks".into(),
                values: no_spawn,
            },
            Series {
                label: "Vmm::start, ChannelReporter".into(),
                values: ch_spawn,
            },
        ],
    );
    report::emit(
        ctx,
        &args.common,
        report::Output {
            name: "hooks",
            result: &result,
            markdown: result.markdown(),
            svg: Some(svg),
        },
    )
}
