//! Micro figures for the vCPU spawn path (criterion): the hook call itself,
//! NoHooks vs a ChannelReporter answered at once by a responder thread, and
//! what the pull approach pays per lookup (scanning /proc/self/task for
//! `db_vcpu*` threads).
//!
//! Run: `cargo bench --bench hooks` (needs no privileges).

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use demo_vmm::scan_vcpu_tids;
use vcpu_hooks::{NoHooks, VcpuHooks};

fn hook_call(c: &mut Criterion) {
    let mut g = c.benchmark_group("hook_call");
    g.bench_function("NoHooks", |b| b.iter(|| black_box(NoHooks.vcpu_started(0))));
    let (hooks, rx) = vcpu_hooks::channel(Duration::from_secs(10));
    let responder = std::thread::spawn(move || {
        while let Some(m) = rx.recv() {
            m.confirm(Ok(()));
        }
    });
    g.bench_function("ChannelReporter_answered_at_once", |b| {
        b.iter(|| black_box(hooks.vcpu_started(0)))
    });
    g.bench_function("gettid", |b| b.iter(|| black_box(vcpu_hooks::gettid())));
    g.finish();
    drop(hooks);
    let _ = responder.join();
}

/// Parks `n` threads named `db_vcpu<i>` until the returned barrier is passed.
fn park_vcpu_threads(n: usize) -> (Arc<Barrier>, Vec<std::thread::JoinHandle<()>>) {
    let release = Arc::new(Barrier::new(n + 1));
    let ready = Arc::new(Barrier::new(n + 1));
    let handles = (0..n)
        .map(|i| {
            let (r, go) = (ready.clone(), release.clone());
            std::thread::Builder::new()
                .name(format!("db_vcpu{i}"))
                .spawn(move || {
                    r.wait();
                    go.wait();
                })
                .expect("spawn parked thread")
        })
        .collect();
    ready.wait();
    (release, handles)
}

fn pull_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("pull_lookup_scan_proc_self_task");
    for n in [1usize, 8, 64, 240] {
        let (release, handles) = park_vcpu_threads(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| {
                let found = scan_vcpu_tids();
                assert!(found.len() >= n);
                black_box(found)
            })
        });
        release.wait();
        for h in handles {
            let _ = h.join();
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = hook_call, pull_lookup
}
criterion_main!(benches);
